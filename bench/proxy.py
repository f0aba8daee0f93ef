"""Proxy benchmark (issue 3 point 10): what the gateway adds over calling OpenAI directly.

The local stub answers instantly. Every service runs as a process, as an operator runs it
(gateway, openai-worker, metrics-ingest), against a scratch database and broker namespace;
every exchange through the gateway is stored (the key belongs to a project).

- added latency at 1 client: p50/p99 of `POST /v1/chat/completions` through the gateway minus
  the same request sent to the stub directly (same client, sequential);
- chat requests/s at 32 clients (wrk), plain and streamed.
"""

from __future__ import annotations

import statistics
import subprocess
import sys
import time

import aiohttp
import asyncpg
from chatbeto import api_keys

from bench.common import Row, ensure_wrk, free_port, run_wrk, scratch, wait_http

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
            await wait_http(f"{stub_url}/models", 60, ok=(200, 401, 405))
            await wait_http(f"{base}/readyz", 60, ok=(200, 401, 405))
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
                result = run_wrk(
                    ensure_wrk(),
                    f"{base}/v1/chat/completions",
                    LUA % {"key": key, "body": body},
                    seconds,
                    CLIENTS,
                )
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
                proc.wait(45)  # the gateway may take its whole 30 s shutdown grace
    return rows
