"""Shared pieces of the webhook tests: secrets, signing helpers, fixtures (gateway with secrets,
the webhook worker) and a cuttable proxy. Test modules load it with `pytest_plugins`."""

from __future__ import annotations

import asyncio
import base64
import json
import time
from collections.abc import AsyncIterator
from datetime import UTC, datetime
from typing import TYPE_CHECKING, Any

import asyncpg
import pytest
from chatbeto import signatures
from chatbeto.settings import GatewaySettings, WebhookSettings
from pydantic import SecretStr
from pytest_aiohttp import AiohttpClient
from standardwebhooks import Webhook

from tests.conftest import Client, wait_for

if TYPE_CHECKING:
    from chatbeto_webhook.consumer import WebhookService

CHATGPT = "/webhook/chatgpt"
LEGACY_SECRET = "legacy-s3cret"
STD_SECRET = "whsec_" + base64.b64encode(b"chatgpt-standard-webhooks-key-32").decode()
NEW_STD_SECRET = "whsec_" + base64.b64encode(b"rotated-standard-webhooks-key-32").decode()
OPENAI_SECRET = "whsec_" + base64.b64encode(b"openai-issued-webhook-secret-key").decode()


def body_of(payload: Any) -> bytes:
    return json.dumps(payload).encode()


def legacy(
    event: str, payload: Any, secret: str = LEGACY_SECRET, **kw: Any
) -> tuple[bytes, dict[str, str]]:
    body = body_of(payload)
    return body, signatures.legacy_headers(secret, body, event, **kw)


def standard(
    payload: Any, secret: str = STD_SECRET, msg_id: str | None = None, ts: int | None = None
) -> tuple[bytes, dict[str, str]]:
    """Signed by the Standard Webhooks reference library, not by chatbeto's own code."""
    body = body_of(payload)
    msg_id = msg_id or f"msg_{time.time_ns()}"
    ts = int(time.time()) if ts is None else ts
    signature = Webhook(secret).sign(msg_id, datetime.fromtimestamp(ts, UTC), body.decode())
    return body, {
        "webhook-id": msg_id,
        "webhook-timestamp": str(ts),
        "webhook-signature": signature,
    }


def conversation(project_id: int, ext_id: str | None = "c-1", **extra: Any) -> dict[str, Any]:
    out: dict[str, Any] = {
        "projectId": project_id,
        "title": "Deploy help",
        "messages": [
            {"id": "m-1", "role": "user", "content": "¿Cómo despliego?"},
            {"id": "m-2", "role": "assistant", "content": "Con make dev."},
        ],
        **extra,
    }
    if ext_id is not None:
        out["id"] = ext_id
    return out


class Proxy:
    """A TCP relay in front of RabbitMQ; `cut()` simulates a broker outage for one client."""

    def __init__(self, host: str, port: int) -> None:
        self.host, self.port = host, port
        self.server: asyncio.Server | None = None
        self.writers: list[asyncio.StreamWriter] = []

    async def start(self) -> int:
        self.server = await asyncio.start_server(self._handle, "127.0.0.1", 0)
        return int(self.server.sockets[0].getsockname()[1])

    async def _handle(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            up_reader, up_writer = await asyncio.open_connection(self.host, self.port)
        except OSError:
            writer.close()
            return
        self.writers += [writer, up_writer]

        async def pipe(src: asyncio.StreamReader, dst: asyncio.StreamWriter) -> None:
            try:
                while data := await src.read(65536):
                    dst.write(data)
                    await dst.drain()
            except (OSError, asyncio.CancelledError):
                pass
            finally:
                dst.close()

        await asyncio.gather(pipe(reader, up_writer), pipe(up_reader, writer))

    async def cut(self) -> None:
        assert self.server is not None
        self.server.close()
        for w in self.writers:
            w.close()
        self.writers.clear()
        await self.server.wait_closed()


@pytest.fixture
def hook_settings(gateway_settings: GatewaySettings) -> GatewaySettings:
    return gateway_settings.model_copy(
        update={
            "webhook_secret": SecretStr(f"{LEGACY_SECRET},{STD_SECRET}"),
            "openai_webhook_secret": SecretStr(OPENAI_SECRET),
        }
    )


@pytest.fixture
async def hooks(aiohttp_client: AiohttpClient, hook_settings: GatewaySettings) -> Client:
    from chatbeto_gateway.app import create_app

    return await aiohttp_client(create_app(hook_settings))


@pytest.fixture
def worker_settings(database: str, amqp_url: str, namespace: str) -> WebhookSettings:
    return WebhookSettings(
        _env_file=None,
        database_url=database,
        amqp_url=amqp_url,
        amqp_namespace=namespace,
        health_port=0,
    )


@pytest.fixture
async def worker(worker_settings: WebhookSettings) -> AsyncIterator[WebhookService]:
    from chatbeto_webhook.consumer import WebhookService

    service = WebhookService(worker_settings)
    await service.start()
    yield service
    await service.close()


async def delivery(db: asyncpg.Connection, webhook_id: str) -> asyncpg.Record:
    return await wait_for(
        lambda: db.fetchrow("SELECT * FROM webhook_deliveries WHERE webhook_id = $1", webhook_id)
    )


async def deliveries(db: asyncpg.Connection, n: int) -> list[Any]:
    async def probe() -> list[Any]:
        rows = await db.fetch("SELECT * FROM webhook_deliveries ORDER BY id")
        return rows if len(rows) >= n else []

    return await wait_for(probe)
