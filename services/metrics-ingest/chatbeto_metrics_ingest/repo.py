"""SQL for storing metrics: batched with unnest arrays, idempotent with ON CONFLICT."""

from __future__ import annotations

import uuid
from collections.abc import Sequence

import asyncpg
from chatbeto.db import Conn
from chatbeto.messages import EventRecord, SessionRecord

# Rollup upserts fed by the `ins` CTE (the rows inserted now). Sorted by key, so concurrent
# workers take the row locks in the same order.
SESSION_ROLLUPS = """
    s_hourly AS (
        INSERT INTO session_rollups AS r (gpt_pk, project_key, hour, sessions)
        SELECT gpt_pk, project_key, date_trunc('hour', timestamp_inicio, 'UTC'), count(*)
        FROM ins GROUP BY 1, 2, 3 ORDER BY 1, 3, 2
        ON CONFLICT (gpt_pk, hour, project_key)
        DO UPDATE SET sessions = r.sessions + EXCLUDED.sessions),
    s_users AS (
        INSERT INTO user_rollups AS r (gpt_pk, project_key, day, usuario_id, sessions, events,
                                       last_seen)
        SELECT gpt_pk, project_key, date_trunc('day', timestamp_inicio, 'UTC'), usuario_id,
               count(*), 0, max(timestamp_inicio)
        FROM ins GROUP BY 1, 2, 3, 4 ORDER BY 1, 3, 2, 4
        ON CONFLICT (gpt_pk, day, project_key, usuario_id)
        DO UPDATE SET sessions = r.sessions + EXCLUDED.sessions,
                      last_seen = greatest(r.last_seen, EXCLUDED.last_seen)),
    s_users_hourly AS (
        INSERT INTO user_rollups_hourly AS r (gpt_pk, project_key, hour, usuario_id, sessions,
                                              events, last_seen)
        SELECT gpt_pk, project_key, date_trunc('hour', timestamp_inicio, 'UTC'), usuario_id,
               count(*), 0, max(timestamp_inicio)
        FROM ins GROUP BY 1, 2, 3, 4 ORDER BY 1, 3, 2, 4
        ON CONFLICT (gpt_pk, hour, project_key, usuario_id)
        DO UPDATE SET sessions = r.sessions + EXCLUDED.sessions,
                      last_seen = greatest(r.last_seen, EXCLUDED.last_seen))"""

EVENT_ROLLUPS = """
    e_hourly AS (
        INSERT INTO event_rollups AS r (gpt_pk, project_key, hour, tipo, bin, events,
                                        latency_sum, tokens_entrada, tokens_salida)
        SELECT gpt_pk, project_key, date_trunc('hour', ts, 'UTC'), tipo,
               latency_bin(latency_ms), count(*), sum(latency_ms), sum(tokens_entrada),
               sum(tokens_salida)
        FROM ins GROUP BY 1, 2, 3, 4, 5 ORDER BY 1, 3, 2, 4, 5
        ON CONFLICT (gpt_pk, hour, project_key, tipo, bin)
        DO UPDATE SET events = r.events + EXCLUDED.events,
                      latency_sum = r.latency_sum + EXCLUDED.latency_sum,
                      tokens_entrada = r.tokens_entrada + EXCLUDED.tokens_entrada,
                      tokens_salida = r.tokens_salida + EXCLUDED.tokens_salida),
    e_daily AS (
        INSERT INTO event_rollups_daily AS r (gpt_pk, project_key, day, tipo, bin, events,
                                              latency_sum, tokens_entrada, tokens_salida)
        SELECT gpt_pk, project_key, date_trunc('day', ts, 'UTC'), tipo,
               latency_bin(latency_ms), count(*), sum(latency_ms), sum(tokens_entrada),
               sum(tokens_salida)
        FROM ins GROUP BY 1, 2, 3, 4, 5 ORDER BY 1, 3, 2, 4, 5
        ON CONFLICT (gpt_pk, day, project_key, tipo, bin)
        DO UPDATE SET events = r.events + EXCLUDED.events,
                      latency_sum = r.latency_sum + EXCLUDED.latency_sum,
                      tokens_entrada = r.tokens_entrada + EXCLUDED.tokens_entrada,
                      tokens_salida = r.tokens_salida + EXCLUDED.tokens_salida),
    e_users_hourly AS (
        INSERT INTO user_rollups_hourly AS r (gpt_pk, project_key, hour, usuario_id, sessions,
                                              events, last_seen)
        SELECT gpt_pk, project_key, date_trunc('hour', ts, 'UTC'), usuario_id, 0, count(*),
               max(ts)
        FROM ins GROUP BY 1, 2, 3, 4 ORDER BY 1, 3, 2, 4
        ON CONFLICT (gpt_pk, hour, project_key, usuario_id)
        DO UPDATE SET events = r.events + EXCLUDED.events,
                      last_seen = greatest(r.last_seen, EXCLUDED.last_seen)),
    e_users AS (
        INSERT INTO user_rollups AS r (gpt_pk, project_key, day, usuario_id, sessions, events,
                                       last_seen)
        SELECT gpt_pk, project_key, date_trunc('day', ts, 'UTC'), usuario_id, 0, count(*),
               max(ts)
        FROM ins GROUP BY 1, 2, 3, 4 ORDER BY 1, 3, 2, 4
        ON CONFLICT (gpt_pk, day, project_key, usuario_id)
        DO UPDATE SET events = r.events + EXCLUDED.events,
                      last_seen = greatest(r.last_seen, EXCLUDED.last_seen))"""


async def store_sessions(conn: Conn, sessions: Sequence[SessionRecord]) -> int:
    """Insert sessions not stored yet (and count them in the rollups); returns how many."""
    if not sessions:
        return 0
    inserted: int = await conn.fetchval(
        f"""WITH ins AS (
               INSERT INTO sessions (id, gpt_pk, usuario_id, timestamp_inicio, project_id,
                                     request_id)
               SELECT * FROM unnest($1::uuid[], $2::bigint[], $3::text[],
                                    $4::timestamptz[], $5::bigint[], $6::text[])
               ON CONFLICT (id) DO NOTHING
               RETURNING gpt_pk, coalesce(project_id, 0) AS project_key, usuario_id,
                         timestamp_inicio),
           {SESSION_ROLLUPS}
           SELECT count(*) FROM ins""",
        [s.id for s in sessions],
        [s.gpt_pk for s in sessions],
        [s.usuario_id for s in sessions],
        [s.timestamp_inicio for s in sessions],
        [s.project_id for s in sessions],
        [s.request_id for s in sessions],
    )
    return inserted


async def missing_sessions(conn: Conn, events: Sequence[EventRecord]) -> set[uuid.UUID]:
    """The sessions these events name that no committed transaction (nor this one) stored."""
    if not events:
        return set()
    rows = await conn.fetch(
        """SELECT x.id FROM unnest($1::uuid[]) AS x(id)
           WHERE NOT EXISTS (SELECT 1 FROM sessions s WHERE s.id = x.id)""",
        list({e.sesion_id for e in events}),
    )
    return {r["id"] for r in rows}


async def store_events(conn: Conn, events: Sequence[EventRecord]) -> list[asyncpg.Record]:
    """Insert events not stored yet for their GPT (and count them in the rollups).

    Every event's session must be stored (see `missing_sessions`): the GPT, user and project
    come from it. Returns the inserted rows, for the live feed.
    """
    if not events:
        return []
    return list(
        await conn.fetch(
            f"""WITH u AS (
               -- One row per (GPT, id): a batch may carry a retry beside its original.
               SELECT DISTINCT ON (s.gpt_pk, u.id)
                      u.id, u.session_id, s.gpt_pk, s.usuario_id, s.project_id, u.tipo,
                      u.contenido, u.latency_ms, u.tokens_entrada, u.tokens_salida, u.ts,
                      u.request_id, u.cost_usd
               FROM unnest($1::uuid[], $2::uuid[], $3::text[], $4::text[], $5::int[], $6::int[],
                           $7::int[], $8::timestamptz[], $9::text[], $10::numeric[])
                    AS u(id, session_id, tipo, contenido, latency_ms, tokens_entrada,
                         tokens_salida, ts, request_id, cost_usd)
               JOIN sessions s ON s.id = u.session_id
               ORDER BY s.gpt_pk, u.id),
           -- Event ids are unique per GPT across every partition (0009_events_partitioned.sql):
           -- only the keys new here are inserted into events.
           k AS (
               INSERT INTO event_ids (gpt_pk, id, ts)
               SELECT gpt_pk, id, ts FROM u
               ON CONFLICT (gpt_pk, id) DO NOTHING
               RETURNING gpt_pk, id),
           ins AS (
               INSERT INTO events (id, session_id, gpt_pk, usuario_id, project_id, tipo,
                                   contenido, latency_ms, tokens_entrada, tokens_salida, ts,
                                   request_id, cost_usd)
               SELECT u.id, u.session_id, u.gpt_pk, u.usuario_id, u.project_id, u.tipo,
                      u.contenido, u.latency_ms, u.tokens_entrada, u.tokens_salida, u.ts,
                      u.request_id, u.cost_usd
               FROM u JOIN k ON k.gpt_pk = u.gpt_pk AND k.id = u.id
               RETURNING id, session_id, gpt_pk, project_id, coalesce(project_id, 0) AS project_key,
                         usuario_id, tipo, latency_ms, tokens_entrada, tokens_salida, ts),
           {EVENT_ROLLUPS}
           SELECT id, session_id, gpt_pk, project_id, usuario_id, tipo, latency_ms,
                  tokens_entrada, tokens_salida, ts
           FROM ins""",
            [e.id for e in events],
            [e.sesion_id for e in events],
            [e.tipo for e in events],
            [e.contenido for e in events],
            [e.latency_ms for e in events],
            [e.tokens_entrada for e in events],
            [e.tokens_salida for e in events],
            [e.timestamp for e in events],
            [e.request_id for e in events],
            [e.cost_usd for e in events],
        )
    )
