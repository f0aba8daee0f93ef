"""Answers to the gateway: transient messages on the replies exchange, routed by `reply_to` to
the one gateway process waiting for them (its exclusive queue), matched by `correlation_id`."""

from __future__ import annotations

import asyncio

from aio_pika.abc import AbstractChannel, AbstractRobustConnection
from chatbeto.messages import OpenAIReply, envelope, to_amqp
from chatbeto.topology import Topology


class Replies:
    def __init__(self, connection: AbstractRobustConnection, topo: Topology) -> None:
        self._connection = connection
        self._topology = topo
        self._channel: AbstractChannel | None = None

    async def start(self) -> None:
        # No confirms: a reply is worth nothing once its gateway stopped waiting, and the
        # request itself is only acked after the reply left.
        self._channel = await self._connection.channel(publisher_confirms=False)

    async def send(self, reply_to: str, correlation_id: str, reply: OpenAIReply) -> None:
        assert self._channel is not None
        message = to_amqp(envelope(reply), persistent=False, correlation_id=correlation_id)
        # `wait=False`: queue the frames and go on. aio-pika's `publish` holds the channel's
        # lock until each frame is written and drained, which serialises every reply of this
        # process behind a slow socket; frames still leave in order, so chunks stay ordered.
        channel = await self._channel.get_underlay_channel()
        await channel.basic_publish(
            message.body,
            exchange=self._topology.replies_exchange,
            routing_key=reply_to,
            properties=message.properties,
            wait=False,  # type: ignore[call-arg]  # aiormq.abc lacks it; the channel has it
        )
        # One loop turn: the connection's writer task (woken by the frames) writes them now,
        # before this caller goes on to its next step (the metrics event, a few hundred µs of
        # CPU): the answer leaves first.
        await asyncio.sleep(0)

    async def close(self) -> None:
        if self._channel is not None and not self._channel.is_closed:
            await self._channel.close()
