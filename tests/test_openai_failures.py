"""Upstream failures (contract 3.1): 401/403 → 502 upstream_auth; 429/5xx retried with backoff
within OPENAI_TIMEOUT, then 502 upstream_unavailable; no answer in time → 504; broker down → 503;
a slow upstream call never stalls the worker's other requests."""

from __future__ import annotations

import asyncio
import time
from typing import Any
from urllib.parse import urlsplit

import aiohttp
import asyncpg
import pytest
from chatbeto.settings import GatewaySettings
from chatbeto_openai_worker.worker import OpenAIWorker
from pytest_aiohttp import AiohttpClient

from tests.conftest import Client, Factory, wait_for
from tests.conftest_openai import StartWorker
from tests.tcp_proxy import TcpProxy


def chat(content: str, **extra: Any) -> dict[str, Any]:
    return {"messages": [{"role": "user", "content": content}], **extra}


async def post_chat(client: Client, key: str, content: str, **extra: Any) -> aiohttp.ClientResponse:
    return await client.post(
        "/api/v1/openai/chat/completions", json=chat(content, **extra), headers={"X-API-Key": key}
    )


@pytest.fixture
async def key(factory: Factory) -> str:
    return await factory.key(await factory.project())


@pytest.mark.parametrize("status", [401, 403])
async def test_upstream_auth_failure_is_502_upstream_auth(
    chat_gateway: Client, openai_worker: OpenAIWorker, key: str, status: int
) -> None:
    resp = await post_chat(chat_gateway, key, f"[[fail:{status}]]")
    assert resp.status == 502
    body = await resp.json()
    assert body["status"] == "error"
    assert body["error"]["code"] == "upstream_auth"


@pytest.mark.parametrize("status", [429, 500, 503])
async def test_transient_failures_are_retried_then_answered(
    chat_gateway: Client, openai_worker: OpenAIWorker, key: str, status: int
) -> None:
    resp = await post_chat(chat_gateway, key, f"[[fail:{status}x2]] hola")
    assert resp.status == 200, await resp.text()
    assert (await resp.json())["data"]["response"]["content"].endswith("hola")


async def test_persistent_5xx_is_502_upstream_unavailable_within_the_timeout(
    aiohttp_client: AiohttpClient,
    openai_gateway_settings: GatewaySettings,
    start_openai_worker: StartWorker,
    key: str,
) -> None:
    from chatbeto_gateway.app import create_app

    settings = openai_gateway_settings.model_copy(update={"openai_timeout": 1.5})
    client = await aiohttp_client(create_app(settings))
    await start_openai_worker()
    started = time.monotonic()
    resp = await post_chat(client, key, "[[fail:500]]")
    elapsed = time.monotonic() - started
    assert resp.status == 502
    assert (await resp.json())["error"]["code"] == "upstream_unavailable"
    assert elapsed < 1.5 + 0.5


async def test_no_answer_in_time_is_504(
    aiohttp_client: AiohttpClient,
    openai_gateway_settings: GatewaySettings,
    start_openai_worker: StartWorker,
    key: str,
) -> None:
    from chatbeto_gateway.app import create_app

    settings = openai_gateway_settings.model_copy(update={"openai_timeout": 1.0})
    client = await aiohttp_client(create_app(settings))
    await start_openai_worker()
    resp = await post_chat(client, key, "[[slow:5]]")
    assert resp.status == 504
    assert (await resp.json())["error"]["code"] == "upstream_timeout"


async def test_no_worker_at_all_is_504(
    aiohttp_client: AiohttpClient, openai_gateway_settings: GatewaySettings, key: str
) -> None:
    from chatbeto_gateway.app import create_app

    settings = openai_gateway_settings.model_copy(update={"openai_timeout": 0.5})
    client = await aiohttp_client(create_app(settings))
    resp = await post_chat(client, key, "nobody listens")
    assert resp.status == 504


async def test_stream_failing_before_first_token_keeps_its_status(
    chat_gateway: Client, openai_worker: OpenAIWorker, key: str
) -> None:
    resp = await post_chat(chat_gateway, key, "[[fail:401]]", stream=True)
    assert resp.status == 502
    assert (await resp.json())["error"]["code"] == "upstream_auth"
    resp = await chat_gateway.post(
        "/v1/chat/completions",
        json={"model": "gpt-4", "stream": True, **chat("[[fail:403]]")},
        headers={"Authorization": f"Bearer {key}"},
    )
    assert resp.status == 502
    assert (await resp.json())["error"]["type"] == "upstream_auth"


async def test_worker_without_openai_key_answers_503(
    chat_gateway: Client, start_openai_worker: StartWorker, key: str
) -> None:
    await start_openai_worker(openai_api_key=None)
    resp = await post_chat(chat_gateway, key, "hola")
    assert resp.status == 503
    assert (await resp.json())["error"]["code"] == "openai_unconfigured"


async def test_a_slow_call_does_not_stall_the_others(
    chat_gateway: Client, openai_worker: OpenAIWorker, key: str
) -> None:
    slow = asyncio.create_task(post_chat(chat_gateway, key, "[[slow:4]] lento"))
    await asyncio.sleep(0)  # let it be published first
    started = time.monotonic()
    fast = await asyncio.gather(*(post_chat(chat_gateway, key, f"rápido {n}") for n in range(10)))
    assert [r.status for r in fast] == [200] * 10
    assert time.monotonic() - started < 3
    assert not slow.done()
    assert (await slow).status == 200


async def test_broker_unreachable_is_503(
    aiohttp_client: AiohttpClient,
    openai_gateway_settings: GatewaySettings,
    openai_worker: OpenAIWorker,
    amqp_url: str,
    key: str,
    factory: Factory,
) -> None:
    from chatbeto_gateway.app import create_app

    parts = urlsplit(amqp_url)
    proxy = TcpProxy(parts.hostname or "127.0.0.1", parts.port or 5672)
    await proxy.start()
    proxied = f"amqp://{parts.username}:{parts.password}@127.0.0.1:{proxy.port}{parts.path or '/'}"
    settings = openai_gateway_settings.model_copy(update={"amqp_url": proxied})
    client = await aiohttp_client(create_app(settings))
    resp = await post_chat(client, key, "antes")
    assert resp.status == 200
    project = await factory.project("p")
    admin = await factory.key(admin=True)
    await proxy.stop()

    async def refused() -> bool:
        resp = await post_chat(client, key, "durante")
        return resp.status == 503 and (await resp.json())["error"]["code"] == "broker_unavailable"

    await wait_for(refused, timeout=15)
    for url, body in [
        ("/api/v1/openai/conversations", {"projectId": project, "initialMessage": "x"}),
        ("/api/v1/openai/sync", {"projectId": project}),
    ]:
        resp = await client.post(url, json=body, headers={"X-API-Key": admin})
        assert resp.status == 503, url
    resp = await client.post(
        "/v1/chat/completions",
        json={"model": "gpt-4", **chat("x")},
        headers={"Authorization": f"Bearer {key}"},
    )
    assert resp.status == 503

    # The broker comes back: the publisher and this gateway's reply queue recover by themselves.
    await proxy.start()

    async def answered() -> bool:
        resp = await post_chat(client, key, "después")
        return resp.status == 200

    await wait_for(answered, timeout=30)
    await proxy.stop()


async def test_stream_broken_mid_answer_ends_with_an_error_event_and_stores_nothing(
    chat_gateway: Client, openai_worker: OpenAIWorker, factory: Factory, db: asyncpg.Connection
) -> None:
    project = await factory.project()
    key = await factory.key(project)
    resp = await post_chat(
        chat_gateway, key, "[[cut]] uno dos tres", stream=True, projectId=project
    )
    assert resp.status == 200
    text = await resp.text()
    events = [line[len("data: ") :] for line in text.splitlines() if line.startswith("data: ")]
    assert '"delta"' in events[0]
    assert '"upstream_unavailable"' in events[-2]
    assert events[-1] == "[DONE]"
    assert await db.fetchval("SELECT count(*) FROM messages") == 0
