"""Dashboard read benchmark: the stats a dashboard asks for, over 10 million events.

Events are generated in the database with generate_series (quick: 200 thousand), the rollups are
built the way 0006_rollups.sql backfills them (the same rows metrics-ingest keeps up to date),
then a real gateway process (`chatbeto run gateway`) answers the dashboard's requests for a month
of one GPT. Also shown: the same month read from the raw events (what the rollups avoid).
"""

from __future__ import annotations

import os
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
SAMPLES = 20
USERS = 5_000
EVENTS_PER_SESSION = 10
DAYS = 60
# The measured GPT holds 80% of all events; a second GPT the rest.
MAIN_SHARE = 0.8


def backfill_sql() -> str:
    sql = (resources.files("chatbeto.migrations") / "0006_rollups.sql").read_text("utf-8")
    return sql[sql.index("-- Backfill from what is already stored.") :]


async def generate(conn: asyncpg.Connection, events: int) -> tuple[int, float]:
    """Sessions and events over the last DAYS days; returns (main GPT pk, seconds taken)."""
    started = time.perf_counter()
    project = await conn.fetchval("INSERT INTO projects (name) VALUES ('bench') RETURNING id")
    main = await conn.fetchval(
        "INSERT INTO gpts (gpt_id, name, project_id) VALUES ('bench-main', 'Main', $1) RETURNING pk",
        project,
    )
    side = await conn.fetchval(
        "INSERT INTO gpts (gpt_id, name, project_id) VALUES ('bench-side', 'Side', $1) RETURNING pk",
        project,
    )
    sessions = events // EVENTS_PER_SESSION
    end = datetime.now(UTC)
    step_ms = DAYS * 86_400_000 / sessions
    # Bulk load without the secondary indexes, then build them once (as a restore would).
    await conn.execute("DROP INDEX events_session, events_gpt_time, events_stored_brin")
    await conn.execute(
        """INSERT INTO sessions (id, gpt_pk, usuario_id, timestamp_inicio)
           SELECT md5('s' || i)::uuid,
                  CASE WHEN i % 100 < $4::int THEN $1::bigint ELSE $2::bigint END,
                  'user-' || (hashint4(i) & 2147483647) % $5::int,
                  $3::timestamptz - make_interval(secs => ($6::int - i) * $7::float8 / 1000.0)
           FROM generate_series(1, $6::int) AS i""",
        main,
        side,
        end,
        int(MAIN_SHARE * 100),
        USERS,
        sessions,
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
    await conn.execute("CREATE INDEX events_session ON events (session_id, ts)")
    await conn.execute(
        """CREATE INDEX events_gpt_time ON events (gpt_pk, ts)
           INCLUDE (latency_ms, tokens_entrada, tokens_salida)"""
    )
    await conn.execute("CREATE INDEX events_stored_brin ON events USING brin (stored_at)")
    await conn.execute(backfill_sql())
    await conn.execute("VACUUM ANALYZE")
    return main, time.perf_counter() - started


async def timed_get(http: aiohttp.ClientSession, url: str, params: dict[str, str]) -> float:
    started = time.perf_counter()
    async with http.get(url, params=params) as resp:
        assert resp.status == 200, await resp.text()
        await resp.read()
    return (time.perf_counter() - started) * 1000


async def measure(
    http: aiohttp.ClientSession, url: str, params: dict[str, str]
) -> tuple[float, float]:
    """(median, max) milliseconds over SAMPLES requests, after a warm-up."""
    for _ in range(3):
        await timed_get(http, url, params)
    samples = [await timed_get(http, url, params) for _ in range(SAMPLES)]
    return statistics.median(samples), max(samples)


async def run_section(env: Scratch, events: int) -> list[Row]:
    conn = await asyncpg.connect(env.dsn)
    try:
        main, load_s = await generate(conn, events)
        total = await conn.fetchval("SELECT count(*) FROM events")
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
    try:
        await wait_http(f"{base}/readyz")
        url = f"{base}/api/gpts/bench-main/stats"
        preset = {
            "from": month_start.isoformat(),
            "to": tomorrow.isoformat(),
            "bucket": "day",
        }
        now = datetime.now(UTC)
        custom = {
            "from": (now - timedelta(days=30, minutes=7)).isoformat(),
            "to": now.isoformat(),
            "bucket": "day",
        }
        async with aiohttp.ClientSession(headers={"X-API-Key": key}) as http:
            preset_med, preset_max = await measure(http, url, preset)
            custom_med, custom_max = await measure(http, url, custom)
            gpts_med, _ = await measure(http, f"{base}/api/gpts", {})
        load_1m = os.getloadavg()[0]
    finally:
        proc.terminate()
        proc.wait(timeout=30)
    return [
        Row(SECTION, "events in the table", f"{total:,}", "10,000,000" if events >= 10**7 else ""),
        Row(SECTION, "events of the GPT in the month", f"{in_month:,}"),
        Row(SECTION, "generate + index + rollups", f"{load_s:.0f} s"),
        Row(
            SECTION,
            "stats, month preset (median / max)",
            f"{preset_med:.0f} / {preset_max:.0f} ms",
            f"< {TARGET_MS} ms",
        ),
        Row(
            SECTION,
            "stats, 30 days to now, unaligned (median / max)",
            f"{custom_med:.0f} / {custom_max:.0f} ms",
        ),
        Row(SECTION, "GPT list (median)", f"{gpts_med:.1f} ms"),
        Row(SECTION, "same month from raw events (1 query)", f"{raw_ms:.0f} ms", "for comparison"),
        # The figures depend on what else the machine runs; this says how busy it was.
        Row(SECTION, "load average (1 min) after the run", f"{load_1m:.1f}"),
    ]


async def run(quick: bool) -> list[Row]:
    async with scratch() as env:
        return await run_section(env, 200_000 if quick else 10_000_000)
