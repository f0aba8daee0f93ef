"""The OpenAI-compatible surface: `POST /v1/chat/completions` and `GET /v1/models` in OpenAI's
own wire format (streaming included), so any OpenAI SDK can use the gateway as its `base_url`.
The exchange is stored in the key's project; an admin key picks one with `X-Project-Id`."""

from __future__ import annotations

import time
import uuid
from typing import Any, Literal

from aiohttp import web
from chatbeto.messages import ChatMessage, OpenAIReply
from pydantic import BaseModel, ConfigDict, Field

from chatbeto_gateway import responses
from chatbeto_gateway.auth import Principal, require_principal
from chatbeto_gateway.errors import ApiError
from chatbeto_gateway.openai_calls import (
    MAX_TOKENS_LIMIT,
    ask,
    parse_body,
    stream,
    user_of,
    visible_project,
)
from chatbeto_gateway.openapi import doc
from chatbeto_gateway.state import KEYS, UPSTREAM

routes = web.RouteTableDef()
MAX_MESSAGES = 1000


class V1Message(BaseModel):
    model_config = ConfigDict(extra="allow")
    role: Literal["system", "developer", "user", "assistant", "tool"]
    content: str | list[dict[str, Any]] | None = None

    def text(self) -> str:
        if isinstance(self.content, list):
            return "".join(str(p.get("text", "")) for p in self.content if p.get("type") == "text")
        return self.content or ""


class V1ChatIn(BaseModel):
    # OpenAI's request has many more fields; unknown ones are accepted and not used.
    model_config = ConfigDict(extra="allow")
    model: str | None = Field(default=None, max_length=100)
    messages: list[V1Message] = Field(min_length=1, max_length=MAX_MESSAGES)
    temperature: float | None = Field(default=None, ge=0, le=2)
    max_tokens: int | None = Field(default=None, gt=0, le=MAX_TOKENS_LIMIT)
    max_completion_tokens: int | None = Field(default=None, gt=0, le=MAX_TOKENS_LIMIT)
    stream: bool | None = False
    stream_options: dict[str, Any] | None = None


async def _project(request: web.Request, principal: Principal) -> int | None:
    if not principal.is_admin:
        return principal.project_id
    raw = request.headers.get("X-Project-Id")
    if not raw:
        return None  # an admin key without a project: answered, not stored
    if not raw.isdigit():
        raise ApiError(422, "invalid_project_id", "X-Project-Id must be an integer")
    return await visible_project(request, principal, int(raw))


def _usage(reply: OpenAIReply) -> dict[str, int]:
    if reply.usage is None:
        return {"prompt_tokens": 0, "completion_tokens": 0, "total_tokens": 0}
    return reply.usage.model_dump()


@routes.post("/v1/chat/completions")
@doc(
    summary="OpenAI-compatible chat completion (stream supported)",
    body=V1ChatIn,
    tags=("openai-compatible",),
    responses={200: "", 400: "", 401: "", 404: "", 422: "", 502: "", 503: "", 504: ""},
)
async def chat_completions(request: web.Request) -> web.StreamResponse:
    principal = await require_principal(request, request.app[KEYS])
    body = await parse_body(request, V1ChatIn)
    project_id = await _project(request, principal)
    ident = f"chatcmpl-{uuid.uuid4().hex}"
    created = int(time.time())
    fields: dict[str, Any] = {
        "action": "chat",
        "source": "v1",
        "project_id": project_id,
        "messages": tuple(
            ChatMessage(role="system" if m.role == "developer" else m.role, content=m.text())
            for m in body.messages
        ),
        "model": body.model,
        "temperature": body.temperature,
        "max_tokens": body.max_completion_tokens or body.max_tokens,
        "stream": bool(body.stream),
        "user": user_of(principal),
    }
    if not body.stream:
        reply = await ask(request, fields)
        return responses.json(
            {
                "id": ident,
                "object": "chat.completion",
                "created": created,
                "model": reply.model,
                "choices": [
                    {
                        "index": 0,
                        "message": {"role": "assistant", "content": reply.content, "refusal": None},
                        "logprobs": None,
                        "finish_reason": "stop",
                    }
                ],
                "usage": _usage(reply),
            }
        )
    include_usage = bool((body.stream_options or {}).get("include_usage"))
    model = body.model
    started = [False]

    def chunk(delta: dict[str, Any], finish: str | None, model: str | None) -> dict[str, Any]:
        return {
            "id": ident,
            "object": "chat.completion.chunk",
            "created": created,
            "model": model,
            "choices": [{"index": 0, "delta": delta, "logprobs": None, "finish_reason": finish}],
        }

    def render(reply: OpenAIReply) -> list[Any]:
        out: list[Any] = []
        if not started[0]:
            started[0] = True
            out.append(chunk({"role": "assistant", "content": ""}, None, model))
        if reply.kind == "chunk":
            out.append(chunk({"content": reply.delta}, None, model))
            return out
        out.append(chunk({}, "stop", reply.model or model))
        if include_usage:
            out.append(
                {**chunk({}, None, reply.model or model), "choices": [], "usage": _usage(reply)}
            )
        return out

    def render_error(exc: ApiError) -> Any:
        return {
            "error": {"message": exc.message, "type": exc.code, "code": exc.code, "param": None}
        }

    return await stream(request, fields, render, render_error)


@routes.get("/v1/models")
@doc(summary="OpenAI-compatible model list", tags=("openai-compatible",))
async def models(request: web.Request) -> web.Response:
    await require_principal(request, request.app[KEYS])
    return responses.json({"object": "list", "data": await request.app[UPSTREAM].models()})
