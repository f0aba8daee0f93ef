"""After a commit, tell the gateways' live dashboards what was stored.

Best effort by design: the messages are transient and short-lived, and any failure is logged and
swallowed — the rows are already committed, so a live feed problem must never fail (and so
redeliver) an ingest batch.

Only worked for while someone watches: a gateway binds its live queue only while a stream is
open (chatbeto_gateway.metrics.live), so a mandatory publish that the broker returns says nobody
watches. Then the next batch first sends an empty message, and builds its events' message only if
that one was routed: building every stored event's live row for nobody was a sixth of the
worker's CPU per event.
"""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import Mapping, Sequence
from datetime import UTC, datetime
from typing import Any

import aio_pika
import orjson
from aio_pika.abc import AbstractChannel, AbstractExchange, AbstractRobustConnection
from aio_pika.exceptions import PublishError
from chatbeto.logging import REQUEST_ID, get_logger
from chatbeto.messages import EventRecord, LiveEvents
from chatbeto.topology import Topology

from chatbeto_metrics_ingest.repo import SessionInfo

log = get_logger(__name__)
PUBLISH_TIMEOUT_SECONDS = 1.0
# A live event nobody took within this long is stale: the broker drops it.
LIVE_TTL_MS = 10_000


def live_rows(
    events: Sequence[EventRecord], sessions: Mapping[uuid.UUID, SessionInfo]
) -> list[dict[str, Any]]:
    """Stored events as the live feed shows them (a `LiveEvent`'s fields; the GPT, user and
    project from their sessions)."""
    return [
        {
            "id": e.id,
            "sesion_id": e.sesion_id,
            "gpt_pk": (s := sessions[e.sesion_id]).gpt_pk,
            "project_id": s.project_id,
            "usuario_id": s.usuario_id,
            "tipo": e.tipo,
            "latency_ms": e.latency_ms,
            "tokens_entrada": e.tokens_entrada,
            "tokens_salida": e.tokens_salida,
            "timestamp": e.timestamp,
        }
        for e in events
    ]


def live_message(rows: Sequence[Mapping[str, Any]]) -> aio_pika.Message:
    """A `live.events` envelope of these rows, each already a `LiveEvent`'s fields (see
    `live_rows`). Serialised by orjson straight from the rows: building a pydantic model per
    event first was a twentieth of the worker's CPU."""
    message_id = uuid.uuid4()
    body = orjson.dumps(
        {
            "type": LiveEvents.TYPE,
            "version": LiveEvents.VERSION,
            "message_id": message_id,
            "occurred_at": datetime.now(UTC),
            "request_id": REQUEST_ID.get(),
            "data": {"events": rows},
        }
    )
    return aio_pika.Message(
        body=body,
        content_type="application/json",
        delivery_mode=aio_pika.DeliveryMode.NOT_PERSISTENT,
        message_id=str(message_id),
        type=f"{LiveEvents.TYPE}.v{LiveEvents.VERSION}",
        expiration=LIVE_TTL_MS / 1000,
    )


class LivePublisher:
    def __init__(self, connection: AbstractRobustConnection | None, topology: Topology) -> None:
        self._connection = connection
        self._topology = topology
        self._channel: AbstractChannel | None = None
        self._exchange: AbstractExchange | None = None
        # Whether the last message reached a gateway's queue (unknown at start: ask).
        self.watched = False
        self.unwatched_batches = 0  # stored batches no gateway was watching (nothing built)
        self.failures = 0

    async def _ensure(self) -> AbstractExchange:
        if self._exchange is None or self._channel is None or self._channel.is_closed:
            assert self._connection is not None
            # Confirms, mandatory publishes and returns raised: how `_routed` learns whether
            # any gateway's queue is bound (without confirms a returned message is logged whole).
            self._channel = await self._connection.channel(
                publisher_confirms=True, on_return_raises=True
            )
            self._exchange = await self._channel.get_exchange(
                self._topology.live_exchange, ensure=False
            )
        return self._exchange

    async def publish(
        self, events: Sequence[EventRecord], sessions: Mapping[uuid.UUID, SessionInfo]
    ) -> None:
        """These stored events to the live dashboards, if any is open."""
        try:
            exchange = await asyncio.wait_for(self._ensure(), PUBLISH_TIMEOUT_SECONDS)
            # Nobody watched at the last message: ask with an empty one (a round trip, no work
            # per event). A stream opened after this misses this batch, as it would miss a
            # message published just before its queue was bound.
            if not self.watched:
                self.watched = await self._routed(exchange, live_message([]))
            if self.watched:
                rows = live_rows(events, sessions)
                self.watched = await self._routed(exchange, live_message(rows))
            else:
                self.unwatched_batches += 1
        except asyncio.CancelledError:
            raise
        except Exception as exc:
            self.failures += 1
            self._exchange = None
            log.warning("live publish failed", error=f"{type(exc).__name__}: {exc}")

    @staticmethod
    async def _routed(exchange: AbstractExchange, message: aio_pika.Message) -> bool:
        """Publish; whether the broker routed it to a queue (a gateway with a stream open)."""
        try:
            await asyncio.wait_for(
                exchange.publish(message, routing_key="", mandatory=True),
                PUBLISH_TIMEOUT_SECONDS,
            )
        except PublishError:
            return False
        return True

    async def close(self) -> None:
        if self._channel is not None and not self._channel.is_closed:
            try:
                await self._channel.close()
            except Exception as exc:
                log.debug("live channel close failed", error=str(exc))
