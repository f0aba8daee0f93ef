"""After a commit, tell the gateways' live dashboards what was stored.

Best effort by design: the messages are transient, unconfirmed and short-lived, and any failure
is logged and swallowed — the rows are already committed, so a live feed problem must never
fail (and so redeliver) an ingest batch.
"""

from __future__ import annotations

import asyncio
from collections.abc import Mapping, Sequence
from typing import Any

import aio_pika
from aio_pika.abc import AbstractChannel, AbstractExchange, AbstractRobustConnection
from chatbeto.logging import get_logger
from chatbeto.messages import LiveEvent, LiveEvents, envelope
from chatbeto.topology import Topology

log = get_logger(__name__)
PUBLISH_TIMEOUT_SECONDS = 1.0
# A live event nobody took within this long is stale: the broker drops it.
LIVE_TTL_MS = 10_000


def live_message(rows: Sequence[Mapping[str, Any]]) -> aio_pika.Message:
    events = tuple(
        LiveEvent.model_construct(
            id=r["id"],
            sesion_id=r["session_id"],
            gpt_pk=r["gpt_pk"],
            project_id=r["project_id"],
            usuario_id=r["usuario_id"],
            tipo=r["tipo"],
            latency_ms=r["latency_ms"],
            tokens_entrada=r["tokens_entrada"],
            tokens_salida=r["tokens_salida"],
            timestamp=r["ts"],
        )
        for r in rows
    )
    env = envelope(LiveEvents.model_construct(events=events))
    return aio_pika.Message(
        body=env.model_dump_json().encode(),
        content_type="application/json",
        delivery_mode=aio_pika.DeliveryMode.NOT_PERSISTENT,
        message_id=str(env.message_id),
        type=f"{env.type}.v{env.version}",
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
