"""What the rate limiter costs the ingest hot path.

The same load as `bench/ingest.py` (wrk, single events, 64 clients, one key) against a gateway
and metrics-ingest run as processes, three times: with the key's limit effectively off (a huge
limit), with a limit that counts every request in Postgres but that the load stays under, and
over the limit (the 429 path, answered from memory once the window is spent). Then, in process,
what a budgeted key adds to a model call: the gateway's budget check (one Postgres read) and
the worker's spend write (inside the exchange's transaction).
"""

from __future__ import annotations

import math
import time
from decimal import Decimal

import aiohttp
import asyncpg
from chatbeto import api_keys, spend
from chatbeto.settings import RateLimit
from chatbeto_gateway.access.budgets import SpendGuard
from chatbeto_gateway.access.ratelimit import Limiter, block_size

from bench.common import Row, ensure_wrk, free_port, run_wrk, scratch, wait_http
from bench.ingest import CONNECTIONS, wrk_script

SECTION = "ratelimit"
OFF = "1000000000000/1m"
# Under the load for a run of up to 15 s at ~10k req/s, yet every request is counted.
ON = "5000000/1m"
OVER = "1000/1h"
ROUNDS = 2


def mean(results: list[dict[str, float]]) -> dict[str, float]:
    return {k: sum(r.get(k, 0.0) for r in results) / len(results) for k in results[0]}


async def make_key(conn: asyncpg.Connection, project: int, limit: str) -> str:
    plain, _ = await api_keys.create(conn, is_admin=False, project_id=project, rate_limit=limit)
    return plain


async def sessions_for(base: str, key: str, count: int = 64) -> list[str]:
    out = []
    async with aiohttp.ClientSession(headers={"X-API-Key": key}) as http:
        for i in range(count):
            async with http.post(
                f"{base}/api/sessions", json={"gpt_id": "bench-gpt", "usuario_id": f"u{i}"}
            ) as resp:
                out.append((await resp.json())["id"])
    return out


async def take_cost(dsn: str, calls: int = 200_000) -> float:
    """Microseconds per `take()` on the hot path (tokens in hand), leases included."""
    pool = await asyncpg.create_pool(dsn, min_size=1, max_size=2)
    try:
        limiter = Limiter(pool)
        rate = RateLimit.parse(OFF)
        started = time.perf_counter()
        for _ in range(calls):
            await limiter.take("bench:take", rate)
        return (time.perf_counter() - started) / calls * 1e6
    finally:
        await pool.close()


async def budget_costs(dsn: str, project: int, calls: int = 2000) -> tuple[float, float]:
    """(µs per budget check, µs per spend write in its own transaction) for a budgeted key."""
    pool = await asyncpg.create_pool(dsn, min_size=1, max_size=2)
    try:
        _, key = await api_keys.create(
            pool, is_admin=False, project_id=project, budget="1000000/1mo", tpm=10**12
        )
        guard = SpendGuard(pool)
        started = time.perf_counter()
        for _ in range(calls):
            await guard.check(key)
        check = (time.perf_counter() - started) / calls * 1e6
        started = time.perf_counter()
        async with pool.acquire() as conn:
            for n in range(calls):
                charge = spend.Charge(
                    f"bench-{n}", key.id, project, "gpt-4o", 100, 20, 50, Decimal("0.0007")
                )
                async with conn.transaction():
                    await spend.record(conn, charge)
        write = (time.perf_counter() - started) / calls * 1e6
        return check, write
    finally:
        await pool.close()


async def run(quick: bool) -> list[Row]:
    wrk = ensure_wrk()
    seconds = 5 if quick else 15
    rows: list[Row] = []
    async with scratch() as env:
        port = free_port()
        base = f"http://127.0.0.1:{port}"
        procs = [
            env.spawn("run", "gateway", GATEWAY_PORT=str(port)),
            env.spawn("run", "metrics-ingest"),
        ]
        conn = await asyncpg.connect(env.dsn)
        try:
            await wait_http(f"{base}/readyz")
            project = await conn.fetchval(
                "INSERT INTO projects (name) VALUES ('bench') RETURNING id"
            )
            await conn.execute(
                "INSERT INTO gpts (gpt_id, name, project_id) VALUES ('bench-gpt', 'B', $1)",
                project,
            )
            keys = {
                name: await make_key(conn, project, limit)
                for name, limit in (("off", OFF), ("on", ON), ("over", OVER))
            }
            sessions = await sessions_for(base, keys["off"])

            def load(key: str) -> dict[str, float]:
                script = wrk_script(sessions, key)
                return run_wrk(wrk, base, script, seconds, CONNECTIONS)

            load(keys["off"])  # warm-up: caches, pools, the first lease
            # Alternate the two, so noise from the machine falls on both alike.
            runs: dict[str, list[dict[str, float]]] = {"off": [], "on": []}
            for _ in range(ROUNDS):
                for name in ("off", "on"):
                    runs[name].append(load(keys[name]))
            off, on = (mean(runs[name]) for name in ("off", "on"))
            on_id = await conn.fetchval(
                "SELECT id FROM api_keys WHERE prefix = $1", keys["on"].split("_")[1]
            )
            leased = await conn.fetchval(
                "SELECT coalesce(sum(used), 0) FROM rate_windows WHERE bucket = $1",
                f"ingest:key:{on_id}",
            )
            trips = math.ceil(leased / block_size(RateLimit.parse(ON).limit))
            over = load(keys["over"])
            per_take = await take_cost(env.dsn)
            per_check, per_write = await budget_costs(env.dsn, project, 500 if quick else 2000)
            delta = (on["rps"] - off["rps"]) / off["rps"] * 100 if off["rps"] else float("nan")
            rows += [
                Row(SECTION, "POST /api/events req/s, limit effectively off", f"{off['rps']:,.0f}"),
                Row(SECTION, f"POST /api/events req/s, limit on ({ON})", f"{on['rps']:,.0f}"),
                Row(SECTION, "  throughput with limits on vs off", f"{delta:+.1f} %", ">= -10 %"),
                Row(
                    SECTION,
                    "  p99 latency off / on",
                    f"{off.get('p99', 0):.1f} / {on.get('p99', 0):.1f} ms",
                ),
                Row(
                    SECTION,
                    "  on: requests counted / Postgres round trips",
                    f"{on['requests'] * ROUNDS:,.0f} / {trips}",
                ),
                Row(
                    SECTION,
                    f"over the limit ({OVER}): 429 answers/s",
                    f"{over['rps']:,.0f}",
                    "cheap (memory)",
                ),
                Row(
                    SECTION,
                    "  over: 2xx answers",
                    f"{over['requests'] - over['non2xx']:,.0f}",
                    "1,000",
                ),
                Row(SECTION, "Limiter.take() per request, in process", f"{per_take:.2f} µs"),
                Row(
                    SECTION,
                    "budget + tpm check per model call (budgeted key, 1 read)",
                    f"{per_check:.0f} µs",
                    "<< a model call",
                ),
                Row(
                    SECTION,
                    "spend write per model call (ledger + 2 windows, own transaction)",
                    f"{per_write:.0f} µs",
                ),
            ]
        finally:
            await conn.close()
            for proc in procs:
                proc.terminate()
            for proc in procs:
                proc.wait(30)
    return rows
