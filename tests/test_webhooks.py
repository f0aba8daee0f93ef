"""Signed webhooks end to end: the real gateway, the real webhook worker, Postgres and RabbitMQ."""

from __future__ import annotations

import asyncio
import time
from typing import TYPE_CHECKING

import asyncpg
from chatbeto.messages import Envelope, WebhookDelivery, envelope
from chatbeto.settings import GatewaySettings, WebhookSettings
from pydantic import SecretStr
from pytest_aiohttp import AiohttpClient

from tests.conftest import Client, Factory
from tests.test_webhook_support import (
    CHATGPT,
    LEGACY_SECRET,
    NEW_STD_SECRET,
    OPENAI_SECRET,
    STD_SECRET,
    conversation,
    deliveries,
    delivery,
    legacy,
    standard,
)

if TYPE_CHECKING:
    from chatbeto_webhook.consumer import WebhookService

pytest_plugins = ["tests.test_webhook_support"]


async def test_legacy_conversation_created_is_stored_with_its_messages(
    hooks: Client, worker: WebhookService, factory: Factory, db: asyncpg.Connection
) -> None:
    project = await factory.project()
    body, headers = legacy("conversation.created", conversation(project))
    resp = await hooks.post(CHATGPT, data=body, headers=headers)
    assert resp.status == 202, await resp.text()
    assert (await resp.json())["status"] == "accepted"
    assert resp.headers["X-Request-Id"]
    row = (await deliveries(db, 1))[0]
    assert row["outcome"] == "processed" and row["event_type"] == "conversation.created"
    assert row["request_id"] == resp.headers["X-Request-Id"]
    conv = await db.fetchrow("SELECT * FROM conversations WHERE id = $1", row["conversation_id"])
    assert conv is not None
    assert conv["project_id"] == project and conv["title"] == "Deploy help"
    assert (conv["source"], conv["external_id"]) == ("webhook", "c-1")
    msgs = await db.fetch(
        "SELECT role, content, position FROM messages WHERE conversation_id = $1 ORDER BY position",
        conv["id"],
    )
    assert [(m["role"], m["content"], m["position"]) for m in msgs] == [
        ("user", "¿Cómo despliego?", 0),
        ("assistant", "Con make dev.", 1),
    ]


async def test_standard_webhooks_create_then_append(
    hooks: Client, worker: WebhookService, factory: Factory, db: asyncpg.Connection
) -> None:
    project = await factory.project()
    body, headers = standard(
        {"type": "conversation.created", "data": conversation(project, "ext-9")}
    )
    resp = await hooks.post(CHATGPT, data=body, headers=headers)
    assert resp.status == 202, await resp.text()
    created = await delivery(db, headers["webhook-id"])
    conv_id = created["conversation_id"]
    # By the sender's own id (flat fields), then by chatbeto's id (nested message).
    by_ext = {
        "type": "message.created",
        "data": {
            "conversationId": "ext-9",
            "projectId": project,
            "id": "m-3",
            "role": "user",
            "content": "¿y luego?",
        },
    }
    by_id = {
        "type": "message.created",
        "data": {
            "conversationId": conv_id,
            "message": {"role": "assistant", "content": "Luego nada."},
        },
    }
    for payload in (by_ext, by_id):
        body, headers = standard(payload)
        resp = await hooks.post(CHATGPT, data=body, headers=headers)
        assert resp.status == 202, await resp.text()
        row = await delivery(db, headers["webhook-id"])
        assert row["outcome"] == "processed" and row["conversation_id"] == conv_id
    contents = [
        r["content"]
        for r in await db.fetch(
            "SELECT content FROM messages WHERE conversation_id = $1 ORDER BY position", conv_id
        )
    ]
    assert contents == ["¿Cómo despliego?", "Con make dev.", "¿y luego?", "Luego nada."]


async def test_unverified_requests_get_401_and_nothing_is_queued_or_stored(
    hooks: Client, worker: WebhookService, factory: Factory, db: asyncpg.Connection
) -> None:
    project = await factory.project()
    payload = conversation(project, None)
    now_ms = int(time.time() * 1000)
    body, good = legacy("conversation.created", payload)
    attempts: list[tuple[bytes, dict[str, str], str]] = [
        (body + b" ", good, "invalid_signature"),  # tampered body
        (*legacy("conversation.created", payload, secret="wrong"), "invalid_signature"),
        (*legacy("conversation.created", payload, timestamp_ms=now_ms - 301_000), "stale"),
        (*legacy("conversation.created", payload, timestamp_ms=now_ms + 301_000), "stale"),
        (body, {k: v for k, v in good.items() if k != "X-Webhook-Signature"}, "invalid_signature"),
        (body, {k: v for k, v in good.items() if k != "X-Webhook-Timestamp"}, "invalid_signature"),
        (body, {}, "invalid_signature"),
        (b"not json at all", {}, "invalid_signature"),  # unparsed: 401, not 400
        (*standard(payload, secret=NEW_STD_SECRET), "invalid_signature"),  # not configured
        (*standard(payload, ts=int(time.time()) - 400), "stale"),
        (*standard(payload, ts=int(time.time()) + 400), "stale"),
    ]
    for bad_body, headers, code in attempts:
        resp = await hooks.post(CHATGPT, data=bad_body, headers=headers)
        assert resp.status == 401, (code, await resp.text())
        error = (await resp.json())["error"]
        assert error["code"] == code
        assert error["message"] in ("invalid signature", "stale")
    # OpenAI's endpoint takes only its own secret.
    body_std, headers_std = standard({"type": "response.completed", "data": {"id": "resp_1"}})
    resp = await hooks.post("/webhook/openai", data=body_std, headers=headers_std)
    assert resp.status == 401
    # A good one after them all: once it is processed, it is the only thing that ever was.
    resp = await hooks.post(CHATGPT, data=body, headers=good)
    assert resp.status == 202
    rows = await deliveries(db, 1)
    assert len(rows) == 1 and rows[0]["outcome"] == "processed"
    assert await db.fetchval("SELECT count(*) FROM conversations") == 1


async def test_verified_but_unusable_bodies(hooks: Client, db: asyncpg.Connection) -> None:
    body, headers = legacy("conversation.created", [1, 2])
    resp = await hooks.post(CHATGPT, data=body, headers=headers)
    assert resp.status == 422
    raw = b"{nope"
    from chatbeto import signatures

    resp = await hooks.post(
        CHATGPT, data=raw, headers=signatures.legacy_headers(LEGACY_SECRET, raw, "x")
    )
    assert resp.status == 400
    body, headers = standard({"no": "type"})
    resp = await hooks.post(CHATGPT, data=body, headers=headers)
    assert resp.status == 422
    assert (await resp.json())["error"]["details"][0]["field"] == "type"
    # The unsigned legacy type header can't contradict the signed body.
    body, headers = legacy("message.created", {"type": "conversation.created", "projectId": 1})
    resp = await hooks.post(CHATGPT, data=body, headers=headers)
    assert resp.status == 422
    assert await db.fetchval("SELECT count(*) FROM webhook_deliveries") == 0


async def test_redelivery_answers_2xx_and_changes_nothing(
    hooks: Client, worker: WebhookService, factory: Factory, db: asyncpg.Connection
) -> None:
    project = await factory.project()
    body, headers = standard({"type": "conversation.created", "data": conversation(project, None)})
    legacy_body, legacy_headers = legacy("conversation.created", conversation(project, None))
    for b, h in ((body, headers), (legacy_body, legacy_headers)):
        first = await hooks.post(CHATGPT, data=b, headers=h)
        assert first.status == 202
        await deliveries(db, 1)
    await deliveries(db, 2)
    before = await db.fetch("SELECT * FROM webhook_deliveries ORDER BY id")
    for b, h in ((body, headers), (legacy_body, legacy_headers)):
        again = await hooks.post(CHATGPT, data=b, headers=h)
        assert again.status == 200
        assert (await again.json())["status"] == "duplicate"
    assert await db.fetch("SELECT * FROM webhook_deliveries ORDER BY id") == before
    # Two conversations (two distinct deliveries, neither with a sender id), two messages each.
    assert await db.fetchval("SELECT count(*) FROM conversations") == 2
    assert await db.fetchval("SELECT count(*) FROM messages") == 4


async def test_parallel_duplicates_act_once(
    hooks: Client,
    worker: WebhookService,
    worker_settings: WebhookSettings,
    factory: Factory,
    db: asyncpg.Connection,
) -> None:
    from chatbeto_webhook.consumer import WebhookService

    project = await factory.project()
    # Through the gateway, with two competing workers consuming.
    twin = WebhookService(worker_settings)
    await twin.start()
    try:
        body, headers = standard(
            {"type": "conversation.created", "data": conversation(project, None)}
        )
        statuses = await asyncio.gather(
            *(hooks.post(CHATGPT, data=body, headers=headers) for _ in range(6))
        )
        assert all(200 <= r.status < 300 for r in statuses)
        await delivery(db, headers["webhook-id"])
        # Straight at the database: eight copies of one delivery racing on the pool.
        env: Envelope[WebhookDelivery] = envelope(
            WebhookDelivery(
                source="chatgpt",
                delivery_key="std:race",
                webhook_id="race",
                event_type="message.created",
                received_at=await db.fetchval("SELECT now()"),
                payload={
                    "conversationId": await db.fetchval("SELECT id FROM conversations"),
                    "content": "once",
                },
            ),
            request_id="r-race",
        )
        outcomes = await asyncio.gather(*(twin.process(env) for _ in range(8)))
    finally:
        await twin.close()
    assert sorted(outcomes) == ["duplicate"] * 7 + ["processed"]
    assert await db.fetchval("SELECT count(*) FROM conversations") == 1
    assert await db.fetchval("SELECT count(*) FROM messages WHERE content = 'once'") == 1
    assert await db.fetchval("SELECT count(*) FROM webhook_deliveries") == 2


async def test_rotation_accepts_old_and_new_secrets(
    aiohttp_client: AiohttpClient,
    hook_settings: GatewaySettings,
    worker: WebhookService,
    factory: Factory,
    db: asyncpg.Connection,
) -> None:
    from chatbeto_gateway.app import create_app

    rotating = hook_settings.model_copy(
        update={"webhook_secret": SecretStr(f"{STD_SECRET}, {NEW_STD_SECRET}")}
    )
    client = await aiohttp_client(create_app(rotating))
    project = await factory.project()
    for secret in (STD_SECRET, NEW_STD_SECRET):
        body, headers = standard(
            {"type": "conversation.created", "data": conversation(project, secret[-8:])},
            secret=secret,
        )
        resp = await client.post(CHATGPT, data=body, headers=headers)
        assert resp.status == 202, await resp.text()
    # A sender signing with both (space-separated signatures) during its own change-over.
    from chatbeto import signatures

    body = b'{"type": "other.thing"}'
    both = signatures.standard_headers(["whsec_" + "QUJD" * 8, NEW_STD_SECRET], body)
    resp = await client.post(CHATGPT, data=body, headers=both)
    assert resp.status == 202
    rows = await deliveries(db, 3)
    assert [r["outcome"] for r in rows].count("processed") == 2
    assert [r["outcome"] for r in rows].count("recorded") == 1


async def test_events_for_missing_project_or_conversation_are_recorded_failed(
    hooks: Client, worker: WebhookService, factory: Factory, db: asyncpg.Connection
) -> None:
    project = await factory.project()
    bad = [
        {"type": "conversation.created", "data": conversation(999_999)},
        {"type": "message.created", "data": {"conversationId": 424_242, "content": "hi"}},
        {
            "type": "message.created",
            "data": {"conversationId": "nope", "projectId": project, "content": "hi"},
        },
        {"type": "conversation.created", "data": {"title": "no project"}},
    ]
    ids = []
    for payload in bad:
        body, headers = standard(payload)
        resp = await hooks.post(CHATGPT, data=body, headers=headers)
        assert resp.status == 202
        ids.append(headers["webhook-id"])
    rows = [await delivery(db, i) for i in ids]
    assert [r["outcome"] for r in rows] == ["failed"] * 4
    assert rows[0]["error"] == "project 999999 not found"
    assert rows[1]["error"] == "conversation 424242 not found"
    assert rows[2]["error"] == "conversation nope not found"
    assert "projectId" in rows[3]["error"]
    # Text Postgres refuses fails at once too, instead of riding the retry ladder.
    body, headers = standard(
        {
            "type": "conversation.created",
            "data": conversation(project, "nul") | {"messages": [{"content": "a\u0000b"}]},
        }
    )
    assert (await hooks.post(CHATGPT, data=body, headers=headers)).status == 202
    nul = await delivery(db, headers["webhook-id"])
    assert nul["outcome"] == "failed" and "rejected by the database" in nul["error"]
    assert nul["attempts"] == 1
    assert await db.fetchval("SELECT count(*) FROM conversations") == 0
    # The worker carries on (no crash loop) and the sender may resend a failed one once fixed.
    body, headers = standard({"type": "conversation.created", "data": conversation(project)})
    assert (await hooks.post(CHATGPT, data=body, headers=headers)).status == 202
    conv_id = (await delivery(db, headers["webhook-id"]))["conversation_id"]
    retry_body, retry_headers = standard(
        {"type": "message.created", "data": {"conversationId": conv_id, "content": "late"}},
        msg_id="msg_fixed",
    )
    first = await hooks.post(CHATGPT, data=retry_body, headers=retry_headers)
    assert first.status == 202
    assert (await delivery(db, "msg_fixed"))["outcome"] == "processed"


async def test_deliveries_list_is_admin_only(
    hooks: Client, worker: WebhookService, factory: Factory, db: asyncpg.Connection
) -> None:
    project = await factory.project()
    admin = await factory.key(admin=True)
    project_key = await factory.key(project)
    body, headers = standard({"type": "conversation.created", "data": conversation(project)})
    await hooks.post(CHATGPT, data=body, headers=headers)
    await delivery(db, headers["webhook-id"])
    resp = await hooks.get("/api/v1/webhooks/deliveries", headers={"X-API-Key": admin})
    assert resp.status == 200
    data = (await resp.json())["data"]["deliveries"]
    assert len(data) == 1
    item = data[0]
    assert item["webhookId"] == headers["webhook-id"] and item["type"] == "conversation.created"
    assert item["outcome"] == "processed" and item["receivedAt"] and item["source"] == "chatgpt"
    filtered = await hooks.get(
        "/api/v1/webhooks/deliveries?outcome=failed", headers={"Authorization": f"Bearer {admin}"}
    )
    assert (await filtered.json())["data"]["deliveries"] == []
    resp = await hooks.get("/api/v1/webhooks/deliveries", headers={"X-API-Key": project_key})
    assert resp.status == 404
    assert (await resp.json())["status"] == "error"
    assert (await hooks.get("/api/v1/webhooks/deliveries")).status == 401
    bad_limit = await hooks.get("/api/v1/webhooks/deliveries?limit=0", headers={"X-API-Key": admin})
    assert bad_limit.status == 422


async def test_no_secret_configured_refuses_everything(gateway: Client) -> None:
    body, headers = legacy("conversation.created", {"projectId": 1})
    resp = await gateway.post(CHATGPT, data=body, headers=headers)
    assert resp.status == 401
    body, headers = standard(
        {"type": "response.completed", "data": {"id": "r"}}, secret=OPENAI_SECRET
    )
    assert (await gateway.post("/webhook/openai", data=body, headers=headers)).status == 401


async def test_routes_are_in_openapi(hooks: Client) -> None:
    spec = await (await hooks.get("/openapi.json")).json()
    for path in (CHATGPT, "/webhook/openai", "/api/v1/webhooks/deliveries"):
        assert path in spec["paths"]
