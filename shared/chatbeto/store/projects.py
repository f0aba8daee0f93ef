"""Projects: the one place that says what a valid, unique project name is (CLI and API), and
whether a project exists."""

from __future__ import annotations

import asyncpg

from chatbeto.db import Conn

MAX_NAME_CHARS = 200


class ProjectExists(Exception):
    """Another project has this name (names are unique, ignoring case)."""

    def __init__(self, name: str, existing_id: int | None) -> None:
        super().__init__(name)
        self.name = name
        self.existing_id = existing_id


def clean_name(raw: str) -> str:
    """The name as stored (surrounding blanks dropped), or ValueError saying why not."""
    name = raw.strip()
    if not name:
        raise ValueError("must not be empty")
    if len(name) > MAX_NAME_CHARS:
        raise ValueError(f"must be at most {MAX_NAME_CHARS} characters")
    if "\x00" in name or not name.isprintable():
        raise ValueError("must not contain control characters")
    return name


async def create(conn: Conn, name: str) -> asyncpg.Record:
    """Insert a project named `name` (already cleaned); `ProjectExists` for a taken name."""
    try:
        row = await conn.fetchrow(
            "INSERT INTO projects (name) VALUES ($1) RETURNING id, name, created_at", name
        )
    except asyncpg.UniqueViolationError:
        existing = await conn.fetchval(
            "SELECT id FROM projects WHERE lower(name) = lower($1)", name
        )
        raise ProjectExists(name, existing) from None
    assert row is not None
    return row


async def list_all(conn: Conn, only: int | None = None) -> list[asyncpg.Record]:
    return list(
        await conn.fetch(
            """SELECT id, name, created_at FROM projects
               WHERE $1::bigint IS NULL OR id = $1 ORDER BY id""",
            only,
        )
    )


async def exists(conn: Conn | asyncpg.Pool, project_id: int) -> bool:
    """The one answer to "does this project exist" (CLI, gateway, workers, importer)."""
    return bool(await conn.fetchval("SELECT 1 FROM projects WHERE id = $1", project_id))
