"""Shared pieces of the webhook tests: secrets, signing helpers, the worker and a cuttable proxy."""

from __future__ import annotations

import asyncio
import base64
import json
import time
from datetime import UTC, datetime
from typing import Any

from chatbeto import signatures
from standardwebhooks import Webhook

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
