"""`/v1` as a transparent proxy (contract 3.1), driven by the official `openai` SDK against the
gateway and the project's own stub: every field through, every answer field back, plain and
streamed, and each exchange stored whole in the key's project."""

from __future__ import annotations

import base64
from collections.abc import AsyncIterator
from typing import Any

import asyncpg
import openai
import orjson
import pytest
from chatbeto_metrics_ingest.consumer import MetricsIngest
from chatbeto_openai_worker.worker import OpenAIWorker
from openai import AsyncOpenAI

from tests.conftest import Client, Factory, wait_for

TOOLS: list[Any] = [
    {
        "type": "function",
        "function": {
            "name": "lookup",
            "description": "look it up",
            "parameters": {"type": "object", "properties": {"query": {"type": "string"}}},
        },
    }
]


@pytest.fixture
async def project(factory: Factory) -> int:
    return await factory.project()


@pytest.fixture
async def key(factory: Factory, project: int) -> str:
    return await factory.key(project)


@pytest.fixture
async def sdk(
    chat_gateway: Client, key: str, openai_worker: OpenAIWorker
) -> AsyncIterator[AsyncOpenAI]:
    base_url = str(chat_gateway.make_url("/v1"))
    async with AsyncOpenAI(api_key=key, base_url=base_url, max_retries=0) as client:
        yield client


async def stored_conversation(chat_gateway: Client, key: str) -> dict[str, Any]:
    """The one stored conversation of the key's project, as the API shows it."""
    headers = {"Authorization": f"Bearer {key}"}
    resp = await chat_gateway.get("/api/v1/openai/conversations", headers=headers)
    conversations = (await resp.json())["data"]["conversations"]
    assert len(conversations) == 1, conversations
    resp = await chat_gateway.get(
        f"/api/v1/openai/conversations/{conversations[0]['id']}", headers=headers
    )
    assert resp.status == 200
    data: dict[str, Any] = (await resp.json())["data"]
    return data


async def test_tool_calls_round_trip_plain_and_are_stored(
    sdk: AsyncOpenAI, chat_gateway: Client, key: str
) -> None:
    out = await sdk.chat.completions.create(
        model="gpt-4o",
        messages=[{"role": "user", "content": "el tiempo en Lima"}],
        tools=TOOLS,
        tool_choice="auto",
        seed=7,
        top_p=0.5,
        stop=["\n\n"],
    )
    choice = out.choices[0]
    assert choice.finish_reason == "tool_calls"
    assert choice.message.content is None
    assert choice.message.tool_calls is not None
    call = choice.message.tool_calls[0]
    assert call.type == "function"
    assert call.function.name == "lookup"
    assert orjson.loads(call.function.arguments) == {"query": "el tiempo en Lima"}
    assert out.system_fingerprint == "fp_stub"
    assert choice.message.annotations == []

    data = await stored_conversation(chat_gateway, key)
    user, answer = data["messages"]
    assert user["role"] == "user"
    assert user["content"] == "el tiempo en Lima"
    assert answer["role"] == "assistant"
    assert answer["toolCalls"][0]["id"] == call.id
    assert answer["toolCalls"][0]["function"]["name"] == "lookup"
    assert answer["finishReason"] == "tool_calls"
    assert answer["model"] == "gpt-4o"


async def test_tool_call_deltas_stream_and_the_whole_call_is_stored(
    sdk: AsyncOpenAI, chat_gateway: Client, key: str
) -> None:
    stream = await sdk.chat.completions.create(
        model="gpt-4o",
        messages=[{"role": "user", "content": "busca algo largo de verdad"}],
        tools=TOOLS,
        stream=True,
        stream_options={"include_usage": True},
    )
    name, arguments, finish, usage, deltas = "", "", None, None, 0
    async for chunk in stream:
        if chunk.usage is not None:
            usage = chunk.usage
        for choice in chunk.choices:
            for delta in choice.delta.tool_calls or ():
                deltas += 1
                name += delta.function.name or "" if delta.function else ""
                arguments += delta.function.arguments or "" if delta.function else ""
            finish = choice.finish_reason or finish
    assert deltas > 2  # the arguments arrived in pieces, as OpenAI sends them
    assert name == "lookup"
    assert orjson.loads(arguments) == {"query": "busca algo largo de verdad"}
    assert finish == "tool_calls"
    assert usage is not None
    assert usage.total_tokens > 0

    answer = (await stored_conversation(chat_gateway, key))["messages"][-1]
    assert answer["toolCalls"][0]["function"] == {"name": "lookup", "arguments": arguments}
    assert answer["usage"]["total_tokens"] == usage.total_tokens


async def test_a_tool_result_conversation_with_image_parts_is_stored_whole(
    sdk: AsyncOpenAI, chat_gateway: Client, key: str
) -> None:
    image = "data:image/png;base64," + base64.b64encode(b"\x89PNG" + b"x" * 3000).decode()
    out = await sdk.chat.completions.create(
        model="gpt-4o",
        messages=[
            {"role": "developer", "content": "sé breve"},
            {
                "role": "user",
                "content": [
                    {"type": "text", "text": "¿qué ves?"},
                    {"type": "image_url", "image_url": {"url": image, "detail": "low"}},
                ],
            },
            {
                "role": "assistant",
                "content": None,
                "tool_calls": [
                    {
                        "id": "call_1",
                        "type": "function",
                        "function": {"name": "lookup", "arguments": '{"query": "x"}'},
                    }
                ],
            },
            {"role": "tool", "tool_call_id": "call_1", "content": "un gato"},
        ],
        tools=TOOLS,
    )
    assert out.choices[0].message.content == "echo[4]: tool:un gato"
    messages = (await stored_conversation(chat_gateway, key))["messages"]
    assert [m["role"] for m in messages] == ["developer", "user", "assistant", "tool", "assistant"]
    user = messages[1]
    assert user["content"] == "¿qué ves?\n[image_url]"
    assert user["parts"][0]["type"] == "image_url"
    assert user["parts"][0]["detail"] == "low"
    assert "base64,…" in user["parts"][0]["url"]  # what it was, never its bytes
    assert "xxxx" not in orjson.dumps(messages).decode()
    assert messages[2]["toolCalls"][0]["id"] == "call_1"
    assert messages[3]["toolCallId"] == "call_1"
    assert messages[3]["content"] == "un gato"
    assert messages[4]["content"] == "echo[4]: tool:un gato"


async def test_n_choices_json_mode_and_logprobs(
    sdk: AsyncOpenAI, chat_gateway: Client, key: str
) -> None:
    out = await sdk.chat.completions.create(
        model="gpt-4",
        messages=[{"role": "user", "content": "dame json"}],
        n=2,
        response_format={"type": "json_object"},
        logprobs=True,
        top_logprobs=2,
    )
    assert [c.index for c in out.choices] == [0, 1]
    first = out.choices[0]
    assert orjson.loads(first.message.content or "") == {"echo": "echo[1]: dame json"}
    assert first.logprobs is not None
    assert first.logprobs.content is not None
    assert len(first.logprobs.content[0].top_logprobs) == 2
    answer = (await stored_conversation(chat_gateway, key))["messages"][-1]
    assert answer["content"] == first.message.content
    assert answer["otherChoices"][0]["content"] == out.choices[1].message.content


async def test_n_choices_stream_chunk_for_chunk(sdk: AsyncOpenAI) -> None:
    stream = await sdk.chat.completions.create(
        model="gpt-4",
        messages=[{"role": "user", "content": "dos veces"}],
        n=2,
        stream=True,
    )
    texts = {0: "", 1: ""}
    async for chunk in stream:
        for choice in chunk.choices:
            texts[choice.index] += choice.delta.content or ""
    assert texts == {0: "echo[1]: dos veces", 1: "echo[1]: dos veces [1]"}


@pytest.mark.parametrize("streamed", [False, True])
async def test_usage_details_reach_the_client_and_the_stored_answer(
    sdk: AsyncOpenAI, chat_gateway: Client, key: str, streamed: bool
) -> None:
    # `prompt_cache_key` is a field chatbeto does not know: the stub caches half the prompt
    # only if it arrived. A reasoning model reports reasoning tokens.
    params: dict[str, Any] = {
        "model": "o3-mini",
        "messages": [{"role": "user", "content": "uno dos tres cuatro"}],
        "prompt_cache_key": "tenant-1",
    }
    if streamed:
        stream = await sdk.chat.completions.create(
            **params, stream=True, stream_options={"include_usage": True}
        )
        usage = None
        async for chunk in stream:
            usage = chunk.usage or usage
    else:
        usage = (await sdk.chat.completions.create(**params)).usage
    assert usage is not None
    assert usage.prompt_tokens_details is not None
    assert usage.prompt_tokens_details.cached_tokens == 2
    assert usage.completion_tokens_details is not None
    assert usage.completion_tokens_details.reasoning_tokens == 8
    answer = (await stored_conversation(chat_gateway, key))["messages"][-1]
    assert answer["usage"]["prompt_tokens_details"] == {"cached_tokens": 2}
    assert answer["usage"]["completion_tokens_details"] == {"reasoning_tokens": 8}
    assert answer["model"] == "o3-mini"


@pytest.mark.parametrize("streamed", [False, True])
async def test_refusal_reaches_the_client(sdk: AsyncOpenAI, streamed: bool) -> None:
    messages: Any = [{"role": "user", "content": "no [[refuse]]"}]
    if not streamed:
        out = await sdk.chat.completions.create(model="gpt-4", messages=messages)
        assert out.choices[0].message.refusal == "I'm sorry, I can't help with that."
        return
    refusal = ""
    async for chunk in await sdk.chat.completions.create(
        model="gpt-4", messages=messages, stream=True
    ):
        for choice in chunk.choices:
            refusal += choice.delta.refusal or ""
    assert refusal == "I'm sorry, I can't help with that."


@pytest.mark.parametrize("streamed", [False, True])
async def test_openai_4xx_reaches_the_sdk_with_its_code_and_param(
    sdk: AsyncOpenAI, db: asyncpg.Connection, streamed: bool
) -> None:
    with pytest.raises(openai.BadRequestError) as bad:
        await sdk.chat.completions.create(
            model="gpt-4",
            messages=[{"role": "user", "content": "hola"}],
            temperature=3,
            stream=streamed,
        )
    assert bad.value.status_code == 400
    assert bad.value.code == "decimal_above_max_value"
    assert bad.value.param == "temperature"
    with pytest.raises(openai.NotFoundError) as missing:
        await sdk.chat.completions.create(
            model="no-such-model", messages=[{"role": "user", "content": "hola"}], stream=streamed
        )
    assert missing.value.code == "model_not_found"
    with pytest.raises(openai.BadRequestError) as magic:
        await sdk.chat.completions.create(
            model="gpt-4", messages=[{"role": "user", "content": "[[fail:400]]"}], stream=streamed
        )
    assert magic.value.param == "messages"
    assert await db.fetchval("SELECT count(*) FROM conversations") == 0


async def test_model_defaults_to_openai_model_and_body_is_forwarded(
    chat_gateway: Client, key: str, openai_worker: OpenAIWorker, db: asyncpg.Connection
) -> None:
    resp = await chat_gateway.post(
        "/v1/chat/completions",
        data=orjson.dumps({"messages": [{"role": "user", "content": "sin modelo"}], "x_extra": 1}),
        headers={"Authorization": f"Bearer {key}", "Content-Type": "application/json"},
    )
    assert resp.status == 200, await resp.text()
    body = await resp.json()
    assert body["model"] == "gpt-4"
    assert body["object"] == "chat.completion"
    assert body["id"].startswith("chatcmpl-")  # OpenAI's id, not one chatbeto made up
    assert await db.fetchval("SELECT model FROM messages WHERE role = 'assistant'") == "gpt-4"


@pytest.mark.parametrize(
    ("body", "field"),
    [
        ({"model": "gpt-4", "messages": [{"role": "user", "content": "x"}], "stream": 0}, "stream"),
        ({"messages": [{"role": "user", "content": "a\u0000b"}]}, "messages.0.content"),
        (
            {"messages": [{"role": "user", "content": [{"type": "text", "text": "\u0000"}]}]},
            "messages.0.content.0.text",
        ),
        ({"messages": [{"role": "system", "content": "x", "name": "n\u0000"}]}, "messages.0.name"),
        ({"messages": [{"role": "wizard", "content": "x"}]}, "messages.0.role"),
        ({"messages": []}, "messages"),
        ({"model": 5, "messages": [{"role": "user", "content": "x"}]}, "model"),
    ],
)
async def test_bad_requests_are_422_naming_the_field(
    chat_gateway: Client, key: str, db: asyncpg.Connection, body: dict[str, Any], field: str
) -> None:
    resp = await chat_gateway.post(
        "/v1/chat/completions", json=body, headers={"Authorization": f"Bearer {key}"}
    )
    assert resp.status == 422
    error = (await resp.json())["error"]
    assert error["param"] == field
    assert field in error["message"]
    assert await db.fetchval("SELECT count(*) FROM conversations") == 0


async def test_responses_plain_is_forwarded_and_stored(
    sdk: AsyncOpenAI, chat_gateway: Client, key: str
) -> None:
    out = await sdk.responses.create(
        model="gpt-4o", instructions="sé breve", input="hola responses"
    )
    assert out.object == "response"
    assert out.status == "completed"
    assert out.output_text == "echo[2]: hola responses"
    assert out.usage is not None
    data = await stored_conversation(chat_gateway, key)
    assert data["conversation"]["source"] == "responses"
    assert [(m["role"], m["content"]) for m in data["messages"]] == [
        ("developer", "sé breve"),
        ("user", "hola responses"),
        ("assistant", "echo[2]: hola responses"),
    ]
    assert data["messages"][-1]["responseId"] == out.id


async def test_responses_stream_typed_events_to_completed(
    sdk: AsyncOpenAI, chat_gateway: Client, key: str
) -> None:
    stream = await sdk.responses.create(model="gpt-4o", input="uno dos tres", stream=True)
    types, text, final = [], "", None
    async for event in stream:
        types.append(event.type)
        if event.type == "response.output_text.delta":
            text += event.delta
        if event.type == "response.completed":
            final = event.response
    assert types[0] == "response.created"
    assert types[-1] == "response.completed"
    assert "response.output_item.added" in types
    assert "response.content_part.done" in types
    assert text == "echo[1]: uno dos tres"
    assert final is not None
    assert final.output_text == text
    answer = (await stored_conversation(chat_gateway, key))["messages"][-1]
    assert answer["content"] == text
    assert answer["usage"]["total_tokens"] == final.usage.total_tokens if final.usage else 0


async def test_responses_function_calls_stream_and_store(
    sdk: AsyncOpenAI, chat_gateway: Client, key: str
) -> None:
    tools: Any = [{"type": "function", "name": "lookup", "parameters": {"type": "object"}}]
    stream = await sdk.responses.create(model="gpt-4o", input="busca", tools=tools, stream=True)
    arguments = ""
    async for event in stream:
        if event.type == "response.function_call_arguments.delta":
            arguments += event.delta
    assert orjson.loads(arguments) == {"query": "busca"}
    answer = (await stored_conversation(chat_gateway, key))["messages"][-1]
    assert answer["toolCalls"][0]["function"] == {"name": "lookup", "arguments": arguments}


async def test_embeddings_are_forwarded_and_not_stored(
    sdk: AsyncOpenAI, db: asyncpg.Connection, ingest: MetricsIngest
) -> None:
    # The SDK asks for base64 and decodes it: the bytes must arrive untouched.
    out = await sdk.embeddings.create(model="text-embedding-3-small", input=["uno", "dos tres"])
    assert [d.index for d in out.data] == [0, 1]
    assert len(out.data[0].embedding) == 8
    assert out.usage.prompt_tokens == 3
    floats = await sdk.embeddings.create(
        model="text-embedding-3-small", input="uno", encoding_format="float"
    )
    assert floats.data[0].embedding == pytest.approx(out.data[0].embedding, abs=1e-6)
    assert await db.fetchval("SELECT count(*) FROM conversations") == 0

    async def events() -> list[Any]:
        rows = await db.fetch("SELECT tokens_entrada FROM events ORDER BY tokens_entrada")
        return list(rows) if len(rows) == 2 else []

    assert [r["tokens_entrada"] for r in await wait_for(events)] == [1, 3]


async def test_each_call_is_one_metrics_event(
    sdk: AsyncOpenAI, db: asyncpg.Connection, ingest: MetricsIngest
) -> None:
    await sdk.chat.completions.create(
        model="gpt-4o", messages=[{"role": "user", "content": "uno dos"}]
    )
    async for _ in await sdk.chat.completions.create(
        model="gpt-4o", messages=[{"role": "user", "content": "tres"}], stream=True
    ):
        pass
    await sdk.responses.create(model="gpt-4o-mini", input="cuatro")

    async def events() -> list[Any]:
        rows = await db.fetch(
            """SELECT e.contenido, e.tokens_entrada, g.gpt_id FROM events e
               JOIN gpts g ON g.pk = e.gpt_pk ORDER BY e.tokens_entrada"""
        )
        return list(rows) if len(rows) == 3 else []

    rows = await wait_for(events)
    assert {r["gpt_id"] for r in rows} == {"chatbeto"}
    assert sorted(r["contenido"] for r in rows) == ["gpt-4o", "gpt-4o", "gpt-4o-mini"]


async def test_other_v1_paths_are_404_in_openai_shape(
    sdk: AsyncOpenAI, chat_gateway: Client
) -> None:
    with pytest.raises(openai.NotFoundError):
        await sdk.images.generate(prompt="un gato")
    resp = await chat_gateway.get("/v1/assistants")
    assert resp.status == 404
    error = (await resp.json())["error"]
    assert set(error) == {"message", "type", "code", "param"}
    assert "POST /v1/chat/completions" in error["message"]
    assert "POST /v1/responses" in error["message"]
    resp = await chat_gateway.get("/v1/chat/completions")
    assert resp.status == 405
