"""`make dev` (`chatbeto dev`): health ports that never collide, the webhook secret made once,
the banner (and README following it), and Ctrl-C stopping everything within seconds."""

from __future__ import annotations

import asyncio
import re
import signal
import socket
import sys
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import aiohttp
import pytest
from chatbeto.settings import MetricsIngestSettings
from chatbeto_tools import dev

CHATBETO = str(Path(sys.executable).with_name("chatbeto"))
README = Path(__file__).parent.parent / "README.md"
START_TIMEOUT_SECONDS = 180.0
# "Ctrl-C stops everything within a few seconds": the runner's grace is 5 s; a busy machine
# gets some slack on top.
STOP_TIMEOUT_SECONDS = 15.0


@contextmanager
def occupied(port: int) -> Iterator[None]:
    """Hold `port` like another program would (if someone already does, it is taken anyway)."""
    s = socket.socket()
    try:
        s.bind(("127.0.0.1", port))
        s.listen()
    except OSError:
        pass
    try:
        assert not dev.is_free("127.0.0.1", port)
        yield
    finally:
        s.close()


def test_each_worker_gets_its_own_port_and_variables_win() -> None:
    with occupied(8082):
        ports = dev.plan_ports(
            {"OPENAI_WORKER_HEALTH_PORT": "45678", "WEBHOOK_HEALTH_PORT": "45680"},
            {"WEBHOOK_HEALTH_PORT": "45679", "METRICS_INGEST_HEALTH_PORT": ""},
        )
    assert ports["openai-worker"] == dev.Port(45678, "OPENAI_WORKER_HEALTH_PORT")
    assert ports["webhook"] == dev.Port(45680, "WEBHOOK_HEALTH_PORT")  # environment over .env
    moved = ports["metrics-ingest"]
    assert moved.why == "8082 was taken"
    assert moved.number not in (8082, 45678, 45680)


def test_dotenv_sets_a_port_and_a_taken_variable_port_is_kept() -> None:
    with occupied(8083):
        ports = dev.plan_ports({}, {"WEBHOOK_HEALTH_PORT": "8083"})
    # The user asked for it: the service reports it taken, naming the variable.
    assert ports["webhook"] == dev.Port(8083, "WEBHOOK_HEALTH_PORT")
    numbers = [p.number for p in ports.values()]
    assert len(set(numbers)) == 3


def test_all_defaults_taken_get_three_distinct_free_ports() -> None:
    with occupied(8081), occupied(8082), occupied(8083):
        ports = dev.plan_ports({}, {})
    numbers = {p.number for p in ports.values()}
    assert len(numbers) == 3
    assert not numbers & {8081, 8082, 8083}


def test_webhook_secret_is_made_once_and_kept_in_dotenv(tmp_path: Path) -> None:
    dotenv = tmp_path / ".env"
    dotenv.write_text("GATEWAY_PORT=9999")  # no trailing newline: must not be glued to ours
    secret, made = dev.ensure_webhook_secret({}, dotenv)
    assert made
    assert secret.startswith("whsec_")
    assert dev.ensure_webhook_secret({}, dotenv) == (secret, False)
    assert dev.dotenv_values(dotenv) == {"GATEWAY_PORT": "9999", "WEBHOOK_SECRET": secret}
    assert dev.ensure_webhook_secret({"WEBHOOK_SECRET": "mine"}, dotenv) == ("mine", False)


def test_readme_quickstart_follows_the_banner_step_for_step() -> None:
    ports = {name: dev.Port(default, "default") for name, (_, default) in dev.WORKER_PORTS.items()}
    text = dev.banner(
        dev.DEFAULT_BASE_URL, "http://127.0.0.1:8099/v1", ports, True, ".venv/bin/chatbeto", True
    )
    steps = text.split("next, in another terminal:\n", 1)[1].split("\n\n", 1)[0]
    quickstart = README.read_text().split("## Quickstart", 1)[1].split("\n## ", 1)[0]
    for line in steps.splitlines():
        assert line.strip() in quickstart, line
    for url in ("/dashboard", "/openapi.json", "http://127.0.0.1:8080"):
        assert url in text and url in quickstart


@pytest.mark.skipif(
    "metrics_ingest_health_port" not in str(MetricsIngestSettings.model_fields["health_port"]),
    reason="the services do not read METRICS_INGEST_HEALTH_PORT yet (issue 13 item 1, runtime)",
)
async def test_dev_survives_a_taken_worker_port_and_stops_within_seconds(
    env: dict[str, str], tmp_path: Path
) -> None:
    env.pop("HEALTH_PORT", None)
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        env["GATEWAY_PORT"] = str(s.getsockname()[1])
    with occupied(8082):
        proc = await asyncio.create_subprocess_exec(
            CHATBETO,
            "dev",
            env=env,
            cwd=tmp_path,  # its .env is made here, not in the repository
            stdout=asyncio.subprocess.DEVNULL,
            stderr=asyncio.subprocess.PIPE,
        )
        assert proc.stderr is not None
        seen: list[str] = []
        try:
            async with asyncio.timeout(START_TIMEOUT_SECONDS):
                while not any(line.startswith("  webhooks") for line in seen):
                    raw = await proc.stderr.readline()
                    assert raw, "chatbeto dev ended early:\n" + "".join(seen)
                    seen.append(raw.decode())
            banner = "".join(seen)
            assert "chatbeto is running" in banner, banner
            workers = next(line for line in seen if line.startswith("  workers"))
            found = dict(re.findall(r"([a-z-]+) :(\d+)", workers))
            assert set(found) == set(dev.WORKER_PORTS)
            assert found["metrics-ingest"] != "8082"
            assert "8082 was taken" in workers
            async with aiohttp.ClientSession() as http:
                for port in found.values():
                    async with http.get(f"http://127.0.0.1:{port}/healthz") as resp:
                        assert resp.status == 200
            assert "WEBHOOK_SECRET=whsec_" in (tmp_path / ".env").read_text()
            drain = asyncio.create_task(proc.stderr.read())  # keep the pipe flowing
            started = time.monotonic()
            proc.send_signal(signal.SIGINT)
            code = await asyncio.wait_for(proc.wait(), STOP_TIMEOUT_SECONDS)
            elapsed = time.monotonic() - started
            tail = (await drain).decode()
            assert code == 0, tail
            assert "all services stopped" in tail
            assert "did not stop in time" not in tail
            assert elapsed < STOP_TIMEOUT_SECONDS
        finally:
            if proc.returncode is None:
                proc.kill()
                await proc.wait()


@pytest.mark.parametrize("variable", ["GATEWAY_PORT"])
async def test_a_taken_gateway_port_is_one_line(
    env: dict[str, str], tmp_path: Path, variable: str
) -> None:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        s.listen()
        env[variable] = str(s.getsockname()[1])
        proc = await asyncio.create_subprocess_exec(
            CHATBETO,
            "dev",
            env=env,
            cwd=tmp_path,
            stdout=asyncio.subprocess.PIPE,
            stderr=asyncio.subprocess.PIPE,
        )
        _, err = await asyncio.wait_for(proc.communicate(), 60)
    text = err.decode()
    assert proc.returncode != 0
    assert "Traceback" not in text
    last = text.strip().splitlines()[-1]
    assert last.startswith("chatbeto: port taken") and variable in last
