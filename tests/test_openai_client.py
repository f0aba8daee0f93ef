"""The worker's OpenAI client: a remembered request is the request the SDK builds, body for body;
anything but a plain POST of bytes is built by the SDK itself."""

from __future__ import annotations

from collections.abc import AsyncIterator
from typing import Any

import httpx2
import openai
import orjson
import pytest
from chatbeto.settings import OpenAIWorkerSettings
from chatbeto_openai_worker import upstream
from chatbeto_openai_worker.client import WorkerOpenAI
from openai import AsyncOpenAI
from openai._models import FinalRequestOptions


@pytest.fixture
async def client(openai_stub: str) -> AsyncIterator[WorkerOpenAI]:
    settings = OpenAIWorkerSettings(
        _env_file=None, openai_api_key="sk-test", openai_base_url=openai_stub, openai_org_id="org-1"
    )
    made = upstream.make_client(settings)
    assert made is not None
    yield made
    await made.close()


def options(content: bytes, **extra: Any) -> FinalRequestOptions:
    return FinalRequestOptions.construct(
        method="post", url="/chat/completions", content=content, **extra
    )


def sdk_request(client: WorkerOpenAI, opts: FinalRequestOptions) -> httpx2.Request:
    """What the SDK itself builds for these options (its own `_build_request`)."""
    return AsyncOpenAI._build_request(client, opts)


def shape(request: httpx2.Request) -> tuple[Any, ...]:
    headers = sorted((k.lower(), v) for k, v in request.headers.multi_items())
    return request.method, str(request.url), headers, request.read(), request.extensions


async def test_a_remembered_request_is_the_sdks(client: WorkerOpenAI) -> None:
    first = client._build_request(options(b'{"model":"gpt-4"}'))
    assert shape(first) == shape(sdk_request(client, options(b'{"model":"gpt-4"}')))
    # Another body, another length: made from the first request, equal to the SDK's own.
    body = orjson.dumps({"model": "gpt-4", "messages": [{"role": "user", "content": "hola"}]})
    remembered = client._build_request(options(body))
    assert shape(remembered) == shape(sdk_request(client, options(body)))
    assert remembered.headers["Content-Length"] == str(len(body))
    assert remembered.headers["Content-Type"] == "application/json"
    assert remembered.headers["Authorization"] == "Bearer sk-test"
    assert remembered.headers["OpenAI-Organization"] == "org-1"
    assert list(client._templates) == [("/chat/completions", 0)]
    # The jar's cookies of the call, as the SDK (httpx) would send them.
    client._client.cookies.set("__cf_bm", "abc", domain="127.0.0.1")
    with_cookie = client._build_request(options(body))
    assert shape(with_cookie) == shape(sdk_request(client, options(body)))
    assert with_cookie.headers["Cookie"] == "__cf_bm=abc"


@pytest.mark.parametrize(
    "extra",
    [
        {"headers": {"X-Extra": "1"}},
        {"timeout": 3.0},
        {"params": {"q": "1"}},
    ],
)
async def test_other_options_are_built_by_the_sdk(
    client: WorkerOpenAI, extra: dict[str, Any]
) -> None:
    client._build_request(options(b"{}"))  # remembered
    built = client._build_request(options(b"{}", **extra))
    assert shape(built) == shape(sdk_request(client, options(b"{}", **extra)))
    json_call = FinalRequestOptions.construct(method="post", url="/embeddings", json_data={"a": 1})
    assert shape(client._build_request(json_call)) == shape(sdk_request(client, json_call))
    assert list(client._templates) == [("/chat/completions", 0)]


async def test_post_bytes_answers_and_raises_like_the_sdk(client: WorkerOpenAI) -> None:
    for text in ("uno", "dos dos"):  # the second call is made from the first one's request
        body = {"model": "gpt-4", "messages": [{"role": "user", "content": text}]}
        response = await client.post_bytes("/chat/completions", orjson.dumps(body))
        answer = orjson.loads(response.content)
        assert answer["choices"][0]["message"]["content"].endswith(text)
    failing = {"model": "gpt-4", "messages": [{"role": "user", "content": "[[fail:400]]"}]}
    with pytest.raises(openai.BadRequestError):
        await client.post_bytes("/chat/completions", orjson.dumps(failing))
    streamed = {**failing, "messages": [{"role": "user", "content": "tres"}], "stream": True}
    response = await client.post_bytes("/chat/completions", orjson.dumps(streamed), stream=True)
    try:
        data = b"".join([chunk async for chunk in response.aiter_bytes()])
    finally:
        await response.aclose()
    assert b"data: [DONE]" in data
