"""`chatbeto migrate`: create the database if missing, apply numbered SQL files, declare topology.

Safe to run concurrently: creation tolerates a twin, and migrations run under an advisory lock.
"""

from __future__ import annotations

import secrets
from importlib import resources

import asyncpg

from chatbeto.db import connect, database_name, with_database
from chatbeto.logging import get_logger

log = get_logger(__name__)
MIGRATION_LOCK_ID = 0x0C4A7BE70


def migration_files() -> list[tuple[int, str, str]]:
    """(number, name, sql) for every `NNNN_name.sql`, in order."""
    found = []
    for entry in resources.files("chatbeto.migrations").iterdir():
        if entry.name.endswith(".sql") and entry.name[:4].isdigit():
            found.append((int(entry.name[:4]), entry.name, entry.read_text("utf-8")))
    found.sort()
    numbers = [n for n, _, _ in found]
    if len(numbers) != len(set(numbers)):
        raise RuntimeError(f"two migrations share a number: {numbers}")
    return found


async def ensure_database(dsn: str) -> None:
    name = database_name(dsn)
    try:
        conn = await connect(dsn)  # a Postgres still starting gets a few seconds
    except asyncpg.InvalidCatalogNameError:
        admin = await connect(with_database(dsn, "postgres"))
        try:
            quoted = '"' + name.replace('"', '""') + '"'
            await admin.execute(f"CREATE DATABASE {quoted}")
            log.info("database created", database=name)
        except (asyncpg.DuplicateDatabaseError, asyncpg.UniqueViolationError):
            pass  # a concurrent migrate created it first
        finally:
            await admin.close()
    else:
        await conn.close()


async def apply_migrations(dsn: str) -> list[str]:
    """Apply what is missing; returns the names applied now."""
    await ensure_database(dsn)
    conn = await connect(dsn)
    applied_now: list[str] = []
    try:
        await conn.execute("SELECT pg_advisory_lock($1)", MIGRATION_LOCK_ID)
        try:
            await conn.execute(
                """CREATE TABLE IF NOT EXISTS schema_migrations (
                       version integer PRIMARY KEY,
                       name text NOT NULL,
                       applied_at timestamptz NOT NULL DEFAULT now())"""
            )
            done = {r["version"] for r in await conn.fetch("SELECT version FROM schema_migrations")}
            for number, name, sql in migration_files():
                if number in done:
                    continue
                async with conn.transaction():
                    await conn.execute(sql)
                    await conn.execute(
                        "INSERT INTO schema_migrations (version, name) VALUES ($1, $2)",
                        number,
                        name,
                    )
                applied_now.append(name)
                log.info("migration applied", migration=name)
            # The key that makes session ids self-verifying; made once, shared by all services.
            await conn.execute(
                "INSERT INTO app_secrets (name, value) VALUES ('session_id_key', $1) "
                "ON CONFLICT (name) DO NOTHING",
                secrets.token_bytes(32),
            )
        finally:
            await conn.execute("SELECT pg_advisory_unlock($1)", MIGRATION_LOCK_ID)
    finally:
        await conn.close()
    return applied_now
