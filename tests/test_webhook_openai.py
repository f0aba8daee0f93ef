"""`/webhook/openai`: `response.completed` fetched with the official SDK from the local stub."""

from __future__ import annotations

import time
from collections.abc import AsyncIterator
from typing import TYPE_CHECKING, Any

import asyncpg
import openai
import pytest
from chatbeto.settings import WebhookSettings
from chatbeto_openai_worker.worker import OpenAIWorker
from pytest_aiohttp import AiohttpServer

from tests.conftest import Client, Factory, wait_for
from tests.test_webhook_support import OPENAI_SECRET, delivery, standard

if TYPE_CHECKING:
    from chatbeto_webhook.consumer import WebhookService

pytest_plugins = ["tests.test_webhook_support"]

OPENAI = "/webhook/openai"


@pytest.fixture
async def stub_url(aiohttp_server: AiohttpServer) -> str:
    from chatbeto_tools.stub import create_stub_app

    server = await aiohttp_server(create_stub_app())
    return str(server.make_url("/v1"))


@pytest.fixture
async def sdk(stub_url: str) -> AsyncIterator[openai.AsyncOpenAI]:
    client = openai.AsyncOpenAI(api_key="sk-test", base_url=stub_url)
    yield client
    await client.close()


async def start_worker(settings: WebhookSettings) -> WebhookService:
    from chatbeto_webhook.consumer import WebhookService

    service = WebhookService(settings)
    await service.start()
    return service


@pytest.fixture
async def openai_worker(
    database: str, amqp_url: str, namespace: str, stub_url: str
) -> AsyncIterator[Any]:
    service = await start_worker(
        WebhookSettings(
            _env_file=None,
            database_url=database,
            amqp_url=amqp_url,
            amqp_namespace=namespace,
            health_port=0,
            openai_api_key="sk-test",
            openai_base_url=stub_url,
        )
    )
    yield service
    await service.close()


def event(type_: str, response_id: str) -> dict[str, Any]:
    return {
        "id": f"evt_{time.time_ns()}",
        "object": "event",
        "created_at": int(time.time()),
        "type": type_,
        "data": {"id": response_id},
    }


async def post(hooks: Client, payload: dict[str, Any]) -> str:
    body, headers = standard(payload, secret=OPENAI_SECRET)
    resp = await hooks.post(OPENAI, data=body, headers=headers)
    assert resp.status == 202, await resp.text()
    return headers["webhook-id"]


async def test_response_completed_is_fetched_and_stored_with_its_conversation(
    hooks: Client,
    openai_worker: OpenAIWorker,
    sdk: openai.AsyncOpenAI,
    factory: Factory,
    db: asyncpg.Connection,
) -> None:
    project = await factory.project()
    conv_id = await db.fetchval(
        "INSERT INTO conversations (project_id, title) VALUES ($1, 't') RETURNING id", project
    )
    await db.execute(
        "INSERT INTO messages (conversation_id, position, role, content) "
        "VALUES ($1, 0, 'user', 'hola mundo')",
        conv_id,
    )
    # Named by metadata…
    by_meta = await sdk.responses.create(
        model="gpt-4o", input="hola mundo", metadata={"chatbeto_conversation_id": str(conv_id)}
    )
    # …or by the OpenAI conversation it was created in (the conversation's remoteId).
    remote = await sdk.conversations.create()
    await db.execute("UPDATE conversations SET remote_id = $2 WHERE id = $1", conv_id, remote.id)
    by_remote = await sdk.responses.create(model="gpt-4o", input="segunda", conversation=remote.id)
    for response in (by_meta, by_remote):
        row = await delivery(db, await post(hooks, event("response.completed", response.id)))
        assert row["outcome"] == "processed", row["error"]
        assert (row["source"], row["conversation_id"], row["project_id"]) == (
            "openai",
            conv_id,
            project,
        )
        stored = await db.fetchrow("SELECT * FROM messages WHERE external_id = $1", response.id)
        assert stored is not None
        assert stored["conversation_id"] == conv_id and stored["role"] == "assistant"
        assert stored["content"] == response.output_text
        assert stored["model"] == "gpt-4o"
        assert response.usage is not None
        assert stored["prompt_tokens"] == response.usage.input_tokens
        assert stored["completion_tokens"] == response.usage.output_tokens
    assert [
        r["position"]
        for r in await db.fetch(
            "SELECT position FROM messages WHERE conversation_id = $1 ORDER BY position", conv_id
        )
    ] == [0, 1, 2]


async def test_unknown_response_or_conversation_fails_and_other_types_are_recorded(
    hooks: Client, openai_worker: OpenAIWorker, sdk: openai.AsyncOpenAI, db: asyncpg.Connection
) -> None:
    unknown = await delivery(db, await post(hooks, event("response.completed", "resp_missing")))
    assert (unknown["outcome"], unknown["error"]) == ("failed", "OpenAI answered 404")
    orphan = await sdk.responses.create(model="gpt-4", input="sin conversación")
    row = await delivery(db, await post(hooks, event("response.completed", orphan.id)))
    assert row["outcome"] == "failed"
    assert row["error"] == f"no stored conversation for response {orphan.id}"
    other = await delivery(db, await post(hooks, event("batch.completed", "batch_1")))
    assert other["outcome"] == "recorded" and other["event_type"] == "batch.completed"
    malformed = await delivery(db, await post(hooks, {"type": "response.completed", "data": {}}))
    assert malformed["outcome"] == "failed" and "data.id" in malformed["error"]


async def test_openai_unreachable_retries_then_records_failure(
    hooks: Client, database: str, amqp_url: str, namespace: str, db: asyncpg.Connection
) -> None:
    # Nothing listens on port 9 here: every fetch is a connection error (transient).
    service = await start_worker(
        WebhookSettings(
            _env_file=None,
            database_url=database,
            amqp_url=amqp_url,
            amqp_namespace=namespace,
            health_port=0,
            openai_api_key="sk-test",
            openai_base_url="http://127.0.0.1:9/v1",
            openai_timeout=2,
            webhook_max_tries=2,
        )
    )
    try:
        webhook_id = await post(hooks, event("response.completed", "resp_later"))
        row = await wait_for(
            lambda: db.fetchrow(
                "SELECT * FROM webhook_deliveries WHERE webhook_id = $1", webhook_id
            ),
            timeout=30,
        )
    finally:
        await service.close()
    assert row["outcome"] == "failed" and row["error"] == "gave up: FetchUnavailable"


async def test_openai_not_configured_records_failure(
    hooks: Client, database: str, amqp_url: str, namespace: str, db: asyncpg.Connection
) -> None:
    service = await start_worker(
        WebhookSettings(
            _env_file=None,
            database_url=database,
            amqp_url=amqp_url,
            amqp_namespace=namespace,
            health_port=0,
            openai_api_key=None,
        )
    )
    try:
        row = await delivery(db, await post(hooks, event("response.completed", "resp_x")))
    finally:
        await service.close()
    assert row["outcome"] == "failed" and "not configured" in row["error"]
