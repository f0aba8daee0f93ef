"""Live events for dashboards: `GET /api/gpts/{gpt_id}/live` (Server-Sent Events).

Cost does not grow with open dashboards: each gateway process holds ONE broker subscription (an
exclusive queue bound to the live fan-out exchange that metrics-ingest publishes to after each
commit) and fans each message out in memory to the streams watching that GPT. A slow browser
loses live events (its bounded buffer drops them), never the gateway's memory. Nor does it cost
anything while nobody watches: the queue is bound only while a stream is open (every stored batch
was otherwise a delivery to every gateway process, which threw it away).
"""

from __future__ import annotations

import asyncio
import uuid
from collections import defaultdict
from collections.abc import AsyncIterator, Iterator
from contextlib import contextmanager, suppress
from typing import Any

import orjson
from aio_pika.abc import AbstractChannel, AbstractIncomingMessage, AbstractQueue
from aiohttp import web
from chatbeto.logging import get_logger
from chatbeto.messages import InvalidMessage, LiveEvent, LiveEvents, parse

from chatbeto_gateway.access import ratelimit
from chatbeto_gateway.access.auth import principal_of
from chatbeto_gateway.http.openapi import doc
from chatbeto_gateway.metrics.routes import visible_gpt
from chatbeto_gateway.state import BROKER, SETTINGS

log = get_logger(__name__)
routes = web.RouteTableDef()
ACCEPTED_VERSIONS = frozenset({1})
SUBSCRIBER_BUFFER_MESSAGES = 256
HEARTBEAT_SECONDS = 15.0
# The browser waits this long before reconnecting after the stream ends (EventSource semantics).
RETRY_MS = 1000
# How long a new stream waits for the queue's binding before it says `ready` anyway (a broker
# that is away must not hold the stream; it gets events once the binding is back).
BIND_TIMEOUT_SECONDS = 5.0


class Subscriber:
    """One open stream: the GPT it watches and a bounded buffer of event batches."""

    def __init__(self, gpt_pk: int, project_id: int | None) -> None:
        self.gpt_pk = gpt_pk
        # Set for the built-in GPT read with a project key: only that project's events.
        self.project_id = project_id
        self.queue: asyncio.Queue[list[LiveEvent] | None] = asyncio.Queue(
            SUBSCRIBER_BUFFER_MESSAGES
        )
        self.dropped = 0

    def offer(self, events: list[LiveEvent]) -> None:
        if self.project_id is not None:
            events = [e for e in events if e.project_id == self.project_id]
        if not events:
            return
        try:
            self.queue.put_nowait(events)
        except asyncio.QueueFull:
            self.dropped += len(events)

    def close(self) -> None:
        while True:
            try:
                self.queue.put_nowait(None)
                return
            except asyncio.QueueFull:
                self.queue.get_nowait()  # make room for the end marker


class LiveHub:
    """The process's single live subscription and its in-memory fan-out."""

    def __init__(self) -> None:
        self._subscribers: dict[int, set[Subscriber]] = defaultdict(set)
        self._channel: AbstractChannel | None = None
        self._queue: AbstractQueue | None = None
        self._exchange = ""
        self.queue_name = ""
        self.closed = False
        self._bound = False  # the queue's binding as the broker has it
        self._binding: asyncio.Task[None] | None = None
        self._events_flow = asyncio.Event()  # bound, for the streams open now

    @property
    def subscriber_count(self) -> int:
        return sum(len(s) for s in self._subscribers.values())

    async def start(self, app: web.Application) -> None:
        channel = await app[BROKER].channel()
        await channel.set_qos(prefetch_count=64)
        topology = app[SETTINGS].topology
        queue = await topology.declare_live_queue(channel, uuid.uuid4().hex[:12])
        # Unbound until a stream opens (`_rebind`).
        await queue.unbind(topology.live_exchange)
        self.queue_name = queue.name
        # The robust channel re-declares the queue, its binding (while bound) and this consumer
        # after a broker reconnect.
        await queue.consume(self._on_message, no_ack=True)
        self._channel, self._queue, self._exchange = channel, queue, topology.live_exchange

    async def _on_message(self, message: AbstractIncomingMessage) -> None:
        if not self._subscribers:
            # Every gateway gets every stored batch; parsing one nobody watches cost ~4 % of
            # the ingest hot path.
            return
        try:
            batch = parse(message.body, LiveEvents, LiveEvents.TYPE, ACCEPTED_VERSIONS).data
        except InvalidMessage as exc:
            log.warning("live message ignored", error=str(exc))
            return
        self.dispatch(batch.events)

    def dispatch(self, events: tuple[LiveEvent, ...]) -> None:
        by_gpt: dict[int, list[LiveEvent]] = defaultdict(list)
        for event in events:
            if event.gpt_pk in self._subscribers:
                by_gpt[event.gpt_pk].append(event)
        for gpt_pk, group in by_gpt.items():
            for subscriber in list(self._subscribers.get(gpt_pk, ())):
                subscriber.offer(group)

    @contextmanager
    def subscribe(self, gpt_pk: int, project_id: int | None) -> Iterator[Subscriber]:
        subscriber = Subscriber(gpt_pk, project_id)
        if self.closed:
            subscriber.close()
        self._subscribers[gpt_pk].add(subscriber)
        self._reconcile()
        try:
            yield subscriber
        finally:
            group = self._subscribers.get(gpt_pk)
            if group is not None:
                group.discard(subscriber)
                if not group:
                    del self._subscribers[gpt_pk]
            self._reconcile()

    async def flowing(self) -> None:
        """Until stored events reach this process (the queue is bound), for at most
        `BIND_TIMEOUT_SECONDS`."""
        if self._queue is None:
            return
        with suppress(TimeoutError):
            async with asyncio.timeout(BIND_TIMEOUT_SECONDS):
                await self._events_flow.wait()

    def _reconcile(self) -> None:
        """Bind the queue while anyone watches, unbind it when nobody does (one task at a time,
        so the broker sees the changes in order)."""
        if self._queue is None or (self._binding is not None and not self._binding.done()):
            return
        if bool(self._subscribers) != self._bound:
            self._binding = asyncio.create_task(self._rebind(self._queue))

    async def _rebind(self, queue: AbstractQueue) -> None:
        try:
            while bool(self._subscribers) != self._bound and not self.closed:
                if self._subscribers:
                    await queue.bind(self._exchange)
                    self._bound = True
                    self._events_flow.set()
                else:
                    self._events_flow.clear()
                    await queue.unbind(self._exchange)
                    self._bound = False
        except Exception as exc:  # the broker is away: the next stream to open tries again
            log.warning("live binding not changed", error=type(exc).__name__)

    def end_streams(self) -> None:
        """Graceful shutdown: end every stream (the browsers reconnect to another gateway)."""
        self.closed = True
        for group in self._subscribers.values():
            for subscriber in group:
                subscriber.close()

    async def close(self) -> None:
        self.end_streams()
        if self._binding is not None:
            await asyncio.gather(self._binding, return_exceptions=True)
        if self._channel is not None and not self._channel.is_closed:
            await self._channel.close()


# Kept here rather than in state.py: state.py would have to import this module, which imports it.
LIVE = web.AppKey("live", LiveHub)


async def live_ctx(app: web.Application) -> AsyncIterator[None]:
    hub = LiveHub()
    await hub.start(app)
    app[LIVE] = hub
    yield
    await hub.close()


async def end_live_streams(app: web.Application) -> None:
    hub = app.get(LIVE)
    if hub is not None:
        hub.end_streams()


def sse(event: str, data: Any) -> bytes:
    return b"event: " + event.encode() + b"\ndata: " + orjson.dumps(data) + b"\n\n"


def event_out(event: LiveEvent) -> dict[str, Any]:
    return {
        "id": str(event.id),
        "sesion_id": str(event.sesion_id),
        "usuario_id": event.usuario_id,
        "tipo": event.tipo,
        "latency_ms": event.latency_ms,
        "tokens_entrada": event.tokens_entrada,
        "tokens_salida": event.tokens_salida,
        "timestamp": event.timestamp.isoformat(),
    }


@routes.get("/api/gpts/{gpt_id}/live")
@doc(
    summary="Events of a GPT as they are stored (Server-Sent Events)",
    tags=("metrics",),
    responses={200: "", 401: "", 404: ""},
    content_type="text/event-stream",
)
async def live_events(request: web.Request) -> web.StreamResponse:
    principal = principal_of(request)
    gpt = await visible_gpt(request, principal, request.match_info["gpt_id"])
    project = principal.project_id if gpt.builtin else None
    response = web.StreamResponse(
        headers={
            "Content-Type": "text/event-stream",
            "Cache-Control": "no-cache",
            # Reverse proxies must pass events through as they come.
            "X-Accel-Buffering": "no",
        }
    )
    hub = request.app[LIVE]
    with hub.subscribe(gpt.pk, project) as subscriber:
        await hub.flowing()  # `ready` means: events stored from now on are sent
        ratelimit.add_headers(request, response)
        await response.prepare(request)
        try:
            await response.write(
                f"retry: {RETRY_MS}\n".encode() + sse("ready", {"gpt_id": gpt.gpt_id})
            )
            while True:
                try:
                    batch = await asyncio.wait_for(subscriber.queue.get(), HEARTBEAT_SECONDS)
                except TimeoutError:
                    await response.write(b": ping\n\n")
                    continue
                if batch is None:
                    break
                await response.write(
                    sse("events", {"gpt_id": gpt.gpt_id, "events": [event_out(e) for e in batch]})
                )
        except (ConnectionResetError, ConnectionError):
            pass  # the browser went away
    return response
