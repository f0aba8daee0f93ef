"""Conversations (contract 3.1): create, follow up, read, list; OpenAI status; sync to OpenAI.

Reads are plain SQL here; every write goes to the openai-worker through the broker, and the
handler answers with what the worker replied.
"""

from __future__ import annotations

import uuid
from typing import Annotated, Any, Literal

from aiohttp import web
from chatbeto import health
from chatbeto.broker import BrokerUnavailable
from chatbeto.logging import REQUEST_ID
from chatbeto.messages import (
    ChatMessage,
    ConversationCreate,
    ConversationMessage,
    SyncJob,
    envelope,
    to_amqp,
)
from chatbeto.storable import BIGINT_MAX, Text
from chatbeto.store import conversations, jobs
from pydantic import BaseModel, ConfigDict, Field, PlainValidator

from chatbeto_gateway.access.auth import principal_of
from chatbeto_gateway.conversations import repo
from chatbeto_gateway.http import responses
from chatbeto_gateway.http.errors import ApiError, not_found
from chatbeto_gateway.http.middleware import REQUEST_ID_RE
from chatbeto_gateway.http.openapi import doc
from chatbeto_gateway.http.parse import parse_body, parse_query, query_error, query_int, query_match
from chatbeto_gateway.proxy.calls import (
    ask,
    conversation_out,
    response_out,
    visible_conversation,
    visible_project,
)
from chatbeto_gateway.state import BROKER, POOL, PUBLISHER, UPSTREAM

routes = web.RouteTableDef()
DEFAULT_PAGE = 20
MAX_PAGE = 100


class ConversationIn(BaseModel):
    model_config = ConfigDict(extra="ignore")
    projectId: int = Field(gt=0, le=BIGINT_MAX, strict=True)
    title: Text | None = Field(default=None, min_length=1, max_length=200)
    initialMessage: Text | None = Field(default=None, min_length=1, max_length=200_000)
    model: str | None = Field(default=None, min_length=1, max_length=100)


class MessageIn(BaseModel):
    model_config = ConfigDict(extra="ignore")
    message: Text = Field(min_length=1, max_length=200_000)
    role: Literal["user", "system", "assistant"] = "user"


def _cursor(raw: Any) -> tuple[Any, int] | None:
    if raw == "":
        return None
    try:
        return repo.decode_cursor(str(raw))
    except repo.BadCursor:
        raise query_error("not a cursor this API gave out") from None


class ConversationsQuery(BaseModel):
    model_config = ConfigDict(extra="ignore", frozen=True)
    projectId: Annotated[
        int | None, PlainValidator(query_int("an integer", blank_is_none=True))
    ] = None
    limit: Annotated[
        int,
        PlainValidator(query_int(f"an integer from 1 to {MAX_PAGE}", minimum=1, maximum=MAX_PAGE)),
    ] = DEFAULT_PAGE
    cursor: Annotated[tuple[Any, int] | None, PlainValidator(_cursor)] = None
    requestId: Annotated[
        str | None,
        PlainValidator(query_match("a request id as X-Request-Id carries it", REQUEST_ID_RE)),
    ] = None


class SyncIn(BaseModel):
    model_config = ConfigDict(extra="forbid")
    projectId: int | None = Field(default=None, gt=0, le=BIGINT_MAX, strict=True)


@routes.get("/api/v1/openai/status")
@doc(summary="OpenAI, database and broker status", tags=("conversations",))
async def status(request: web.Request) -> web.Response:
    db_ok = await health.postgres_check(lambda: request.app[POOL])()
    broker_ok = await health.broker_check(lambda: request.app[BROKER])()
    upstream = request.app[UPSTREAM]
    return responses.envelope(
        {
            "openai": {"status": await upstream.health(), "model": upstream.default_model},
            "initialized": True,
            "database": {"status": "healthy" if db_ok else "unhealthy"},
            "broker": {"status": "healthy" if broker_ok else "unhealthy"},
        }
    )


@routes.post("/api/v1/openai/conversations")
@doc(
    summary="Create a conversation (and answer its initial message)",
    body=ConversationIn,
    tags=("conversations",),
    responses={201: "", 400: "", 401: "", 404: "", 422: "", 502: "", 503: "", 504: ""},
)
async def create_conversation(request: web.Request) -> web.Response:
    principal = principal_of(request)
    body = await parse_body(request, ConversationIn)
    project_id = await visible_project(request, principal, body.projectId)
    message = ChatMessage(role="user", content=body.initialMessage) if body.initialMessage else None
    job = ConversationCreate(
        project_id=project_id, title=body.title, model=body.model, message=message
    )
    reply = await ask(request, job, principal)
    if reply.conversation is None:
        raise ApiError(502, "upstream_error", "the worker answered without a conversation")
    data: dict[str, Any] = {"conversation": conversation_out(reply.conversation)}
    if body.initialMessage:
        data["response"] = response_out(reply)
    return responses.envelope(data, status=201)


@routes.post("/api/v1/openai/conversations/{id}/messages")
@doc(
    summary="Add a message; a user message is answered by the model with the whole history",
    body=MessageIn,
    tags=("conversations",),
    responses={200: "", 201: "Stored (system/assistant role)", 400: "", 401: "", 404: ""}
    | {422: "", 502: "", 503: "", 504: ""},
)
async def add_message(request: web.Request) -> web.Response:
    principal = principal_of(request)
    conversation_id = await visible_conversation(request, principal, request.match_info["id"])
    body = await parse_body(request, MessageIn)
    job = ConversationMessage(
        conversation_id=conversation_id, message=ChatMessage(role=body.role, content=body.message)
    )
    reply = await ask(request, job, principal)
    if body.role != "user":
        return responses.envelope(
            {
                "conversationId": conversation_id,
                "message": {"role": body.role, "content": body.message},
            },
            status=201,
        )
    return responses.envelope({"conversationId": conversation_id, "response": response_out(reply)})


@routes.get("/api/v1/openai/conversations")
@doc(
    summary="Conversations, newest first (cursor-paginated)",
    tags=("conversations",),
    query=ConversationsQuery,
    responses={200: "", 401: "", 404: "", 422: ""},
)
async def list_conversations(request: web.Request) -> web.Response:
    principal = principal_of(request)
    query = parse_query(request, ConversationsQuery)
    project_id = principal.project_id
    if query.projectId is not None:
        project_id = await visible_project(request, principal, query.projectId)
    async with request.app[POOL].acquire() as conn:
        rows, next_cursor = await repo.list_conversations(
            conn,
            project_id=project_id,
            limit=query.limit,
            after=query.cursor,
            request_id=query.requestId,
        )
    return responses.envelope(
        {
            "conversations": [repo.conversation_out(r) for r in rows],
            "nextCursor": next_cursor,
        }
    )


@routes.get("/api/v1/openai/conversations/{id}")
@doc(summary="A conversation and its messages, in order", tags=("conversations",))
async def get_conversation(request: web.Request) -> web.Response:
    principal = principal_of(request)
    conversation_id = await visible_conversation(request, principal, request.match_info["id"])
    async with request.app[POOL].acquire() as conn:
        found = await conversations.get_shown(conn, conversation_id)
    if found is None:
        raise not_found("conversation_not_found", "conversation not found")
    row, messages = found
    return responses.envelope(
        {
            "conversation": repo.conversation_out(row),
            "messages": [repo.message_out(m) for m in messages],
        }
    )


@routes.post("/api/v1/openai/sync")
@doc(
    summary="Copy conversations without a remote id to OpenAI's Conversations API",
    body=SyncIn,
    tags=("conversations",),
    responses={202: "", 400: "", 401: "", 404: "", 422: "", 503: ""},
)
async def start_sync(request: web.Request) -> web.Response:
    principal = principal_of(request)
    body = await parse_body(request, SyncIn) if request.can_read_body else SyncIn()
    project_id = principal.project_id
    if body.projectId is not None:
        project_id = await visible_project(request, principal, body.projectId)
    async with request.app[POOL].acquire() as conn:
        job_id, queued = await repo.create_sync_job(conn, project_id, REQUEST_ID.get())
    try:
        await request.app[PUBLISHER].publish(
            to_amqp(envelope(SyncJob(job_id=job_id, project_id=project_id))), SyncJob.TYPE
        )
    except BrokerUnavailable:
        # Not queued: the job must not look pending forever (the 503 is the middleware's).
        async with request.app[POOL].acquire() as conn:
            await jobs.finish(conn, job_id, jobs.FAILED, error="broker unavailable")
        raise
    return responses.envelope({"jobId": str(job_id), "queued": queued}, status=202)


@routes.get("/api/v1/openai/sync/{jobId}")
@doc(
    summary="Progress of a sync job", tags=("conversations",), responses={200: "", 401: "", 404: ""}
)
async def sync_status(request: web.Request) -> web.Response:
    principal = principal_of(request)
    try:
        job_id = uuid.UUID(request.match_info["jobId"])
    except ValueError:
        raise not_found("job_not_found", "job not found") from None
    async with request.app[POOL].acquire() as conn:
        row = await jobs.get(conn, job_id, jobs.SYNC)
    if row is None or not (principal.is_admin or row.project_id == principal.project_id):
        raise not_found("job_not_found", "job not found")
    return responses.envelope(
        {
            "jobId": str(job_id),
            "state": row.state,
            "total": row.total,
            "done": row.done,
            "failed": row.failed,
            "errors": row.errors,
        }
    )
