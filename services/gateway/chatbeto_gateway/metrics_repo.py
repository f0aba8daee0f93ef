"""SQL the gateway runs for the metrics API: GPT registration and the read side."""

from __future__ import annotations

import uuid
from datetime import datetime
from typing import Any, Literal

import asyncpg

from chatbeto_gateway.gpt_cache import COLUMNS, Gpt

Bucket = Literal["day", "week", "month"]


class GptExists(Exception):
    pass


async def project_exists(pool: asyncpg.Pool, project_id: int) -> bool:
    return bool(await pool.fetchval("SELECT 1 FROM projects WHERE id = $1", project_id))


async def create_gpt(
    pool: asyncpg.Pool, gpt_id: str, name: str, project_id: int | None, keyless: bool
) -> Gpt:
    try:
        row = await pool.fetchrow(
            f"""INSERT INTO gpts (gpt_id, name, project_id, keyless_ingest)
                VALUES ($1, $2, $3, $4) RETURNING {COLUMNS}""",
            gpt_id,
            name,
            project_id,
            keyless,
        )
    except asyncpg.UniqueViolationError as exc:
        raise GptExists(gpt_id) from exc
    assert row is not None
    return Gpt(**dict(row))


async def list_gpts(pool: asyncpg.Pool, project_id: int | None) -> list[asyncpg.Record]:
    """All GPTs for an admin (project_id None); else the project's and the built-in one."""
    return list(
        await pool.fetch(
            f"""SELECT {COLUMNS}, created_at FROM gpts
            WHERE $1::bigint IS NULL OR project_id = $1 OR builtin ORDER BY pk""",
            project_id,
        )
    )


async def get_session(
    pool: asyncpg.Pool, session_id: uuid.UUID
) -> tuple[asyncpg.Record | None, list[asyncpg.Record]]:
    session = await pool.fetchrow(
        """SELECT s.id, s.usuario_id, s.timestamp_inicio, s.project_id AS session_project,
                  g.gpt_id, g.project_id AS gpt_project, g.builtin
           FROM sessions s JOIN gpts g ON g.pk = s.gpt_pk WHERE s.id = $1""",
        session_id,
    )
    if session is None:
        return None, []
    events = await pool.fetch(
        """SELECT id, tipo, contenido, latency_ms, tokens_entrada, tokens_salida, ts
           FROM events WHERE session_id = $1 ORDER BY ts, stored_at, id""",
        session_id,
    )
    return session, list(events)


async def stats(
    pool: asyncpg.Pool,
    gpt_pk: int,
    start: datetime,
    end: datetime,
    bucket: Bucket,
    project_id: int | None,
) -> dict[str, Any]:
    """Stats for one GPT over [start, end). `project_id` narrows the built-in GPT's rows."""
    args = (gpt_pk, start, end, project_id)
    async with pool.acquire() as conn:
        sessions = await conn.fetch(
            f"""SELECT date_trunc('{bucket}', timestamp_inicio, 'UTC') AS bucket, count(*) AS n
                FROM sessions
                WHERE gpt_pk = $1 AND timestamp_inicio >= $2 AND timestamp_inicio < $3
                  AND ($4::bigint IS NULL OR project_id = $4)
                GROUP BY 1 ORDER BY 1""",
            *args,
        )
        types = await conn.fetch(
            """SELECT tipo, count(*) AS n FROM events
               WHERE gpt_pk = $1 AND ts >= $2 AND ts < $3
                 AND ($4::bigint IS NULL OR project_id = $4)
               GROUP BY tipo ORDER BY n DESC, tipo LIMIT 50""",
            *args,
        )
        agg = await conn.fetchrow(
            """SELECT avg(latency_ms)::float8 AS avg,
                      percentile_cont(0.5) WITHIN GROUP (ORDER BY latency_ms) AS p50,
                      percentile_cont(0.95) WITHIN GROUP (ORDER BY latency_ms) AS p95,
                      coalesce(sum(tokens_entrada), 0)::bigint AS entrada,
                      coalesce(sum(tokens_salida), 0)::bigint AS salida
               FROM events
               WHERE gpt_pk = $1 AND ts >= $2 AND ts < $3
                 AND ($4::bigint IS NULL OR project_id = $4)""",
            *args,
        )
        users = await conn.fetch(
            """WITH s AS (
                   SELECT usuario_id, count(*) AS sessions, max(timestamp_inicio) AS last_session
                   FROM sessions
                   WHERE gpt_pk = $1 AND timestamp_inicio >= $2 AND timestamp_inicio < $3
                     AND ($4::bigint IS NULL OR project_id = $4)
                   GROUP BY usuario_id),
               e AS (
                   SELECT usuario_id, count(*) AS events, max(ts) AS last_event
                   FROM events
                   WHERE gpt_pk = $1 AND ts >= $2 AND ts < $3
                     AND ($4::bigint IS NULL OR project_id = $4)
                   GROUP BY usuario_id)
               SELECT coalesce(s.usuario_id, e.usuario_id) AS usuario_id,
                      coalesce(s.sessions, 0) AS sessions, coalesce(e.events, 0) AS events,
                      greatest(s.last_session, e.last_event) AS last_seen
               FROM s FULL JOIN e ON e.usuario_id = s.usuario_id
               ORDER BY events DESC, sessions DESC, usuario_id LIMIT 500""",
            *args,
        )
    assert agg is not None
    return {
        "sessions": [{"bucket": r["bucket"].isoformat(), "count": r["n"]} for r in sessions],
        "eventTypes": [{"tipo": r["tipo"], "count": r["n"]} for r in types],
        "latency": {"avg": agg["avg"], "p50": agg["p50"], "p95": agg["p95"]},
        "tokens": {"entrada": agg["entrada"], "salida": agg["salida"]},
        "users": [
            {
                "usuario_id": r["usuario_id"],
                "sessions": r["sessions"],
                "events": r["events"],
                "lastSeen": r["last_seen"].isoformat() if r["last_seen"] else None,
            }
            for r in users
        ],
    }
