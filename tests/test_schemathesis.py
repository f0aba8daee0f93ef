"""A schemathesis pass over `/openapi.json` (issue 11): no input makes the gateway answer 500.

The real gateway process (`chatbeto run gateway`) and an openai-worker against the OpenAI stub,
with an admin key so requests get past auth. Bounded and reproducible: the `examples` and
`fuzzing` phases only, a fixed number of cases per operation, a fixed seed, no example database.
502 (the upstream refused), 503 (a dependency is away) and 504 (past the deadline) are contract
answers; any other 5xx fails.
"""

from __future__ import annotations

import asyncio
import os
import re
import signal
import subprocess
import sys
from pathlib import Path

import aiohttp
import pytest

from tests.conftest import Factory, wait_for
from tests.rabbit_node import free_port

pytestmark = [pytest.mark.slow, pytest.mark.timeout(900)]
BIN = Path(sys.executable).parent
EXAMPLES_PER_OPERATION = 20
SEED = 20261201
RUN_TIMEOUT_SECONDS = 720.0
CONFIG = """\
[checks.not_a_server_error]
expected-statuses = ["2xx", "3xx", "4xx", "502", "503", "504"]
"""


def spawn(args: list[str], env: dict[str, str], log: Path) -> subprocess.Popen[bytes]:
    with open(log, "ab") as sink:
        return subprocess.Popen(
            [str(BIN / "chatbeto"), *args], env=env, stdout=sink, stderr=subprocess.STDOUT
        )


async def stop(proc: subprocess.Popen[bytes]) -> None:
    if proc.poll() is None:
        proc.send_signal(signal.SIGTERM)
    try:
        await asyncio.to_thread(proc.wait, 60)
    except subprocess.TimeoutExpired:
        proc.kill()


def failures(output: str) -> str:
    """The run's FAILURES / ERRORS sections (what to fix), not its progress lines."""
    match = re.search(r"^=+ (ERRORS|FAILURES) =+$.*", output, re.M | re.S)
    return (match.group(0) if match else output)[-8000:]


async def test_no_input_makes_the_gateway_answer_500(
    database: str,
    amqp_url: str,
    namespace: str,
    openai_stub: str,
    factory: Factory,
    tmp_path: Path,
) -> None:
    admin = await factory.key(admin=True)
    await factory.gpt(project_id=await factory.project())
    port = free_port()
    env = {k: v for k, v in os.environ.items() if not k.startswith(("OPENAI_", "WEBHOOK_"))}
    env.update(
        DATABASE_URL=database,
        AMQP_URL=amqp_url,
        AMQP_NAMESPACE=namespace,
        GATEWAY_PORT=str(port),
        OPENAI_WORKER_HEALTH_PORT="0",
        LOG_LEVEL="warning",
        OPENAI_API_KEY="sk-test",
        OPENAI_BASE_URL=openai_stub,
        OPENAI_TIMEOUT="5",
        # One caller sends thousands of requests: a limit would answer 429 and keep the fuzzer
        # away from the routes behind it.
        RATE_LIMIT="1000000/1m",
        INGEST_RATE_LIMIT="1000000/1m",
    )
    procs = [
        spawn(["run", "openai-worker"], env, tmp_path / "openai-worker.log"),
        spawn(["run", "gateway"], env, tmp_path / "gateway.log"),
    ]
    try:
        async with aiohttp.ClientSession() as http:

            async def ready() -> bool:
                try:
                    async with http.get(f"http://127.0.0.1:{port}/readyz") as resp:
                        return resp.status == 200
                except aiohttp.ClientError:
                    return False

            await wait_for(ready, timeout=120, interval=0.5)
        (tmp_path / "schemathesis.toml").write_text(CONFIG)
        run = await asyncio.create_subprocess_exec(
            str(BIN / "st"),
            "run",
            f"http://127.0.0.1:{port}/openapi.json",
            "--header",
            f"X-API-Key: {admin}",
            "--checks",
            "not_a_server_error",
            "--phases",
            "examples,fuzzing",
            "--max-examples",
            str(EXAMPLES_PER_OPERATION),
            "--seed",
            str(SEED),
            "--generation-database",
            "none",
            "--request-timeout",
            "30",
            "--workers",
            "2",
            # An event stream never ends: every case would wait out the request timeout. Its
            # answers (401, 404, the stream) are tested in test_live.py.
            "--exclude-path",
            "/api/gpts/{gpt_id}/live",
            "--no-color",
            cwd=tmp_path,  # reads schemathesis.toml from here
            env=env,
            stdout=asyncio.subprocess.PIPE,
            stderr=asyncio.subprocess.STDOUT,
        )
        out, _ = await asyncio.wait_for(run.communicate(), RUN_TIMEOUT_SECONDS)
        output = out.decode(errors="replace")
        assert run.returncode == 0, failures(output)
        assert "Tested:" in output, output[-2000:]
    finally:
        for proc in reversed(procs):
            await stop(proc)
