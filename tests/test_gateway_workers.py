"""`GATEWAY_WORKERS=N`: N gateway processes on one port under one supervisor.

Started as an operator starts it (`chatbeto run gateway`), against this test's database and
broker names: the processes share one rate limit exactly, an event right after its session's
201 is accepted whichever process each request reaches, the live feed works whichever process
a dashboard reaches, and SIGTERM stops them all.
"""

from __future__ import annotations

import asyncio
import re
import shutil
import signal
import socket
import subprocess
import sys
from collections import Counter
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import aiohttp
import orjson
import pytest
from chatbeto_metrics_ingest.consumer import MetricsIngest

from tests.conftest import Factory, make_event, wait_for
from tests.test_live import next_sse

WORKERS = 2
# A supervisor and its workers are three Python processes to start and stop: on a loaded
# machine (CI shares two cores) that alone has taken over 45 s.
STOP_GRACE_SECONDS = 120
# Live streams the dashboard test opens at most while looking for one on every worker.
MAX_STREAMS = 64
# Each test starts and stops a supervisor at least once: room for the grace above.
pytestmark = pytest.mark.timeout(360)


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


class Gateway:
    """A supervised gateway: its process, its log lines, its URL."""

    def __init__(self, proc: asyncio.subprocess.Process, port: int) -> None:
        self.proc = proc
        self.port = port
        self.base = f"http://127.0.0.1:{port}"
        self.lines: list[dict[str, Any]] = []
        self.raw: list[str] = []
        self._reader = asyncio.create_task(self._read())

    async def _read(self) -> None:
        assert self.proc.stderr is not None
        async for line in self.proc.stderr:
            text = line.decode(errors="replace")
            self.raw.append(text)
            try:
                self.lines.append(orjson.loads(text))
            except orjson.JSONDecodeError:
                pass

    def workers_serving(self, route: str) -> Counter[int]:
        return Counter(
            line["worker"]
            for line in self.lines
            if line.get("event") == "request" and line.get("route") == route
        )

    def worker_pids(self) -> set[int]:
        children = Path(f"/proc/{self.proc.pid}/task/{self.proc.pid}/children").read_text()
        pids = {int(p) for p in children.split()}
        # multiprocessing's resource tracker is a child too; the workers run spawn_main.
        return {p for p in pids if b"spawn_main" in Path(f"/proc/{p}/cmdline").read_bytes()}

    async def ready(self) -> None:
        async def answers() -> bool:
            if self.proc.returncode is not None:
                pytest.fail(f"gateway exited {self.proc.returncode}: {''.join(self.raw)[-3000:]}")
            try:
                async with (
                    aiohttp.ClientSession() as http,
                    http.get(f"{self.base}/readyz") as resp,
                ):
                    return resp.status == 200
            except aiohttp.ClientError:
                return False

        async def all_workers_up() -> bool:
            # Every worker must be up, not just the first to answer (each probe is a new
            # connection, so it reaches any of them).
            await answers()
            ready = {line["worker"] for line in self.lines if line.get("route") == "/readyz"}
            return len(self.worker_pids()) == WORKERS and len(ready) == WORKERS

        await wait_for(answers, timeout=90, interval=0.3)
        await wait_for(all_workers_up, timeout=90, interval=0.3)


async def start_gateway(env: dict[str, str], **extra: str) -> Gateway:
    port = free_port()
    exe = shutil.which("chatbeto", path=str(Path(sys.executable).parent)) or "chatbeto"
    proc = await asyncio.create_subprocess_exec(
        exe,
        "run",
        "gateway",
        env={**env, "GATEWAY_WORKERS": str(WORKERS), "GATEWAY_PORT": str(port), **extra},
        cwd=str(Path(__file__).parent),  # no .env there
        stdout=asyncio.subprocess.DEVNULL,
        stderr=asyncio.subprocess.PIPE,
    )
    return Gateway(proc, port)


@pytest.fixture
async def gateway_procs(env: dict[str, str]) -> AsyncIterator[Gateway]:
    gateway = await start_gateway(env)
    try:
        await gateway.ready()
        yield gateway
    finally:
        if gateway.proc.returncode is None:
            gateway.proc.send_signal(signal.SIGTERM)
            try:
                await asyncio.wait_for(gateway.proc.wait(), STOP_GRACE_SECONDS)
            except TimeoutError:
                gateway.proc.kill()
                await gateway.proc.wait()
        await gateway._reader


def fresh_connections() -> aiohttp.ClientSession:
    # One TCP connection per request: SO_REUSEPORT spreads connections, not requests.
    return aiohttp.ClientSession(connector=aiohttp.TCPConnector(force_close=True))


async def test_workers_share_one_rate_limit_and_accept_events_after_the_201(
    gateway_procs: Gateway, factory: Factory
) -> None:
    limit = 30
    project = await factory.project()
    limited = await factory.key(project, rate_limit=f"{limit}/1h")
    events_key = await factory.key(project)
    gpt = await factory.gpt(project_id=project)
    base = gateway_procs.base
    statuses: list[int] = []
    accepted_events: list[int] = []

    async def session_then_event(i: int, http: aiohttp.ClientSession) -> None:
        async with http.post(
            f"{base}/api/sessions",
            json={"gpt_id": gpt, "usuario_id": f"u{i}"},
            headers={"X-API-Key": limited},
        ) as resp:
            statuses.append(resp.status)
            if resp.status != 201:
                assert resp.status == 429, await resp.text()
                assert "Retry-After" in resp.headers
                return
            session = (await resp.json())["id"]
        # At once, on another connection (so possibly another worker): never refused.
        async with http.post(
            f"{base}/api/events", json=make_event(session), headers={"X-API-Key": events_key}
        ) as resp:
            accepted_events.append(resp.status)

    async with fresh_connections() as http, asyncio.TaskGroup() as tasks:
        for i in range(2 * limit):
            tasks.create_task(session_then_event(i, http))

    assert Counter(statuses) == {201: limit, 429: limit}
    assert accepted_events == [202] * limit

    # The requests really were spread: both workers answered some (logged per request).
    async def both_served() -> bool:
        return set(gateway_procs.workers_serving("/api/sessions")) == set(range(WORKERS))

    await wait_for(both_served, timeout=30)


async def test_live_feed_works_whichever_worker_the_dashboard_reaches(
    gateway_procs: Gateway, factory: Factory, ingest: MetricsIngest
) -> None:
    project = await factory.project()
    key = await factory.key(project)
    gpt = await factory.gpt(project_id=project)
    base = gateway_procs.base
    headers = {"X-API-Key": key}
    async with fresh_connections() as http:
        responses: list[aiohttp.ClientResponse] = []
        try:
            # The kernel picks a worker per connection by hash: open streams until every
            # worker holds some (8 at a time; 8 all on one worker happen 1 run in 128).
            holders: set[int] = set()
            while len(holders) < WORKERS and len(responses) < MAX_STREAMS:
                for _ in range(8):
                    resp = await http.get(f"{base}/api/gpts/{gpt}/live", headers=headers)
                    responses.append(resp)
                    assert resp.status == 200
                    assert (await next_sse(resp, timeout=30))[0] == "ready"
                holders = await asyncio.to_thread(connection_owners, gateway_procs.port)
                assert holders <= gateway_procs.worker_pids()
            assert len(holders) == WORKERS, holders

            async with http.post(
                f"{base}/api/sessions", json={"gpt_id": gpt, "usuario_id": "u"}, headers=headers
            ) as resp:
                session = (await resp.json())["id"]
            sent = set()
            for n in range(3):
                async with http.post(
                    f"{base}/api/events", json=make_event(session, latency_ms=n), headers=headers
                ) as resp:
                    assert resp.status == 202
                    sent.add((await resp.json())["id"])

            async def receives_all(resp: Any) -> None:
                seen: set[str] = set()
                while not sent <= seen:
                    event, data = await next_sse(resp, timeout=60)
                    if event == "events":
                        seen |= {e["id"] for e in data["events"]}

            async with asyncio.TaskGroup() as tasks:
                for resp in responses:
                    tasks.create_task(receives_all(resp))
        finally:
            for resp in responses:
                resp.close()


def connection_owners(port: int) -> set[int]:
    """Pids of the processes holding accepted connections on `port`."""
    out = subprocess.run(
        ["ss", "-Htnp", "state", "established", f"( sport = :{port} )"],
        capture_output=True,
        text=True,
        check=True,
    ).stdout
    return {int(pid) for pid in re.findall(r"pid=(\d+)", out)}


async def test_sigterm_stops_every_worker(env: dict[str, str]) -> None:
    gateway = await start_gateway(env)
    try:
        await gateway.ready()
        pids = gateway.worker_pids()
        assert len(pids) == WORKERS
        gateway.proc.send_signal(signal.SIGTERM)
        assert await asyncio.wait_for(gateway.proc.wait(), STOP_GRACE_SECONDS) == 0
        for pid in pids:
            assert not Path(f"/proc/{pid}").exists(), f"worker {pid} outlived the supervisor"
        await gateway._reader
        assert any(line.get("event") == "gateway stopped" for line in gateway.lines)
        assert not any("Traceback" in line for line in gateway.raw), "".join(gateway.raw)
    finally:
        if gateway.proc.returncode is None:
            gateway.proc.kill()
            await gateway.proc.wait()


async def test_a_taken_port_stops_the_supervisor_with_one_line(env: dict[str, str]) -> None:
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        gateway = await start_gateway(env, GATEWAY_PORT=str(port))
        assert await asyncio.wait_for(gateway.proc.wait(), 60) != 0
        await gateway._reader
    assert len(gateway.raw) == 1 and "GATEWAY_PORT" in gateway.raw[0], gateway.raw


async def test_a_worker_that_cannot_start_stops_the_gateway(
    env: dict[str, str], database: str
) -> None:
    missing = database.rsplit("/", 1)[0] + "/cbt_missing_" + database.rsplit("_", 1)[1]
    gateway = await start_gateway(env, DATABASE_URL=missing)
    assert await asyncio.wait_for(gateway.proc.wait(), STOP_GRACE_SECONDS) == 1
    await gateway._reader
    text = "".join(gateway.raw)
    assert "Traceback" not in text, text
    assert "does not exist" in text and "chatbeto migrate" in text, text
    assert any(
        line.get("event") == "gateway worker exited; stopping the others" for line in gateway.lines
    )
