"""Webhooks across process and network boundaries: broker outage, the simulator CLI, and
`chatbeto run webhook` as a process."""

from __future__ import annotations

import asyncio
import json
import os
import signal
import sys
from pathlib import Path
from typing import TYPE_CHECKING, Any
from urllib.parse import urlsplit

import asyncpg
from chatbeto.settings import GatewaySettings
from pytest_aiohttp import AiohttpClient

from tests.conftest import Client, Factory, wait_for
from tests.test_webhook_support import (
    CHATGPT,
    LEGACY_SECRET,
    STD_SECRET,
    Proxy,
    conversation,
    deliveries,
    legacy,
)

if TYPE_CHECKING:
    from chatbeto_webhook.consumer import WebhookService

pytest_plugins = ["tests.test_webhook_support"]


async def test_broker_down_answers_503(
    aiohttp_client: AiohttpClient, hook_settings: GatewaySettings, amqp_url: str
) -> None:
    from chatbeto_gateway.app import create_app

    parts = urlsplit(amqp_url)
    proxy = Proxy(parts.hostname or "127.0.0.1", parts.port or 5672)
    port = await proxy.start()
    via_proxy = amqp_url.replace(
        parts.netloc, f"{parts.username}:{parts.password}@127.0.0.1:{port}"
    )
    client = await aiohttp_client(
        create_app(hook_settings.model_copy(update={"amqp_url": via_proxy}))
    )
    body, headers = legacy("conversation.created", conversation(1))
    assert (await client.post(CHATGPT, data=body, headers=headers)).status == 202
    await proxy.cut()
    body, headers = legacy("conversation.created", conversation(1, "c-2"))
    resp = await client.post(CHATGPT, data=body, headers=headers)
    assert resp.status == 503
    assert (await resp.json())["error"]["code"] == "broker_unavailable"


async def run_cli(*args: str, env: dict[str, str] | None = None) -> tuple[int, str]:
    proc = await asyncio.create_subprocess_exec(
        sys.executable,
        "-m",
        "chatbeto_tools.cli",
        *args,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.STDOUT,
        env=env,
    )
    out, _ = await proc.communicate()
    assert proc.returncode is not None
    return proc.returncode, out.decode()


async def test_simulator_signs_as_the_gateway_verifies(
    hooks: Client, worker: WebhookService, factory: Factory, db: asyncpg.Connection, tmp_path: Path
) -> None:
    project = await factory.project()
    url = str(hooks.make_url(CHATGPT))
    for n, (scheme, secret) in enumerate((("legacy", LEGACY_SECRET), ("standard", STD_SECRET))):
        path = tmp_path / f"body{n}.json"
        path.write_text(json.dumps(conversation(project, f"sim-{n}")))
        code, out = await run_cli(
            "webhook",
            "send",
            "--url",
            url,
            "--secret",
            secret,
            "--event",
            "conversation.created",
            "--file",
            str(path),
            "--scheme",
            scheme,
        )
        assert code == 0, out
        assert out.startswith("202 ")
    rows = await deliveries(db, 2)
    assert [r["outcome"] for r in rows] == ["processed", "processed"]
    assert await db.fetchval("SELECT count(*) FROM conversations") == 2
    code, out = await run_cli(
        "webhook",
        "send",
        "--url",
        url,
        "--secret",
        "wrong",
        "--event",
        "conversation.created",
        "--file",
        str(path),
    )
    assert code == 1 and out.startswith("401 ")


async def test_webhook_service_runs_as_a_process(
    hooks: Client, env: dict[str, str], factory: Factory, db: asyncpg.Connection
) -> None:
    proc = await asyncio.create_subprocess_exec(
        sys.executable,
        "-m",
        "chatbeto_tools.cli",
        "run",
        "webhook",
        stdout=asyncio.subprocess.DEVNULL,
        stderr=asyncio.subprocess.PIPE,
        env=env,
    )
    try:
        project = await factory.project()
        body, headers = legacy("conversation.created", conversation(project))
        assert (await hooks.post(CHATGPT, data=body, headers=headers)).status == 202
        rows = await wait_for(lambda: deliveries_now(db), timeout=30)
        assert rows[0]["outcome"] == "processed"
    finally:
        proc.send_signal(signal.SIGTERM)
        _, err = await asyncio.wait_for(proc.communicate(), 30)
    assert proc.returncode == 0, err.decode()[-2000:]
    # Nothing secret or private in its logs.
    assert LEGACY_SECRET not in err.decode() and "despliego" not in err.decode()


async def deliveries_now(db: asyncpg.Connection) -> list[Any]:
    return list(await db.fetch("SELECT * FROM webhook_deliveries"))


def test_cli_without_secret_exits_2(tmp_path: Path) -> None:
    import subprocess

    path = tmp_path / "b.json"
    path.write_text("{}")
    env = {k: v for k, v in os.environ.items() if k != "WEBHOOK_SECRET"}
    done = subprocess.run(
        [
            sys.executable,
            "-m",
            "chatbeto_tools.cli",
            "webhook",
            "send",
            "--url",
            "http://127.0.0.1:9/",
            "--event",
            "x",
            "--file",
            str(path),
        ],
        capture_output=True,
        text=True,
        env=env,
        check=False,
    )
    assert done.returncode == 2 and "--secret" in done.stderr
