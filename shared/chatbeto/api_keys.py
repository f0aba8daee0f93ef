"""API keys: random, prefixed, stored only as a SHA-256 hash, looked up by hash.

A key is `cbk_<prefix>_<secret>`. The prefix is public (shown by `keys list`, used to revoke);
the whole key is hashed. Keys carry 256 bits of entropy, so a fast hash is right here (slow
password hashes protect low-entropy secrets, and would cost every request).
"""

from __future__ import annotations

import hashlib
import secrets
from dataclasses import dataclass
from datetime import datetime

import asyncpg

KEY_SCHEME = "cbk"


@dataclass(frozen=True)
class KeyRecord:
    id: int
    prefix: str
    name: str | None
    is_admin: bool
    project_id: int | None
    rate_limit: str | None
    budget: str | None = None  # `20/1mo`, see chatbeto.spend.Budget
    tpm: int | None = None  # tokens per minute
    created_at: datetime | None = None
    last_used_at: datetime | None = None
    revoked_at: datetime | None = None


def generate() -> tuple[str, str]:
    """(plain key, prefix)."""
    prefix = secrets.token_hex(4)
    return f"{KEY_SCHEME}_{prefix}_{secrets.token_urlsafe(32)}", prefix


def hash_key(plain: str) -> bytes:
    return hashlib.sha256(plain.encode("utf-8", "surrogatepass")).digest()


def prefix_of(key_or_prefix: str) -> str:
    parts = key_or_prefix.split("_")
    if len(parts) >= 3 and parts[0] == KEY_SCHEME:
        return parts[1]
    return key_or_prefix


_COLUMNS = (
    "id, prefix, name, is_admin, project_id, rate_limit, budget, tpm, created_at, last_used_at, "
    "revoked_at"
)


def _record(row: asyncpg.Record) -> KeyRecord:
    return KeyRecord(**dict(row))


async def create(
    conn: asyncpg.Connection | asyncpg.Pool,
    *,
    is_admin: bool,
    project_id: int | None,
    name: str | None = None,
    rate_limit: str | None = None,
    budget: str | None = None,
    tpm: int | None = None,
) -> tuple[str, KeyRecord]:
    """`budget` and `tpm` are set here once: a key's spend window is derived from its budget."""
    plain, prefix = generate()
    row = await conn.fetchrow(
        f"""INSERT INTO api_keys (prefix, key_hash, name, is_admin, project_id, rate_limit,
                                  budget, tpm)
            VALUES ($1, $2, $3, $4, $5, $6, $7, $8) RETURNING {_COLUMNS}""",
        prefix,
        hash_key(plain),
        name,
        is_admin,
        project_id,
        rate_limit,
        budget,
        tpm,
    )
    assert row is not None
    return plain, _record(row)


async def lookup(conn: asyncpg.Connection | asyncpg.Pool, plain: str) -> KeyRecord | None:
    """The live key whose hash matches. The hash is the index lookup, so no timing leaks the
    key's bytes; the digest comparison in the database is over a value the caller can't steer."""
    row = await conn.fetchrow(
        f"SELECT {_COLUMNS} FROM api_keys WHERE key_hash = $1 AND revoked_at IS NULL",
        hash_key(plain),
    )
    return _record(row) if row else None


async def list_keys(
    conn: asyncpg.Connection | asyncpg.Pool, project_id: int | None = None
) -> list[KeyRecord]:
    rows = await conn.fetch(
        f"SELECT {_COLUMNS} FROM api_keys WHERE ($1::bigint IS NULL OR project_id = $1) "
        "ORDER BY id",
        project_id,
    )
    return [_record(r) for r in rows]


async def revoke(
    conn: asyncpg.Connection | asyncpg.Pool, key_or_prefix: str, project_id: int | None = None
) -> bool:
    result = await conn.execute(
        "UPDATE api_keys SET revoked_at = now() WHERE prefix = $1 AND revoked_at IS NULL "
        "AND ($2::bigint IS NULL OR project_id = $2)",
        prefix_of(key_or_prefix),
        project_id,
    )
    return str(result).endswith(" 1")


async def touch(conn: asyncpg.Connection | asyncpg.Pool, key_ids: list[int]) -> None:
    """Record last use, batched (one UPDATE for every key seen since the last flush)."""
    if key_ids:
        await conn.execute(
            "UPDATE api_keys SET last_used_at = now() WHERE id = ANY($1::bigint[])", key_ids
        )
