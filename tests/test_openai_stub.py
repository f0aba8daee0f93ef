"""The local OpenAI stub speaks OpenAI's wire format: the official SDK works against it."""

from __future__ import annotations

from collections.abc import AsyncIterator

import openai
import pytest
from openai import AsyncOpenAI
from openai.types.chat import ChatCompletionMessageParam


@pytest.fixture
async def client(openai_stub: str) -> AsyncIterator[AsyncOpenAI]:
    async with AsyncOpenAI(api_key="sk-test", base_url=openai_stub, max_retries=0) as client:
        yield client


async def test_chat_completion_echoes_with_usage(client: AsyncOpenAI) -> None:
    out = await client.chat.completions.create(
        model="gpt-4",
        messages=[
            {"role": "system", "content": "be brief"},
            {"role": "user", "content": "hola mundo"},
        ],
    )
    assert out.choices[0].message.content == "echo[2]: hola mundo"
    assert out.usage is not None
    assert (out.usage.prompt_tokens, out.usage.completion_tokens) == (4, 3)


async def test_streamed_completion_has_usage_chunk(client: AsyncOpenAI) -> None:
    stream = await client.chat.completions.create(
        model="gpt-4",
        messages=[{"role": "user", "content": "uno dos"}],
        stream=True,
        stream_options={"include_usage": True},
    )
    text, usage = "", None
    async for chunk in stream:
        if chunk.choices:
            text += chunk.choices[0].delta.content or ""
        if chunk.usage:
            usage = chunk.usage
    assert text == "echo[1]: uno dos"
    assert usage is not None and usage.total_tokens == 5


async def test_models_conversations_and_responses(client: AsyncOpenAI) -> None:
    models = [m.id async for m in client.models.list()]
    assert "gpt-4" in models
    conv = await client.conversations.create(
        items=[{"type": "message", "role": "user", "content": "hi"}], metadata={"k": "v"}
    )
    assert conv.id.startswith("conv_")
    await client.conversations.items.create(
        conv.id, items=[{"type": "message", "role": "assistant", "content": "hello"}]
    )
    resp = await client.responses.create(model="gpt-4", input="ping", conversation=conv.id)
    assert resp.output_text == "echo[1]: ping"
    again = await client.responses.retrieve(resp.id)
    assert again.id == resp.id


@pytest.mark.parametrize(
    ("magic", "error"),
    [
        ("[[fail:401]]", openai.AuthenticationError),
        ("[[fail:403]]", openai.PermissionDeniedError),
        ("[[fail:429]]", openai.RateLimitError),
        ("[[fail:500]]", openai.InternalServerError),
    ],
)
async def test_magic_text_provokes_failures(
    client: AsyncOpenAI, magic: str, error: type[Exception]
) -> None:
    with pytest.raises(error):
        await client.chat.completions.create(
            model="gpt-4", messages=[{"role": "user", "content": f"x {magic}"}]
        )


async def test_counted_failure_then_success(client: AsyncOpenAI) -> None:
    messages: list[ChatCompletionMessageParam] = [
        {"role": "user", "content": "[[fail:500x1]] once"}
    ]
    with pytest.raises(openai.InternalServerError):
        await client.chat.completions.create(model="gpt-4", messages=messages)
    out = await client.chat.completions.create(model="gpt-4", messages=messages)
    assert out.choices[0].message.content is not None
