"""Proxy benchmark (issue 12 item 5): chatbeto side by side with the upstream called directly
and with LiteLLM's proxy, in one run, against the same instant upstream (the project's stub).

- chatbeto: gateway, openai-worker and metrics-ingest as processes, as an operator runs them;
  the key belongs to a project, so every exchange is stored and recorded as a metrics event;
- LiteLLM: `litellm --num_workers 2`, no database (its fastest setup), installed from PyPI on
  first use into a bench-only venv (`bench/.venv-litellm`, outside the project's `.venv`);
- the stub alone, for the direct figures;
- the design's floor (`bench/floor.py`): HTTP -> RabbitMQ -> the worker's SDK call -> RabbitMQ
  -> HTTP with nothing else, so the table shows what the fixed design costs by itself and what
  chatbeto's own work (keys, limits, validation, storage, metrics, durability) adds on top.

Measured: 1 client, sequential (aiohttp): p50/p99 of a plain chat completion and the time to the
first streamed token, minus the same against the stub; 32 clients (wrk): req/s plain and
streamed (`stream_options.include_usage`).
"""

from __future__ import annotations

import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import aiohttp
import asyncpg
import orjson
from chatbeto import api_keys

from bench.common import AMQP_URL, Row, ensure_wrk, free_port, run_wrk, scratch, wait_http

SECTION = "proxy"
CLIENTS = 32
WARMUP = 20
LITELLM_VENV = Path(__file__).parent / ".venv-litellm"
LITELLM_SPEC = "litellm[proxy]"
LITELLM_WORKERS = 2
# LiteLLM refuses to start without a master key (no database: it is the only key).
LITELLM_KEY = "sk-bench-litellm-" + "0123456789abcdef" * 2
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
LITELLM_CONFIG = """
model_list:
  - model_name: gpt-4
    litellm_params:
      model: openai/gpt-4
      api_base: %(stub)s
      api_key: sk-bench
litellm_settings:
  drop_params: false
  telemetry: false
"""


def percentile(values: list[float], pct: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, round(pct / 100 * (len(ordered) - 1)))]


def litellm_exe() -> str:
    """uvicorn of the bench-only LiteLLM venv, created on first use. LiteLLM's own CLI starts
    uvicorn with a 5 s worker health check, which its workers miss while importing on a busy
    machine (they are killed in a loop), so the bench starts its app with uvicorn itself."""
    exe = LITELLM_VENV / "bin" / "uvicorn"
    if not (LITELLM_VENV / "bin" / "litellm").exists():
        print(f"installing {LITELLM_SPEC} into {LITELLM_VENV} (first run only) ...", flush=True)
        subprocess.run([sys.executable, "-m", "venv", str(LITELLM_VENV)], check=True)
        subprocess.run(
            [str(LITELLM_VENV / "bin" / "pip"), "install", "-q", LITELLM_SPEC], check=True
        )
    return str(exe)


def first_token(line: bytes) -> bool:
    if not line.startswith(b"data: {"):
        return False
    chunk = orjson.loads(line[6:])
    return any((c.get("delta") or {}).get("content") for c in chunk.get("choices") or ())


async def latencies(url: str, key: str, count: int, *, streamed: bool = False) -> list[float]:
    """Sequential requests from one client, in ms: the whole answer, or (streamed) the time
    to the first content token."""
    out = []
    headers = {"Authorization": f"Bearer {key}", "Content-Type": "application/json"}
    async with aiohttp.ClientSession(headers=headers) as http:
        for n in range(count + WARMUP):
            started = time.perf_counter()
            seen = None
            async with http.post(url, data=STREAM_BODY if streamed else BODY) as resp:
                assert resp.status == 200, (url, resp.status, await resp.text())
                if streamed:
                    async for line in resp.content:
                        if seen is None and first_token(line):
                            seen = time.perf_counter()
                await resp.read()
            if n >= WARMUP:
                out.append(((seen or time.perf_counter()) - started) * 1000)
    return out


def _ms(values: list[float]) -> str:
    return f"{statistics.median(values):.2f} / {percentile(values, 99):.2f} ms"


async def _one_client(targets: dict[str, tuple[str, str]], samples: int) -> list[Row]:
    rows: list[Row] = []
    plain = {name: await latencies(url, key, samples) for name, (url, key) in targets.items()}
    ttft = {
        name: await latencies(url, key, samples, streamed=True)
        for name, (url, key) in targets.items()
    }
    d50, d99 = statistics.median(plain["direct"]), percentile(plain["direct"], 99)
    t50 = statistics.median(ttft["direct"])
    for name in targets:
        rows.append(Row(SECTION, f"1 client p50 / p99, {name}", _ms(plain[name])))
    for name in targets:
        rows.append(Row(SECTION, f"1 client first token p50 / p99, {name}", _ms(ttft[name])))
    targets_of = {"chatbeto": ("<= 2 ms", "<= 8 ms", "<= 3 ms")}
    if "floor" in targets:
        f50, f99 = statistics.median(plain["floor"]), percentile(plain["floor"], 99)
        rows += [
            Row(
                SECTION,
                "chatbeto over the floor p50 / p99",
                f"{statistics.median(plain['chatbeto']) - f50:.2f} / "
                f"{percentile(plain['chatbeto'], 99) - f99:.2f} ms",
            ),
            Row(
                SECTION,
                "chatbeto over the floor, first token p50",
                f"{statistics.median(ttft['chatbeto']) - statistics.median(ttft['floor']):.2f} ms",
            ),
        ]
    for name in targets:
        if name == "direct":
            continue
        p50_t, p99_t, ttft_t = targets_of.get(name, ("", "", ""))
        added50 = statistics.median(plain[name]) - d50
        added99 = percentile(plain[name], 99) - d99
        rows += [
            Row(SECTION, f"added latency p50, {name}", f"{added50:.2f} ms", p50_t),
            Row(SECTION, f"added latency p99, {name}", f"{added99:.2f} ms", p99_t),
            Row(
                SECTION,
                f"added time to first token p50, {name}",
                f"{statistics.median(ttft[name]) - t50:.2f} ms",
                ttft_t,
            ),
        ]
    return rows


def _load(targets: dict[str, tuple[str, str]], seconds: int) -> list[Row]:
    rows: list[Row] = []
    wrk = ensure_wrk()
    rps: dict[tuple[str, str], float] = {}
    for label, body in (("plain", BODY), ("streamed", STREAM_BODY)):
        for name, (url, key) in targets.items():
            result = run_wrk(wrk, url, LUA % {"key": key, "body": body}, seconds, CLIENTS)
            rps[(name, label)] = result["rps"]
            rows += [
                Row(SECTION, f"req/s {label}, {CLIENTS} clients, {name}", f"{result['rps']:,.0f}"),
                Row(
                    SECTION,
                    f"  p99 / non-2xx, {name}",
                    f"{result.get('p99', 0):.1f} ms / "
                    f"{result['non2xx'] + result['socket_errors']:.0f}",
                    "" if name == "direct" else "0 non-2xx",
                ),
            ]
        if rps.get(("litellm", label)):
            for name in ("floor", "chatbeto"):
                if (name, label) in rps:
                    ratio = rps[(name, label)] / rps[("litellm", label)]
                    target = ">= 3x" if name == "chatbeto" else ""
                    rows.append(Row(SECTION, f"{name} / LiteLLM, {label}", f"{ratio:.2f}x", target))
    return rows


async def run(quick: bool) -> list[Row]:
    seconds = 5 if quick else 15
    samples = 200 if quick else 1000
    rows: list[Row] = []
    litellm = litellm_exe()
    async with scratch() as env:
        stub_port, gw_port, lite_port = free_port(), free_port(), free_port()
        floor_port, floor_queue = free_port(), f"{env.namespace}floor"
        stub_url = f"http://127.0.0.1:{stub_port}/v1"
        openai = {"OPENAI_API_KEY": "sk-bench", "OPENAI_BASE_URL": stub_url}
        config = tempfile.NamedTemporaryFile("w", suffix=".yaml", delete=False)
        config.write(LITELLM_CONFIG % {"stub": stub_url})
        config.close()
        procs = [
            subprocess.Popen(  # quiet: wrk's closing connections are tracebacks there
                [sys.executable, "-m", "chatbeto_tools.stub", "--port", str(stub_port)],
                stdout=subprocess.DEVNULL,
                stderr=subprocess.DEVNULL,
            ),
            env.spawn(
                "run", "gateway", GATEWAY_PORT=str(gw_port), RATE_LIMIT="100000000/1m", **openai
            ),
            env.spawn("run", "openai-worker", **openai),
            env.spawn("run", "metrics-ingest"),
            *(
                subprocess.Popen(
                    [
                        *(sys.executable, "-m", "bench.floor", role, "--amqp", AMQP_URL),
                        *("--queue", floor_queue, "--port", str(floor_port)),
                    ],
                    env=env.env(**openai),
                )
                for role in ("front", "back")
            ),
            subprocess.Popen(
                [
                    litellm,
                    "litellm.proxy.proxy_server:app",
                    "--host",
                    "127.0.0.1",
                    "--port",
                    str(lite_port),
                    "--workers",
                    str(LITELLM_WORKERS),
                    "--timeout-worker-healthcheck",
                    "300",
                    "--log-level",
                    "warning",
                ],
                env={
                    **os.environ,
                    "CONFIG_FILE_PATH": config.name,
                    "LITELLM_MASTER_KEY": LITELLM_KEY,
                    # No network here: the price map shipped with LiteLLM, not a fetch.
                    "LITELLM_LOCAL_MODEL_COST_MAP": "True",
                },
                stdout=subprocess.DEVNULL,
                stderr=subprocess.DEVNULL,
            ),
        ]
        conn = await asyncpg.connect(env.dsn)
        try:
            base = f"http://127.0.0.1:{gw_port}"
            lite = f"http://127.0.0.1:{lite_port}"
            await wait_http(f"{stub_url}/models", 60, ok=(200, 401, 405))
            await wait_http(f"{base}/readyz", 60, ok=(200, 401, 405))
            floor = f"http://127.0.0.1:{floor_port}"
            await wait_http(f"{floor}/healthz", 60, ok=(200,))
            await wait_http(f"{lite}/health/liveliness", 300, ok=(200,))
            project = await conn.fetchval(
                "INSERT INTO projects (name) VALUES ('bench') RETURNING id"
            )
            key, _ = await api_keys.create(
                conn, is_admin=False, project_id=project, rate_limit="100000000/1m"
            )
            targets = {
                "direct": (f"{stub_url}/chat/completions", "sk-bench"),
                "floor": (f"{floor}/v1/chat/completions", ""),
                "chatbeto": (f"{base}/v1/chat/completions", key),
                "litellm": (f"{lite}/v1/chat/completions", LITELLM_KEY),
            }
            one, five, _ = os.getloadavg()
            rows.append(
                Row(SECTION, "machine load at start", f"{one:.1f} / {five:.1f}", "quiet for final")
            )
            rows += await _one_client(targets, samples)
            before = await conn.fetchval("SELECT count(*) FROM conversations")
            rows += _load(targets, seconds)
            stored = await conn.fetchval("SELECT count(*) FROM conversations") - before
            rows.append(Row(SECTION, "exchanges stored by chatbeto during the load", f"{stored:,}"))
        finally:
            await conn.close()
            for proc in procs:
                proc.terminate()
            for proc in procs:
                proc.wait(45)  # the gateway may take its whole 30 s shutdown grace
            Path(config.name).unlink()
    return rows
