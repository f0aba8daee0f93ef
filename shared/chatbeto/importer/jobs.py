"""SQL for import jobs and their uploads, shared by the gateway (upload) and the worker (run)."""

from __future__ import annotations

import uuid
from typing import IO, Any, TypeAlias

import asyncpg
import orjson

from chatbeto.db import Conn

KIND = "import"
# One-statement functions take a pool as well as a connection.
Db: TypeAlias = "Conn | asyncpg.Pool"


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


async def queue_job(
    pool: asyncpg.Pool,
    upload_id: uuid.UUID,
    project_id: int,
    size_bytes: int,
    request_id: str | None,
) -> None:
    """The upload is complete: it becomes a queued job (same id)."""
    async with pool.acquire() as conn, conn.transaction():
        await conn.execute(
            "UPDATE import_uploads SET project_id = $2, size_bytes = $3 WHERE id = $1",
            upload_id,
            project_id,
            size_bytes,
        )
        await conn.execute(
            """INSERT INTO jobs (id, kind, project_id, state, request_id)
               VALUES ($1, $2, $3, 'queued', $4)""",
            upload_id,
            KIND,
            project_id,
            request_id,
        )


async def discard(pool: asyncpg.Pool, upload_id: uuid.UUID) -> None:
    """Forget an upload that never became a job (or whose job could not be queued)."""
    async with pool.acquire() as conn, conn.transaction():
        await conn.execute("DELETE FROM jobs WHERE id = $1 AND kind = $2", upload_id, KIND)
        await conn.execute("DELETE FROM import_uploads WHERE id = $1", upload_id)


async def get_job(conn: Db, job_id: uuid.UUID) -> Any:
    return await conn.fetchrow(
        """SELECT id, project_id, state, total, done, failed, errors::text AS errors,
                  created_at, updated_at
           FROM jobs WHERE id = $1 AND kind = $2""",
        job_id,
        KIND,
    )


async def start(conn: Db, job_id: uuid.UUID) -> bool:
    """Mark the job running (counters reset: a redelivered job starts over, idempotently).

    False when there is nothing to do: no such job, or it already finished.
    """
    state = await conn.fetchval(
        """UPDATE jobs SET state = 'running', total = 0, done = 0, failed = 0,
                  errors = '[]'::jsonb, updated_at = now()
           WHERE id = $1 AND kind = $2 AND state IN ('queued', 'running')
           RETURNING state""",
        job_id,
        KIND,
    )
    return state is not None


async def progress(
    conn: Db,
    job_id: uuid.UUID,
    *,
    total: int,
    done: int,
    failed: int,
    errors: list[dict[str, str]],
    state: str = "running",
) -> None:
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
