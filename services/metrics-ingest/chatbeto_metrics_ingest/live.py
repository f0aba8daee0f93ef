"""After a commit, tell the gateways' live dashboards what was stored.

Best effort by design: the messages are transient, unconfirmed and short-lived, and any failure
is logged and swallowed — the rows are already committed, so a live feed problem must never
fail (and so redeliver) an ingest batch.
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
from chatbeto.logging import REQUEST_ID, get_logger
from chatbeto.messages import LiveEvents
from chatbeto.topology import Topology

log = get_logger(__name__)
PUBLISH_TIMEOUT_SECONDS = 1.0
# A live event nobody took within this long is stale: the broker drops it.
LIVE_TTL_MS = 10_000


def live_message(rows: Sequence[Mapping[str, Any]]) -> aio_pika.Message:
    """A `live.events` envelope of these rows, each already a `LiveEvent`'s fields (as
    `repo.store_events` returns them). Serialised by orjson straight from the rows: building a
    pydantic model per event first was a twentieth of the worker's CPU."""
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
        self.failures = 0

    async def _ensure(self) -> AbstractExchange:
        if self._exchange is None or self._channel is None or self._channel.is_closed:
            assert self._connection is not None
            # No publisher confirms: nobody waits for a live event. Not mandatory either: with no
            # dashboard open nothing is bound, and a returned message would be logged whole.
            self._channel = await self._connection.channel(publisher_confirms=False)
            self._exchange = await self._channel.get_exchange(
                self._topology.live_exchange, ensure=False
            )
        return self._exchange

    async def publish(self, rows: Sequence[Mapping[str, Any]]) -> None:
        try:
            exchange = await asyncio.wait_for(self._ensure(), PUBLISH_TIMEOUT_SECONDS)
            await asyncio.wait_for(
                exchange.publish(live_message(rows), routing_key="", mandatory=False),
                PUBLISH_TIMEOUT_SECONDS,
            )
        except asyncio.CancelledError:
            raise
        except Exception as exc:
            self.failures += 1
            self._exchange = None
            log.warning("live publish failed", error=f"{type(exc).__name__}: {exc}")

    async def close(self) -> None:
        if self._channel is not None and not self._channel.is_closed:
            try:
                await self._channel.close()
            except Exception as exc:
                log.debug("live channel close failed", error=str(exc))
