"""SQL for storing metrics: batched (unnest arrays for sessions, COPY for events), idempotent
with ON CONFLICT."""

from __future__ import annotations

import uuid
from collections.abc import Sequence
from dataclasses import dataclass

import asyncpg
from chatbeto.db import Conn
from chatbeto.messages import EventRecord, SessionRecord

# The users' tiers (hourly, daily, weekly): the same upsert of each, at its own grain.
USER_TIERS = (
    ("user_rollups_hourly", "hour"),
    ("user_rollups", "day"),
    ("user_rollups_weekly", "week"),
)

# Rollup upserts fed by the `ins` CTE (the rows inserted now), into the rows of the
# transaction's shard (`rollup_shard`: $7 of store_sessions, $1 of store_events), so concurrent
# transactions never wait for each other's rollup rows. Sorted by key all the same, so workers
# sharing a shard (more transactions than shards) take the row locks in the same order.
SESSION_ROLLUPS = """
    s_hourly AS (
        INSERT INTO session_rollups AS r (gpt_pk, project_key, hour, sessions, shard)
        SELECT gpt_pk, project_key, date_trunc('hour', timestamp_inicio, 'UTC'), count(*),
               $7::smallint
        FROM ins GROUP BY 1, 2, 3 ORDER BY 1, 3, 2
        ON CONFLICT (gpt_pk, hour, project_key, shard)
        DO UPDATE SET sessions = r.sessions + EXCLUDED.sessions),
""" + ",".join(
    f"""
    s_{table} AS (
        INSERT INTO {table} AS r (gpt_pk, project_key, {column}, usuario_id, sessions, events,
                                  last_seen, shard)
        SELECT gpt_pk, project_key, date_trunc('{column}', timestamp_inicio, 'UTC'), usuario_id,
               count(*), 0, max(timestamp_inicio), $7::smallint
        FROM ins GROUP BY 1, 2, 3, 4 ORDER BY 1, 3, 2, 4
        ON CONFLICT (gpt_pk, {column}, project_key, usuario_id, shard)
        DO UPDATE SET sessions = r.sessions + EXCLUDED.sessions,
                      last_seen = greatest(r.last_seen, EXCLUDED.last_seen))"""
    for table, column in USER_TIERS
)

# The UTC hour of each event, as date_trunc('hour', ts, 'UTC') says it, by arithmetic: binned
# from an origin at an hour before every storable time (chatbeto.storable: from 0001-01-01
# 00:00:01 UTC). date_trunc looks the zone up on every call: twice per event, 0.2 us each.
HOUR_OF_TS = "date_bin('1 hour', ts, timestamptz '0001-01-01 00:00:00+00')"

# The events' rollups: the inserted rows are aggregated once per hour (`e_agg`, `u_agg`, a
# handful of rows), and the daily (and the users' weekly) rollups are summed from those, not
# from the rows again. A cost is NULL where no row was priced (0015_rollup_costs.sql): sum()
# says so, and the upserts add a NULL as nothing (coalesce), staying NULL while both are.
EVENT_ROLLUPS = f"""
    e_agg AS (
        SELECT gpt_pk, project_key, {HOUR_OF_TS} AS hour, tipo,
               latency_bin(latency_ms) AS bin, count(*) AS events,
               sum(latency_ms) AS latency_sum, sum(tokens_entrada) AS tokens_entrada,
               sum(tokens_salida) AS tokens_salida, sum(cost_usd) AS cost_usd
        FROM ins GROUP BY 1, 2, 3, 4, 5),
    e_hourly AS (
        INSERT INTO event_rollups AS r (gpt_pk, project_key, hour, tipo, bin, events,
                                        latency_sum, tokens_entrada, tokens_salida, cost_usd,
                                        shard)
        SELECT gpt_pk, project_key, hour, tipo, bin, events, latency_sum, tokens_entrada,
               tokens_salida, cost_usd, $1::smallint
        FROM e_agg ORDER BY 1, 3, 2, 4, 5
        ON CONFLICT (gpt_pk, hour, project_key, tipo, bin, shard)
        DO UPDATE SET events = r.events + EXCLUDED.events,
                      latency_sum = r.latency_sum + EXCLUDED.latency_sum,
                      tokens_entrada = r.tokens_entrada + EXCLUDED.tokens_entrada,
                      tokens_salida = r.tokens_salida + EXCLUDED.tokens_salida,
                      cost_usd = coalesce(r.cost_usd + EXCLUDED.cost_usd, r.cost_usd,
                                          EXCLUDED.cost_usd)),
    e_daily AS (
        INSERT INTO event_rollups_daily AS r (gpt_pk, project_key, day, tipo, bin, events,
                                              latency_sum, tokens_entrada, tokens_salida,
                                              cost_usd, shard)
        SELECT gpt_pk, project_key, date_trunc('day', hour, 'UTC'), tipo, bin, sum(events),
               sum(latency_sum), sum(tokens_entrada), sum(tokens_salida), sum(cost_usd),
               $1::smallint
        FROM e_agg GROUP BY 1, 2, 3, 4, 5 ORDER BY 1, 3, 2, 4, 5
        ON CONFLICT (gpt_pk, day, project_key, tipo, bin, shard)
        DO UPDATE SET events = r.events + EXCLUDED.events,
                      latency_sum = r.latency_sum + EXCLUDED.latency_sum,
                      tokens_entrada = r.tokens_entrada + EXCLUDED.tokens_entrada,
                      tokens_salida = r.tokens_salida + EXCLUDED.tokens_salida,
                      cost_usd = coalesce(r.cost_usd + EXCLUDED.cost_usd, r.cost_usd,
                                          EXCLUDED.cost_usd)),
    u_agg AS (
        SELECT gpt_pk, project_key, {HOUR_OF_TS} AS hour, usuario_id,
               count(*) AS events, max(ts) AS last_seen
        FROM ins GROUP BY 1, 2, 3, 4),
""" + ",".join(
    f"""
    e_{table} AS (
        INSERT INTO {table} AS r (gpt_pk, project_key, {column}, usuario_id, sessions, events,
                                  last_seen, shard)
        SELECT gpt_pk, project_key, date_trunc('{column}', hour, 'UTC'), usuario_id, 0,
               sum(events), max(last_seen), $1::smallint
        FROM u_agg GROUP BY 1, 2, 3, 4 ORDER BY 1, 3, 2, 4
        ON CONFLICT (gpt_pk, {column}, project_key, usuario_id, shard)
        DO UPDATE SET events = r.events + EXCLUDED.events,
                      last_seen = greatest(r.last_seen, EXCLUDED.last_seen))"""
    for table, column in USER_TIERS
)


ROLLUP_SHARDS = 16
# Advisory lock space of the shards (the first key of pg_advisory_xact_lock(int, int)).
_SHARD_LOCK = 0x63620013


async def rollup_shard(conn: Conn) -> int:
    """A rollup shard no other transaction holds, held until this one ends (0 with a single
    writer); when all are taken, shard 0 shared (its upserts then wait their turn).

    Call it in the storing transaction, outside any savepoint.
    """
    shard: int | None = await conn.fetchval(
        """SELECT s FROM generate_series(0, $1 - 1) AS s
           WHERE pg_try_advisory_xact_lock($2, s) LIMIT 1""",
        ROLLUP_SHARDS,
        _SHARD_LOCK,
    )
    return shard or 0


async def store_sessions(conn: Conn, sessions: Sequence[SessionRecord], shard: int = 0) -> int:
    """Insert sessions not stored yet (and count them in `shard` of the rollups); returns how
    many."""
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
        shard,
    )
    return inserted


@dataclass(frozen=True)
class SessionInfo:
    """What an event takes from its session."""

    gpt_pk: int
    project_id: int | None
    usuario_id: str


async def sessions_of(conn: Conn, events: Sequence[EventRecord]) -> dict[uuid.UUID, SessionInfo]:
    """The stored sessions these events name (committed, or stored in this transaction); a
    session missing here is not stored yet."""
    if not events:
        return {}
    # The distinct ids collected by their ints: hashing a uuid.UUID is Python code (`__hash__`),
    # an int's is not (0.12 -> 0.07 us an event).
    rows = await conn.fetch(
        "SELECT id, gpt_pk, project_id, usuario_id FROM sessions WHERE id = ANY($1::uuid[])",
        list({e.sesion_id.int: e.sesion_id for e in events}.values()),
    )
    return {r["id"]: SessionInfo(r["gpt_pk"], r["project_id"], r["usuario_id"]) for r in rows}


# The events of one store_events call, on their way in (a temporary table: the session's own).
# ON COMMIT DELETE ROWS keeps it from growing: temporary tables are never autovacuumed. The
# worker's connections make it when they open (MetricsIngest.SESSION_SQL); for any other
# connection, every call runs the DDL (IF NOT EXISTS: a catalog look-up and a round trip).
_STAGE = "event_batch"
_STAGE_COLUMNS = (
    "id", "session_id", "gpt_pk", "usuario_id", "project_id", "tipo", "contenido", "latency_ms",
    "tokens_entrada", "tokens_salida", "ts", "request_id", "cost_usd",
)  # fmt: skip
_EVENT_COLUMNS = ", ".join(_STAGE_COLUMNS)
# `one_by_one` is never copied: a volatile default makes COPY insert row by row. Its multi-insert
# buffer builds a tuple slot per row, up to 1,000, in every COPY: about 1 ms of Postgres CPU a
# transaction, which a table without WAL never wins back (3,000 rows: 2.6 -> 1.9 ms).
STAGE_DDL = f"""CREATE TEMPORARY TABLE IF NOT EXISTS {_STAGE} (
    id uuid, session_id uuid, gpt_pk bigint, usuario_id text, project_id bigint, tipo text,
    contenido text, latency_ms integer, tokens_entrada integer, tokens_salida integer,
    ts timestamptz, request_id text, cost_usd numeric, one_by_one float8 DEFAULT random()
) ON COMMIT DELETE ROWS"""


# The staged rows, emptied by the statement that reads them: under store_isolating's savepoints
# a later call of the same transaction must not see this call's rows. Every reader scans the
# table itself (NOT MATERIALIZED: no copy of the rows in a CTE's tuplestore); the DELETE beside
# them does not hide the rows from them (one snapshot for the whole statement).
_STAGED = f"""WITH u AS NOT MATERIALIZED (SELECT {_EVENT_COLUMNS} FROM {_STAGE}),
           clear AS (DELETE FROM {_STAGE}),"""

# Every key new, the common case: plain inserts. ON CONFLICT's speculative insertion (check the
# key, insert, confirm: a third WAL record per key) and the join of the new keys back to their
# rows cost a third of the statement's Postgres CPU. A key stored before makes this fail with a
# unique violation (after waiting for the transaction that holds it, if any), and the caller
# stores the batch with _STORE_DEDUPED instead.
_STORE_NEW = f"""{_STAGED}
           k AS (INSERT INTO event_ids (gpt_pk, id, ts) SELECT gpt_pk, id, ts FROM u),
           e AS (INSERT INTO events ({_EVENT_COLUMNS}) SELECT * FROM u),
           ins AS NOT MATERIALIZED (
               SELECT gpt_pk, coalesce(project_id, 0) AS project_key, usuario_id, tipo,
                      latency_ms, tokens_entrada, tokens_salida, ts, cost_usd
               FROM u),
           {EVENT_ROLLUPS}
           SELECT"""

# Some keys may be stored: event ids are unique per GPT across every partition
# (0009_events_partitioned.sql), so only the keys new in `event_ids` are inserted into events.
_STORE_DEDUPED = f"""{_STAGED}
           k AS (
               INSERT INTO event_ids (gpt_pk, id, ts)
               SELECT gpt_pk, id, ts FROM u
               ON CONFLICT (gpt_pk, id) DO NOTHING
               RETURNING gpt_pk, id),
           ins AS (
               INSERT INTO events ({_EVENT_COLUMNS})
               SELECT u.* FROM u JOIN k USING (gpt_pk, id)  -- u is unique per key
               RETURNING id, gpt_pk, coalesce(project_id, 0) AS project_key, usuario_id, tipo,
                         latency_ms, tokens_entrada, tokens_salida, ts, cost_usd),
           {EVENT_ROLLUPS}
           -- The keys stored before: fewer rows back than the new ones.
           SELECT gpt_pk, id FROM u WHERE NOT EXISTS (
               SELECT FROM k WHERE k.gpt_pk = u.gpt_pk AND k.id = u.id)"""


async def store_events(
    conn: Conn,
    events: Sequence[EventRecord],
    sessions: dict[uuid.UUID, SessionInfo],
    shard: int = 0,
    *,
    staged: bool = False,
) -> list[EventRecord]:
    """Insert events not stored yet for their GPT (and count them in `shard` of the rollups).

    Every event's session must be in `sessions` (see `sessions_of`): the GPT, user and project
    come from it. `staged`: the connection made the staging table when it opened (STAGE_DDL).
    Returns the events inserted now (not those stored before). Runs under savepoints of its
    own: a data error it raises left the caller's transaction as it was.
    """
    # One row per (GPT, id): a batch may carry a retry beside its original. The COPY rows are
    # built in the same pass (one session look-up per event). UUIDs are keyed by their ints:
    # a uuid.UUID's hash is Python code, two per event (0.63 -> 0.47 us an event for the loop).
    # The session id copied is the session's key (from `sessions_of`: asyncpg's own UUID, which
    # its encoder copies as is; a uuid.UUID's bytes are Python code again).
    by_int = {k.int: (k, v) for k, v in sessions.items()}
    unique: dict[tuple[int, int], EventRecord] = {}
    records = []
    for e in events:
        session_id, s = by_int[e.sesion_id.int]
        seen = len(unique)
        unique.setdefault((s.gpt_pk, e.id.int), e)  # one hash of the key
        if len(unique) == seen:
            continue
        records.append(
            (e.id, session_id, s.gpt_pk, s.usuario_id, s.project_id, e.tipo, e.contenido,
             e.latency_ms, e.tokens_entrada, e.tokens_salida, e.timestamp, e.request_id,
             e.cost_usd)
        )  # fmt: skip
    if not unique:
        return []
    # The batch goes to the session's staging table by COPY (asyncpg's binary record encoder,
    # one pass), and one statement stores it from there: 13 unnest arrays cost the worker about
    # twice the CPU per event (asyncpg checks every array element's type), Postgres the same.
    if not staged:
        await conn.execute(STAGE_DDL)
    # Staged and stored under one savepoint (a data error leaves the caller's transaction as it
    # was); a key stored before undoes both, and the batch is staged again for the deduplicating
    # statement: a second COPY on a retry, two round trips fewer on every other transaction.
    try:
        async with conn.transaction():
            await _stage(conn, records)
            await conn.execute(_STORE_NEW, shard)
        return list(unique.values())
    except asyncpg.UniqueViolationError:
        pass  # a key stored before (a retry, a redelivery), or by a transaction just committed
    async with conn.transaction():
        await _stage(conn, records)
        rows = await conn.fetch(_STORE_DEDUPED, shard)
    for r in rows:
        del unique[(r["gpt_pk"], r["id"].int)]
    return list(unique.values())


async def _stage(conn: Conn, records: Sequence[tuple[object, ...]]) -> None:
    try:
        await conn.copy_records_to_table(_STAGE, records=records, columns=_STAGE_COLUMNS)
    except (OverflowError, ValueError, TypeError) as exc:
        # A value asyncpg cannot encode (an int past the column, a datetime past its range):
        # bound to a query it would be a DataError, so store_isolating sets the row aside; COPY
        # raises the encoder's own error (the COPY is aborted, and the savepoint with it).
        raise asyncpg.DataError(f"invalid value in the batch: {exc}") from exc
