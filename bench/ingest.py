"""Ingestion benchmark: single events, batches, and the rate at which they are durably stored.

The gateway and metrics-ingest run as processes (`chatbeto run ...`), as an operator runs them,
against a scratch database and broker namespace; `wrk` is the load generator.
"""

from __future__ import annotations

import asyncio
import json
import re
import shutil
import socket
import subprocess
import tempfile
import time
from pathlib import Path

import aiohttp
import asyncpg
from chatbeto import api_keys

from bench.common import Row, Scratch, scratch

SECTION = "ingest"
CONNECTIONS = 64


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def ensure_wrk() -> str:
    found = shutil.which("wrk")
    if found:
        return found
    subprocess.run(
        ["apt-get", "install", "-y", "-q", "wrk"],
        check=False,
        capture_output=True,
    )
    found = shutil.which("wrk")
    if not found:
        raise SystemExit("bench needs wrk (apt-get install wrk)")
    return found


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


def parse_wrk(out: str) -> dict[str, float]:
    def unit(value: str, suffix: str) -> float:
        scale = {"us": 0.001, "ms": 1.0, "s": 1000.0, "m": 60000.0}[suffix]
        return float(value) * scale

    result: dict[str, float] = {}
    rps = re.search(r"Requests/sec:\s+([\d.]+)", out)
    result["rps"] = float(rps.group(1)) if rps else 0.0
    for pct in ("50", "99"):
        m = re.search(rf"^\s+{pct}(?:\.000)?%\s+([\d.]+)(us|ms|s|m)\s*$", out, re.M)
        if m:
            result[f"p{pct}"] = unit(m.group(1), m.group(2))
    total = re.search(r"(\d+) requests in", out)
    result["requests"] = float(total.group(1)) if total else 0.0
    non2xx = re.search(r"Non-2xx or 3xx responses: (\d+)", out)
    result["non2xx"] = float(non2xx.group(1)) if non2xx else 0.0
    errors = re.search(r"Socket errors: connect (\d+), read (\d+), write (\d+), timeout (\d+)", out)
    result["socket_errors"] = float(sum(int(x) for x in errors.groups())) if errors else 0.0
    return result


def run_wrk(wrk: str, url: str, script: str, seconds: int, connections: int) -> dict[str, float]:
    with tempfile.NamedTemporaryFile("w", suffix=".lua", delete=False) as fh:
        fh.write(script)
    out = subprocess.run(
        [wrk, "-t1", f"-c{connections}", f"-d{seconds}s", "--latency", "-s", fh.name, url],
        capture_output=True,
        text=True,
        check=True,
    ).stdout
    Path(fh.name).unlink()
    return parse_wrk(out)


async def wait_http(url: str, timeout: float = 30) -> None:
    deadline = time.monotonic() + timeout
    async with aiohttp.ClientSession() as http:
        while time.monotonic() < deadline:
            try:
                async with http.get(url) as resp:
                    if resp.status == 200:
                        return
            except aiohttp.ClientError:
                pass
            await asyncio.sleep(0.2)
    raise RuntimeError(f"{url} did not become ready")


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
