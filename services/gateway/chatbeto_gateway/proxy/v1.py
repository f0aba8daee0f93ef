"""The OpenAI-compatible surface (contract 3.1): `POST /v1/chat/completions`, `/v1/responses`,
`/v1/embeddings` and `GET /v1/models`, so any OpenAI SDK can use the gateway as its `base_url`.

A transparent proxy: the body reaches OpenAI as the client sent it (`model` defaulting to
OPENAI_MODEL), OpenAI's answer reaches the client as OpenAI sent it, streamed event for event.
The gateway reads only what it must check (a JSON object, `stream` a real boolean, no value that
cannot be stored) and never rebuilds a body. The exchange is stored in the key's project; an
admin key picks one with `X-Project-Id`.
"""

from __future__ import annotations

from typing import Any

import orjson
from aiohttp import web
from chatbeto.messages import ProxyCall, ProxyEndpoint, ReplyChunk, ReplyResult
from pydantic import BaseModel, ConfigDict, Field

from chatbeto_gateway.access.auth import Principal, principal_of
from chatbeto_gateway.http import responses
from chatbeto_gateway.http.errors import ApiError, ValidationFailed
from chatbeto_gateway.http.openapi import doc
from chatbeto_gateway.proxy.calls import ask, stream, visible_project
from chatbeto_gateway.proxy.rpc import CallFailed
from chatbeto_gateway.state import SETTINGS, UPSTREAM

routes = web.RouteTableDef()
MAX_MESSAGES = 1000
MAX_MODEL_CHARS = 100
CHAT_ROLES = frozenset({"system", "developer", "user", "assistant", "tool"})
SUPPORTED = {
    "/v1/chat/completions": "POST",
    "/v1/responses": "POST",
    "/v1/embeddings": "POST",
    "/v1/models": "GET",
}
ERRORS = {200: "", 400: "", 401: "", 404: "", 422: "", 429: "", 502: "", 503: "", 504: ""}


class V1ChatIn(BaseModel):
    """What the gateway checks of a chat request (documentation: every other field of OpenAI's
    request is accepted and forwarded as it is)."""

    model_config = ConfigDict(extra="allow")
    model: str | None = Field(default=None, max_length=MAX_MODEL_CHARS)
    messages: list[dict[str, Any]] = Field(min_length=1, max_length=MAX_MESSAGES)
    stream: bool | None = None


class V1ResponsesIn(BaseModel):
    model_config = ConfigDict(extra="allow")
    model: str | None = Field(default=None, max_length=MAX_MODEL_CHARS)
    input: str | list[dict[str, Any]] | None = None
    stream: bool | None = None


class V1EmbeddingsIn(BaseModel):
    model_config = ConfigDict(extra="allow")
    model: str | None = Field(default=None, max_length=MAX_MODEL_CHARS)
    input: str | list[Any]


def _nul_path(value: Any, path: str) -> str | None:
    """The dotted path of the first string holding a NUL character, if any."""
    if isinstance(value, str):
        return path if "\x00" in value else None
    if isinstance(value, dict):
        for key, item in value.items():
            found = _nul_path(key, path) or _nul_path(item, f"{path}.{key}" if path else key)
            if found:
                return found
    elif isinstance(value, list):
        for n, item in enumerate(value):
            found = _nul_path(item, f"{path}.{n}")
            if found:
                return found
    return None


async def _read(request: web.Request, *, stored: bool) -> dict[str, Any]:
    raw = await request.read()
    try:
        body = orjson.loads(raw)
    except orjson.JSONDecodeError as exc:
        raise ApiError(400, "invalid_json", "body is not valid JSON") from exc
    if not isinstance(body, dict):
        raise ValidationFailed.of("body", "must be a JSON object")
    # JSON can carry NUL only escaped; Postgres text cannot hold it (contract: a 422).
    if stored and b"\\u0000" in raw:
        found = _nul_path(body, "")
        if found:
            raise ValidationFailed.of(found, "must not contain NUL characters")
    model = body.get("model")
    if model is None:
        body["model"] = request.app[SETTINGS].openai_model
    elif not isinstance(model, str) or not 0 < len(model) <= MAX_MODEL_CHARS:
        raise ValidationFailed.of("model", f"a string of 1 to {MAX_MODEL_CHARS} characters")
    if "stream" in body and not isinstance(body["stream"], bool):
        raise ValidationFailed.of("stream", "must be true or false")
    return body


def _check_messages(body: dict[str, Any]) -> None:
    messages = body.get("messages")
    if not isinstance(messages, list) or not 0 < len(messages) <= MAX_MESSAGES:
        raise ValidationFailed.of("messages", f"a list of 1 to {MAX_MESSAGES} messages")
    for n, message in enumerate(messages):
        if not isinstance(message, dict) or message.get("role") not in CHAT_ROLES:
            raise ValidationFailed.of(
                f"messages.{n}.role", f"one of {', '.join(sorted(CHAT_ROLES))}"
            )


async def _project(request: web.Request, principal: Principal) -> int | None:
    if not principal.is_admin:
        return principal.project_id
    raw = request.headers.get("X-Project-Id")
    if not raw:
        return None  # an admin key without a project: answered, not stored
    if not raw.isdigit() or len(raw) > 18:
        raise ApiError(422, "invalid_project_id", "X-Project-Id must be an integer")
    return await visible_project(request, principal, int(raw))


def _forwarded(exc: CallFailed) -> web.Response:
    """OpenAI's own error (status and body), as OpenAI sent it."""
    assert exc.body is not None
    return web.Response(status=exc.status, body=exc.body.encode(), content_type="application/json")


class _Render:
    """OpenAI's SSE bytes as they came; the end (held back until the commit) from the result."""

    def __init__(self, endpoint: ProxyEndpoint) -> None:
        self.endpoint = endpoint

    def chunk(self, part: ReplyChunk) -> bytes:
        return part.data.encode()

    def result(self, part: ReplyResult, chunks_relayed: int) -> bytes:
        if part.replayed and chunks_relayed and self.endpoint == "chat.completions":
            # The first delivery streamed all of it and stored it: only the end is missing.
            return b"data: [DONE]\n\n"
        return (part.body or "").encode()

    def error(self, exc: ApiError) -> bytes:
        error = {"message": exc.message, "type": exc.code, "code": exc.code, "param": None}
        if self.endpoint == "chat.completions":
            return b"data: " + orjson.dumps({"error": error}) + b"\n\n"
        event = {"type": "error", **error, "error": error}
        return b"event: error\ndata: " + orjson.dumps(event) + b"\n\n"


async def _proxy(
    request: web.Request, principal: Principal, endpoint: ProxyEndpoint, body: dict[str, Any]
) -> web.StreamResponse:
    project_id = await _project(request, principal)
    streamed = body.get("stream") is True and endpoint != "embeddings"
    # Not validated again: `_read` checked the body, the rest is typed here.
    job = ProxyCall.trusted(
        endpoint=endpoint,
        project_id=None if endpoint == "embeddings" else project_id,
        body=body,
        stream=streamed,
    )
    try:
        if streamed:
            return await stream(request, job, principal, _Render(endpoint))
        reply = await ask(request, job, principal)
    except CallFailed as exc:
        if exc.body is None:
            raise
        return _forwarded(exc)
    return web.Response(body=(reply.body or "").encode(), content_type="application/json")


@routes.post("/v1/chat/completions")
@doc(
    summary="OpenAI-compatible chat completion (transparent; stream supported)",
    body=V1ChatIn,
    tags=("openai-compatible",),
    responses=ERRORS,
)
async def chat_completions(request: web.Request) -> web.StreamResponse:
    principal = principal_of(request)
    body = await _read(request, stored=True)
    _check_messages(body)
    return await _proxy(request, principal, "chat.completions", body)


@routes.post("/v1/responses")
@doc(
    summary="OpenAI-compatible Responses API (transparent; stream supported)",
    body=V1ResponsesIn,
    tags=("openai-compatible",),
    responses=ERRORS,
)
async def create_response(request: web.Request) -> web.StreamResponse:
    principal = principal_of(request)
    body = await _read(request, stored=True)
    if "input" in body and not isinstance(body["input"], str | list):
        raise ValidationFailed.of("input", "a string or a list of input items")
    return await _proxy(request, principal, "responses", body)


@routes.post("/v1/embeddings")
@doc(
    summary="OpenAI-compatible embeddings (transparent; a metrics event, not stored)",
    body=V1EmbeddingsIn,
    tags=("openai-compatible",),
    responses=ERRORS,
)
async def embeddings(request: web.Request) -> web.StreamResponse:
    principal = principal_of(request)
    body = await _read(request, stored=False)
    if not isinstance(body.get("input"), str | list):
        raise ValidationFailed.of("input", "a string or a list")
    return await _proxy(request, principal, "embeddings", body)


@routes.get("/v1/models")
@doc(summary="OpenAI-compatible model list", tags=("openai-compatible",))
async def models(request: web.Request) -> web.Response:
    return responses.json({"object": "list", "data": await request.app[UPSTREAM].models()})


@routes.route("*", "/v1/{tail:.*}")
async def unsupported(request: web.Request) -> web.Response:
    """Any other `/v1` path: 404 in OpenAI's shape, naming what is supported."""
    allowed = SUPPORTED.get(request.path.rstrip("/"))
    if allowed is not None:
        raise ApiError(
            405, "method_not_allowed", f"use {allowed} {request.path}", headers={"Allow": allowed}
        )
    names = ", ".join(f"{method} {path}" for path, method in SUPPORTED.items())
    raise ApiError(
        404,
        "unknown_url",
        f"{request.method} {request.path} is not supported; chatbeto serves {names}",
    )
