"""Broker connection and publishing with publisher confirms.

`Publisher.publish` returns only once the broker has confirmed the persistent message; any
failure (connection down, nack, unroutable, timeout) raises `BrokerUnavailable`, which the
gateway turns into a 503 — it never answers 2xx for work it could not hand over.
"""

from __future__ import annotations

import asyncio
from collections import deque
from collections.abc import Sequence
from typing import Any

import aio_pika
import aiormq
from aio_pika.abc import AbstractChannel, AbstractRobustConnection

from chatbeto import topology
from chatbeto.logging import get_logger
from chatbeto.messages import Outgoing
from chatbeto.observability import MESSAGES_PUBLISHED, PUBLISH_FAILURES

log = get_logger(__name__)
PUBLISH_TIMEOUT_SECONDS = 5.0
# aio-pika waits 5 s between reconnect attempts by default; a restarted broker is usually back
# in 2-4 s, so try every second (an attempt against a closed port fails at once).
RECONNECT_INTERVAL_SECONDS = 1.0
CLOSE_TIMEOUT_SECONDS = 5.0


# The broker answered and said no (credentials, a vhost missing or not the user's): no retry
# changes that, so the one-line error comes at once rather than after every attempt.
REFUSALS: tuple[type[Exception], ...] = (
    aiormq.exceptions.ProbableAuthenticationError,
    aiormq.exceptions.AuthenticationError,
    aiormq.exceptions.ConnectionNotAllowed,
    aiormq.exceptions.InvalidFrameError,  # the handshake closed at Connection.Open: the vhost
)


class BrokerUnavailable(Exception):
    """The message is not confirmed on the broker."""


async def connect(
    url: str, *, attempts: int = 1, delay_seconds: float = 1.0
) -> AbstractRobustConnection:
    """A robust connection (it reconnects by itself after the first success)."""
    for attempt in range(1, attempts + 1):
        try:
            return await aio_pika.connect_robust(
                url, timeout=10, reconnect_interval=RECONNECT_INTERVAL_SECONDS
            )
        except (TimeoutError, OSError, aio_pika.exceptions.AMQPError) as exc:
            if attempt == attempts or isinstance(exc, REFUSALS):
                raise
            log.warning("broker not reachable, retrying", attempt=attempt, error=str(exc))
            await asyncio.sleep(delay_seconds)
    raise AssertionError("unreachable")


class Publisher:
    """Publishes persistent messages to the work exchange and waits for the confirm."""

    def __init__(self, connection: AbstractRobustConnection, topo: topology.Topology) -> None:
        self._connection = connection
        self._topology = topo
        self._channel: AbstractChannel | None = None
        self._lock = asyncio.Lock()

    async def _ensure(self) -> aiormq.abc.AbstractChannel:
        """The open channel's underlying aiormq channel (the robust one reopens it)."""
        if self._channel is None or self._channel.is_closed:
            async with self._lock:
                if self._channel is None or self._channel.is_closed:
                    self._channel = await self._connection.channel(
                        publisher_confirms=True, on_return_raises=True
                    )
        return await self._channel.get_underlay_channel()

    async def publish(
        self,
        message: aio_pika.Message | Outgoing,
        routing_key: str,
        *,
        exchange: str | None = None,
        timeout_seconds: float = PUBLISH_TIMEOUT_SECONDS,
    ) -> None:
        if not self._connection.connected.is_set():
            # Fail fast while the robust connection is reconnecting: the caller answers 503.
            raise BrokerUnavailable("not connected to the broker")
        try:
            # One deadline for the whole publish: channel and confirm.
            async with asyncio.timeout(timeout_seconds):
                channel = await self._ensure()
                # The aiormq channel's own publish (aio-pika's adds nothing here), `wait=False`:
                # the frames are queued in order and the confirm is awaited, without first
                # waiting for the writer task to flush them (a task switch per publish). A
                # nack or a return (mandatory, unroutable) raises, as through aio-pika.
                await channel.basic_publish(  # type: ignore[call-arg]  # aiormq.abc lacks `wait`
                    message.body,
                    exchange=self._topology.exchange if exchange is None else exchange,
                    routing_key=routing_key,
                    properties=message.properties,
                    mandatory=True,
                    wait=False,
                )
        except asyncio.CancelledError:
            raise
        except Exception as exc:
            raise BrokerUnavailable(f"{type(exc).__name__}: {exc}") from exc

    async def close(self) -> None:
        if self._channel is not None and not self._channel.is_closed:
            try:
                # Bounded: while the broker is down a close can wait on a dead transport.
                async with asyncio.timeout(CLOSE_TIMEOUT_SECONDS):
                    await self._channel.close()
            except Exception as exc:
                log.info("publisher channel close skipped", error=type(exc).__name__)


class GroupPublisher:
    """Group commit: requests that arrive while a publish is in flight ride the next message.

    One awaited persistent publish per request caps a gateway at a few thousand requests per
    second (the broker's confirm is the wall). Here each caller still waits for the confirm of
    the message that carries its items, so a 2xx still means "on the broker", but many callers
    share one confirm.

    A second publish overlaps the one in flight only once `overlap_items` items or
    `overlap_callers` callers are waiting: below that, waiting one confirm (about a millisecond)
    costs less than the publish itself, which costs the same for 3 items as for 300 (measured:
    messages of a few events each made the broker path a tenth of the gateway's CPU at 3,000
    events/s). Sixteen single events are enough: 64 clients of single events otherwise all
    waited on one confirm at a time, a quorum queue's fsync apart (measured, same code, 64
    clients, load 5-6: 4,266 / 6,903 req/s at 256 items, 6,023 / 8,225 at 16 callers, with
    messages as large, 32-38 events, so no more CPU per event; p99 117 / 42 -> 75 / 24 ms).
    Batches keep the item bound, so their messages stay as large as before.
    """

    def __init__(
        self,
        publisher: Publisher,
        routing_key: str,
        build: Any,
        *,
        max_items: int = 2000,
        max_in_flight: int = 2,
        overlap_items: int = 256,
        overlap_callers: int = 16,
    ) -> None:
        self._publisher = publisher
        self._routing_key = routing_key
        self._build = build  # (list of items) -> aio_pika.Message
        self._max_items = max_items
        self._max_in_flight = max_in_flight
        self._overlap_items = overlap_items
        self._overlap_callers = overlap_callers
        self._pending: deque[tuple[Sequence[Any], asyncio.Future[None]]] = deque()
        self._pending_count = 0
        self._in_flight = 0
        self._forming = False  # a publish is started and has not taken its items yet
        self._tasks: set[asyncio.Task[None]] = set()
        self._published = MESSAGES_PUBLISHED.labels(routing_key)
        self._failed = PUBLISH_FAILURES.labels(routing_key)

    async def submit(self, items: Sequence[Any]) -> None:
        future: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        self._pending.append((items, future))
        self._pending_count += len(items)
        self._kick()
        await future

    def _kick(self) -> None:
        """Start a publish if a slot is free; it takes its items when it starts running."""
        if self._forming or not self._pending:
            return
        if self._in_flight == 0 or (
            self._in_flight < self._max_in_flight
            and (
                self._pending_count >= self._overlap_items
                or len(self._pending) >= self._overlap_callers
            )
        ):
            self._forming = True
            self._in_flight += 1
            task = asyncio.create_task(self._flush())
            self._tasks.add(task)
            task.add_done_callback(self._tasks.discard)

    def _take_group(self) -> list[tuple[Sequence[Any], asyncio.Future[None]]]:
        group: list[tuple[Sequence[Any], asyncio.Future[None]]] = []
        count = 0
        while self._pending and (not group or count + len(self._pending[0][0]) <= self._max_items):
            items, future = self._pending.popleft()
            group.append((items, future))
            count += len(items)
        self._pending_count -= count
        return group

    async def _flush(self) -> None:
        # Taking the items here, one loop turn after the kick, rather than in `_kick`: every
        # request parsed in the same turn rides this message (in `_kick`, the first request of
        # a burst went alone and the rest waited a whole confirm for the next one).
        self._forming = False
        group = self._take_group()
        self._kick()
        error: BaseException | None = None
        try:
            items = [item for part, _ in group for item in part]
            if items:
                await self._publisher.publish(self._build(items), self._routing_key)
                self._published.inc()
        except BaseException as exc:  # every waiter must learn the outcome
            self._failed.inc()
            error = exc if isinstance(exc, BrokerUnavailable) else BrokerUnavailable(str(exc))
        finally:
            self._in_flight -= 1
            for _, future in group:
                if future.done():
                    continue
                if error is None:
                    future.set_result(None)
                else:
                    future.set_exception(error)
            self._kick()

    async def close(self) -> None:
        while self._tasks:
            await asyncio.gather(*list(self._tasks), return_exceptions=True)
