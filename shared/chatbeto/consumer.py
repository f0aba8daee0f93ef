"""The consumer idiom every worker shares.

`connect_robust` → `set_qos` → the work queue → handle → ack after commit. Outcomes are signalled
with exceptions:

- success: ack (those of one loop turn together, in as few frames as may be: `chatbeto.acks`);
- `InvalidMessage`: no retry can help, reject → the queue dead-letters it at once;
- any other exception: transient — republish to the queue's delay ladder with the attempt count
  (confirmed before the original is acked, so nothing is lost), dead-letter after `max_tries`.

Batch consumers receive several messages at once (one transaction for all); when a batch fails,
each message is retried alone so one poison message can't hold the others back. A batch handler
that committed part of the batch raises `PartialFailure` naming the messages still to retry: the
others are acked.

Broker restarts and dropped connections: the robust connection reconnects and the robust channel
re-declares the queue and re-registers the consumer (also after a broker-sent basic.cancel). It
does so only for a queue declared on that channel, so each consumer declares its own queue
(`Topology.declare_work_queue`); a queue fetched with `get_queue(ensure=False)` is invisible to
it, which once left every worker at zero consumers after a restart. A message delivered on a
channel that has since died is not handled (the broker redelivers it) and a failed ack is
logged, never fatal: the redelivered copy is stored once (idempotent writes).

SIGTERM (`close`) stops taking messages, finishes the batch in hand, then closes — each step
bounded in time, so a broker that is down can't hold the process.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass
from typing import cast

import aio_pika
import aiormq
from aio_pika.abc import (
    AbstractChannel,
    AbstractIncomingMessage,
    AbstractQueue,
    AbstractRobustConnection,
)
from aiormq.exceptions import ChannelInvalidStateError

from chatbeto import topology
from chatbeto.acks import Acks
from chatbeto.broker import Publisher
from chatbeto.logging import get_logger
from chatbeto.messages import InvalidMessage
from chatbeto.observability import MESSAGES_CONSUMED

log = get_logger(__name__)
ATTEMPT_HEADER = "x-attempt"
# Broker calls made while stopping; the broker may be gone, so none may wait long.
CLOSE_STEP_SECONDS = 5.0
READY_PROBE_SECONDS = 1.0

BatchHandler = Callable[[Sequence[AbstractIncomingMessage]], Awaitable[None]]
MessageHandler = Callable[[AbstractIncomingMessage], Awaitable[None]]


class PartialFailure(Exception):
    """The handler finished every message of the batch except these (each with its error).

    `bodies` may give a failed message the body its retry carries instead (what is left of it
    once the rest was stored).
    """

    def __init__(
        self,
        failures: dict[AbstractIncomingMessage, Exception],
        bodies: dict[AbstractIncomingMessage, bytes] | None = None,
    ) -> None:
        super().__init__(f"{len(failures)} message(s) failed")
        self.failures = failures
        self.bodies = bodies or {}


def attempt_of(message: AbstractIncomingMessage) -> int:
    value = (message.headers or {}).get(ATTEMPT_HEADER, 1)
    return value if isinstance(value, int) and value > 0 else 1


def delivered_on_live_channel(message: AbstractIncomingMessage) -> bool:
    """False once the channel that delivered it died: the broker has requeued it already."""
    try:
        return not message.channel.is_closed
    except ChannelInvalidStateError:
        return False


@dataclass
class ConsumerStats:
    """What one consumer did, logged at shutdown."""

    handled: int = 0
    retried: int = 0
    dead_lettered: int = 0
    # Not settled by us (channel gone, or requeued): the broker delivers them again.
    returned: int = 0


class Consumer:
    """What both consumers share: their own channel and queue, settling, readiness, stopping."""

    def __init__(
        self,
        connection: AbstractRobustConnection,
        topo: topology.Topology,
        queue: topology.WorkQueue,
        publisher: Publisher | None,
        *,
        prefetch: int,
        max_tries: int,
    ) -> None:
        self._connection = connection
        self._topology = topo
        self.queue = queue
        # Retries are published on the runtime's shared publisher; a consumer made alone
        # (tests) has its own.
        self._owns_publisher = publisher is None
        self._publisher = publisher or Publisher(connection, topo)
        self._prefetch = prefetch
        self._max_tries = max_tries
        self._channel: AbstractChannel | None = None
        self._queue: AbstractQueue | None = None
        self._consumer_tag: str | None = None
        self._stopping = asyncio.Event()
        self.stats = ConsumerStats()
        self.acks = Acks()

    async def start(self) -> None:
        self._channel = await self._connection.channel()
        await self._channel.set_qos(prefetch_count=self._prefetch)
        exchange = await self._topology.declare_exchanges(self._channel)
        self._queue = await self._topology.declare_work_queue(self._channel, self.queue, exchange)
        self._consumer_tag = await self._queue.consume(self._on_message)
        log.info("consuming", queue=self.queue.name, prefetch=self._prefetch)

    async def _on_message(self, message: AbstractIncomingMessage) -> None:
        raise NotImplementedError

    async def consuming(self) -> bool:
        """True while the broker has this consumer registered on a live channel (readiness)."""
        channel, tag = self._channel, self._consumer_tag
        if self._stopping.is_set() or channel is None or tag is None:
            return False
        if not self._connection.connected.is_set() or channel.is_closed:
            return False
        try:
            async with asyncio.timeout(READY_PROBE_SECONDS):
                underlay = cast(aiormq.Channel, await channel.get_underlay_channel())
        except Exception:  # reconnecting, or the channel is being restored
            return False
        # The broker's basic.cancel (queue deleted, quorum leader lost) removes the tag here.
        return not underlay.is_closed and tag in underlay.consumers

    async def _ack(self, message: AbstractIncomingMessage) -> bool:
        """Ack (with the others of this loop turn: `Acks`); False when the channel died meanwhile
        (the broker delivers it again)."""
        if await self.acks.ack(message):
            return True
        self._not_settled(message, "ack")
        return False

    async def _reject(self, message: AbstractIncomingMessage) -> bool:
        self.acks.settled(message)
        return await self._settle(message, message.reject(requeue=False))

    def _not_settled(self, message: AbstractIncomingMessage, how: str) -> None:
        self.stats.returned += 1
        log.warning(
            "could not settle message; the broker delivers it again",
            message_id=message.message_id,
            how=how,
        )

    async def _settle(self, message: AbstractIncomingMessage, call: Awaitable[None]) -> bool:
        try:
            await call
        except Exception as exc:
            self._not_settled(message, type(exc).__name__)
            return False
        return True

    async def _done(self, message: AbstractIncomingMessage) -> None:
        if await self._ack(message):
            self.stats.handled += 1
            MESSAGES_CONSUMED.labels(self.queue.name, "ok").inc()

    async def _done_all(self, messages: Sequence[AbstractIncomingMessage]) -> None:
        """Ack them all in one loop turn (so in as few frames as `Acks` can)."""
        results = await asyncio.gather(*(self.acks.ack(m) for m in messages))
        handled = 0
        for message, ok in zip(messages, results, strict=True):
            if ok:
                handled += 1
            else:
                self._not_settled(message, "ack")
        self.stats.handled += handled
        MESSAGES_CONSUMED.labels(self.queue.name, "ok").inc(handled)

    async def _fail(
        self, message: AbstractIncomingMessage, exc: Exception, body: bytes | None = None
    ) -> None:
        """Dead-letter an invalid or exhausted message; park any other on the retry ladder
        (carrying `body` instead of its own, when given)."""
        attempt = attempt_of(message)
        fields = {
            "message_id": message.message_id,
            "attempt": attempt,
            "error": f"{type(exc).__name__}: {exc}"[:500],
        }
        if isinstance(exc, InvalidMessage) or attempt >= self._max_tries:
            log.error("dead-lettering message", **fields)
            if await self._reject(message):
                self.stats.dead_lettered += 1
                MESSAGES_CONSUMED.labels(self.queue.name, "dead_lettered").inc()
            return
        retry = aio_pika.Message(
            body=message.body if body is None else body,
            content_type=message.content_type,
            delivery_mode=aio_pika.DeliveryMode.PERSISTENT,
            message_id=message.message_id,
            type=message.type,
            timestamp=message.timestamp,
            correlation_id=message.correlation_id,
            reply_to=message.reply_to,
            headers={**(message.headers or {}), ATTEMPT_HEADER: attempt + 1},
        )
        try:
            await self._publisher.publish(retry, self.queue.retry_queue(attempt), exchange="")
        except Exception as pub_exc:
            # Could not park it: leave it to the broker's redelivery instead of losing it.
            log.warning("retry publish failed, requeueing", error=str(pub_exc), **fields)
            self.acks.settled(message)
            if await self._settle(message, message.nack(requeue=True)):
                self.stats.returned += 1
            return
        log.warning("message failed, will retry", **fields)
        # Acked only now that its copy is confirmed on the ladder (a lost ack means a duplicate
        # retry, stored once, never a lost message).
        if await self._ack(message):
            self.stats.retried += 1
            MESSAGES_CONSUMED.labels(self.queue.name, "retried").inc()

    async def wait(self) -> None:
        """Until the consumer stops (close)."""
        await self._stopping.wait()

    async def _stop_taking(self) -> None:
        self._stopping.set()
        if self._queue is not None and self._consumer_tag is not None:
            try:
                # Also drops the tag from the robust queue, so a reconnect won't restore it.
                async with asyncio.timeout(CLOSE_STEP_SECONDS):
                    await self._queue.cancel(self._consumer_tag)
            except Exception as exc:  # the channel is gone: nothing is delivered anyway
                log.info("consumer already gone", queue=self.queue.name, error=type(exc).__name__)
            self._consumer_tag = None

    async def _drain(self, timeout_seconds: float) -> None:
        raise NotImplementedError

    async def close(self, drain_timeout_seconds: float = 30.0) -> None:
        """Stop taking messages, finish those in hand; unacked ones return to the queue."""
        await self._stop_taking()
        await self._drain(drain_timeout_seconds)
        if self._channel is not None and not self._channel.is_closed:
            try:
                async with asyncio.timeout(CLOSE_STEP_SECONDS):
                    await self._channel.close()
            except Exception as exc:
                log.info("channel close skipped", queue=self.queue.name, error=type(exc).__name__)
        if self._owns_publisher:
            await self._publisher.close()
        log.info(
            "consumer stopped",
            queue=self.queue.name,
            handled=self.stats.handled,
            retried=self.stats.retried,
            dead_lettered=self.stats.dead_lettered,
            returned=self.stats.returned,
            ack_frames=self.acks.frames,
        )


# A small batch waits this long for company once its first message is in hand, unless it holds
# GATHER_BYTES of bodies already: under light load one transaction then stores several messages
# (one each cost metrics-ingest 2x the CPU per event; 64 KiB / 20 ms still 1.3x this), while a
# backlog's batch goes at once (waiting idled Postgres for 20 ms a batch, which one replica
# could not afford). A transaction's fixed cost is about ten round trips and a commit: 100
# against 50 ms cut single events' CPU per event by 12 % in metrics-ingest and 24 % in
# Postgres (3 of 3 alternated runs, 2,000-2,400 events/s), for at most 50 ms more lag.
GATHER_SECONDS = 0.1
GATHER_BYTES = 256 * 1024


class BatchConsumer(Consumer):
    def __init__(
        self,
        connection: AbstractRobustConnection,
        topo: topology.Topology,
        queue: topology.WorkQueue,
        handler: BatchHandler,
        *,
        publisher: Publisher | None = None,
        prefetch: int = 256,
        max_batch: int = 256,
        max_wait_seconds: float = GATHER_SECONDS,
        gather_bytes: int = GATHER_BYTES,
        max_tries: int = 5,
    ) -> None:
        super().__init__(connection, topo, queue, publisher, prefetch=prefetch, max_tries=max_tries)
        self._handler = handler
        self._max_batch = max_batch
        # After the messages already delivered, a batch holding less than `gather_bytes` waits
        # this long for more (0: never).
        self.max_wait_seconds = max_wait_seconds
        self.gather_bytes = gather_bytes
        self._buffer: asyncio.Queue[AbstractIncomingMessage] = asyncio.Queue()
        self._runner: asyncio.Task[None] | None = None

    async def start(self) -> None:
        await super().start()
        self._runner = asyncio.create_task(self._run())

    async def _on_message(self, message: AbstractIncomingMessage) -> None:
        self.acks.delivered(message)
        self._buffer.put_nowait(message)

    async def consuming(self) -> bool:
        return self._runner is not None and not self._runner.done() and await super().consuming()

    async def _next_batch(self) -> list[AbstractIncomingMessage]:
        batch: list[AbstractIncomingMessage] = []
        stop = asyncio.ensure_future(self._stopping.wait())
        try:
            get = asyncio.ensure_future(self._buffer.get())
            done, _ = await asyncio.wait({get, stop}, return_when=asyncio.FIRST_COMPLETED)
            if get not in done:
                get.cancel()
                return batch
            batch.append(get.result())
        finally:
            stop.cancel()
        deadline = time.monotonic() + self.max_wait_seconds
        size = len(batch[0].body)
        while len(batch) < self._max_batch:
            try:
                message = self._buffer.get_nowait()
            except asyncio.QueueEmpty:
                remaining = deadline - time.monotonic()
                if size >= self.gather_bytes or remaining <= 0:
                    break
                try:
                    message = await asyncio.wait_for(self._buffer.get(), remaining)
                except TimeoutError:
                    break
            batch.append(message)
            size += len(message.body)
        return batch

    async def _run(self) -> None:
        while not (self._stopping.is_set() and self._buffer.empty()):
            batch = await self._next_batch()
            live = [m for m in batch if delivered_on_live_channel(m)]
            # The rest died with their channel: the broker redelivers them on the new one.
            self.stats.returned += len(batch) - len(live)
            if not live:
                continue
            try:
                await self._process(live)
            except Exception:
                # A bug, not a broker or database fault (those are settled above): keep
                # consuming; the unsettled messages come back when the channel closes.
                log.exception("batch could not be settled", size=len(live))
        # Messages delivered but not taken: the broker requeues them when the channel closes.

    async def _process(self, batch: list[AbstractIncomingMessage]) -> None:
        started = time.perf_counter()
        try:
            await self._handler(batch)
        except PartialFailure as partial:
            for message in batch:
                failure = partial.failures.get(message)
                if failure is None:
                    await self._done(message)
                else:
                    await self._fail(message, failure, partial.bodies.get(message))
            return
        except Exception as exc:
            if len(batch) == 1:
                await self._fail(batch[0], exc)
                return
            log.warning(
                "batch failed, retrying its messages one by one",
                size=len(batch),
                error=type(exc).__name__,
            )
            for message in batch:
                try:
                    await self._handler([message])
                except PartialFailure as partial:
                    failure = partial.failures.get(message)
                    if failure is None:
                        await self._done(message)
                    else:
                        await self._fail(message, failure, partial.bodies.get(message))
                except Exception as one_exc:
                    await self._fail(message, one_exc)
                else:
                    await self._done(message)
            return
        await self._done_all(batch)
        log.debug(
            "batch stored",
            size=len(batch),
            duration_ms=round((time.perf_counter() - started) * 1000, 2),
        )

    async def _drain(self, timeout_seconds: float) -> None:
        if self._runner is None:
            return
        try:
            await asyncio.wait_for(asyncio.shield(self._runner), timeout_seconds)
        except TimeoutError:
            log.warning("drain timed out; unacked messages return to the queue")
            self._runner.cancel()
            await asyncio.gather(self._runner, return_exceptions=True)


class ConcurrentConsumer(Consumer):
    """Handles up to `concurrency` messages at once, each in its own task, so one slow message
    (a long upstream call) never holds back the others. Same outcomes as `BatchConsumer`: ack
    after the handler returns, `InvalidMessage` dead-letters, other errors take the retry ladder.
    """

    def __init__(
        self,
        connection: AbstractRobustConnection,
        topo: topology.Topology,
        queue: topology.WorkQueue,
        handler: MessageHandler,
        *,
        publisher: Publisher | None = None,
        concurrency: int = 64,
        max_tries: int = 5,
    ) -> None:
        super().__init__(
            connection, topo, queue, publisher, prefetch=concurrency, max_tries=max_tries
        )
        self._handler = handler
        self._tasks: set[asyncio.Task[None]] = set()

    @property
    def in_flight(self) -> int:
        return len(self._tasks)

    async def _on_message(self, message: AbstractIncomingMessage) -> None:
        self.acks.delivered(message)
        task = asyncio.create_task(self._handle(message))
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    async def _handle(self, message: AbstractIncomingMessage) -> None:
        started = time.perf_counter()
        try:
            await self._handler(message)
        except Exception as exc:
            await self._fail(message, exc)
            return
        await self._done(message)
        log.debug(
            "message handled",
            message_id=message.message_id,
            duration_ms=round((time.perf_counter() - started) * 1000, 2),
        )

    async def _drain(self, timeout_seconds: float) -> None:
        if not self._tasks:
            return
        _, pending = await asyncio.wait(set(self._tasks), timeout=timeout_seconds)
        if pending:
            log.warning("drain timed out; unacked messages return to the queue")
            for task in pending:
                task.cancel()
            await asyncio.gather(*pending, return_exceptions=True)
