"""Migrations that change existing data: applied to a database holding what the old schema let in."""

from __future__ import annotations

import uuid
from collections.abc import AsyncIterator

import asyncpg
import pytest
from chatbeto.db import with_database
from chatbeto.migrate import apply_migrations, migration_files


@pytest.fixture
async def empty_database(pg_base_url: str) -> AsyncIterator[str]:
    name = f"cbt_{uuid.uuid4().hex[:16]}"
    admin = await asyncpg.connect(with_database(pg_base_url, "postgres"))
    await admin.execute(f'CREATE DATABASE "{name}"')
    yield with_database(pg_base_url, name)
    await admin.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
    await admin.close()


async def migrate_below(conn: asyncpg.Connection, version: int) -> None:
    """The schema as it was before migration `version` (to test what that migration does to
    data written before it), recorded so that `apply_migrations` applies the rest."""
    await conn.execute(
        "CREATE TABLE schema_migrations (version integer PRIMARY KEY, name text NOT NULL,"
        " applied_at timestamptz NOT NULL DEFAULT now())"
    )
    for number, name, sql in migration_files():
        if number < version:
            await conn.execute(sql)
            await conn.execute(
                "INSERT INTO schema_migrations (version, name) VALUES ($1, $2)", number, name
            )


async def test_unique_project_names_keep_existing_duplicates(empty_database: str) -> None:
    conn = await asyncpg.connect(empty_database)
    try:
        await migrate_below(conn, 10)
        ids = [
            await conn.fetchval("INSERT INTO projects (name) VALUES ($1) RETURNING id", name)
            for name in ("support", "Support", "other", "support", "x" * 200, "x" * 200)
        ]
        await apply_migrations(empty_database)
        names = {r["id"]: r["name"] for r in await conn.fetch("SELECT id, name FROM projects")}
        assert names[ids[0]] == "support"  # the oldest keeps its name
        assert names[ids[1]] == f"Support ({ids[1]})"
        assert names[ids[2]] == "other"
        assert names[ids[3]] == f"support ({ids[3]})"
        assert names[ids[4]] == "x" * 200
        assert names[ids[5]].endswith(f" ({ids[5]})")
        assert len(names[ids[5]]) == 200
        with pytest.raises(asyncpg.UniqueViolationError):
            await conn.execute("INSERT INTO projects (name) VALUES ('OTHER')")
    finally:
        await conn.close()
