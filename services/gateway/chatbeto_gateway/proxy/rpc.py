"""Request/reply over RabbitMQ (see docs/ARCHITECTURE.md, "Request/reply").

The gateway publishes a persistent, confirmed `OpenAIRequest` (routing key
`openai.request.<action>` → the `openai.calls` work queue, where worker replicas compete)
with a fresh `correlation_id` and `reply_to` = this process's own exclusive reply queue. Replies
(streamed chunks, then one result or error, each tagged with the delivery that sent it) come back on that queue only, and are handed to
the waiting call by correlation id. Each call waits until its deadline, then answers 504.
"""

from __future__ import annotations

import asyncio
import time
import uuid
from collections import deque
from collections.abc import AsyncIterator, Coroutine
from contextlib import asynccontextmanager
from datetime import UTC, datetime, timedelta
from typing import Any

from aio_pika.abc import AbstractRobustChannel, AbstractRobustConnection
from aiormq.abc import DeliveredMessage
from chatbeto.broker import Publisher
from chatbeto.db import DATABASE_UNAVAILABLE
from chatbeto.logging import get_logger
from chatbeto.messages import (
    Caller,
    InvalidMessage,
    OpenAIRequest,
    ReplyChunk,
    ReplyError,
    ReplyResult,
    RequestCall,
    envelope,
    new_uuid4,
    parse_reply,
    to_outgoing,
)
from chatbeto.topology import Topology

from chatbeto_gateway.http.errors import ApiError, database_unavailable

log = get_logger(__name__)
ACCEPTED_VERSIONS = frozenset({2})


def gateway_timeout() -> ApiError:
    # Stored or not is unknown here: the exchange carries this request's id, so the caller can
    # look it up (`GET /api/v1/openai/conversations?requestId=`) before retrying.
    return ApiError(
        504,
        "upstream_timeout",
        "no answer from the model in time; if it was stored after all, "
        "GET /api/v1/openai/conversations?requestId=<this X-Request-Id> finds it",
    )


class CallFailed(ApiError):
    """The worker's error reply; `body` is OpenAI's own error body when it is forwarded."""

    def __init__(self, error: ReplyError) -> None:
        # The worker's Postgres away is answered as the gateway's own: the same Retry-After.
        outage = error.code == DATABASE_UNAVAILABLE
        super().__init__(
            error.status,
            error.code,
            error.message,
            headers=database_unavailable().headers if outage else None,
        )
        self.body = error.body


def stream_interrupted() -> ApiError:
    return ApiError(502, "stream_interrupted", "the answer was interrupted; retry the request")


class Pending:
    """The replies of one call, in order, from one delivery of the request only."""

    def __init__(self, deadline: float) -> None:
        self.deadline = deadline
        # A deque and one future per wait, not an asyncio.Queue: a plain call waits once, and
        # the queue's getter bookkeeping and a timeout context per wait were on its critical path.
        self._parts: deque[ReplyChunk | ReplyResult | ReplyError] = deque()
        self._waiter: asyncio.Future[None] | None = None
        self.attempt: str | None = None
        self.chunks = 0

    def put(self, part: ReplyChunk | ReplyResult | ReplyError) -> None:
        self._parts.append(part)
        waiter = self._waiter
        if waiter is not None and not waiter.done():
            waiter.set_result(None)

    async def _get(self) -> ReplyChunk | ReplyResult | ReplyError:
        while not self._parts:
            loop = asyncio.get_running_loop()
            remaining = self.deadline - time.monotonic()
            if remaining <= 0:
                raise gateway_timeout()
            waiter = self._waiter = loop.create_future()
            timer = loop.call_later(remaining, _expire, waiter)
            try:
                await waiter
            finally:
                timer.cancel()
                self._waiter = None
        return self._parts.popleft()

    async def next(self) -> ReplyChunk | ReplyResult:
        """The next reply; 504 once the deadline passes, the worker's error as `CallFailed`.

        Output of a second delivery of the request (its first worker died mid-answer) is never
        relayed after the first one's: that would splice two answers into one."""
        part = await self._get()
        if self.attempt is None or self.chunks == 0:
            self.attempt = part.attempt
        elif part.attempt != self.attempt and isinstance(part, ReplyChunk):
            raise stream_interrupted()
        if isinstance(part, ReplyError):
            raise CallFailed(part)
        if isinstance(part, ReplyChunk):
            self.chunks += 1
        return part

    async def result(self) -> ReplyResult:
        """Skip chunks; the final result."""
        while True:
            part = await self.next()
            if isinstance(part, ReplyResult):
                return part


def _expire(waiter: asyncio.Future[None]) -> None:
    if not waiter.done():
        waiter.set_exception(gateway_timeout())


async def _handled() -> None:
    """What `Rpc._on_delivery` hands aiormq to run as a task: the work is done already."""


class Rpc:
    def __init__(
        self,
        connection: AbstractRobustConnection,
        publisher: Publisher,
        topo: Topology,
        timeout_seconds: float,
        grace_seconds: float,
    ) -> None:
        self._connection = connection
        self._publisher = publisher
        self._topology = topo
        self._timeout_seconds = timeout_seconds
        # Beyond the timeout the worker needs a little time to store the answer and reply
        # (REPLY_GRACE_SECONDS); past that the gateway stops waiting (504).
        self._grace_seconds = grace_seconds
        self._process_id = uuid.uuid4().hex[:16]
        self.queue_name = topo.reply_queue_name(self._process_id)
        self._waiting: dict[str, Pending] = {}
        self._channel: AbstractRobustChannel | None = None

    async def start(self) -> None:
        self._channel = await self._connection.channel()
        await self._topology.declare_reply_queue(self._channel, self._process_id)
        await self._consume(self._channel)
        # The robust channel re-declares and binds the queue after a reconnect; the consumer
        # is the aiormq channel's own (below), so it is started again here.
        self._channel.reopen_callbacks.add(self._consume)

    async def _consume(self, channel: AbstractRobustChannel | None) -> None:
        if channel is None:  # the collection's sender was collected: the channel is gone
            return
        # On the aiormq channel itself: aio-pika's consumer built an IncomingMessage (some 60
        # attribute sets) and ran the callback in a second task, for every reply.
        # no_ack: a reply lost with this process has nobody left to read it anyway.
        underlay = await channel.get_underlay_channel()
        await underlay.basic_consume(self.queue_name, self._on_delivery, no_ack=True)

    async def close(self) -> None:
        if self._channel is not None and not self._channel.is_closed:
            await self._channel.close()

    def _on_delivery(self, message: DeliveredMessage) -> Coroutine[Any, Any, None]:
        """aiormq runs what its consumer returns as a task, a loop pass after the frame was
        read; the reply is handed over here, in the channel's reader, and the task is empty."""
        try:
            self._deliver(message)
        except Exception:  # never into aiormq's reader, which would stop reading the channel
            log.exception("reply not handled")
        return _handled()

    def _deliver(self, message: DeliveredMessage) -> None:
        pending = self._waiting.get(message.header.properties.correlation_id or "")
        if pending is None:
            return  # its caller gave up (deadline) or the reply is a redelivery's twin
        try:
            part = parse_reply(message.body, ACCEPTED_VERSIONS)
        except InvalidMessage as exc:
            log.error("unreadable reply", error=str(exc))
            return
        pending.put(part)

    @asynccontextmanager
    async def call(self, job: RequestCall, caller: Caller) -> AsyncIterator[Pending]:
        """Publish a request; yields its replies. `BrokerUnavailable` (a 503) if the broker did
        not confirm it."""
        deadline_at = datetime.now(UTC) + timedelta(seconds=self._timeout_seconds)
        request = OpenAIRequest.trusted(call=job, caller=caller, deadline=deadline_at)
        correlation_id = new_uuid4().hex
        pending = Pending(time.monotonic() + self._timeout_seconds + self._grace_seconds)
        self._waiting[correlation_id] = pending
        try:
            # Transient (a classic queue, no fsync): the caller is waiting, and what must last
            # is the stored exchange, committed before the worker answers.
            message = to_outgoing(
                envelope(request),
                persistent=False,
                correlation_id=correlation_id,
                reply_to=self.queue_name,
            )
            await self._publisher.publish(message, request.routing_key)
            yield pending
        finally:
            del self._waiting[correlation_id]
