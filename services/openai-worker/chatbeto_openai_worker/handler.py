"""Answers one `OpenAIRequest`: call the model, store the question and its answer in one
transaction, reply to the waiting gateway, record the call as a metrics event — then the
consumer acks.

Upstream failures are answers too (an `error` reply, then ack): the gateway is waiting for one.
A database or broker failure raises, so the request takes the retry ladder; stored rows carry
ids derived from the request's message id, so a redelivery neither stores twice nor calls the
model again for an answer it already has.
"""

from __future__ import annotations

import time
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import UTC, datetime

import asyncpg
from aio_pika.abc import AbstractIncomingMessage
from chatbeto import session_ids
from chatbeto.consumer import attempt_of
from chatbeto.logging import REQUEST_ID, get_logger
from chatbeto.messages import (
    ChatMessage,
    InvalidMessage,
    OpenAIReply,
    OpenAIRequest,
    Usage,
    parse,
)
from chatbeto.settings import OpenAIWorkerSettings
from openai import AsyncOpenAI

from chatbeto_openai_worker import repo, upstream
from chatbeto_openai_worker.replies import Replies
from chatbeto_openai_worker.upstream import Completion, UpstreamError
from chatbeto_openai_worker.usage_events import UsageEvents

log = get_logger(__name__)
ACCEPTED_VERSIONS = frozenset({1})
TITLE_CHARS = 80


class ConversationNotFound(Exception):
    pass


@dataclass(frozen=True)
class Call:
    """One request in hand: where its answer goes, and until when anyone waits for it."""

    replies: Replies
    reply_to: str
    correlation_id: str
    message_id: str
    request_id: str | None
    deadline: float  # time.monotonic()
    # Delivered before (redelivery or retry): its answer may be stored already.
    replay: bool

    async def chunk(self, delta: str) -> None:
        await self.replies.send(
            self.reply_to, self.correlation_id, OpenAIReply(kind="chunk", delta=delta)
        )

    async def result(
        self, completion: Completion | None = None, conversation: repo.Conversation | None = None
    ) -> None:
        reply = OpenAIReply(
            kind="result",
            content=completion.content if completion else None,
            model=completion.model if completion else None,
            usage=completion.usage if completion else None,
            latency_ms=completion.latency_ms if completion else None,
            conversation=conversation.out() if conversation else None,
        )
        await self.replies.send(self.reply_to, self.correlation_id, reply)

    async def error(self, status: int, code: str, message: str) -> None:
        reply = OpenAIReply(kind="error", status=status, code=code, message=message)
        await self.replies.send(self.reply_to, self.correlation_id, reply)


class RequestHandler:
    def __init__(
        self,
        settings: OpenAIWorkerSettings,
        pool: asyncpg.Pool,
        client: AsyncOpenAI | None,
        replies: Replies,
        usage: UsageEvents,
        session_key: bytes,
    ) -> None:
        self.settings = settings
        self.pool = pool
        self.client = client
        self.replies = replies
        self.usage = usage
        self.session_key = session_key

    async def handle(self, message: AbstractIncomingMessage) -> None:
        env = parse(message.body, OpenAIRequest, OpenAIRequest.TYPE, ACCEPTED_VERSIONS)
        if not message.reply_to or not message.correlation_id or not message.message_id:
            raise InvalidMessage("a request needs reply_to, correlation_id and message_id")
        REQUEST_ID.set(env.request_id)  # this task's own context
        req = env.data
        remaining = (req.deadline - datetime.now(UTC)).total_seconds()
        if remaining <= 0:
            log.info("request expired before it was taken; skipped", action=req.action)
            return
        call = Call(
            self.replies,
            message.reply_to,
            message.correlation_id,
            message.message_id,
            env.request_id,
            time.monotonic() + remaining,
            message.redelivered or attempt_of(message) > 1,
        )
        started = time.perf_counter()
        outcome = "ok"
        try:
            if req.action == "conversation.create":
                await self._create(call, req)
            elif req.action == "conversation.message":
                await self._message(call, req)
            else:
                await self._chat(call, req)
        except UpstreamError as exc:
            outcome = exc.code
            await call.error(exc.status, exc.code, str(exc))
        except ConversationNotFound:
            outcome = "not_found"
            await call.error(404, "conversation_not_found", "conversation not found")
        log.info(
            "request answered",
            action=req.action,
            outcome=outcome,
            stream=req.stream,
            duration_ms=round((time.perf_counter() - started) * 1000, 2),
        )

    async def _create(self, call: Call, req: OpenAIRequest) -> None:
        completion = None
        if req.messages:
            completion = await self._answer(call, req, req.messages, created=True)
        conv = await self._store(call, req, None, req.title, req.messages, completion)
        await call.result(completion, conv)
        if completion is not None:
            await self._record(call, req, completion, conv, conv.project_id)

    async def _message(self, call: Call, req: OpenAIRequest) -> None:
        if req.conversation_id is None or len(req.messages) != 1:
            raise InvalidMessage("conversation.message needs conversation_id and one message")
        async with self.pool.acquire() as conn:
            conv = await repo.find_conversation(conn, req.conversation_id)
            if conv is None:
                raise ConversationNotFound
            history = await repo.history(conn, conv.id) if req.messages[0].role == "user" else []
        if req.messages[0].role != "user":
            await self._store(call, req, conv.id, None, req.messages, None)
            await call.result(conversation=conv)
            return
        completion = await self._answer(call, req, [*history, *req.messages], conv=conv)
        await self._store(call, req, conv.id, None, req.messages, completion)
        await call.result(completion, conv)
        await self._record(call, req, completion, conv, conv.project_id)

    async def _chat(self, call: Call, req: OpenAIRequest) -> None:
        if req.project_id is None:  # not stored: one metrics session per call
            completion = await self._complete(call, req, req.messages, None)
            await call.result(completion)
            await self._record(call, req, completion, None, None)
            return
        completion = await self._answer(call, req, req.messages, created=True)
        first = next((m.content for m in req.messages if m.role == "user"), "")
        conv = await self._store(
            call, req, None, first[:TITLE_CHARS] or None, req.messages, completion
        )
        await call.result(completion, conv)
        await self._record(call, req, completion, conv, conv.project_id)

    async def _store(
        self,
        call: Call,
        req: OpenAIRequest,
        conversation_id: int | None,
        title: str | None,
        incoming: Sequence[ChatMessage],
        completion: Completion | None,
    ) -> repo.Conversation:
        """One transaction per request, after the model answered: the question and the answer
        are stored together or not at all (a failed call leaves nothing behind)."""
        rows = [
            repo.NewMessage(
                role=m.role,
                content=m.content,
                external_id=f"{call.message_id}:in:{n}",
                request_id=call.request_id,
            )
            for n, m in enumerate(incoming)
        ]
        if completion is not None:
            rows.append(
                repo.NewMessage(
                    role="assistant",
                    content=completion.content,
                    external_id=f"{call.message_id}:answer",
                    model=completion.model,
                    prompt_tokens=completion.usage.prompt_tokens,
                    completion_tokens=completion.usage.completion_tokens,
                    latency_ms=completion.latency_ms,
                    request_id=call.request_id,
                )
            )
        async with self.pool.acquire() as conn, conn.transaction():
            if conversation_id is None:
                if req.project_id is None:
                    raise InvalidMessage(f"{req.action} needs project_id")
                conv = await repo.create_conversation(
                    conn,
                    project_id=req.project_id,
                    title=title,
                    model=req.model,
                    source=req.source,
                    external_id=call.message_id,
                    session_id=session_ids.issue(self.session_key, self.usage.gpt_pk),
                )
            else:
                found = await repo.lock_conversation(conn, conversation_id)
                if found is None:
                    raise ConversationNotFound
                conv = found
            await repo.add_messages(conn, conv.id, rows)
        return conv

    async def _answer(
        self,
        call: Call,
        req: OpenAIRequest,
        history: Sequence[ChatMessage],
        *,
        conv: repo.Conversation | None = None,
        created: bool = False,
    ) -> Completion:
        """The model's answer — or, for a redelivered request, the one already stored."""
        if call.replay:
            stored = await self._stored_answer(call, req, conv, created)
            if stored is not None:
                if req.stream:
                    await call.chunk(stored.content)
                return stored
        return await self._complete(call, req, history, conv)

    async def _stored_answer(
        self, call: Call, req: OpenAIRequest, conv: repo.Conversation | None, created: bool
    ) -> Completion | None:
        async with self.pool.acquire() as conn:
            conversation_id = conv.id if conv is not None else None
            if created and req.project_id is not None:
                conversation_id = await repo.find_created_by(
                    conn, req.project_id, req.source, call.message_id
                )
            if conversation_id is None:
                return None
            row = await repo.stored_answer(conn, conversation_id, f"{call.message_id}:answer")
        if row is None:
            return None
        prompt, completion = row["prompt_tokens"] or 0, row["completion_tokens"] or 0
        return Completion(
            row["content"],
            row["model"] or "",
            Usage(
                prompt_tokens=prompt, completion_tokens=completion, total_tokens=prompt + completion
            ),
            row["latency_ms"] or 0,
        )

    async def _complete(
        self,
        call: Call,
        req: OpenAIRequest,
        history: Sequence[ChatMessage],
        conv: repo.Conversation | None,
    ) -> Completion:
        model = req.model or (conv.model if conv else None) or self.settings.openai_model
        return await upstream.complete(
            self.client,
            history,
            model=model,
            temperature=req.temperature
            if req.temperature is not None
            else self.settings.openai_temperature,
            max_tokens=req.max_tokens or self.settings.openai_max_tokens,
            deadline=call.deadline,
            on_delta=call.chunk if req.stream else None,
        )

    async def _record(
        self,
        call: Call,
        req: OpenAIRequest,
        completion: Completion,
        conv: repo.Conversation | None,
        project_id: int | None,
    ) -> None:
        if conv is not None and conv.metrics_session_id is not None:
            session_id, started = conv.metrics_session_id, conv.created_at
        else:
            session_id = session_ids.issue(self.session_key, self.usage.gpt_pk)
            started = datetime.now(UTC)
            if conv is not None:  # a conversation stored by someone else (import, webhook)
                async with self.pool.acquire() as conn:
                    await repo.set_session(conn, conv.id, session_id)
        await self.usage.record(
            session_id=session_id,
            session_started=started,
            project_id=project_id,
            user=req.user,
            completion=completion,
            request_message_id=call.message_id,
            request_id=call.request_id,
        )
