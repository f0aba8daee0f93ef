"""Dashboard read benchmark: the stats a dashboard asks for, over 100 million events.

Events are generated in a scratch database of the bench's own with INSERT ... SELECT
generate_series (quick: 200 thousand): 90 days, 20 GPTs, into the daily partitions metrics-ingest
would have made (0009_events_partitioned.sql); the rollups are built the way 0006_rollups.sql
backfills them (the same rows metrics-ingest keeps up to date). Then a real gateway process
(`chatbeto run gateway`) answers `GET /api/gpts/{id}/stats` for one month of one GPT, per bucket
(day, week, month), p50 / p95. Also shown: the same month read from the raw events (what the
rollups avoid), and what the data takes on disk. The database is dropped afterwards.
"""

from __future__ import annotations

import os
import shutil
import statistics
import time
from datetime import UTC, datetime, timedelta
from importlib import resources

import aiohttp
import asyncpg
from chatbeto import api_keys

from bench.common import Row, Scratch, free_port, scratch, wait_http

SECTION = "dashboard"
TARGET_MS = 300
SAMPLES = 40
USERS = 5_000
EVENTS_PER_SESSION = 10
DAYS = 90
GPTS = 20
FULL_EVENTS = 100_000_000
QUICK_EVENTS = 200_000


def backfill_sql() -> str:
    sql = (resources.files("chatbeto.migrations") / "0006_rollups.sql").read_text("utf-8")
    return sql[sql.index("-- Backfill from what is already stored.") :]


async def generate(conn: asyncpg.Connection, events: int) -> tuple[int, float]:
    """Sessions and events over the last DAYS days in GPTS GPTs; returns (measured GPT pk,
    seconds taken). Event-id keys (`event_ids`) are not generated: no read uses them."""
    started = time.perf_counter()
    # Big sorts and hash aggregates (index builds, the rollup backfill) in memory.
    await conn.execute("SET maintenance_work_mem = '512MB'")
    await conn.execute("SET work_mem = '256MB'")
    project = await conn.fetchval("INSERT INTO projects (name) VALUES ('bench') RETURNING id")
    pks = [
        await conn.fetchval(
            "INSERT INTO gpts (gpt_id, name, project_id) VALUES ($1, $1, $2) RETURNING pk",
            f"bench-{n:02d}",
            project,
        )
        for n in range(GPTS)
    ]
    sessions = events // EVENTS_PER_SESSION
    end = datetime.now(UTC)
    step_ms = DAYS * 86_400_000 / sessions
    await conn.execute(
        "SELECT events_partition_for(d::date) FROM generate_series($1::date, $2::date, '1 day') AS d",
        (end - timedelta(days=DAYS + 1)).date(),
        (end + timedelta(days=1)).date(),
    )
    # Bulk load without the secondary indexes, then build them once (as a restore would).
    await conn.execute("DROP INDEX events_session, events_gpt_time, sessions_gpt_time")
    await conn.execute(
        """INSERT INTO sessions (id, gpt_pk, usuario_id, timestamp_inicio)
           SELECT md5('s' || i)::uuid, ($1::bigint[])[1 + i % $5::int],
                  'user-' || (hashint4(i) & 2147483647) % $3::int,
                  $2::timestamptz - make_interval(secs => ($4::int - i) * $6::float8 / 1000.0)
           FROM generate_series(1, $4::int) AS i""",
        pks,
        end,
        USERS,
        sessions,
        GPTS,
        step_ms,
    )
    await conn.execute(
        """INSERT INTO events (id, session_id, gpt_pk, usuario_id, tipo, contenido, latency_ms,
                               tokens_entrada, tokens_salida, ts)
           SELECT gen_random_uuid(), s.id, s.gpt_pk, s.usuario_id,
                  (ARRAY['query', 'feedback', 'click', 'view', 'error'])[1 + (k * 7 + h) % 5],
                  '', 20 + (h % 1500) + (h % 7) * (h % 300), h % 400, (h / 7) % 900,
                  s.timestamp_inicio + make_interval(secs => k * 20)
           FROM sessions s, generate_series(0, $1::int - 1) AS k,
                LATERAL (SELECT hashint4(k + hashtext(s.usuario_id)) & 65535 AS h) AS x""",
        EVENTS_PER_SESSION,
    )
    await conn.execute("CREATE INDEX sessions_gpt_time ON sessions (gpt_pk, timestamp_inicio)")
    await conn.execute("CREATE INDEX events_session ON events (session_id, ts)")
    await conn.execute(
        """CREATE INDEX events_gpt_time ON events (gpt_pk, ts)
           INCLUDE (latency_ms, tokens_entrada, tokens_salida)"""
    )
    await conn.execute(backfill_sql())
    # The rollups are what the stats read: vacuumed (index-only scans); the raw events analyzed.
    await conn.execute(
        "VACUUM ANALYZE event_rollups, event_rollups_daily, session_rollups, user_rollups,"
        " user_rollups_hourly, sessions"
    )
    await conn.execute("ANALYZE events")
    return pks[0], time.perf_counter() - started


async def sizes(conn: asyncpg.Connection) -> dict[str, int]:
    """Bytes on disk: the events (every partition, with indexes), the rollups, everything."""
    events = await conn.fetchval(
        "SELECT sum(pg_total_relation_size(relid)) FROM pg_partition_tree('events')"
    )
    rollups = await conn.fetchval(
        """SELECT sum(pg_total_relation_size(c)) FROM unnest(ARRAY['event_rollups',
               'event_rollups_daily', 'session_rollups', 'user_rollups',
               'user_rollups_hourly']::regclass[]) AS c"""
    )
    sessions = await conn.fetchval("SELECT pg_total_relation_size('sessions')")
    total = await conn.fetchval("SELECT pg_database_size(current_database())")
    return {"events": events, "rollups": rollups, "sessions": sessions, "total": total}


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
    conn = await asyncpg.connect(env.dsn)
    try:
        main, load_s = await generate(conn, events)
        total = await conn.fetchval("SELECT count(*) FROM events")
        used = await sizes(conn)
        key, _ = await api_keys.create(conn, is_admin=True, project_id=None)
        tomorrow = datetime.now(UTC).replace(hour=0, minute=0, second=0, microsecond=0)
        tomorrow += timedelta(days=1)
        month_start = tomorrow - timedelta(days=30)
        in_month = await conn.fetchval(
            "SELECT count(*) FROM events WHERE gpt_pk = $1 AND ts >= $2 AND ts < $3",
            main,
            month_start,
            tomorrow,
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
        Row(SECTION, "GPTs / days / daily partitions", f"{GPTS} / {DAYS} / {DAYS + 3}"),
        Row(SECTION, "events of the GPT in the month", f"{in_month:,}"),
        Row(SECTION, "generate + index + rollups", f"{load_s:.0f} s"),
        Row(
            SECTION,
            "on disk: events / sessions / rollups / whole db",
            f"{gib(used['events'])} / {gib(used['sessions'])} / {gib(used['rollups'])} / "
            f"{gib(used['total'])}",
            f"free before: {gib(free_before)}",
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
        return await run_section(env, QUICK_EVENTS if quick else FULL_EVENTS)
