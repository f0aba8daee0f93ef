"""The OpenAI-compatible surface, driven by the official `openai` SDK pointed at the gateway."""

from __future__ import annotations

from collections.abc import AsyncIterator

import asyncpg
import openai
import pytest
from chatbeto_openai_worker.worker import OpenAIWorker
from openai import AsyncOpenAI

from tests.conftest import Client, Factory


@pytest.fixture
async def project(factory: Factory) -> int:
    return await factory.project()


@pytest.fixture
async def sdk(chat_gateway: Client, factory: Factory, project: int) -> AsyncIterator[AsyncOpenAI]:
    key = await factory.key(project)
    base_url = str(chat_gateway.make_url("/v1"))
    async with AsyncOpenAI(api_key=key, base_url=base_url, max_retries=0) as client:
        yield client


async def test_sdk_plain_completion_is_stored_in_the_keys_project(
    sdk: AsyncOpenAI, openai_worker: OpenAIWorker, project: int, db: asyncpg.Connection
) -> None:
    out = await sdk.chat.completions.create(
        model="gpt-4o-mini",
        messages=[{"role": "developer", "content": "brief"}, {"role": "user", "content": "hola"}],
    )
    assert out.object == "chat.completion"
    assert out.choices[0].message.content == "echo[2]: hola"
    assert out.choices[0].finish_reason == "stop"
    assert out.model == "gpt-4o-mini"
    assert out.usage is not None
    assert out.usage.total_tokens == 4
    row = await db.fetchrow("SELECT project_id, source FROM conversations")
    assert row is not None
    assert tuple(row) == (project, "v1")


async def test_sdk_streamed_completion_with_usage(
    sdk: AsyncOpenAI, openai_worker: OpenAIWorker, db: asyncpg.Connection
) -> None:
    stream = await sdk.chat.completions.create(
        model="gpt-4",
        messages=[{"role": "user", "content": "uno dos tres cuatro"}],
        stream=True,
        stream_options={"include_usage": True},
    )
    text, usage, finish, chunks = "", None, None, 0
    async for chunk in stream:
        chunks += 1
        assert chunk.object == "chat.completion.chunk"
        if chunk.choices:
            text += chunk.choices[0].delta.content or ""
            finish = chunk.choices[0].finish_reason or finish
        if chunk.usage:
            usage = chunk.usage
    assert text == "echo[1]: uno dos tres cuatro"
    assert chunks > 3
    assert finish == "stop"
    assert usage is not None
    assert usage.completion_tokens == 5
    stored = await db.fetchval("SELECT content FROM messages WHERE role = 'assistant'")
    assert stored == text


async def test_sdk_lists_models(sdk: AsyncOpenAI) -> None:
    ids = [m.id async for m in sdk.models.list()]
    assert "gpt-4" in ids


async def test_sdk_sees_openai_errors(chat_gateway: Client, openai_worker: OpenAIWorker) -> None:
    base_url = str(chat_gateway.make_url("/v1"))
    async with AsyncOpenAI(api_key="cbk_wrong", base_url=base_url, max_retries=0) as bad:
        with pytest.raises(openai.AuthenticationError):
            await bad.chat.completions.create(
                model="gpt-4", messages=[{"role": "user", "content": "x"}]
            )


async def test_admin_key_picks_project_with_header(
    chat_gateway: Client,
    openai_worker: OpenAIWorker,
    factory: Factory,
    project: int,
    db: asyncpg.Connection,
) -> None:
    admin = await factory.key(admin=True)
    base_url = str(chat_gateway.make_url("/v1"))
    async with AsyncOpenAI(api_key=admin, base_url=base_url, max_retries=0) as client:
        await client.chat.completions.create(
            model="gpt-4", messages=[{"role": "user", "content": "sin proyecto"}]
        )
        assert await db.fetchval("SELECT count(*) FROM conversations") == 0
        await client.chat.completions.create(
            model="gpt-4",
            messages=[{"role": "user", "content": "con proyecto"}],
            extra_headers={"X-Project-Id": str(project)},
        )
        assert await db.fetchval("SELECT project_id FROM conversations") == project
        with pytest.raises(openai.NotFoundError):
            await client.chat.completions.create(
                model="gpt-4",
                messages=[{"role": "user", "content": "x"}],
                extra_headers={"X-Project-Id": "987654"},
            )


async def test_invalid_request_is_422_in_openai_shape(
    chat_gateway: Client, factory: Factory
) -> None:
    key = await factory.key(await factory.project())
    resp = await chat_gateway.post(
        "/v1/chat/completions",
        json={"model": "gpt-4", "messages": []},
        headers={"Authorization": f"Bearer {key}"},
    )
    assert resp.status == 422
    body = await resp.json()
    assert set(body["error"]) == {"message", "type", "code", "param"}
