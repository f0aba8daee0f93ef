"""The consumer idiom every worker shares.

`connect_robust` → `set_qos` → the work queue → handle → ack after commit. Outcomes are signalled
with exceptions:

- success: ack;
- `InvalidMessage`: no retry can help, reject → the queue dead-letters it at once;
- any other exception: transient — republish to the queue's delay ladder with the attempt count
  (confirmed before the original is acked, so nothing is lost), dead-letter after `max_tries`.

Batch consumers receive several messages at once (one transaction for all); when a batch fails,
each message is retried alone so one poison message can't hold the others back. A batch handler
that committed part of the batch raises `PartialFailure` naming the messages still to retry: the
others are acked.

SIGTERM (`close`) stops taking messages, finishes the batch in hand, then closes.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Awaitable, Callable, Sequence

import aio_pika
from aio_pika.abc import (
    AbstractChannel,
    AbstractIncomingMessage,
    AbstractQueue,
    AbstractRobustConnection,
)

from chatbeto import topology
from chatbeto.broker import Publisher
from chatbeto.logging import get_logger
from chatbeto.messages import InvalidMessage
from chatbeto.observability import MESSAGES_CONSUMED

log = get_logger(__name__)
ATTEMPT_HEADER = "x-attempt"

BatchHandler = Callable[[Sequence[AbstractIncomingMessage]], Awaitable[None]]


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


class BatchConsumer:
    def __init__(
        self,
        connection: AbstractRobustConnection,
        topo: topology.Topology,
        queue: topology.WorkQueue,
        handler: BatchHandler,
        *,
        prefetch: int = 256,
        max_batch: int = 256,
        max_wait_seconds: float = 0.02,
        max_tries: int = 5,
    ) -> None:
        self._connection = connection
        self._queue_def = queue
        self._handler = handler
        self._prefetch = prefetch
        self._max_batch = max_batch
        self._max_wait_seconds = max_wait_seconds
        self._max_tries = max_tries
        self._buffer: asyncio.Queue[AbstractIncomingMessage] = asyncio.Queue()
        self._topology = topo
        self._publisher = Publisher(connection, topo)
        self._queue: AbstractQueue | None = None
        self._consumer_tag: str | None = None
        self._runner: asyncio.Task[None] | None = None
        self._stopping = asyncio.Event()

    async def start(self) -> None:
        channel = await self._connection.channel()
        await channel.set_qos(prefetch_count=self._prefetch)
        await self._topology.declare(channel)
        self._queue = await channel.get_queue(self._queue_def.name, ensure=False)
        self._consumer_tag = await self._queue.consume(self._buffer.put)
        self._runner = asyncio.create_task(self._run())
        log.info("consuming", queue=self._queue_def.name, prefetch=self._prefetch)

    async def wait(self) -> None:
        assert self._runner is not None
        await self._runner

    async def close(self, drain_timeout_seconds: float = 30.0) -> None:
        """Stop taking messages, finish what is in hand; unacked ones return to the queue."""
        if self._queue is not None and self._consumer_tag is not None:
            try:
                await self._queue.cancel(self._consumer_tag)
            except Exception as exc:  # the channel may already be gone
                log.warning("cancel failed", error=str(exc))
            self._consumer_tag = None
        self._stopping.set()
        if self._runner is not None:
            try:
                await asyncio.wait_for(self._runner, drain_timeout_seconds)
            except TimeoutError:
                log.warning("drain timed out; unacked messages return to the queue")
                self._runner.cancel()
        await self._publisher.close()

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
        deadline = time.monotonic() + self._max_wait_seconds
        while len(batch) < self._max_batch:
            try:
                batch.append(self._buffer.get_nowait())
                continue
            except asyncio.QueueEmpty:
                pass
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                break
            try:
                batch.append(await asyncio.wait_for(self._buffer.get(), remaining))
            except TimeoutError:
                break
        return batch

    async def _run(self) -> None:
        while not (self._stopping.is_set() and self._buffer.empty()):
            batch = await self._next_batch()
            if not batch:
                continue
            await self._process(batch)
        # Messages delivered but not taken: the broker requeues them when the channel closes.

    async def _process(self, batch: list[AbstractIncomingMessage]) -> None:
        started = time.perf_counter()
        try:
            await self._handler(batch)
        except PartialFailure as partial:
            for message in batch:
                failure = partial.failures.get(message)
                if failure is None:
                    await message.ack()
                    MESSAGES_CONSUMED.labels(self._queue_def.name, "ok").inc()
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
                    await self._fail(
                        message, partial.failures.get(message, partial), partial.bodies.get(message)
                    )
                except Exception as one_exc:
                    await self._fail(message, one_exc)
                else:
                    await message.ack()
                    MESSAGES_CONSUMED.labels(self._queue_def.name, "ok").inc()
            return
        for message in batch:
            await message.ack()
        MESSAGES_CONSUMED.labels(self._queue_def.name, "ok").inc(len(batch))
        log.debug(
            "batch stored",
            size=len(batch),
            duration_ms=round((time.perf_counter() - started) * 1000, 2),
        )

    async def _fail(
        self, message: AbstractIncomingMessage, exc: Exception, body: bytes | None = None
    ) -> None:
        await settle_failure(message, exc, self._queue_def, self._publisher, self._max_tries, body)


async def settle_failure(
    message: AbstractIncomingMessage,
    exc: Exception,
    queue: topology.WorkQueue,
    publisher: Publisher,
    max_tries: int,
    body: bytes | None = None,
) -> None:
    """Dead-letter an invalid or exhausted message; park any other on the retry ladder (with
    `body` instead of its own, when given)."""
    attempt = attempt_of(message)
    fields = {
        "message_id": message.message_id,
        "attempt": attempt,
        "error": f"{type(exc).__name__}: {exc}"[:500],
    }
    if isinstance(exc, InvalidMessage) or attempt >= max_tries:
        log.error("dead-lettering message", **fields)
        MESSAGES_CONSUMED.labels(queue.name, "dead_lettered").inc()
        await message.reject(requeue=False)
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
        await publisher.publish(retry, queue.retry_queue(attempt), exchange="")
    except Exception as pub_exc:
        # Could not park it: leave it to the broker's redelivery instead of losing it.
        log.warning("retry publish failed, requeueing", error=str(pub_exc), **fields)
        await message.nack(requeue=True)
        return
    log.warning("message failed, will retry", **fields)
    MESSAGES_CONSUMED.labels(queue.name, "retried").inc()
    await message.ack()


MessageHandler = Callable[[AbstractIncomingMessage], Awaitable[None]]


class ConcurrentConsumer:
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
        concurrency: int = 64,
        max_tries: int = 5,
    ) -> None:
        self._connection = connection
        self._topology = topo
        self._queue_def = queue
        self._handler = handler
        self._concurrency = concurrency
        self._max_tries = max_tries
        self._publisher = Publisher(connection, topo)
        self._channel: AbstractChannel | None = None
        self._queue: AbstractQueue | None = None
        self._consumer_tag: str | None = None
        self._tasks: set[asyncio.Task[None]] = set()
        self._stopping = asyncio.Event()

    @property
    def in_flight(self) -> int:
        return len(self._tasks)

    async def start(self) -> None:
        self._channel = await self._connection.channel()
        await self._channel.set_qos(prefetch_count=self._concurrency)
        await self._topology.declare(self._channel)
        self._queue = await self._channel.get_queue(self._queue_def.name, ensure=False)
        self._consumer_tag = await self._queue.consume(self._on_message)
        log.info("consuming", queue=self._queue_def.name, concurrency=self._concurrency)

    async def _on_message(self, message: AbstractIncomingMessage) -> None:
        task = asyncio.create_task(self._handle(message))
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    async def _handle(self, message: AbstractIncomingMessage) -> None:
        started = time.perf_counter()
        try:
            await self._handler(message)
        except Exception as exc:
            await settle_failure(message, exc, self._queue_def, self._publisher, self._max_tries)
            return
        await message.ack()
        MESSAGES_CONSUMED.labels(self._queue_def.name, "ok").inc()
        log.debug(
            "message handled",
            message_id=message.message_id,
            duration_ms=round((time.perf_counter() - started) * 1000, 2),
        )

    async def wait(self) -> None:
        await self._stopping.wait()

    async def close(self, drain_timeout_seconds: float = 30.0) -> None:
        """Stop taking messages, finish those in hand; unacked ones return to the queue."""
        if self._queue is not None and self._consumer_tag is not None:
            try:
                await self._queue.cancel(self._consumer_tag)
            except Exception as exc:  # the channel may already be gone
                log.warning("cancel failed", error=str(exc))
            self._consumer_tag = None
        self._stopping.set()
        if self._tasks:
            _, pending = await asyncio.wait(set(self._tasks), timeout=drain_timeout_seconds)
            if pending:
                log.warning("drain timed out; unacked messages return to the queue")
                for task in pending:
                    task.cancel()
                await asyncio.gather(*pending, return_exceptions=True)
        await self._publisher.close()
        if self._channel is not None and not self._channel.is_closed:
            await self._channel.close()
