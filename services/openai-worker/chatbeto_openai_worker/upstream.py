"""Calls to OpenAI with the official SDK: backoff for 429/5xx inside the request's deadline, and
failures mapped to what the gateway answers (contract 3.1, "Upstream failures")."""

from __future__ import annotations

import asyncio
import random
import time
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass
from typing import Any, TypeVar

import httpx2
import openai
import orjson
from chatbeto.logging import get_logger
from chatbeto.messages import ChatMessage, Usage
from chatbeto.settings import OpenAISettings

from chatbeto_openai_worker.client import WorkerOpenAI
from chatbeto_openai_worker.exchange import usage_of

log = get_logger(__name__)
BACKOFF_BASE_SECONDS = 0.2
BACKOFF_MAX_SECONDS = 5.0

OnDelta = Callable[[str], Awaitable[None]]
OnBytes = Callable[[bytes], Awaitable[None]]
T = TypeVar("T")


class UpstreamError(Exception):
    status = 502
    code = "upstream_error"


class UpstreamAuth(UpstreamError):
    code = "upstream_auth"


class UpstreamUnavailable(UpstreamError):
    code = "upstream_unavailable"


class UpstreamTimeout(UpstreamError):
    status = 504
    code = "upstream_timeout"


class UpstreamUnconfigured(UpstreamError):
    status = 503
    code = "openai_unconfigured"


class UpstreamRejected(UpstreamError):
    """OpenAI refused the request (a 4xx other than 401/403/429): its own status and error body
    reach the client, so an SDK raises what it would raise against OpenAI."""

    def __init__(self, status: int, body: str, code: str | None) -> None:
        super().__init__(f"OpenAI answered {status}")
        self.status = status
        self.body = body
        self.code = code or "upstream_rejected"


@dataclass(frozen=True)
class Completion:
    content: str
    model: str
    usage: Usage
    latency_ms: int


def make_client(settings: OpenAISettings) -> WorkerOpenAI | None:
    """None when no key is configured. Retries are ours (they must respect the deadline).

    The SDK's aiohttp transport: the SDK still builds, authenticates and maps every call,
    aiohttp's C parser carries the bytes (the default httpx transport was most of the worker's
    CPU per proxied call)."""
    if settings.openai_api_key is None:
        return None
    return WorkerOpenAI(
        api_key=settings.openai_api_key.get_secret_value(),
        organization=settings.openai_org_id,
        base_url=settings.openai_base_url,
        max_retries=0,
        timeout=settings.openai_timeout,
        http_client=openai.DefaultAioHttpClient(
            timeout=settings.openai_timeout,
            limits=httpx2.Limits(max_connections=None, max_keepalive_connections=256),
        ),
    )


def _retryable(exc: Exception) -> bool:
    if isinstance(exc, openai.APITimeoutError):
        return False
    if isinstance(exc, openai.APIConnectionError | openai.RateLimitError):
        return True
    return isinstance(exc, openai.APIStatusError) and exc.status_code >= 500


def backoff_seconds(attempt: int) -> float:
    """Exponential with jitter (attempt is 1-based)."""
    ceiling: float = min(BACKOFF_MAX_SECONDS, BACKOFF_BASE_SECONDS * 2.0 ** (attempt - 1))
    return ceiling * (0.5 + random.random() / 2)  # noqa: S311 - jitter, not security


def _rejected(exc: openai.APIStatusError) -> UpstreamRejected:
    text = exc.response.text
    code = None
    try:
        error = orjson.loads(text).get("error") or {}
        code = error.get("code") or error.get("type")
    except (orjson.JSONDecodeError, AttributeError):
        pass
    return UpstreamRejected(exc.status_code, text, code if isinstance(code, str) else None)


def _final(exc: Exception, seen: bool) -> UpstreamError | None:
    """The error to answer with, or None when another attempt may succeed."""
    if seen:
        return UpstreamUnavailable("OpenAI failed mid-answer")
    if not isinstance(exc, openai.APIError) or _retryable(exc):
        return None
    if isinstance(exc, openai.AuthenticationError | openai.PermissionDeniedError):
        return UpstreamAuth(f"OpenAI refused the credentials ({exc.status_code})")
    if isinstance(exc, openai.APIStatusError):
        return _rejected(exc)
    return UpstreamUnavailable("OpenAI failed")


async def with_retries(
    client: WorkerOpenAI | None,
    deadline: float,
    attempt_once: Callable[[WorkerOpenAI, float], Awaitable[T]],
    seen: Callable[[], bool] = lambda: False,
) -> T:
    """Run `attempt_once(client, remaining_seconds)` until it answers: 429/5xx/connection errors
    are retried with backoff while the deadline (a `time.monotonic()` value) allows, unless
    `seen()` says output already reached the client (a failure then is final)."""
    if client is None:
        raise UpstreamUnconfigured("OPENAI_API_KEY is not set")
    attempt = 0
    while True:
        attempt += 1
        remaining = deadline - time.monotonic()
        if remaining <= 0:
            raise UpstreamTimeout("no answer from OpenAI in time")
        try:
            async with asyncio.timeout(remaining):
                return await attempt_once(client, remaining)
        except (TimeoutError, openai.APITimeoutError) as exc:
            raise UpstreamTimeout("no answer from OpenAI in time") from exc
        except (openai.APIError, httpx2.TransportError, httpx2.StreamError) as exc:
            # A stream that breaks mid-way surfaces as a transport error, not an APIError.
            final = _final(exc, seen())
            if final is not None:
                raise final from exc
            delay = backoff_seconds(attempt)
            if time.monotonic() + delay >= deadline:
                raise UpstreamUnavailable(f"OpenAI unavailable after {attempt} attempt(s)") from exc
            log.warning(
                "upstream failed, backing off",
                attempt=attempt,
                error=type(exc).__name__,
                cause=repr(exc.__cause__)[:200] if exc.__cause__ else None,
            )
            await asyncio.sleep(delay)


async def forward(
    client: WorkerOpenAI | None, path: str, body: dict[str, Any], *, deadline: float
) -> bytes:
    """POST `body` to OpenAI's `path` as it is; OpenAI's answer as bytes (no models built).

    The deadline is `with_retries`' `asyncio.timeout`; no per-call SDK timeout, so that every
    call's request is the same but its body (`WorkerOpenAI.post_bytes`)."""

    async def once(c: WorkerOpenAI, remaining: float) -> bytes:
        response = await c.post_bytes(path, orjson.dumps(body))
        return response.content

    return await with_retries(client, deadline, once)


async def forward_stream(
    client: WorkerOpenAI | None,
    path: str,
    body: dict[str, Any],
    *,
    deadline: float,
    on_bytes: OnBytes,
) -> None:
    """POST a streamed request; OpenAI's SSE bytes go to `on_bytes` as they arrive."""
    seen = [False]

    async def once(c: WorkerOpenAI, remaining: float) -> None:
        response = await c.post_bytes(path, orjson.dumps(body), stream=True)
        try:
            async for data in response.aiter_bytes():
                seen[0] = True
                await on_bytes(data)
        finally:
            await response.aclose()

    await with_retries(client, deadline, once, lambda: seen[0])


async def complete(
    client: WorkerOpenAI | None,
    messages: Sequence[ChatMessage],
    *,
    model: str,
    temperature: float | None,
    max_tokens: int | None,
    deadline: float,
    on_delta: OnDelta | None = None,
) -> Completion:
    """One chat completion of the seed routes (text in, text out); `deadline` is a
    `time.monotonic()` value. Streams through `on_delta` when given."""
    started = time.monotonic()
    emitted: list[str] = []

    async def once(c: WorkerOpenAI, remaining: float) -> tuple[str, str, Usage]:
        emitted.clear()
        return await _call(
            c, messages, model, temperature, max_tokens, remaining, on_delta, emitted
        )

    try:
        content, used_model, usage = await with_retries(
            client, deadline, once, lambda: bool(emitted)
        )
    except UpstreamRejected as exc:  # the seed routes keep their 502 (contract 3.1)
        raise UpstreamError(str(exc)) from exc
    latency_ms = round((time.monotonic() - started) * 1000)
    return Completion(content, used_model, usage, latency_ms)


async def _call(
    client: WorkerOpenAI,
    messages: Sequence[ChatMessage],
    model: str,
    temperature: float | None,
    max_tokens: int | None,
    timeout_seconds: float,
    on_delta: OnDelta | None,
    emitted: list[str],
) -> tuple[str, str, Usage]:
    params: dict[str, Any] = {
        "model": model,
        "messages": [{"role": m.role, "content": m.content} for m in messages],
        "timeout": timeout_seconds,
    }
    if temperature is not None:
        params["temperature"] = temperature
    if max_tokens is not None:
        params["max_tokens"] = max_tokens
    if on_delta is None:
        resp = await client.chat.completions.create(**params)
        return (
            resp.choices[0].message.content or "" if resp.choices else "",
            resp.model,
            usage_of(resp.usage.model_dump() if resp.usage else None),
        )
    stream = await client.chat.completions.create(
        **params, stream=True, stream_options={"include_usage": True}
    )
    used_model = model
    final = Usage()
    async for chunk in stream:
        used_model = chunk.model or used_model
        if chunk.choices:
            delta = chunk.choices[0].delta.content
            if delta:
                emitted.append(delta)
                await on_delta(delta)
        if chunk.usage is not None:
            final = usage_of(chunk.usage.model_dump())
    return "".join(emitted), used_model, final
