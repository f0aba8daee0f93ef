"""`POST /api/v1/openai/chat/completions` (contract 3.1): a chat answered through the worker;
with `projectId` the exchange is stored as a conversation; `stream: true` answers SSE."""

from __future__ import annotations

from typing import Any, Literal

import orjson
from aiohttp import web
from chatbeto.messages import ChatCall, ChatMessage, ReplyChunk, ReplyResult
from chatbeto.storable import BIGINT_MAX, Bool, Text
from pydantic import BaseModel, ConfigDict, Field

from chatbeto_gateway.access.auth import principal_of
from chatbeto_gateway.http import responses
from chatbeto_gateway.http.errors import ApiError
from chatbeto_gateway.http.openapi import doc
from chatbeto_gateway.http.parse import parse_body
from chatbeto_gateway.proxy.calls import (
    MAX_TOKENS_LIMIT,
    ask,
    response_out,
    stream,
    visible_project,
)

routes = web.RouteTableDef()
MAX_MESSAGES = 1000


class ChatMessageIn(BaseModel):
    model_config = ConfigDict(extra="ignore")
    role: Literal["system", "user", "assistant", "tool"]
    content: Text = Field(max_length=200_000)


class ChatIn(BaseModel):
    model_config = ConfigDict(extra="ignore")
    messages: list[ChatMessageIn] = Field(min_length=1, max_length=MAX_MESSAGES)
    model: str | None = Field(default=None, min_length=1, max_length=100)
    projectId: int | None = Field(default=None, gt=0, le=BIGINT_MAX, strict=True)
    temperature: float | None = Field(default=None, ge=0, le=2)
    max_tokens: int | None = Field(default=None, gt=0, le=MAX_TOKENS_LIMIT, strict=True)
    stream: Bool = False


def _result(reply: ReplyResult) -> dict[str, Any]:
    out = response_out(reply)
    data: dict[str, Any] = {
        "response": {"role": "assistant", "content": out["content"]},
        "model": out["model"],
        "usage": out["usage"],
    }
    if reply.conversation is not None:
        data["conversationId"] = reply.conversation.id
    return data


class _Render:
    """`{"delta"}` events, then `{"done": true, …}` and `[DONE]`."""

    def chunk(self, part: ReplyChunk) -> bytes:
        return _event({"delta": part.data})

    def result(self, part: ReplyResult, chunks_relayed: int) -> bytes:
        out = b""
        if chunks_relayed == 0 and part.answer is not None and part.answer.content:
            out = _event({"delta": part.answer.content})  # a replay: the stored answer
        return out + _event({"done": True, **_result(part)}) + b"data: [DONE]\n\n"

    def error(self, exc: ApiError) -> bytes:
        error = {"status": "error", "error": {"code": exc.code, "message": exc.message}}
        return _event(error) + b"data: [DONE]\n\n"


def _event(data: Any) -> bytes:
    return b"data: " + orjson.dumps(data) + b"\n\n"


@routes.post("/api/v1/openai/chat/completions")
@doc(
    summary="Chat completion (stored as a conversation when projectId is given; SSE if stream)",
    body=ChatIn,
    tags=("conversations",),
    responses={200: "", 400: "", 401: "", 404: "", 422: "", 502: "", 503: "", 504: ""},
)
async def chat_completions(request: web.Request) -> web.StreamResponse:
    principal = principal_of(request)
    body = await parse_body(request, ChatIn)
    project_id = None
    if body.projectId is not None:
        project_id = await visible_project(request, principal, body.projectId)
    job = ChatCall(
        project_id=project_id,
        messages=tuple(ChatMessage(role=m.role, content=m.content) for m in body.messages),
        model=body.model,
        temperature=body.temperature,
        max_tokens=body.max_tokens,
        stream=body.stream,
    )
    if body.stream:
        return await stream(request, job, principal, _Render())
    return responses.envelope(_result(await ask(request, job, principal)))
