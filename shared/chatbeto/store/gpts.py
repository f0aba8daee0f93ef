"""GPT registrations as the CLI makes them; the id rule is the API's (`GPT_ID_PATTERN`)."""

from __future__ import annotations

import re
from dataclasses import dataclass
from datetime import datetime

import asyncpg

from chatbeto.db import Conn

GPT_ID_PATTERN = r"^[A-Za-z0-9_.:-]{1,128}$"
_GPT_ID = re.compile(GPT_ID_PATTERN)
MAX_NAME_CHARS = 200


@dataclass(frozen=True)
class Gpt:
    gpt_id: str
    name: str
    project_id: int | None
    keyless_ingest: bool
    builtin: bool
    created_at: datetime


def check_id(gpt_id: str) -> str:
    if not _GPT_ID.fullmatch(gpt_id):
        raise ValueError("must be 1-128 characters of letters, digits and _ . : -")
    return gpt_id


def check_name(name: str) -> str:
    name = name.strip()
    if not name or len(name) > MAX_NAME_CHARS or not name.isprintable():
        raise ValueError(f"must be 1-{MAX_NAME_CHARS} printable characters")
    return name


_COLUMNS = "gpt_id, name, project_id, keyless_ingest, builtin, created_at"


async def get(conn: Conn, gpt_id: str) -> Gpt | None:
    row = await conn.fetchrow(f"SELECT {_COLUMNS} FROM gpts WHERE gpt_id = $1", gpt_id)
    return Gpt(**dict(row)) if row is not None else None


async def list_all(conn: Conn) -> list[Gpt]:
    rows = await conn.fetch(f"SELECT {_COLUMNS} FROM gpts ORDER BY builtin DESC, gpt_id")
    return [Gpt(**dict(r)) for r in rows]


async def add(
    conn: Conn | asyncpg.Pool, gpt_id: str, name: str, project_id: int | None, keyless: bool
) -> int | None:
    """Register a new GPT (the CLI and `POST /api/gpts`); its key, or None when the id is taken
    (nothing changed)."""
    pk: int | None = await conn.fetchval(
        """INSERT INTO gpts (gpt_id, name, project_id, keyless_ingest) VALUES ($1, $2, $3, $4)
           ON CONFLICT (gpt_id) DO NOTHING RETURNING pk""",
        gpt_id,
        name,
        project_id,
        keyless,
    )
    return pk


async def update(conn: Conn, gpt_id: str, name: str, keyless: bool) -> None:
    await conn.execute(
        "UPDATE gpts SET name = $2, keyless_ingest = $3 WHERE gpt_id = $1 AND NOT builtin",
        gpt_id,
        name,
        keyless,
    )


async def builtin_pk(conn: Conn | asyncpg.Pool) -> int | None:
    """The built-in GPT's key (the model calls' metrics go to it); None before `migrate`."""
    pk: int | None = await conn.fetchval("SELECT pk FROM gpts WHERE builtin ORDER BY pk LIMIT 1")
    return pk
