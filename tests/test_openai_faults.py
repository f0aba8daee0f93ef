"""Issue 11's faults on the conversation and chat routes: values Postgres cannot hold (refused at
the gateway naming the field; a worker that meets one anyway answers at once, bills the model
once and dead-letters it), malformed cursors, loose booleans, and how a client that got a 504
learns whether its exchange was stored (the request id)."""

from __future__ import annotations

import base64
import uuid
from datetime import UTC, datetime, timedelta
from typing import Any

import aio_pika
import asyncpg
import orjson
import pytest
from aiohttp.test_utils import TestServer
from chatbeto.broker import Publisher
from chatbeto.messages import (
    Caller,
    ChatMessage,
    ConversationMessage,
    OpenAIReply,
    OpenAIRequest,
    ProxyCall,
    ReplyError,
    ReplyResult,
    envelope,
    parse,
    to_amqp,
)
from chatbeto.settings import GatewaySettings
from chatbeto.topology import OPENAI_REQUESTS, Topology
from chatbeto_openai_worker.worker import OpenAIWorker
from chatbeto_tools.stub import CALLS
from pytest_aiohttp import AiohttpClient

from tests.conftest import Client, Factory, wait_for


def auth(key: str) -> dict[str, str]:
    return {"X-API-Key": key}


@pytest.mark.parametrize(
    ("path", "body", "field"),
    [
        (
            "/api/v1/openai/chat/completions",
            {"messages": [{"role": "system", "content": "a\u0000"}]},
            "messages.0.content",
        ),
        (
            "/api/v1/openai/chat/completions",
            {"messages": [{"role": "user", "content": "x"}], "stream": 0},
            "stream",
        ),
        (
            "/api/v1/openai/chat/completions",
            {"messages": [{"role": "user", "content": "x"}], "projectId": 2**63},
            "projectId",
        ),
        ("/api/v1/openai/conversations", {"projectId": "P", "title": "t\u0000"}, "title"),
        (
            "/api/v1/openai/conversations",
            {"projectId": "P", "initialMessage": "\u0000"},
            "initialMessage",
        ),
    ],
)
async def test_unstorable_values_are_422_naming_the_field(
    chat_gateway: Client,
    factory: Factory,
    db: asyncpg.Connection,
    path: str,
    body: dict[str, Any],
    field: str,
) -> None:
    project = await factory.project()
    key = await factory.key(project)
    if body.get("projectId") == "P":
        body = {**body, "projectId": project}
    resp = await chat_gateway.post(path, json=body, headers=auth(key))
    assert resp.status == 422, await resp.text()
    error = (await resp.json())["error"]
    assert field in {d["field"] for d in error["details"]}
    assert await db.fetchval("SELECT count(*) FROM conversations") == 0


async def test_a_nul_in_a_follow_up_message_of_any_role_is_422(
    chat_gateway: Client, factory: Factory, openai_worker: OpenAIWorker, db: asyncpg.Connection
) -> None:
    project = await factory.project()
    key = await factory.key(project)
    resp = await chat_gateway.post(
        "/api/v1/openai/conversations", json={"projectId": project}, headers=auth(key)
    )
    conv = (await resp.json())["data"]["conversation"]["id"]
    for role in ("system", "user", "assistant"):
        resp = await chat_gateway.post(
            f"/api/v1/openai/conversations/{conv}/messages",
            json={"message": "a\u0000b", "role": role},
            headers=auth(key),
        )
        assert resp.status == 422
        assert (await resp.json())["error"]["details"][0]["field"] == "message"
    assert await db.fetchval("SELECT count(*) FROM messages") == 0


@pytest.mark.parametrize(
    "cursor",
    [
        "e30",  # {}
        base64.urlsafe_b64encode(b'{"a": 1}').decode(),
        base64.urlsafe_b64encode(b"[1]").decode(),
        base64.urlsafe_b64encode(b'["x", 1]').decode(),
        base64.urlsafe_b64encode(b'["2026-01-01T00:00:00", 1]').decode(),  # naive
        base64.urlsafe_b64encode(b'["0001-01-01T00:00:00+14:00", 1]').decode(),
        base64.urlsafe_b64encode(b'["2026-01-01T00:00:00+00:00", 99999999999999999999]').decode(),
        base64.urlsafe_b64encode(b'["2026-01-01T00:00:00+00:00", true]').decode(),
        base64.urlsafe_b64encode(b"null").decode(),
        "!!!",
        "e3",
    ],
)
async def test_every_malformed_cursor_is_422(
    chat_gateway: Client, factory: Factory, cursor: str
) -> None:
    key = await factory.key(await factory.project())
    resp = await chat_gateway.get(
        "/api/v1/openai/conversations", params={"cursor": cursor}, headers=auth(key)
    )
    assert resp.status == 422, await resp.text()
    assert (await resp.json())["error"]["details"][0]["field"] == "cursor"


async def test_a_504_can_be_looked_up_by_its_request_id(
    chat_gateway: Client, factory: Factory, openai_worker: OpenAIWorker, db: asyncpg.Connection
) -> None:
    """The gateway's 504 names the way to find out; a stored exchange carries the request id
    (here an answer whose reply went nowhere, as in a broker restart)."""
    project = await factory.project()
    key = await factory.key(project)
    request_id = f"lost-{uuid.uuid4().hex[:8]}"
    resp = await chat_gateway.post(
        "/api/v1/openai/chat/completions",
        json={"messages": [{"role": "user", "content": "hola"}], "projectId": project},
        headers={**auth(key), "X-Request-Id": request_id},
    )
    assert resp.status == 200
    found = await chat_gateway.get(
        "/api/v1/openai/conversations", params={"requestId": request_id}, headers=auth(key)
    )
    conversations = (await found.json())["data"]["conversations"]
    assert [c["requestId"] for c in conversations] == [request_id]
    detail = await chat_gateway.get(
        f"/api/v1/openai/conversations/{conversations[0]['id']}", headers=auth(key)
    )
    assert {m["requestId"] for m in (await detail.json())["data"]["messages"]} == {request_id}
    none = await chat_gateway.get(
        "/api/v1/openai/conversations", params={"requestId": "never-sent"}, headers=auth(key)
    )
    assert (await none.json())["data"]["conversations"] == []
    other = await factory.key(await factory.project())
    hidden = await chat_gateway.get(
        "/api/v1/openai/conversations", params={"requestId": request_id}, headers=auth(other)
    )
    assert (await hidden.json())["data"]["conversations"] == []  # another tenant's: not found


async def test_no_worker_504_says_how_to_find_out(
    aiohttp_client: AiohttpClient, openai_gateway_settings: GatewaySettings, factory: Factory
) -> None:
    from chatbeto_gateway.app import create_app

    client = await aiohttp_client(
        create_app(openai_gateway_settings.model_copy(update={"openai_timeout": 0.5}))
    )
    key = await factory.key(await factory.project())
    resp = await client.post(
        "/v1/chat/completions",
        json={"model": "gpt-4", "messages": [{"role": "user", "content": "x"}]},
        headers={"Authorization": f"Bearer {key}"},
    )
    assert resp.status == 504
    assert "requestId" in (await resp.json())["error"]["message"]


async def test_a_worker_that_cannot_store_answers_once_bills_once_and_dead_letters(
    amqp_url: str,
    namespace: str,
    openai_worker: OpenAIWorker,
    openai_stub_server: TestServer,
    factory: Factory,
    db: asyncpg.Connection,
) -> None:
    """A check the gateway missed: the worker calls the model once, cannot store the exchange,
    answers 422 at once (no retries, no 504) and dead-letters the request with the reason."""
    topo = Topology(namespace)
    connection = await aio_pika.connect_robust(amqp_url)
    channel = await connection.channel()
    replies_q = await topo.declare_reply_queue(channel, "faults")
    replies: list[Any] = []

    async def on_reply(message: aio_pika.abc.AbstractIncomingMessage) -> None:
        replies.append(parse(message.body, OpenAIReply, OpenAIReply.TYPE, frozenset({2})).data)

    await replies_q.consume(on_reply, no_ack=True)
    project = await factory.project()
    conv = await db.fetchval(
        "INSERT INTO conversations (project_id) VALUES ($1) RETURNING id", project
    )
    deadline = datetime.now(UTC) + timedelta(seconds=30)
    requests = [
        # The body is forwarded as it is: the stub echoes the NUL back.
        OpenAIRequest(
            call=ProxyCall(
                endpoint="chat.completions",
                project_id=project,
                body={"model": "gpt-4", "messages": [{"role": "user", "content": "a\u0000b"}]},
            ),
            caller=Caller(),
            deadline=deadline,
        ),
        # A system message calls no model; built unchecked, as a missed check would let it by.
        OpenAIRequest.model_construct(
            call=ConversationMessage.model_construct(
                action="conversation.message",
                conversation_id=conv,
                message=ChatMessage.model_construct(role="system", content="x\u0000y"),
            ),
            caller=Caller(),
            deadline=deadline,
        ),
    ]
    publisher = Publisher(connection, topo)
    for n, request in enumerate(requests):
        await publisher.publish(
            to_amqp(
                envelope(request),
                correlation_id=f"c{n}",
                reply_to=topo.reply_queue_name("faults"),
            ),
            "openai.request.x",
        )

    async def answered() -> bool:
        return len(replies) >= 2

    await wait_for(answered, timeout=30)
    for reply in replies:
        assert isinstance(reply.part, ReplyError), reply
        assert reply.part.status == 422
    assert not any(isinstance(r.part, ReplyResult) for r in replies)
    assert openai_stub_server.app[CALLS]["/v1/chat/completions"] == 1  # billed once

    async def dead_lettered() -> int:
        declared = await channel.declare_queue(topo.queue(OPENAI_REQUESTS).dlq, passive=True)
        return (declared.declaration_result.message_count or 0) >= 2

    await wait_for(dead_lettered, timeout=30)
    assert await db.fetchval("SELECT count(*) FROM messages") == 0
    assert await db.fetchval("SELECT count(*) FROM conversations") == 1
    assert orjson.dumps(replies[0].part.message)  # a reason, not the content
    assert "\u0000" not in replies[0].part.message
    await publisher.close()
    await connection.close()
