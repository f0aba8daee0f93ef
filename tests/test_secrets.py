"""No secret at rest or in logs.

All four services run as processes (as an operator starts them) at log level debug; the test
drives traffic through every kind of route with keys it creates, wrong keys, signed webhooks and
model calls, then greps every byte the processes wrote, every answer of every GET route, and every
row of the database for the keys, the OpenAI key, the webhook secrets and the signatures.
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import hashlib
import json
import signal
import socket
import sys
import time
import uuid
from pathlib import Path

import aiohttp
import asyncpg
from chatbeto import signatures

from tests.conftest import Factory, make_event, wait_for

CHATBETO = str(Path(sys.executable).with_name("chatbeto"))
SERVICES = ("gateway", "openai-worker", "metrics-ingest", "webhook")
OPENAI_KEY = f"sk-proj-{uuid.uuid4().hex}{uuid.uuid4().hex}"
LEGACY_SECRET = f"legacy-{uuid.uuid4().hex}"
STD_KEY = uuid.uuid4().bytes + uuid.uuid4().bytes
STD_SECRET = "whsec_" + base64.b64encode(STD_KEY).decode()
OPENAI_WEBHOOK_SECRET = "whsec_" + base64.b64encode(uuid.uuid4().bytes * 2).decode()


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


class Services:
    """The four services as processes, every byte they write kept in files."""

    def __init__(self, env: dict[str, str], logs: Path) -> None:
        self.env = env
        self.logs = logs
        self.procs: list[asyncio.subprocess.Process] = []

    async def start(self) -> None:
        for name in SERVICES:
            out = (self.logs / f"{name}.log").open("wb")
            self.procs.append(
                await asyncio.create_subprocess_exec(
                    CHATBETO, "run", name, env=self.env, stdout=out, stderr=out
                )
            )
            out.close()

    async def stop(self) -> None:
        for proc in self.procs:
            if proc.returncode is None:
                proc.send_signal(signal.SIGTERM)
        for proc in self.procs:
            try:
                await asyncio.wait_for(proc.wait(), 30)
            except TimeoutError:
                proc.kill()
                await proc.wait()

    def output(self) -> str:
        return "".join(
            (self.logs / f"{name}.log").read_text("utf-8", "replace") for name in SERVICES
        )


async def table_dump(dsn: str) -> str:
    """Every row of every table, as text."""
    conn = await asyncpg.connect(dsn)
    try:
        tables = await conn.fetch(
            "SELECT tablename FROM pg_tables WHERE schemaname = 'public' ORDER BY tablename"
        )
        parts: list[str] = []
        for t in tables:
            rows = await conn.fetch(f'SELECT t::text AS row FROM "{t["tablename"]}" t')
            parts.extend(r["row"] for r in rows)
        return "\n".join(parts)
    finally:
        await conn.close()


def secret_parts(plain_key: str) -> list[str]:
    """The key and its secret half (the prefix is public)."""
    return [plain_key, plain_key.split("_", 2)[2]]


async def test_no_secret_in_logs_answers_or_rows(
    env: dict[str, str], database: str, factory: Factory, openai_stub: str, tmp_path: Path
) -> None:
    port = free_port()
    env = env | {
        "LOG_LEVEL": "debug",
        "LOG_FORMAT": "json",
        "GATEWAY_PORT": str(port),
        "OPENAI_API_KEY": OPENAI_KEY,
        "OPENAI_BASE_URL": openai_stub,
        "OPENAI_TIMEOUT": "10",
        "WEBHOOK_SECRET": f"{LEGACY_SECRET},{STD_SECRET}",
        "OPENAI_WEBHOOK_SECRET": OPENAI_WEBHOOK_SECRET,
        "RATE_LIMIT": "100000/1m",
    }
    base = f"http://127.0.0.1:{port}"
    admin = await factory.key(admin=True)
    project = await factory.project("secrets")
    services = Services(env, tmp_path)
    await services.start()
    created: list[str] = [admin]
    sent_signatures: list[str] = []
    try:
        async with aiohttp.ClientSession(base) as http:

            async def ready() -> bool:
                with contextlib.suppress(aiohttp.ClientError):
                    async with http.get("/readyz") as resp:
                        return resp.status == 200
                return False

            await wait_for(ready, timeout=30, interval=0.2)
            await drive_traffic(http, admin, project, created, sent_signatures)
            answers = await every_get_answer(http, admin)
    finally:
        await services.stop()

    logs = services.output()
    assert '"level": "debug"' in logs, "the services did not log at debug"
    assert '"request"' in logs
    forbidden = [OPENAI_KEY, LEGACY_SECRET, STD_SECRET, STD_SECRET.removeprefix("whsec_")]
    forbidden += [OPENAI_WEBHOOK_SECRET, *sent_signatures]
    for key in created:
        forbidden += secret_parts(key)
    # Named by position, not printed: a failing run must not put the secret in CI output.
    found = [f"secret #{n}" for n, s in enumerate(forbidden) if s in logs]
    assert not found, f"secrets in the logs: {found}"

    for text in answers:
        assert OPENAI_KEY not in text and LEGACY_SECRET not in text
        assert STD_SECRET.removeprefix("whsec_") not in text
        assert OPENAI_WEBHOOK_SECRET.removeprefix("whsec_") not in text

    rows = await table_dump(database)
    # A legacy delivery's own signature is its dedup key at rest (it proves only that one body,
    # and a replay of it is answered without acting): keys and secrets are what must not be there.
    at_rest = [
        f"secret #{n}" for n, s in enumerate(forbidden) if s in rows and s not in sent_signatures
    ]
    assert not at_rest, f"secrets stored in the database: {at_rest}"
    # The real keys are there, as their SHA-256.
    for key in created[:3]:
        assert hashlib.sha256(key.encode()).hexdigest() in rows


async def drive_traffic(
    http: aiohttp.ClientSession,
    admin: str,
    project: int,
    created: list[str],
    sent_signatures: list[str],
) -> None:
    ah = {"X-API-Key": admin}
    async with http.post("/api/v1/keys", json={"projectId": project, "name": "k"}, headers=ah) as r:
        assert r.status == 201
        key = (await r.json())["data"]["key"]
    async with http.post("/api/v1/keys", json={"admin": True}, headers=ah) as r:
        created.append((await r.json())["data"]["key"])
    created.append(key)
    for headers in ({"X-API-Key": key}, {"Authorization": f"Bearer {key}"}):
        async with http.get("/api/gpts", headers=headers) as r:
            assert r.status == 200
    kh = {"Authorization": f"Bearer {key}"}

    async with http.post("/api/gpts", json={"id": "secret-gpt", "name": "S"}, headers=kh) as r:
        assert r.status == 201
    async with http.post(
        "/api/sessions", json={"gpt_id": "secret-gpt", "usuario_id": "u"}, headers=kh
    ) as r:
        session = (await r.json())["id"]
    async with http.post("/api/events", json=make_event(session), headers=kh) as r:
        assert r.status == 202
    async with http.post(
        "/api/events/batch", json={"events": [make_event(session)] * 3}, headers=kh
    ) as r:
        assert r.status == 207
    async with http.post(
        "/api/v1/openai/conversations",
        json={"projectId": project, "title": "t", "initialMessage": "hola"},
        headers=kh,
    ) as r:
        assert r.status == 201, await r.text()
    async with http.post(
        "/v1/chat/completions",
        json={"model": "gpt-4", "messages": [{"role": "user", "content": "hi"}]},
        headers=kh,
    ) as r:
        assert r.status == 200, await r.text()

    # Wrong keys, in both headers, including ones shaped like real keys.
    wrong_keys = [f"cbk_{key.split('_')[1]}_{uuid.uuid4().hex}", key + "x"]
    created.extend(wrong_keys)
    for wrong in [*wrong_keys, "cbk_nope"]:
        for headers in ({"X-API-Key": wrong}, {"Authorization": f"Bearer {wrong}"}):
            async with http.get("/api/gpts", headers=headers) as r:
                assert r.status == 401

    await send_webhooks(http, project, sent_signatures)

    prefix = key.split("_")[1]
    async with http.delete(f"/api/v1/keys/{prefix}", headers=ah) as r:
        assert r.status == 200

    async def refused() -> bool:
        async with http.get("/api/gpts", headers=kh) as resp:
            return resp.status == 401

    await wait_for(refused, timeout=5)


async def send_webhooks(
    http: aiohttp.ClientSession, project: int, sent_signatures: list[str]
) -> None:
    payload = {
        "projectId": project,
        "id": f"c-{uuid.uuid4().hex[:6]}",
        "title": "from a webhook",
        "messages": [{"id": "m-1", "role": "user", "content": "hola"}],
    }
    body = json.dumps(payload).encode()
    headers = signatures.legacy_headers(LEGACY_SECRET, body, "conversation.created")
    sent_signatures.append(headers[signatures.LEGACY_SIGNATURE].removeprefix("sha256="))
    async with http.post("/webhook/chatgpt", data=body, headers=headers) as r:
        assert r.status == 202, await r.text()
    std = signatures.standard_headers([STD_SECRET], body)
    sent_signatures.append(std[signatures.STANDARD_SIGNATURE].removeprefix("v1,"))
    async with http.post("/webhook/chatgpt", data=body, headers=std) as r:
        assert r.status < 500
    bad = dict(headers)
    bad[signatures.LEGACY_SIGNATURE] = "sha256=" + "0" * 64
    async with http.post("/webhook/chatgpt", data=body, headers=bad) as r:
        assert r.status == 401
    event = json.dumps(
        {
            "id": "evt_1",
            "type": "response.completed",
            "created_at": int(time.time()),
            "data": {"id": "resp_1"},
        }
    ).encode()
    oh = signatures.standard_headers([OPENAI_WEBHOOK_SECRET], event)
    sent_signatures.append(oh[signatures.STANDARD_SIGNATURE].removeprefix("v1,"))
    async with http.post("/webhook/openai", data=event, headers=oh) as r:
        assert r.status < 500


async def every_get_answer(http: aiohttp.ClientSession, admin: str) -> list[str]:
    """Every GET route of the OpenAPI document, with the admin key (path ids are dummies: the
    point is what a route returns, never the OpenAI key or a webhook secret)."""
    async with http.get("/openapi.json") as r:
        spec = await r.json()
    answers = [json.dumps(spec)]
    for path, ops in spec["paths"].items():
        if "get" not in ops:
            continue
        url = path.replace("{", "").replace("}", "")
        async with http.get(url, headers={"X-API-Key": admin}) as r:
            if r.headers.get("Content-Type", "").startswith("text/event-stream"):
                continue
            answers.append(await r.text())
    assert len(answers) > 5
    return answers
