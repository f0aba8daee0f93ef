"""Dashboard read benchmark: the stats a dashboard asks for, over 100 million events.

Events are generated in a scratch database of the bench's own (never the shared one), server-side:
one INSERT ... SELECT generate_series statement per UTC day (quick: 200 thousand events in all),
90 days, 20 GPTs, straight into the daily partitions metrics-ingest would have made
(0009_events_partitioned.sql). The same statement writes the day's sessions, the event-id keys
(`event_ids`) and every rollup row of the day, aggregated from the rows it just inserted (its
RETURNING), so the rollups hold exactly what the raw rows say, as metrics-ingest keeps them; the
users' weekly tier is summed from the daily one after the last day.
Two connections load days side by side; the loaded tables are UNLOGGED (a scratch database: no
WAL for data that is dropped afterwards; reads are the same) and without secondary indexes, which
are built after the load: each partition's right after its day (a bulk sort of a day that is still
in memory), the sessions' and `event_ids`' keys at the end. Then a real gateway process
(`chatbeto run gateway`) answers `GET /api/gpts/{id}/stats` for one month of one GPT, per bucket
(day, week, month), p50 / p95. Also shown: the same month read from the raw events (what the
rollups avoid), what the data takes on disk and how long each phase of the load took. The
database is dropped afterwards.

`DASHBOARD_EVENTS=N` sets another size (the figure at the largest size a machine can hold).
"""

from __future__ import annotations

import asyncio
import os
import shutil
import statistics
import time
from dataclasses import dataclass, field
from datetime import UTC, date, datetime, timedelta

import aiohttp
import asyncpg
from chatbeto import api_keys

from bench.common import Row, Scratch, free_port, scratch, wait_http

SECTION = "dashboard"
TARGET_MS = 300
SAMPLES = 40
USERS = 5_000
EVENTS_PER_SESSION = 10
# A session's events are 20 s apart; sessions start early enough in their day for all of them to
# fall on it, so a day's statement fills exactly one partition.
EVENT_STEP_SECONDS = 20
DAYS = 90
GPTS = 20
FULL_EVENTS = 100_000_000
QUICK_EVENTS = 200_000
LOADERS = 2
# On-disk bytes per event, measured (events with their two indexes, event_ids with its key, the
# sessions and rollups): the free-disk check before generating.
BYTES_PER_EVENT = 400
ROLLUPS = ("event_rollups", "event_rollups_daily", "session_rollups", "user_rollups",
           "user_rollups_hourly", "user_rollups_weekly")  # fmt: skip

# The users' weekly tier (0014_user_rollups_weekly.sql), summed from the daily one once every day
# is loaded (the days of a week are loaded side by side: upserting the week's rows from each
# day's statement would make the loaders wait for each other). The same rows metrics-ingest
# keeps; inserted in an order that spreads a GPT's rows of a week over the week's pages, as
# metrics-ingest's interleaved upserts leave them, not packed together.
WEEKLY_SQL = """
INSERT INTO user_rollups_weekly (gpt_pk, project_key, week, usuario_id, sessions, events,
                                 last_seen, shard)
SELECT gpt_pk, project_key, date_trunc('week', day, 'UTC') AS week, usuario_id, sum(sessions),
       sum(events), max(last_seen), shard
FROM user_rollups
GROUP BY gpt_pk, project_key, week, usuario_id, shard
ORDER BY week, hashtext(usuario_id), gpt_pk
"""

# One day: sessions, their events, the event-id keys and the day's rollup rows, aggregated from
# what was inserted. $1 GPT pks, $2 the day's start, $3 first session number, $4 sessions.
DAY_SQL = """
WITH s AS (
    INSERT INTO sessions (id, gpt_pk, usuario_id, timestamp_inicio)
    SELECT md5('s' || i)::uuid, ($1::bigint[])[1 + i % {gpts}],
           'user-' || (hashint8(i) & 2147483647) % {users},
           $2::timestamptz + make_interval(secs => (i - $3) * {span}::float8 / $4)
    FROM generate_series($3::bigint, $3::bigint + $4 - 1) AS i
    RETURNING id, gpt_pk, usuario_id, timestamp_inicio
), e AS (
    INSERT INTO {part} (id, session_id, gpt_pk, usuario_id, tipo, contenido, latency_ms,
                        tokens_entrada, tokens_salida, ts, cost_usd)
    SELECT gen_random_uuid(), s.id, s.gpt_pk, s.usuario_id, tipo,
           '', 20 + (h % 1500) + (h % 7) * (h % 300), h % 400, (h / 7) % 900,
           s.timestamp_inicio + make_interval(secs => k * {step}),
           -- The model calls ('query', a fifth of the events) priced as a model's would be
           -- (USD 2.5 / 10 per 1M input / output tokens), the others unpriced (NULL).
           CASE WHEN tipo = 'query' THEN ((h % 400) * 2.5 + ((h / 7) % 900) * 10) / 1e6 END
    FROM s, generate_series(0, {per_session} - 1) AS k,
         LATERAL (SELECT hashint8(uuid_hash(s.id)::bigint * 16 + k) & 65535 AS h) AS x,
         LATERAL (SELECT (ARRAY['query', 'feedback', 'click', 'view', 'error'])[1 + (k * 7 + h) % 5]
                         AS tipo) AS t
    RETURNING id, gpt_pk, usuario_id, tipo, latency_ms, tokens_entrada, tokens_salida, ts,
              cost_usd
), ids AS (
    INSERT INTO event_ids (gpt_pk, id, ts) SELECT gpt_pk, id, ts FROM e
), er AS (
    SELECT gpt_pk, date_trunc('hour', ts, 'UTC') AS hour, tipo, latency_bin(latency_ms) AS bin,
           count(*) AS n, sum(latency_ms) AS lat, sum(tokens_entrada) AS tin,
           sum(tokens_salida) AS tout, sum(cost_usd) AS usd
    FROM e GROUP BY 1, 2, 3, 4
), er_hourly AS (
    INSERT INTO event_rollups (gpt_pk, project_key, hour, tipo, bin, events, latency_sum,
                               tokens_entrada, tokens_salida, cost_usd)
    SELECT gpt_pk, 0, hour, tipo, bin, n, lat, tin, tout, usd FROM er
), er_daily AS (
    INSERT INTO event_rollups_daily (gpt_pk, project_key, day, tipo, bin, events, latency_sum,
                                     tokens_entrada, tokens_salida, cost_usd)
    SELECT gpt_pk, 0, date_trunc('day', hour, 'UTC'), tipo, bin, sum(n), sum(lat), sum(tin),
           sum(tout), sum(usd)
    FROM er GROUP BY 1, 3, 4, 5
), sr AS (
    INSERT INTO session_rollups
    SELECT gpt_pk, 0, date_trunc('hour', timestamp_inicio, 'UTC'), count(*) FROM s GROUP BY 1, 3
), uh AS (
    -- Per user and hour, from the sessions: a session's events, EVENT_STEP_SECONDS apart, fall
    -- in its start hour and at most the next (the run checks the totals against the raw rows).
    SELECT gpt_pk, hour, usuario_id, sum(sessions) AS sessions, sum(events) AS events,
           max(last_seen) AS last_seen
    FROM s,
         LATERAL (SELECT date_trunc('hour', timestamp_inicio, 'UTC') AS h0) AS h,
         LATERAL (SELECT least({per_session}, ceil(extract(epoch FROM h0 + interval '1 hour'
                                                           - timestamp_inicio) / {step}))::int
                         AS n0) AS n,
         LATERAL (VALUES
             (h0, 1, n0, timestamp_inicio + make_interval(secs => (n0 - 1) * {step})),
             (h0 + interval '1 hour', 0, {per_session} - n0,
              timestamp_inicio + make_interval(secs => ({per_session} - 1) * {step}))
         ) AS p (hour, sessions, events, last_seen)
    WHERE p.sessions = 1 OR p.events > 0
    GROUP BY 1, 2, 3
), uh_hourly AS (
    INSERT INTO user_rollups_hourly
    SELECT gpt_pk, 0, hour, usuario_id, sessions, events, last_seen FROM uh
), uh_daily AS (
    INSERT INTO user_rollups
    SELECT gpt_pk, 0, date_trunc('day', hour, 'UTC'), usuario_id, sum(sessions), sum(events),
           max(last_seen)
    FROM uh GROUP BY 1, 3, 4
)
SELECT count(*) FROM e
"""


@dataclass
class Load:
    """How long each phase of the generation took, in seconds."""

    days: float = 0.0
    keys: float = 0.0
    analyze: float = 0.0
    day_seconds: list[float] = field(default_factory=list)
    # CPU seconds of the Postgres backends that did the work (None: not on this host). On a busy
    # machine this, not the wall time, says what a quiet one would take.
    cpu: float | None = 0.0

    async def charge(self, conn: asyncpg.Connection) -> None:
        """Add the CPU time a connection's backend has used so far (call before closing it)."""
        try:
            with open(f"/proc/{conn.get_server_pid()}/stat") as fh:
                fields = fh.read().rsplit(")", 1)[1].split()
        except OSError:
            self.cpu = None
            return
        if self.cpu is not None:
            # utime and stime, in clock ticks (fields 14 and 15 of proc(5)).
            self.cpu += (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")

    @property
    def total(self) -> float:
        return self.days + self.keys + self.analyze


def partition(day: date) -> str:
    return f"events_p{day:%Y%m%d}"


async def _session(dsn: str) -> asyncpg.Connection:
    conn = await asyncpg.connect(dsn, command_timeout=None)
    # Big sorts and hash aggregates (index builds, the day's rollups) in memory.
    await conn.execute("SET maintenance_work_mem = '1GB'")
    await conn.execute("SET work_mem = '256MB'")
    # Index builds in the backend itself, whose CPU time `Load.charge` reads; the load runs on
    # LOADERS connections already.
    await conn.execute("SET max_parallel_maintenance_workers = 0")
    return conn


async def _prepare(conn: asyncpg.Connection, days: list[date]) -> list[int]:
    """GPTs, the day partitions, and the loaded tables unlogged, without secondary indexes,
    foreign keys or autovacuum (all put back or built after the load)."""
    project = await conn.fetchval("INSERT INTO projects (name) VALUES ('bench') RETURNING id")
    pks = [
        await conn.fetchval(
            "INSERT INTO gpts (gpt_id, name, project_id) VALUES ($1, $1, $2) RETURNING pk",
            f"bench-{n:02d}",
            project,
        )
        for n in range(GPTS)
    ]
    await conn.execute(
        """DROP INDEX events_session, events_gpt_time, sessions_gpt_time, event_ids_ts;
           ALTER TABLE sessions DROP CONSTRAINT sessions_pkey,
                                DROP CONSTRAINT sessions_gpt_pk_fkey,
                                DROP CONSTRAINT sessions_project_id_fkey;
           ALTER TABLE event_ids DROP CONSTRAINT event_ids_pkey"""
    )
    for table in ("sessions", "event_ids", *ROLLUPS):
        await conn.execute(f"ALTER TABLE {table} SET UNLOGGED, SET (autovacuum_enabled = false)")
    for day in days:
        await conn.execute("SELECT events_partition_for($1)", day)
        await conn.execute(
            f"ALTER TABLE {partition(day)} SET UNLOGGED, SET (autovacuum_enabled = false)"
        )
    return pks


async def _load_days(dsn: str, pks: list[int], days: list[date], sessions: int, load: Load) -> None:
    """LOADERS connections take days off one queue: the day's statement, then the partition's
    two indexes."""
    queue: asyncio.Queue[int] = asyncio.Queue()
    for n in range(len(days)):
        queue.put_nowait(n)

    async def loader() -> None:
        conn = await _session(dsn)
        try:
            while not queue.empty():
                n = queue.get_nowait()
                day, part = days[n], partition(days[n])
                first = sessions * n // len(days)
                count = sessions * (n + 1) // len(days) - first
                started = time.perf_counter()
                sql = DAY_SQL.format(
                    part=part,
                    gpts=GPTS,
                    users=USERS,
                    per_session=EVENTS_PER_SESSION,
                    step=EVENT_STEP_SECONDS,
                    span=86_400 - EVENTS_PER_SESSION * EVENT_STEP_SECONDS,
                )
                midnight = datetime(day.year, day.month, day.day, tzinfo=UTC)
                await conn.fetchval(sql, pks, midnight, first, count)
                # The names the parent's CREATE INDEX finds and attaches after the load.
                await conn.execute(f"CREATE INDEX ON {part} (session_id, ts)")
                await conn.execute(
                    f"""CREATE INDEX ON {part} (gpt_pk, ts)
                        INCLUDE (latency_ms, tokens_entrada, tokens_salida)"""
                )
                load.day_seconds.append(time.perf_counter() - started)
            await load.charge(conn)
        finally:
            await conn.close()

    await asyncio.gather(*(loader() for _ in range(LOADERS)))


async def _build_keys(dsn: str, load: Load) -> None:
    """What the load left out, on two connections: the event-id keys (the largest build) on one,
    the users' weekly tier and everything else on the other."""

    async def event_ids() -> None:
        conn = await _session(dsn)
        try:
            await conn.execute("ALTER TABLE event_ids ADD PRIMARY KEY (gpt_pk, id)")
            await conn.execute("CREATE INDEX event_ids_ts ON event_ids USING brin (ts)")
            await load.charge(conn)
        finally:
            await conn.close()

    async def the_rest() -> None:
        conn = await _session(dsn)
        try:
            await conn.execute(WEEKLY_SQL)
            # Every partition has its indexes already: these attach them (and index the empty
            # default partition).
            await conn.execute("CREATE INDEX events_session ON events (session_id, ts)")
            await conn.execute(
                """CREATE INDEX events_gpt_time ON events (gpt_pk, ts)
                   INCLUDE (latency_ms, tokens_entrada, tokens_salida)"""
            )
            await conn.execute("ALTER TABLE sessions ADD PRIMARY KEY (id)")
            await conn.execute(
                "CREATE INDEX sessions_gpt_time ON sessions (gpt_pk, timestamp_inicio)"
            )
            await conn.execute(
                """ALTER TABLE sessions
                   ADD CONSTRAINT sessions_gpt_pk_fkey
                       FOREIGN KEY (gpt_pk) REFERENCES gpts (pk) ON DELETE CASCADE,
                   ADD CONSTRAINT sessions_project_id_fkey
                       FOREIGN KEY (project_id) REFERENCES projects (id) ON DELETE CASCADE"""
            )
            await load.charge(conn)
        finally:
            await conn.close()

    await asyncio.gather(event_ids(), the_rest())


async def generate(dsn: str, events: int) -> tuple[int, Load]:
    """Sessions, events, event-id keys and rollups over the DAYS UTC days up to today in GPTS
    GPTs; returns (measured GPT pk, how long it took)."""
    load = Load()
    today = datetime.now(UTC).date()
    days = [today - timedelta(days=DAYS - 1 - n) for n in range(DAYS)]
    conn = await _session(dsn)
    try:
        pks = await _prepare(conn, days)
        started = time.perf_counter()
        await _load_days(dsn, pks, days, events // EVENTS_PER_SESSION, load)
        load.days = time.perf_counter() - started
        started = time.perf_counter()
        await _build_keys(dsn, load)
        load.keys = time.perf_counter() - started
        started = time.perf_counter()
        # The rollups are what the stats read: vacuumed (index-only scans); the rest analyzed.
        await conn.execute(f"VACUUM ANALYZE {', '.join(ROLLUPS)}")
        # A small sample per partition: the raw rows are only read for the partial hours at the
        # ends of a period, by index.
        await conn.execute("SET default_statistics_target = 10")
        await conn.execute("ANALYZE sessions, events, event_ids")
        load.analyze = time.perf_counter() - started
        await load.charge(conn)
    finally:
        await conn.close()
    return pks[0], load


async def sizes(conn: asyncpg.Connection) -> dict[str, int]:
    """Bytes on disk: the events (every partition, with indexes), their keys, the sessions, the
    rollups, the whole database."""
    return {
        "events": await conn.fetchval(
            "SELECT sum(pg_total_relation_size(relid)) FROM pg_partition_tree('events')"
        ),
        "event_ids": await conn.fetchval("SELECT pg_total_relation_size('event_ids')"),
        "sessions": await conn.fetchval("SELECT pg_total_relation_size('sessions')"),
        "rollups": await conn.fetchval(
            "SELECT sum(pg_total_relation_size(c)) FROM unnest($1::regclass[]) AS c", ROLLUPS
        ),
        "total": await conn.fetchval("SELECT pg_database_size(current_database())"),
    }


def gib(n: int) -> str:
    return f"{n / 2**30:.2f} GiB"


async def timed_get(http: aiohttp.ClientSession, url: str, params: dict[str, str]) -> float:
    started = time.perf_counter()
    async with http.get(url, params=params) as resp:
        assert resp.status == 200, await resp.text()
        await resp.read()
    return (time.perf_counter() - started) * 1000


async def measure(
    http: aiohttp.ClientSession, url: str, params: dict[str, str]
) -> tuple[float, float]:
    """(p50, p95) milliseconds over SAMPLES requests, after a warm-up."""
    for _ in range(3):
        await timed_get(http, url, params)
    samples = sorted([await timed_get(http, url, params) for _ in range(SAMPLES)])
    return statistics.median(samples), samples[int(0.95 * (len(samples) - 1))]


async def run_section(env: Scratch, events: int) -> list[Row]:
    free_before = shutil.disk_usage(os.environ.get("PGDATA_DISK", "/")).free
    needed = events * BYTES_PER_EVENT
    if needed * 1.5 > free_before:
        raise SystemExit(
            f"dashboard: {events:,} events need about {gib(needed)} on disk and only "
            f"{gib(free_before)} is free; set DASHBOARD_EVENTS lower"
        )
    main, load = await generate(env.dsn, events)
    return await read_side(env, events, main, load, free_before)


async def read_side(
    env: Scratch, events: int, main: int, load: Load, free_before: int
) -> list[Row]:
    """What the generated data takes, then the stats measured through a gateway process."""
    conn = await asyncpg.connect(env.dsn)
    try:
        total = await conn.fetchval("SELECT count(*) FROM events")
        used = await sizes(conn)
        key, _ = await api_keys.create(conn, is_admin=True, project_id=None)
        tomorrow = datetime.now(UTC).replace(hour=0, minute=0, second=0, microsecond=0)
        tomorrow += timedelta(days=1)
        month_start = tomorrow - timedelta(days=30)
        raw_month = await conn.fetchrow(
            """SELECT count(*) AS events, sum(cost_usd) AS usd FROM events
               WHERE gpt_pk = $1 AND ts >= $2 AND ts < $3""",
            main,
            month_start,
            tomorrow,
        )
        assert raw_month is not None
        in_month = raw_month["events"]
        # The rollups hold what the raw rows say (the month of the measured GPT).
        rolled = await conn.fetchrow(
            """SELECT (SELECT sum(events) FROM event_rollups_daily
                       WHERE gpt_pk = $1 AND day >= $2 AND day < $3) AS events,
                      (SELECT sum(cost_usd) FROM event_rollups_daily
                       WHERE gpt_pk = $1 AND day >= $2 AND day < $3) AS usd,
                      (SELECT sum(events) FROM user_rollups
                       WHERE gpt_pk = $1 AND day >= $2 AND day < $3) AS user_events,
                      (SELECT sum(sessions) FROM session_rollups
                       WHERE gpt_pk = $1 AND hour >= $2 AND hour < $3) AS sessions,
                      (SELECT count(*) FROM sessions
                       WHERE gpt_pk = $1 AND timestamp_inicio >= $2 AND timestamp_inicio < $3)
                          AS raw_sessions""",
            main,
            month_start,
            tomorrow,
        )
        assert rolled is not None
        # The weekly users' tier over the whole weeks the stats read from it, against the raw
        # rows of those weeks.
        w0 = month_start + timedelta(days=-month_start.weekday() % 7)
        w1 = max(w0, tomorrow - timedelta(days=tomorrow.weekday()))
        weekly = await conn.fetchrow(
            """SELECT (SELECT coalesce(sum(events), 0) FROM user_rollups_weekly
                       WHERE gpt_pk = $1 AND week >= $2 AND week < $3) AS events,
                      (SELECT coalesce(sum(sessions), 0) FROM user_rollups_weekly
                       WHERE gpt_pk = $1 AND week >= $2 AND week < $3) AS sessions,
                      (SELECT count(*) FROM events
                       WHERE gpt_pk = $1 AND ts >= $2 AND ts < $3) AS raw_events,
                      (SELECT count(*) FROM sessions
                       WHERE gpt_pk = $1 AND timestamp_inicio >= $2 AND timestamp_inicio < $3)
                          AS raw_sessions""",
            main,
            w0,
            w1,
        )
        assert weekly is not None
        consistent = (
            rolled["events"] == rolled["user_events"] == in_month
            and rolled["usd"] == raw_month["usd"]
            and rolled["sessions"] == rolled["raw_sessions"]
            and weekly["events"] == weekly["raw_events"]
            and weekly["sessions"] == weekly["raw_sessions"]
        )
        raw_started = time.perf_counter()
        await conn.fetchrow(
            """SELECT count(*), avg(latency_ms),
                      percentile_cont(0.95) WITHIN GROUP (ORDER BY latency_ms),
                      count(DISTINCT usuario_id)
               FROM events WHERE gpt_pk = $1 AND ts >= $2 AND ts < $3""",
            main,
            month_start,
            tomorrow,
        )
        raw_ms = (time.perf_counter() - raw_started) * 1000
    finally:
        await conn.close()
    port = free_port()
    base = f"http://127.0.0.1:{port}"
    proc = env.spawn("run", "gateway", GATEWAY_PORT=str(port), RATE_LIMIT="1000000/1m")
    measured: dict[str, tuple[float, float]] = {}
    try:
        await wait_http(f"{base}/readyz")
        url = f"{base}/api/gpts/bench-00/stats"
        now = datetime.now(UTC)
        async with aiohttp.ClientSession(headers={"X-API-Key": key}) as http:
            for bucket in ("day", "week", "month"):
                measured[bucket] = await measure(
                    http,
                    url,
                    {"from": month_start.isoformat(), "to": tomorrow.isoformat(), "bucket": bucket},
                )
            measured["unaligned"] = await measure(
                http,
                url,
                {
                    "from": (now - timedelta(days=30, minutes=7)).isoformat(),
                    "to": now.isoformat(),
                    "bucket": "day",
                },
            )
            gpts_med, _ = await measure(http, f"{base}/api/gpts", {})
        load_1m = os.getloadavg()[0]
    finally:
        proc.terminate()
        proc.wait(timeout=30)
    target = f"p95 < {TARGET_MS} ms"
    rows = [
        Row(
            SECTION,
            "events in the table",
            f"{total:,}",
            f"{FULL_EVENTS:,}" if events >= FULL_EVENTS else "",
        ),
        Row(SECTION, "GPTs / days (one partition each)", f"{GPTS} / {DAYS}"),
        Row(SECTION, "events of the GPT in the month", f"{in_month:,}"),
        Row(
            SECTION,
            "rollups = raw rows there (events, cost, user events, sessions; weekly users)",
            "yes"
            if consistent
            else f"NO: {dict(rolled)}, weekly {dict(weekly)} vs {dict(raw_month)}",
            f"{(w1 - w0).days // 7} whole weeks in the month",
        ),
        Row(
            SECTION,
            "generation: days (with rollups, partition indexes) / keys / analyze",
            f"{load.days:.0f} / {load.keys:.0f} / {load.analyze:.0f} s = {load.total:.0f} s",
            f"{LOADERS} connections; {events / load.total:,.0f} events/s",
        ),
        Row(
            SECTION,
            "generation: CPU of the Postgres backends",
            "n/a"
            if load.cpu is None
            else f"{load.cpu:.0f} s ({load.cpu / events * 1e6:.1f} µs/event)",
            "the quiet-machine time is about this / cores",
        ),
        Row(
            SECTION,
            "one day's statement + indexes (median / max)",
            f"{statistics.median(load.day_seconds):.1f} / {max(load.day_seconds):.1f} s",
        ),
        Row(
            SECTION,
            "on disk: events / event_ids / sessions / rollups / whole db",
            f"{gib(used['events'])} / {gib(used['event_ids'])} / {gib(used['sessions'])} / "
            f"{gib(used['rollups'])} / {gib(used['total'])}",
            f"free before: {gib(free_before)}; {used['total'] / max(total, 1):.0f} B/event",
        ),
    ]
    for bucket in ("day", "week", "month"):
        p50, p95 = measured[bucket]
        rows.append(
            Row(
                SECTION,
                f"stats, one month, bucket={bucket} (p50 / p95)",
                f"{p50:.0f} / {p95:.0f} ms",
                target,
            )
        )
    p50, p95 = measured["unaligned"]
    rows += [
        Row(
            SECTION,
            "stats, 30 days to now, unaligned, day (p50 / p95)",
            f"{p50:.0f} / {p95:.0f} ms",
        ),
        Row(SECTION, "GPT list (median)", f"{gpts_med:.1f} ms"),
        Row(SECTION, "same month from raw events (1 query)", f"{raw_ms:.0f} ms", "for comparison"),
        # The figures depend on what else the machine runs; this says how busy it was.
        Row(SECTION, "load average (1 min) after the run", f"{load_1m:.1f}"),
    ]
    return rows


async def run(quick: bool) -> list[Row]:
    async with scratch() as env:
        size = os.environ.get("DASHBOARD_EVENTS")
        events = int(size) if size else QUICK_EVENTS if quick else FULL_EVENTS
        return await run_section(env, events)
