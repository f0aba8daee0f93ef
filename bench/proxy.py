"""Proxy benchmark (issue 3 point 10): what the gateway adds over calling OpenAI directly.

The local stub answers instantly. Every service runs as a process, as an operator runs it
(gateway, openai-worker, metrics-ingest), against a scratch database and broker namespace;
every exchange through the gateway is stored (the key belongs to a project).

- added latency at 1 client: p50/p99 of `POST /v1/chat/completions` through the gateway minus
  the same request sent to the stub directly (same client, sequential);
- chat requests/s at 32 clients (wrk), plain and streamed.
"""

from __future__ import annotations

import asyncio
import re
import shutil
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import aiohttp
import asyncpg
from chatbeto import api_keys

from bench.common import Row, scratch

SECTION = "proxy"
CLIENTS = 32
BODY = '{"model":"gpt-4","messages":[{"role":"user","content":"hola que tal"}]}'
STREAM_BODY = (
    '{"model":"gpt-4","stream":true,"stream_options":{"include_usage":true},'
    '"messages":[{"role":"user","content":"hola que tal"}]}'
)
LUA = """
wrk.method = "POST"
wrk.headers["Content-Type"] = "application/json"
wrk.headers["Authorization"] = "Bearer %(key)s"
wrk.body = '%(body)s'
"""


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


async def wait_http(url: str, timeout: float = 60) -> None:
    deadline = time.monotonic() + timeout
    async with aiohttp.ClientSession() as http:
        while time.monotonic() < deadline:
            try:
                async with http.get(url) as resp:
                    if resp.status in (200, 401, 405):
                        return
            except aiohttp.ClientError:
                pass
            await asyncio.sleep(0.2)
    raise RuntimeError(f"{url} did not become ready")


def percentile(values: list[float], pct: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, round(pct / 100 * (len(ordered) - 1)))]


async def latencies(url: str, key: str, count: int) -> list[float]:
    """Sequential requests from one client; milliseconds each."""
    out = []
    headers = {"Authorization": f"Bearer {key}", "Content-Type": "application/json"}
    async with aiohttp.ClientSession(headers=headers) as http:
        for n in range(count + 20):
            started = time.perf_counter()
            async with http.post(url, data=BODY) as resp:
                await resp.read()
                assert resp.status == 200, resp.status
            if n >= 20:  # warm-up excluded
                out.append((time.perf_counter() - started) * 1000)
    return out


def wrk(url: str, key: str, body: str, seconds: int) -> dict[str, float]:
    binary = shutil.which("wrk")
    if binary is None:
        raise SystemExit("bench needs wrk (apt-get install wrk)")
    with tempfile.NamedTemporaryFile("w", suffix=".lua", delete=False) as fh:
        fh.write(LUA % {"key": key, "body": body})
    out = subprocess.run(
        [binary, "-t1", f"-c{CLIENTS}", f"-d{seconds}s", "--latency", "-s", fh.name, url],
        capture_output=True,
        text=True,
        check=True,
    ).stdout
    Path(fh.name).unlink()
    rps = re.search(r"Requests/sec:\s+([\d.]+)", out)
    total = re.search(r"(\d+) requests in", out)
    non2xx = re.search(r"Non-2xx or 3xx responses: (\d+)", out)
    p99 = re.search(r"^\s+99(?:\.000)?%\s+([\d.]+)(us|ms|s)\s*$", out, re.M)
    scale = {"us": 0.001, "ms": 1.0, "s": 1000.0}
    return {
        "rps": float(rps.group(1)) if rps else 0.0,
        "requests": float(total.group(1)) if total else 0.0,
        "non2xx": float(non2xx.group(1)) if non2xx else 0.0,
        "p99": float(p99.group(1)) * scale[p99.group(2)] if p99 else 0.0,
    }


async def run(quick: bool) -> list[Row]:
    seconds = 5 if quick else 15
    samples = 300 if quick else 1000
    rows: list[Row] = []
    async with scratch() as env:
        stub_port, gw_port = free_port(), free_port()
        stub_url = f"http://127.0.0.1:{stub_port}/v1"
        openai = {"OPENAI_API_KEY": "sk-bench", "OPENAI_BASE_URL": stub_url}
        procs = [
            subprocess.Popen(
                [sys.executable, "-m", "chatbeto_openai_worker.stub", "--port", str(stub_port)]
            ),
            env.spawn(
                "run", "gateway", GATEWAY_PORT=str(gw_port), RATE_LIMIT="100000000/1m", **openai
            ),
            env.spawn("run", "openai-worker", **openai),
            env.spawn("run", "metrics-ingest"),
        ]
        conn = await asyncpg.connect(env.dsn)
        try:
            base = f"http://127.0.0.1:{gw_port}"
            await wait_http(f"{stub_url}/models")
            await wait_http(f"{base}/readyz")
            project = await conn.fetchval(
                "INSERT INTO projects (name) VALUES ('bench') RETURNING id"
            )
            key, _ = await api_keys.create(
                conn, is_admin=False, project_id=project, rate_limit="100000000/1m"
            )
            direct = await latencies(f"{stub_url}/chat/completions", "sk-bench", samples)
            via = await latencies(f"{base}/v1/chat/completions", key, samples)
            d50, d99 = statistics.median(direct), percentile(direct, 99)
            g50, g99 = statistics.median(via), percentile(via, 99)
            rows += [
                Row(SECTION, "stub direct p50 / p99 (1 client)", f"{d50:.2f} / {d99:.2f} ms"),
                Row(SECTION, "via gateway p50 / p99 (1 client)", f"{g50:.2f} / {g99:.2f} ms"),
                Row(SECTION, "added latency p50", f"{g50 - d50:.2f} ms", "<= 3 ms"),
                Row(SECTION, "added latency p99", f"{g99 - d99:.2f} ms", "<= 10 ms"),
            ]
            before = await conn.fetchval("SELECT count(*) FROM conversations")
            for label, body in (("plain", BODY), ("streamed", STREAM_BODY)):
                result = wrk(f"{base}/v1/chat/completions", key, body, seconds)
                rows += [
                    Row(
                        SECTION,
                        f"chat req/s, {label} ({CLIENTS} clients)",
                        f"{result['rps']:,.0f}",
                        ">= 600",
                    ),
                    Row(SECTION, f"  {label} p99 latency", f"{result['p99']:.1f} ms"),
                    Row(SECTION, f"  {label} non-2xx", f"{result['non2xx']:.0f}", "0"),
                ]
            stored = await conn.fetchval("SELECT count(*) FROM conversations") - before
            rows.append(Row(SECTION, "  exchanges stored during the load", f"{stored:,}"))
        finally:
            await conn.close()
            for proc in procs:
                proc.terminate()
            for proc in procs:
                proc.wait(30)
    return rows
