"""What every stub route shares: OpenAI's error body, the magic failure text, token counts."""

from __future__ import annotations

import asyncio
import re
from collections import Counter
from typing import Any

import orjson
from aiohttp import web

MAGIC_RE = re.compile(r"\[\[(fail|slow):([0-9.]+)(?:x(\d+))?\]\]")
DRIP_RE = re.compile(r"\[\[drip:([0-9.]+)\]\]")
CHAT_MODELS = ("gpt-4", "gpt-4o", "gpt-4o-mini", "gpt-3.5-turbo", "o3-mini")
EMBEDDING_MODELS = ("text-embedding-3-small", "text-embedding-3-large")
MODELS = CHAT_MODELS + EMBEDDING_MODELS
# Names OpenAI could serve; anything else is `model_not_found`, as OpenAI answers it.
MODEL_FAMILIES = ("gpt-", "o1", "o3", "o4", "chatgpt-", "text-embedding-", "omni-")
REASONING_FAMILIES = ("o1", "o3", "o4")
REASONING_TOKENS = 8
FAILURES = web.AppKey("failures", Counter[str])
# Calls per route (tests count how often the model was billed).
CALLS = web.AppKey("calls", Counter[str])
# How many `[[slow:…]]` requests are being held right now (tests poll it).
SLOW_IN_FLIGHT = web.AppKey("slow_in_flight", list[int])
MAX_SLOW_SECONDS = 120.0
CUT_MAGIC = "[[cut]]"
CUT_AFTER_CHUNKS = 2


def count_tokens(text: str) -> int:
    return len(text.split())


def text_of(content: Any) -> str:
    """Chat content may be a string or a list of parts."""
    if isinstance(content, str):
        return content
    if isinstance(content, list):
        return " ".join(
            str(part.get("text", "")) for part in content if isinstance(part, dict)
        ).strip()
    return ""


def json_response(body: Any, status: int = 200) -> web.Response:
    return web.Response(body=orjson.dumps(body), status=status, content_type="application/json")


def error(
    status: int, message: str, type_: str, code: str | None = None, param: str | None = None
) -> web.Response:
    """OpenAI's error body: `{"error": {"message", "type", "param", "code"}}`."""
    body = {"error": {"message": message, "type": type_, "param": param, "code": code}}
    return json_response(body, status)


def authorized(request: web.Request) -> bool:
    request.app[CALLS][request.path] += 1
    auth = request.headers.get("Authorization", "")
    return auth.startswith("Bearer ") and len(auth) > len("Bearer ")


def unauthorized() -> web.Response:
    return error(401, "No API key provided.", "invalid_request_error", "invalid_api_key")


async def read_json(request: web.Request) -> dict[str, Any] | web.Response:
    try:
        body = orjson.loads(await request.read())
    except orjson.JSONDecodeError:
        return error(
            400, "We could not parse the JSON body of your request.", "invalid_request_error"
        )
    if not isinstance(body, dict):
        return error(400, "The body must be a JSON object.", "invalid_request_error")
    return body


def check_model(body: dict[str, Any]) -> web.Response | None:
    model = body.get("model")
    if not isinstance(model, str) or not model:
        return error(
            400, "you must provide a model parameter", "invalid_request_error", None, "model"
        )
    if not model.startswith(MODEL_FAMILIES):
        return error(
            404,
            f"The model `{model}` does not exist or you do not have access to it.",
            "invalid_request_error",
            "model_not_found",
        )
    return None


def check_temperature(body: dict[str, Any]) -> web.Response | None:
    value = body.get("temperature")
    if value is None:
        return None
    if not isinstance(value, int | float) or isinstance(value, bool):
        return error(
            400,
            f"Invalid type for 'temperature': expected a decimal, but got {type(value).__name__}.",
            "invalid_request_error",
            "invalid_type",
            "temperature",
        )
    if value > 2:
        return error(
            400,
            f"Invalid 'temperature': decimal above maximum value. Expected a value <= 2, "
            f"but got {value} instead.",
            "invalid_request_error",
            "decimal_above_max_value",
            "temperature",
        )
    return None


async def provoke(request: web.Request, text: str) -> web.Response | None:
    """Apply the magic in `text` (or the X-Stub header): an error response, a delay, or nothing."""
    match = MAGIC_RE.search(request.headers.get("X-Stub", "") + " " + text)
    if match is None:
        return None
    kind, value, times = match.groups()
    if kind == "slow":
        request.app[SLOW_IN_FLIGHT][0] += 1
        try:
            await asyncio.sleep(min(float(value), MAX_SLOW_SECONDS))
        finally:
            request.app[SLOW_IN_FLIGHT][0] -= 1
        return None
    status = int(float(value))
    if times is not None:
        seen = request.app[FAILURES]
        seen[match.group(0) + text] += 1
        if seen[match.group(0) + text] > int(times):
            return None
    return failure(status)


def drip_seconds(request: web.Request, text: str) -> float:
    """`[[drip:0.2]]`: the pause between two streamed events (a stream that takes its time)."""
    match = DRIP_RE.search(request.headers.get("X-Stub", "") + " " + text)
    return min(float(match.group(1)), MAX_SLOW_SECONDS) if match else 0.0


def failure(status: int) -> web.Response:
    if status == 400:
        return error(
            400,
            "Invalid value for 'messages': the stub was asked to refuse this request.",
            "invalid_request_error",
            "invalid_value",
            "messages",
        )
    if status == 401:
        return error(401, "Incorrect API key provided.", "invalid_request_error", "invalid_api_key")
    if status == 403:
        return error(403, "Not allowed.", "invalid_request_error", "forbidden")
    if status == 404:
        return error(404, "Not found.", "invalid_request_error", "not_found")
    if status == 429:
        return error(429, "Rate limit reached.", "requests", "rate_limit_exceeded")
    return error(status, "The server had an error.", "server_error")


def usage_details(model: str, prompt: int, completion: int, body: dict[str, Any]) -> dict[str, Any]:
    """Chat usage with its details: a `prompt_cache_key` caches half the prompt, a reasoning
    model spends REASONING_TOKENS on reasoning (both deterministic, for tests)."""
    cached = prompt // 2 if body.get("prompt_cache_key") else 0
    reasoning = REASONING_TOKENS if model.startswith(REASONING_FAMILIES) else 0
    return {
        "prompt_tokens": prompt,
        "completion_tokens": completion + reasoning,
        "total_tokens": prompt + completion + reasoning,
        "prompt_tokens_details": {"cached_tokens": cached, "audio_tokens": 0},
        "completion_tokens_details": {
            "reasoning_tokens": reasoning,
            "audio_tokens": 0,
            "accepted_prediction_tokens": 0,
            "rejected_prediction_tokens": 0,
        },
    }
