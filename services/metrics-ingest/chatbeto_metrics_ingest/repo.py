"""SQL for storing metrics: batched with unnest arrays, idempotent with ON CONFLICT."""

from __future__ import annotations

import uuid
from collections.abc import Sequence

from chatbeto.db import Conn
from chatbeto.messages import EventRecord, SessionRecord


class SessionNotStored(Exception):
    """An event names a session no worker has committed yet: retry later."""


async def store(
    conn: Conn, sessions: Sequence[SessionRecord], events: Sequence[EventRecord]
) -> tuple[int, int]:
    """Store in the caller's transaction; returns (sessions inserted, events inserted)."""
    new_sessions = 0
    if sessions:
        status = await conn.execute(
            """INSERT INTO sessions (id, gpt_pk, usuario_id, timestamp_inicio, project_id,
                                     request_id)
               SELECT * FROM unnest($1::uuid[], $2::bigint[], $3::text[], $4::timestamptz[],
                                    $5::bigint[], $6::text[])
               ON CONFLICT (id) DO NOTHING""",
            [s.id for s in sessions],
            [s.gpt_pk for s in sessions],
            [s.usuario_id for s in sessions],
            [s.timestamp_inicio for s in sessions],
            [s.project_id for s in sessions],
            [s.request_id for s in sessions],
        )
        new_sessions = int(status.rsplit(" ", 1)[-1])
    if not events:
        return new_sessions, 0
    wanted = list({e.sesion_id for e in events})
    missing: list[uuid.UUID] = [
        r["id"]
        for r in await conn.fetch(
            """SELECT x.id FROM unnest($1::uuid[]) AS x(id)
               WHERE NOT EXISTS (SELECT 1 FROM sessions s WHERE s.id = x.id)""",
            wanted,
        )
    ]
    if missing:
        raise SessionNotStored(f"{len(missing)} session(s) not stored yet")
    status = await conn.execute(
        """INSERT INTO events (id, session_id, gpt_pk, usuario_id, project_id, tipo, contenido,
                               latency_ms, tokens_entrada, tokens_salida, ts, request_id)
           SELECT u.id, u.session_id, s.gpt_pk, s.usuario_id, s.project_id, u.tipo, u.contenido,
                  u.latency_ms, u.tokens_entrada, u.tokens_salida, u.ts, u.request_id
           FROM unnest($1::uuid[], $2::uuid[], $3::text[], $4::text[], $5::int[], $6::int[],
                       $7::int[], $8::timestamptz[], $9::text[])
                AS u(id, session_id, tipo, contenido, latency_ms, tokens_entrada,
                     tokens_salida, ts, request_id)
           JOIN sessions s ON s.id = u.session_id
           ON CONFLICT (id) DO NOTHING""",
        [e.id for e in events],
        [e.sesion_id for e in events],
        [e.tipo for e in events],
        [e.contenido for e in events],
        [e.latency_ms for e in events],
        [e.tokens_entrada for e in events],
        [e.tokens_salida for e in events],
        [e.timestamp for e in events],
        [e.request_id for e in events],
    )
    return new_sessions, int(status.rsplit(" ", 1)[-1])
