"""Worker health ports (contract 3.0): a service's own variable wins over HEALTH_PORT, 0 picks a
free port, and a taken port stops the process with one line naming the port and the variable."""

from __future__ import annotations

import asyncio
import json
import os
import signal
import socket
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import aiohttp
import pytest
from chatbeto.settings import (
    MetricsIngestSettings,
    OpenAIWorkerSettings,
    WebhookSettings,
    WorkerSettings,
)

from tests.conftest import wait_for

CHATBETO = str(Path(sys.executable).with_name("chatbeto"))
WORKERS: dict[str, type[WorkerSettings]] = {
    "openai-worker": OpenAIWorkerSettings,
    "metrics-ingest": MetricsIngestSettings,
    "webhook": WebhookSettings,
}
PORT_VARIABLES = {cls.HEALTH_PORT_VARIABLE for cls in WORKERS.values()}


@pytest.fixture
def clean_ports(monkeypatch: pytest.MonkeyPatch) -> pytest.MonkeyPatch:
    for name in (*PORT_VARIABLES, "HEALTH_PORT"):
        monkeypatch.delenv(name, raising=False)
    return monkeypatch


def test_each_worker_has_its_own_variable_that_wins_over_health_port(
    clean_ports: pytest.MonkeyPatch,
) -> None:
    assert PORT_VARIABLES == {
        "OPENAI_WORKER_HEALTH_PORT",
        "METRICS_INGEST_HEALTH_PORT",
        "WEBHOOK_HEALTH_PORT",
    }
    defaults = {name: cls(_env_file=None).health_port for name, cls in WORKERS.items()}
    assert defaults == {"openai-worker": 8081, "metrics-ingest": 8082, "webhook": 8083}
    clean_ports.setenv("HEALTH_PORT", "28080")
    clean_ports.setenv("METRICS_INGEST_HEALTH_PORT", "28082")
    clean_ports.setenv("WEBHOOK_HEALTH_PORT", "0")
    ports = {name: cls(_env_file=None).health_port for name, cls in WORKERS.items()}
    assert ports == {"openai-worker": 28080, "metrics-ingest": 28082, "webhook": 0}


@pytest.fixture
def taken_port() -> Iterator[int]:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        sock.listen()
        yield sock.getsockname()[1]


@pytest.mark.parametrize("service", sorted(WORKERS))
def test_a_taken_port_stops_the_worker_with_one_line_naming_port_and_variable(
    service: str, taken_port: int, tmp_path: Path
) -> None:
    variable = WORKERS[service].HEALTH_PORT_VARIABLE
    env = {k: v for k, v in os.environ.items() if k not in PORT_VARIABLES}
    env.update({variable: str(taken_port), "HEALTH_PORT": "1"})
    done = subprocess.run(
        [CHATBETO, "run", service],
        env=env,
        cwd=tmp_path,  # no .env here
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert done.returncode == 2
    lines = done.stderr.strip().splitlines()
    assert len(lines) == 1, done.stderr
    assert str(taken_port) in lines[0]
    assert variable in lines[0]
    assert "in use" in lines[0]


async def test_port_zero_binds_a_free_port_logs_it_and_serves_readyz(
    env: dict[str, str], tmp_path: Path
) -> None:
    log = tmp_path / "ingest.log"
    with open(log, "ab") as sink:
        proc = subprocess.Popen(
            [CHATBETO, "run", "metrics-ingest"],
            env={**env, "METRICS_INGEST_HEALTH_PORT": "0", "HEALTH_PORT": "1"},
            stdout=subprocess.DEVNULL,
            stderr=sink,
        )

    async def bound_port() -> int:
        for line in log.read_text().splitlines():
            if line.startswith("{"):
                record = json.loads(line)
                if record.get("event") == "worker started":
                    return int(record["health_port"])
        return 0

    try:
        port = await wait_for(bound_port, timeout=60)
        assert port not in (0, 1)
        async with aiohttp.ClientSession() as http:

            async def ready() -> bool:
                async with http.get(f"http://127.0.0.1:{port}/readyz") as resp:
                    body = await resp.json()
                    return resp.status == 200 and "consumer:" in " ".join(body["checks"])

            assert await wait_for(ready, timeout=60)
    finally:
        proc.send_signal(signal.SIGTERM)
        assert await asyncio.to_thread(proc.wait, 60) == 0
