"""Answers to the gateway: transient messages on the replies exchange, routed by `reply_to` to
the one gateway process waiting for them (its exclusive queue), matched by `correlation_id`."""

from __future__ import annotations

import aio_pika
from aio_pika.abc import AbstractChannel, AbstractExchange, AbstractRobustConnection
from chatbeto.messages import OpenAIReply, envelope
from chatbeto.topology import Topology


class Replies:
    def __init__(self, connection: AbstractRobustConnection, topo: Topology) -> None:
        self._connection = connection
        self._topology = topo
        self._channel: AbstractChannel | None = None
        self._exchange: AbstractExchange | None = None

    async def start(self) -> None:
        # No confirms: a reply is worth nothing once its gateway stopped waiting, and the
        # request itself is only acked after the reply left.
        self._channel = await self._connection.channel(publisher_confirms=False)
        self._exchange = await self._channel.get_exchange(
            self._topology.replies_exchange, ensure=False
        )

    async def send(self, reply_to: str, correlation_id: str, reply: OpenAIReply) -> None:
        assert self._exchange is not None
        env = envelope(reply)
        await self._exchange.publish(
            aio_pika.Message(
                body=env.model_dump_json(exclude_none=True).encode(),
                content_type="application/json",
                delivery_mode=aio_pika.DeliveryMode.NOT_PERSISTENT,
                correlation_id=correlation_id,
                type=f"{env.type}.v{env.version}",
            ),
            routing_key=reply_to,
            mandatory=False,
        )

    async def close(self) -> None:
        if self._channel is not None and not self._channel.is_closed:
            await self._channel.close()
