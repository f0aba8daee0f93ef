"""Background jobs (`jobs`: sync to OpenAI, imports) and the uploads import jobs read.

One vocabulary for every kind: `create` (queued), `start` (running), `advance` (counts added
as work finishes) or `report` (the whole progress at once), `finish` (done or failed), `get`.
A redelivered job message finds its row and carries on (`start` is False once it finished).
"""

from __future__ import annotations

import uuid
from dataclasses import dataclass
from datetime import datetime
from typing import IO, Any, TypeAlias

import asyncpg
import orjson

from chatbeto.db import Conn

SYNC = "sync"
IMPORT = "import"
QUEUED, RUNNING, DONE, FAILED = "queued", "running", "done", "failed"
# One-statement functions take a pool as well as a connection.
Db: TypeAlias = "Conn | asyncpg.Pool"


@dataclass(frozen=True)
class Job:
    id: uuid.UUID
    project_id: int | None
    state: str
    total: int
    done: int
    failed: int
    errors: list[Any]
    created_at: datetime
    updated_at: datetime


async def create(
    conn: Db,
    job_id: uuid.UUID,
    kind: str,
    project_id: int | None,
    request_id: str | None,
    *,
    total: int = 0,
) -> None:
    await conn.execute(
        """INSERT INTO jobs (id, kind, project_id, state, total, request_id)
           VALUES ($1, $2, $3, 'queued', $4, $5)""",
        job_id,
        kind,
        project_id,
        total,
        request_id,
    )


async def get(conn: Db, job_id: uuid.UUID, kind: str) -> Job | None:
    row = await conn.fetchrow(
        """SELECT id, project_id, state, total, done, failed, errors::text AS errors,
                  created_at, updated_at
           FROM jobs WHERE id = $1 AND kind = $2""",
        job_id,
        kind,
    )
    if row is None:
        return None
    return Job(**{**dict(row), "errors": orjson.loads(row["errors"])})


async def start(
    conn: Db, job_id: uuid.UUID, kind: str, *, total: int = 0, restart: bool = False
) -> bool:
    """Mark the job running with its total; False when there is nothing to do (no such job, or
    it finished). `restart`: a redelivered job starts over (its counts and errors reset)."""
    state = await conn.fetchval(
        """UPDATE jobs SET state = 'running', total = $3, updated_at = now(),
                  done = CASE WHEN $4 THEN 0 ELSE done END,
                  failed = CASE WHEN $4 THEN 0 ELSE failed END,
                  errors = CASE WHEN $4 THEN '[]'::jsonb ELSE errors END
           WHERE id = $1 AND kind = $2 AND state IN ('queued', 'running')
           RETURNING state""",
        job_id,
        kind,
        total,
        restart,
    )
    return state is not None


async def advance(
    conn: Db, job_id: uuid.UUID, *, done: int = 0, failed: int = 0, error: str | None = None
) -> None:
    """Add to the counts (and the error to its list) as work finishes."""
    await conn.execute(
        """UPDATE jobs SET done = done + $2, failed = failed + $3, updated_at = now(),
               errors = CASE WHEN $4::text IS NULL THEN errors
                             ELSE errors || jsonb_build_array($4::text) END
           WHERE id = $1""",
        job_id,
        done,
        failed,
        error,
    )


async def report(
    conn: Db,
    job_id: uuid.UUID,
    *,
    total: int,
    done: int,
    failed: int,
    errors: list[Any],
    state: str = RUNNING,
) -> None:
    """The whole progress at once (counts and errors replaced)."""
    await conn.execute(
        """UPDATE jobs SET state = $2, total = $3, done = $4, failed = $5,
                  errors = $6::text::jsonb, updated_at = now()
           WHERE id = $1""",
        job_id,
        state,
        total,
        done,
        failed,
        orjson.dumps(errors).decode(),
    )


async def finish(conn: Db, job_id: uuid.UUID, state: str, *, error: str | None = None) -> None:
    """`done` or `failed` (with `error` added to its errors)."""
    await conn.execute(
        """UPDATE jobs SET state = $2, updated_at = now(),
               errors = CASE WHEN $3::text IS NULL THEN errors
                             ELSE errors || jsonb_build_array($3::text) END
           WHERE id = $1""",
        job_id,
        state,
        error,
    )


# --- import uploads: the file an import job reads, in chunks ---------------------------------


async def create_upload(conn: Db, upload_id: uuid.UUID, filename: str | None) -> None:
    await conn.execute(
        "INSERT INTO import_uploads (id, filename) VALUES ($1, $2)", upload_id, filename
    )


async def add_chunk(conn: Db, upload_id: uuid.UUID, seq: int, data: bytes) -> None:
    await conn.execute(
        "INSERT INTO import_chunks (upload_id, seq, data) VALUES ($1, $2, $3)",
        upload_id,
        seq,
        data,
    )


async def queue_import(
    pool: asyncpg.Pool,
    upload_id: uuid.UUID,
    project_id: int,
    size_bytes: int,
    request_id: str | None,
) -> None:
    """The upload is complete: it becomes a queued import job (same id)."""
    async with pool.acquire() as conn, conn.transaction():
        await conn.execute(
            "UPDATE import_uploads SET project_id = $2, size_bytes = $3 WHERE id = $1",
            upload_id,
            project_id,
            size_bytes,
        )
        await create(conn, upload_id, IMPORT, project_id, request_id)


async def discard_upload(pool: asyncpg.Pool, upload_id: uuid.UUID) -> None:
    """Forget an upload that never became a job (or whose job could not be queued)."""
    async with pool.acquire() as conn, conn.transaction():
        await conn.execute("DELETE FROM jobs WHERE id = $1 AND kind = $2", upload_id, IMPORT)
        await conn.execute("DELETE FROM import_uploads WHERE id = $1", upload_id)


async def spool(conn: Conn, upload_id: uuid.UUID, out: IO[bytes]) -> int:
    """Write the upload to `out`, chunk by chunk (never all in memory); returns its size."""
    size = 0
    seqs = await conn.fetch(
        "SELECT seq FROM import_chunks WHERE upload_id = $1 ORDER BY seq", upload_id
    )
    for row in seqs:
        data: bytes = await conn.fetchval(
            "SELECT data FROM import_chunks WHERE upload_id = $1 AND seq = $2",
            upload_id,
            row["seq"],
        )
        out.write(data)
        size += len(data)
    out.flush()
    return size


async def delete_upload(conn: Db, upload_id: uuid.UUID) -> None:
    await conn.execute("DELETE FROM import_uploads WHERE id = $1", upload_id)
