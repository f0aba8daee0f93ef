"""Calls to OpenAI with the official SDK: backoff for 429/5xx inside the request's deadline, and
failures mapped to what the gateway answers (contract 3.1, "Upstream failures")."""

from __future__ import annotations

import asyncio
import random
import time
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass
from typing import Any

import openai
from chatbeto.logging import get_logger
from chatbeto.messages import ChatMessage, Usage
from chatbeto.settings import OpenAISettings
from openai import AsyncOpenAI

log = get_logger(__name__)
BACKOFF_BASE_SECONDS = 0.2
BACKOFF_MAX_SECONDS = 5.0

OnDelta = Callable[[str], Awaitable[None]]


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


@dataclass(frozen=True)
class Completion:
    content: str
    model: str
    usage: Usage
    latency_ms: int


def make_client(settings: OpenAISettings) -> AsyncOpenAI | None:
    """None when no key is configured. Retries are ours (they must respect the deadline)."""
    if settings.openai_api_key is None:
        return None
    return AsyncOpenAI(
        api_key=settings.openai_api_key.get_secret_value(),
        organization=settings.openai_org_id,
        base_url=settings.openai_base_url,
        max_retries=0,
        timeout=settings.openai_timeout,
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


async def complete(
    client: AsyncOpenAI | None,
    messages: Sequence[ChatMessage],
    *,
    model: str,
    temperature: float | None,
    max_tokens: int | None,
    deadline: float,
    on_delta: OnDelta | None = None,
) -> Completion:
    """One chat completion; `deadline` is a `time.monotonic()` value. Streams through
    `on_delta` when given (a failure after the first delta is not retried: it was seen)."""
    if client is None:
        raise UpstreamUnconfigured("OPENAI_API_KEY is not set")
    started = time.monotonic()
    attempt = 0
    while True:
        attempt += 1
        remaining = deadline - time.monotonic()
        if remaining <= 0:
            raise UpstreamTimeout("no answer from OpenAI in time")
        emitted: list[str] = []
        try:
            async with asyncio.timeout(remaining):
                content, used_model, usage = await _call(
                    client, messages, model, temperature, max_tokens, remaining, on_delta, emitted
                )
        except (TimeoutError, openai.APITimeoutError) as exc:
            raise UpstreamTimeout("no answer from OpenAI in time") from exc
        except (openai.AuthenticationError, openai.PermissionDeniedError) as exc:
            raise UpstreamAuth(f"OpenAI refused the credentials ({exc.status_code})") from exc
        except openai.APIError as exc:
            if not _retryable(exc) or emitted:
                if isinstance(exc, openai.APIStatusError) and not _retryable(exc):
                    raise UpstreamError(f"OpenAI answered {exc.status_code}") from exc
                raise UpstreamUnavailable("OpenAI failed mid-answer") from exc
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
            continue
        except Exception as exc:
            # A stream that breaks mid-way may surface as a transport error, not an APIError.
            if emitted:
                raise UpstreamUnavailable("OpenAI failed mid-answer") from exc
            raise
        latency_ms = round((time.monotonic() - started) * 1000)
        return Completion(content, used_model, usage, latency_ms)


async def _call(
    client: AsyncOpenAI,
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
        usage = resp.usage
        return (
            resp.choices[0].message.content or "" if resp.choices else "",
            resp.model,
            Usage(
                prompt_tokens=usage.prompt_tokens if usage else 0,
                completion_tokens=usage.completion_tokens if usage else 0,
                total_tokens=usage.total_tokens if usage else 0,
            ),
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
            final = Usage(
                prompt_tokens=chunk.usage.prompt_tokens,
                completion_tokens=chunk.usage.completion_tokens,
                total_tokens=chunk.usage.total_tokens,
            )
    return "".join(emitted), used_model, final
