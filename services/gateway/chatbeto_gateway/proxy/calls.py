"""What the conversation, chat and /v1 handlers share: project visibility, and asking the
openai-worker through the broker."""

from __future__ import annotations

import functools
from collections.abc import AsyncIterator
from typing import Any, Protocol

from aiohttp import web
from chatbeto.logging import REQUEST_ID
from chatbeto.messages import (
    Caller,
    ReplyChunk,
    ReplyResult,
    RequestCall,
    StoredConversation,
    Usage,
)
from chatbeto.store import conversations, projects

from chatbeto_gateway.access import ratelimit
from chatbeto_gateway.access.auth import Principal
from chatbeto_gateway.http.errors import ApiError, not_found
from chatbeto_gateway.proxy.rpc import Rpc
from chatbeto_gateway.proxy.upstream import Upstream
from chatbeto_gateway.state import BROKER, POOL, PUBLISHER, RPC, SETTINGS, UPSTREAM

# Far above any model's output window; bounds what reaches the worker and the upstream call.
MAX_TOKENS_LIMIT = 1_000_000


def project_not_found() -> ApiError:
    return not_found("project_not_found", "project not found")


async def visible_project(request: web.Request, principal: Principal, project_id: int) -> int:
    """The project, if this key may use it (another project's answers 404, as a missing one)."""
    if not principal.can_see_project(project_id):
        raise project_not_found()
    if principal.is_admin:
        async with request.app[POOL].acquire() as conn:
            if not await projects.exists(conn, project_id):
                raise project_not_found()
    return project_id


async def visible_conversation(request: web.Request, principal: Principal, raw_id: str) -> int:
    try:
        conversation_id = int(raw_id)
    except ValueError:
        raise not_found("conversation_not_found", "conversation not found") from None
    async with request.app[POOL].acquire() as conn:
        project_id = await conversations.project_of(conn, conversation_id)
    if project_id is None or not principal.can_see_project(project_id):
        raise not_found("conversation_not_found", "conversation not found")
    return conversation_id


def caller_of(principal: Principal) -> Caller:
    """Who asks, as the worker records it: the key's id and public prefix, never the key."""
    key = principal.key
    return _caller(key.id, key.prefix, principal.project_id)


@functools.lru_cache(maxsize=4096)
def _caller(key_id: int, key_prefix: str, project_id: int | None) -> Caller:
    # Per key, not per request (a frozen model, shared as it is).
    return Caller.trusted(key_id=key_id, key_prefix=key_prefix, project_id=project_id)


async def ask(request: web.Request, job: RequestCall, principal: Principal) -> ReplyResult:
    """Publish a request and wait for its final reply (503 / 504 / the worker's error)."""
    async with request.app[RPC].call(job, caller_of(principal)) as pending:
        return await pending.result()


def usage_out(usage: Usage | None) -> dict[str, int]:
    if usage is None:
        return {"prompt_tokens": 0, "completion_tokens": 0, "total_tokens": 0}
    return {
        "prompt_tokens": usage.prompt_tokens,
        "completion_tokens": usage.completion_tokens,
        "total_tokens": usage.total_tokens,
    }


def response_out(reply: ReplyResult) -> dict[str, Any]:
    """The seed routes' `response` object."""
    answer = reply.answer
    return {
        "role": "assistant",
        "content": answer.content if answer else "",
        "model": answer.model if answer else None,
        "usage": usage_out(answer.usage if answer else None),
    }


def conversation_out(conversation: StoredConversation) -> dict[str, Any]:
    return {
        "id": conversation.id,
        "projectId": conversation.project_id,
        "title": conversation.title,
        "createdAt": conversation.created_at.isoformat(),
    }


class Renderer(Protocol):
    """How one surface writes a streamed answer's pieces as SSE bytes."""

    def chunk(self, part: ReplyChunk) -> bytes: ...

    def result(self, part: ReplyResult, chunks_relayed: int) -> bytes: ...

    def error(self, exc: ApiError) -> bytes: ...


class EventStream(web.StreamResponse):
    """Its headers leave with its first event, in one write (as `web.Response` sends headers
    with its body): sent apart, the client woke for the headers alone, and the first token's
    write waited behind that (measured at 1 client: `prepare` took ~0.27 ms of the first
    token's path, the first write 0.05 ms)."""

    _send_headers_immediately = False


async def stream(
    request: web.Request,
    job: RequestCall,
    principal: Principal,
    render: Renderer,
) -> web.StreamResponse:
    """Relay a streamed answer as Server-Sent Events. Nothing is sent before the worker's first
    reply, so a failure before the first token still gets its own HTTP status; after that a
    failure is the stream's last event (and no end marker: the client knows it was cut)."""
    # Built while the worker works; sent only with the first reply (a failure before it is
    # answered with its own status, and this response is dropped).
    response = EventStream(
        headers={
            "Content-Type": "text/event-stream",
            "Cache-Control": "no-cache",
            "X-Request-Id": REQUEST_ID.get() or "",
        }
    )
    ratelimit.add_headers(request, response)
    async with request.app[RPC].call(job, caller_of(principal)) as pending:
        part = await pending.next()
        await response.prepare(request)
        try:
            while isinstance(part, ReplyChunk):
                await response.write(render.chunk(part))
                part = await pending.next()
            await response.write(render.result(part, pending.chunks))
        except ApiError as exc:  # failed mid-answer: the status is sent already
            await response.write(render.error(exc))
        except ConnectionResetError:
            return response  # the client left; the worker still stores the answer
        await response.write_eof()
        return response


async def openai_ctx(app: web.Application) -> AsyncIterator[None]:
    """This process's reply queue (request/reply) and the gateway's own OpenAI probe."""
    settings = app[SETTINGS]
    rpc = Rpc(
        app[BROKER],
        app[PUBLISHER],
        settings.topology,
        settings.openai_timeout,
        settings.reply_grace_seconds,
    )
    await rpc.start()
    app[RPC] = rpc
    app[UPSTREAM] = Upstream(settings)
    yield
    await app[UPSTREAM].close()
    await rpc.close()
