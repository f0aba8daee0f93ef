"""Answers one `OpenAIRequest`: call the model, store the exchange (committed before anyone is
answered, flushed to disk before the ack: `store.py`), reply to the waiting gateway, record the
call as a metrics event — then the consumer acks.

Upstream failures are answers too (an error reply, then ack): the gateway is waiting for one.
So is Postgres unreachable (`chatbeto.db.is_database_outage`) before the answer went out: 503
`database_unavailable` at once, then ack — nothing of it was stored (the model may have been
called once), and a later retry storing it would duplicate the client's own retry. Met after
the answer (a 200, committed: the metrics session, the WAL-flush barrier) or by a redelivery
(an earlier delivery may have stored it), it raises like a broker failure: the request takes
the retry ladder. Stored rows carry ids derived from the request's message id, so a redelivery
neither stores twice nor calls the model again for an answer it already has. A redelivered
*streamed* request whose answer is not stored never streams again: its first delivery may have
streamed part of an answer, and a second answer must not be spliced into it (it answers
`stream_interrupted`, storing nothing).
A value Postgres refuses is final: the request is answered 422 and dead-lettered at once, the
model having been called once.
"""

from __future__ import annotations

import time
import uuid
from dataclasses import dataclass, field, replace
from datetime import UTC, datetime

import asyncpg
from aio_pika.abc import AbstractIncomingMessage
from chatbeto import session_ids, spend
from chatbeto.consumer import attempt_of
from chatbeto.db import DATABASE_UNAVAILABLE, DATABASE_UNAVAILABLE_MESSAGE, is_database_outage
from chatbeto.logging import REQUEST_ID, get_logger
from chatbeto.messages import (
    Answer,
    Caller,
    ChatCall,
    ChatMessage,
    ConversationCreate,
    ConversationMessage,
    InvalidMessage,
    OpenAIReply,
    OpenAIRequest,
    ReplyChunk,
    ReplyError,
    ReplyResult,
    StoredConversation,
    Usage,
    parse,
)
from chatbeto.settings import OpenAIWorkerSettings
from chatbeto.store import conversations
from chatbeto.store.conversations import Conversation, NewMessage

from chatbeto_openai_worker import repo, upstream
from chatbeto_openai_worker.client import WorkerOpenAI
from chatbeto_openai_worker.replies import Replies
from chatbeto_openai_worker.store import ExchangeStore
from chatbeto_openai_worker.upstream import Completion, UpstreamError, UpstreamRejected
from chatbeto_openai_worker.usage_events import UsageEvents

log = get_logger(__name__)
ACCEPTED_VERSIONS = frozenset({2})
TITLE_CHARS = 80


class ConversationNotFound(Exception):
    pass


class StreamInterrupted(UpstreamError):
    code = "stream_interrupted"


@dataclass
class Progress:
    """What a call has sent so far (the call itself is frozen)."""

    answered: bool = False  # its result went out: from then on the client holds a 200


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
    caller: Caller
    # This delivery's own id: the gateway never relays output of two deliveries in one answer.
    attempt: str
    progress: Progress = field(default_factory=Progress)

    async def send(self, part: ReplyChunk | ReplyResult | ReplyError) -> None:
        await self.replies.send(self.reply_to, self.correlation_id, OpenAIReply(part=part))

    async def chunk(self, data: str) -> None:
        await self.send(ReplyChunk(attempt=self.attempt, data=data))

    async def result(
        self,
        answer: Answer | None = None,
        conversation: StoredConversation | None = None,
        *,
        body: str | None = None,
        replayed: bool = False,
    ) -> None:
        self.progress.answered = True  # even if the send fails: it may have reached the client
        await self.send(
            ReplyResult(
                attempt=self.attempt,
                answer=answer,
                conversation=conversation,
                body=body,
                replayed=replayed,
            )
        )

    async def error(self, status: int, code: str, message: str, body: str | None = None) -> None:
        await self.send(
            ReplyError(attempt=self.attempt, status=status, code=code, message=message, body=body)
        )


def answer_of(completion: Completion) -> Answer:
    return Answer(
        content=completion.content,
        model=completion.model,
        usage=completion.usage,
        latency_ms=completion.latency_ms,
    )


class RequestHandler:
    def __init__(
        self,
        settings: OpenAIWorkerSettings,
        pool: asyncpg.Pool,
        client: WorkerOpenAI | None,
        replies: Replies,
        usage: UsageEvents,
        session_key: bytes,
        fast_pool: asyncpg.Pool | None = None,
    ) -> None:
        from chatbeto_openai_worker.proxy import ProxyHandler  # it builds on this module

        self.settings = settings
        self.pool = pool
        self.client = client
        self.replies = replies
        self.usage = usage
        self.session_key = session_key
        self.prices = settings.price_table()
        self.store = ExchangeStore(pool, fast_pool)
        self.proxy = ProxyHandler(self)

    async def handle(self, message: AbstractIncomingMessage) -> None:
        try:
            env = parse(message.body, OpenAIRequest, OpenAIRequest.TYPE, ACCEPTED_VERSIONS)
        except InvalidMessage as exc:
            # Dead-lettered; its caller learns at once instead of waiting for its deadline.
            if message.reply_to and message.correlation_id:
                await self.replies.send(
                    message.reply_to,
                    message.correlation_id,
                    OpenAIReply(
                        part=ReplyError(
                            attempt="invalid",
                            status=422,
                            code="validation_error",
                            message="the request is invalid (a value that cannot be stored?)",
                        )
                    ),
                )
            raise exc
        if not message.reply_to or not message.correlation_id or not message.message_id:
            raise InvalidMessage("a request needs reply_to, correlation_id and message_id")
        REQUEST_ID.set(env.request_id)  # this task's own context
        req = env.data
        action = req.call.action
        remaining = (req.deadline - datetime.now(UTC)).total_seconds()
        if remaining <= 0:
            log.info("request expired before it was taken; skipped", action=action)
            return
        call = Call(
            self.replies,
            message.reply_to,
            message.correlation_id,
            message.message_id,
            env.request_id,
            time.monotonic() + remaining,
            message.redelivered or attempt_of(message) > 1,
            req.caller,
            uuid.uuid4().hex[:12],
        )
        started = time.perf_counter()
        outcome = "ok"
        try:
            await self._dispatch(call, req)
        except UpstreamRejected as exc:
            outcome = exc.code
            await call.error(exc.status, exc.code, str(exc), exc.body)
        except UpstreamError as exc:
            outcome = exc.code
            await call.error(exc.status, exc.code, str(exc))
        except (ConversationNotFound, repo.ConversationGone):
            outcome = "not_found"
            await call.error(404, "conversation_not_found", "conversation not found")
        except asyncpg.DataError as exc:
            # No retry can store it, and each retry would call (and bill) the model again.
            await call.error(
                422,
                "validation_error",
                "the exchange holds a value that cannot be stored (e.g. a NUL character)",
            )
            raise InvalidMessage(f"unstorable exchange: {type(exc).__name__}: {exc}") from exc
        except Exception as exc:
            if not is_database_outage(exc) or call.progress.answered or call.replay:
                raise
            # Nothing of it is stored: the client is told so now and retries; acked on return.
            outcome = DATABASE_UNAVAILABLE
            log.warning("database unavailable; answered 503", error=type(exc).__name__)
            await call.error(503, DATABASE_UNAVAILABLE, DATABASE_UNAVAILABLE_MESSAGE)
        else:
            # Answered before the flush; acked (on return) only after it. Its failure takes the
            # retry ladder (the exchange is committed and answered: never a 503 for it).
            await self.store.durable()
        log.info(
            "request answered",
            action=action,
            outcome=outcome,
            duration_ms=round((time.perf_counter() - started) * 1000, 2),
        )

    async def _dispatch(self, call: Call, req: OpenAIRequest) -> None:
        job = req.call
        if isinstance(job, ConversationCreate):
            await self._create(call, job)
        elif isinstance(job, ConversationMessage):
            await self._message(call, job)
        elif isinstance(job, ChatCall):
            await self._chat(call, job)
        else:
            await self.proxy.handle(call, job)

    # --- the seed routes (/api/v1/openai/...): text in, text out ---------------------------

    async def _create(self, call: Call, job: ConversationCreate) -> None:
        incoming = (job.message,) if job.message is not None else ()
        completion = None
        if job.message is not None:
            completion = await self._answer(call, incoming, job.model, job.project_id, None)
        conv = await self.store.store(
            self.exchange(
                call,
                incoming,
                completion,
                project_id=job.project_id,
                title=job.title,
                model=job.model,
                source=conversations.API,
            )
        )
        await call.result(answer_of(completion) if completion else None, conv.stored())
        if completion is not None:
            await self.record(call, completion.model, completion.usage, completion.latency_ms, conv)

    async def _message(self, call: Call, job: ConversationMessage) -> None:
        async with self.pool.acquire() as conn:
            conv = await conversations.find(conn, job.conversation_id)
            if conv is None:
                raise ConversationNotFound
            is_user = job.message.role == "user"
            history = await conversations.history(conn, conv.id) if is_user else []
        if not is_user:
            await self.store.store(
                self.exchange(call, (job.message,), None, conversation_id=conv.id)
            )
            await call.result(conversation=conv.stored())
            return
        completion = await self._answer(
            call, [*history, job.message], conv.model, conv.project_id, conv
        )
        await self.store.store(
            self.exchange(call, (job.message,), completion, conversation_id=conv.id)
        )
        await call.result(answer_of(completion), conv.stored())
        await self.record(call, completion.model, completion.usage, completion.latency_ms, conv)

    async def _chat(self, call: Call, job: ChatCall) -> None:
        if job.project_id is None:  # not stored: one metrics session per call
            completion = await self._complete(call, job.messages, job, None)
            await self.charge_alone(call, completion.model, completion.usage)
            await call.result(answer_of(completion))
            await self.record(call, completion.model, completion.usage, completion.latency_ms)
            return
        completion = await self._answer(call, job.messages, job.model, job.project_id, None, job)
        first = next((m.content for m in job.messages if m.role == "user"), "")
        conv = await self.store.store(
            self.exchange(
                call,
                job.messages,
                completion,
                project_id=job.project_id,
                title=first[:TITLE_CHARS] or None,
                model=job.model,
                source="chat",
            )
        )
        await call.result(answer_of(completion), conv.stored())
        await self.record(call, completion.model, completion.usage, completion.latency_ms, conv)

    def exchange(
        self,
        call: Call,
        incoming: tuple[ChatMessage, ...] | list[ChatMessage],
        completion: Completion | None,
        *,
        project_id: int | None = None,
        conversation_id: int | None = None,
        title: str | None = None,
        model: str | None = None,
        source: str = "api",
    ) -> repo.Exchange:
        rows = [
            NewMessage(
                role=m.role,
                content=m.content,
                external_id=f"{call.message_id}:in:{n}",
                request_id=call.request_id,
            )
            for n, m in enumerate(incoming)
        ]
        if completion is not None:
            rows.append(
                assistant_row(
                    call,
                    completion.content,
                    completion.model,
                    completion.usage,
                    completion.latency_ms,
                )
            )
        return self.new_exchange(call, rows, conversation_id, project_id, title, model, source)

    def new_exchange(
        self,
        call: Call,
        rows: list[NewMessage],
        conversation_id: int | None,
        project_id: int | None,
        title: str | None,
        model: str | None,
        source: str,
    ) -> repo.Exchange:
        # The answer's row carries the call's model and usage: it is priced here, and its spend
        # is written with the exchange (same transaction, same idempotency).
        charge = None
        answer_id = f"{call.message_id}:answer"
        for n, row in enumerate(rows):
            if row.external_id == answer_id and row.model is not None:
                usage = Usage(
                    prompt_tokens=row.prompt_tokens or 0,
                    completion_tokens=row.completion_tokens or 0,
                    cached_tokens=row.cached_tokens or 0,
                )
                charge = self.charge_of(call, row.model, usage, project_id)
                rows = [*rows[:n], replace(row, cost_usd=charge.cost_usd), *rows[n + 1 :]]
        return repo.Exchange(
            charge=charge,
            external_id=call.message_id,
            messages=rows,
            request_id=call.request_id,
            conversation_id=conversation_id,
            project_id=project_id,
            title=title,
            model=model,
            source=source,
            session_id=session_ids.issue(self.session_key, self.usage.gpt_pk)
            if conversation_id is None
            else None,
        )

    def charge_of(
        self, call: Call, model: str, usage: Usage, project_id: int | None = None
    ) -> spend.Charge:
        """The call's spend, priced from its usage (cached input at its own price). No usage at
        all (a /v1 stream without `stream_options.include_usage`) is unpriced, never free."""
        reported = usage.prompt_tokens > 0 or usage.completion_tokens > 0
        cost = self.prices.cost(
            model, usage.prompt_tokens, usage.cached_tokens, usage.completion_tokens
        )
        return spend.Charge(
            external_id=call.message_id,
            key_id=call.caller.key_id,
            project_id=project_id if project_id is not None else call.caller.project_id,
            model=model,
            input_tokens=usage.prompt_tokens,
            cached_input_tokens=usage.cached_tokens,
            output_tokens=usage.completion_tokens,
            cost_usd=cost if reported else None,
        )

    async def charge_alone(self, call: Call, model: str, usage: Usage) -> None:
        """The spend of a call whose exchange is not stored (no project; embeddings): one
        statement (atomic by itself, committed and flushed), before the answer goes out: the
        next call of the key sees it."""
        async with self.pool.acquire() as conn:
            await spend.record(conn, self.charge_of(call, model, usage), keys=self.store.keys)

    async def _answer(
        self,
        call: Call,
        history: tuple[ChatMessage, ...] | list[ChatMessage],
        model: str | None,
        project_id: int,
        conv: Conversation | None,
        job: ChatCall | None = None,
    ) -> Completion:
        """The model's answer — or, for a redelivered request, the one already stored."""
        stream = job is not None and job.stream
        if call.replay:
            row = await self.stored_answer(call, project_id, conv)
            if row is not None:
                await self.store.barrier()  # its first delivery may not have flushed it
                if stream:
                    await call.chunk(row["content"])
                return Completion(
                    row["content"], row["model"] or "", usage_from_row(row), row["latency_ms"] or 0
                )
            if stream:
                raise StreamInterrupted("the answer was interrupted; retry the request")
        return await self._complete(call, history, job, conv, model)

    async def stored_answer(
        self, call: Call, project_id: int, conv: Conversation | None
    ) -> asyncpg.Record | None:
        async with self.pool.acquire() as conn:
            conversation_id = conv.id if conv is not None else None
            if conversation_id is None:
                # The conversation a delivery of this request created, whatever its source.
                created = await conversations.find_by_external(
                    conn, project_id, None, call.message_id
                )
                if created is None:
                    return None
                conversation_id = created.id
            return await conversations.stored_message(
                conn, conversation_id, f"{call.message_id}:answer"
            )

    async def _complete(
        self,
        call: Call,
        history: tuple[ChatMessage, ...] | list[ChatMessage],
        job: ChatCall | None,
        conv: Conversation | None,
        model: str | None = None,
    ) -> Completion:
        settings = self.settings
        chosen = (job.model if job else None) or model or settings.openai_model
        temperature = job.temperature if job and job.temperature is not None else None
        return await upstream.complete(
            self.client,
            history,
            model=chosen,
            temperature=temperature if temperature is not None else settings.openai_temperature,
            max_tokens=(job.max_tokens if job else None) or settings.openai_max_tokens,
            deadline=call.deadline,
            on_delta=call.chunk if job is not None and job.stream else None,
        )

    async def record(
        self,
        call: Call,
        model: str,
        usage: Usage,
        latency_ms: int,
        conv: Conversation | None = None,
    ) -> None:
        """The call as a metrics event of the built-in GPT (confirmed on the broker)."""
        if conv is not None and conv.metrics_session_id is not None:
            session_id, started = conv.metrics_session_id, conv.created_at
        else:
            session_id = session_ids.issue(self.session_key, self.usage.gpt_pk)
            started = datetime.now(UTC)
            if conv is not None:  # a conversation stored by someone else (import, webhook)
                async with self.pool.acquire() as conn:
                    await conversations.set_session(conn, conv.id, session_id)
        await self.usage.record(
            session_id=session_id,
            session_started=started,
            project_id=conv.project_id if conv is not None else None,
            user=call.caller.user,
            model=model,
            usage=usage,
            latency_ms=latency_ms,
            request_message_id=call.message_id,
            request_id=call.request_id,
            cost_usd=self.charge_of(call, model, usage).cost_usd,
        )

    async def close(self) -> None:
        await self.store.close()


def usage_from_row(row: asyncpg.Record) -> Usage:
    prompt, completion = row["prompt_tokens"] or 0, row["completion_tokens"] or 0
    return Usage(
        prompt_tokens=prompt,
        completion_tokens=completion,
        total_tokens=prompt + completion,
        cached_tokens=row["cached_tokens"] or 0,
        reasoning_tokens=row["reasoning_tokens"] or 0,
    )


def assistant_row(
    call: Call, content: str, model: str, usage: Usage, latency_ms: int
) -> NewMessage:
    """The answer's row: usage (with details) and model on it, for the cost of the call."""
    return NewMessage(
        role="assistant",
        content=content,
        external_id=f"{call.message_id}:answer",
        model=model,
        prompt_tokens=usage.prompt_tokens,
        completion_tokens=usage.completion_tokens,
        cached_tokens=usage.cached_tokens,
        reasoning_tokens=usage.reasoning_tokens,
        latency_ms=latency_ms,
        request_id=call.request_id,
    )
