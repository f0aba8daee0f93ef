"""Ingestion benchmark: single events, batches, and the rate at which they are durably stored.

The gateway and metrics-ingest run as processes (`chatbeto run ...`), as an operator runs them,
against a scratch database and broker namespace; `wrk` is the load generator.
"""

from __future__ import annotations

import asyncio
import json
import time

import aiohttp
import asyncpg
from chatbeto import api_keys

from bench.common import Row, Scratch, ensure_wrk, free_port, run_wrk, scratch, wait_http

SECTION = "ingest"
CONNECTIONS = 64


LUA = """
local sessions = {%(sessions)s}
local n = 0
local key = "%(key)s"
local batch = %(batch)d
wrk.method = "POST"
wrk.headers["Content-Type"] = "application/json"
wrk.headers["X-API-Key"] = key
local function event(i)
  return string.format('{"sesion_id":"%%s","tipo":"query","contenido":"bench event %%d","latency_ms":%%d,"tokens_entrada":12,"tokens_salida":34}',
    sessions[(i %% #sessions) + 1], i, i %% 500)
end
request = function()
  n = n + 1
  if batch == 0 then
    return wrk.format(nil, "/api/events", nil, event(n))
  end
  local parts = {}
  for j = 1, batch do parts[j] = event(n * batch + j) end
  return wrk.format(nil, "/api/events/batch", nil, '{"events":[' .. table.concat(parts, ",") .. ']}')
end
"""


async def drain_time(conn: asyncpg.Connection, expected: int, timeout: float = 120) -> float:
    """Seconds until `expected` events are in Postgres, polled."""
    started = time.monotonic()
    while time.monotonic() - started < timeout:
        if await conn.fetchval("SELECT count(*) FROM events") >= expected:
            return time.monotonic() - started
        await asyncio.sleep(0.05)
    return float("nan")


async def setup(env: Scratch, base: str, conn: asyncpg.Connection) -> tuple[str, list[str]]:
    project = await conn.fetchval("INSERT INTO projects (name) VALUES ('bench') RETURNING id")
    key, _ = await api_keys.create(
        conn, is_admin=False, project_id=project, rate_limit="100000000/1m"
    )
    await conn.execute(
        "INSERT INTO gpts (gpt_id, name, project_id) VALUES ('bench-gpt', 'B', $1)", project
    )
    sessions = []
    async with aiohttp.ClientSession(headers={"X-API-Key": key}) as http:
        for i in range(64):
            async with http.post(
                f"{base}/api/sessions", json={"gpt_id": "bench-gpt", "usuario_id": f"user{i}"}
            ) as resp:
                sessions.append((await resp.json())["id"])
    return key, sessions


async def run(quick: bool) -> list[Row]:
    wrk = ensure_wrk()
    seconds = 5 if quick else 15
    rows: list[Row] = []
    async with scratch() as env:
        port = free_port()
        base = f"http://127.0.0.1:{port}"
        procs = [
            env.spawn("run", "gateway", GATEWAY_PORT=str(port), INGEST_RATE_LIMIT="100000000/1m"),
            env.spawn("run", "metrics-ingest"),
        ]
        conn = await asyncpg.connect(env.dsn)
        try:
            await wait_http(f"{base}/readyz")
            key, sessions = await setup(env, base, conn)
            quoted = ",".join(json.dumps(s) for s in sessions)
            await drain_time(conn, 0)

            # 1. Single events, 64 clients.
            before = await conn.fetchval("SELECT count(*) FROM events")
            single = run_wrk(
                wrk, base, LUA % {"sessions": quoted, "key": key, "batch": 0}, seconds, CONNECTIONS
            )
            accepted = int(single["requests"] - single["non2xx"])
            drain = await drain_time(conn, before + accepted)
            lag = await conn.fetchrow(
                """SELECT percentile_cont(0.5) WITHIN GROUP (ORDER BY extract(epoch FROM stored_at - ts)) AS p50,
                          percentile_cont(0.99) WITHIN GROUP (ORDER BY extract(epoch FROM stored_at - ts)) AS p99
                   FROM events"""
            )
            rows += [
                Row(
                    SECTION,
                    "POST /api/events req/s (64 clients)",
                    f"{single['rps']:,.0f}",
                    ">= 8,000",
                ),
                Row(SECTION, "POST /api/events p50 latency", f"{single.get('p50', 0):.1f} ms", ""),
                Row(
                    SECTION,
                    "POST /api/events p99 latency",
                    f"{single.get('p99', 0):.1f} ms",
                    "<= 20 ms",
                ),
                Row(
                    SECTION,
                    "  non-2xx / socket errors",
                    f"{single['non2xx']:.0f} / {single['socket_errors']:.0f}",
                    "0 / 0",
                ),
                Row(
                    SECTION,
                    "  stored end-to-end lag p50 / p99",
                    f"{lag['p50'] * 1000:.0f} / {lag['p99'] * 1000:.0f} ms",
                    "< 1 s",
                ),
                Row(SECTION, "  backlog drained after load", f"{drain:.2f} s", ""),
            ]

            # 2. Batches of 100 events, 16 clients.
            before = await conn.fetchval("SELECT count(*) FROM events")
            started = time.monotonic()
            batch = run_wrk(
                wrk, base, LUA % {"sessions": quoted, "key": key, "batch": 100}, seconds, 16
            )
            accepted = int(batch["requests"] - batch["non2xx"]) * 100
            drain = await drain_time(conn, before + accepted)
            elapsed = time.monotonic() - started
            stored = await conn.fetchval("SELECT count(*) FROM events") - before
            lag = await conn.fetchrow(
                """SELECT percentile_cont(0.99) WITHIN GROUP (ORDER BY extract(epoch FROM stored_at - ts)) AS p99
                   FROM events WHERE stored_at > now() - make_interval(secs => $1)""",
                elapsed + 1,
            )
            rows += [
                Row(
                    SECTION,
                    "POST /api/events/batch events/s accepted",
                    f"{batch['rps'] * 100:,.0f}",
                    "",
                ),
                Row(
                    SECTION,
                    "  events/s durably stored (incl. drain)",
                    f"{stored / elapsed:,.0f}",
                    ">= 40,000",
                ),
                Row(
                    SECTION,
                    "  stored end-to-end lag p99",
                    f"{(lag['p99'] or 0) * 1000:.0f} ms",
                    "< 1 s",
                ),
                Row(
                    SECTION, "  batch p99 latency (100 events)", f"{batch.get('p99', 0):.1f} ms", ""
                ),
            ]
        finally:
            await conn.close()
            for proc in procs:
                proc.terminate()
            for proc in procs:
                proc.wait(30)
    return rows
