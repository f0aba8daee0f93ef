"""SQL the gateway runs for the metrics API's lists and sessions (GPTs are registered by the
store; the stats engine is metrics/stats.py)."""

from __future__ import annotations

import uuid

import asyncpg

from chatbeto_gateway.metrics.gpt_cache import COLUMNS


async def list_gpts(pool: asyncpg.Pool, project_id: int | None) -> list[asyncpg.Record]:
    """All GPTs for an admin (project_id None); else the project's and the built-in one.

    `last_event_at`: the newest event the reader may see (the dashboard opens on the most
    recently active GPT). One index probe per GPT; for the built-in GPT read by a project key,
    the hourly rollup says which hour to look in, so other projects' events are never scanned.
    """
    return list(
        await pool.fetch(
            f"""SELECT {COLUMNS}, created_at,
                   CASE WHEN builtin AND $1::bigint IS NOT NULL THEN
                       (SELECT max(e.ts) FROM events e
                        WHERE e.gpt_pk = g.pk AND e.project_id = $1
                          AND e.ts >= (SELECT max(r.hour) FROM event_rollups r
                                       WHERE r.gpt_pk = g.pk AND r.project_key = $1))
                   ELSE (SELECT max(e.ts) FROM events e WHERE e.gpt_pk = g.pk)
                   END AS last_event_at
            FROM gpts g
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
