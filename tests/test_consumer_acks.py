"""Acks of messages that finish together share one `multiple` frame, and never cover a message
that is still in hand (it returns to the queue when its consumer goes away unfinished)."""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import Sequence

import aio_pika
from aio_pika.abc import AbstractIncomingMessage, AbstractRobustConnection
from chatbeto.broker import Publisher
from chatbeto.consumer import BatchConsumer, ConcurrentConsumer
from chatbeto.topology import OPENAI_REQUESTS, Topology, WorkQueue

from tests.conftest import wait_for

ROUTING_KEY = "openai.request.t"


async def publish(broker: AbstractRobustConnection, topo: Topology, bodies: Sequence[str]) -> None:
    publisher = Publisher(broker, topo)
    for body in bodies:
        await publisher.publish(
            aio_pika.Message(body.encode(), message_id=str(uuid.uuid4())), ROUTING_KEY
        )
    await publisher.close()


async def queued(broker: AbstractRobustConnection, queue: WorkQueue) -> int:
    channel = await broker.channel()
    try:
        declared = await channel.declare_queue(queue.name, passive=True)
        return int(declared.declaration_result.message_count or 0)
    finally:
        await channel.close()


async def test_messages_finishing_together_share_one_ack(
    broker: AbstractRobustConnection, namespace: str
) -> None:
    topo = Topology(namespace)
    queue = topo.queue(OPENAI_REQUESTS)
    release = asyncio.Event()

    async def handler(message: AbstractIncomingMessage) -> None:
        await release.wait()

    consumer = ConcurrentConsumer(broker, topo, queue, handler, concurrency=16)
    await consumer.start()
    await publish(broker, topo, [f"m{n}" for n in range(8)])

    async def all_in_hand() -> bool:
        return consumer.in_flight == 8

    await wait_for(all_in_hand)
    release.set()  # all eight finish in the same loop turn

    async def all_acked() -> bool:
        return consumer.stats.handled == 8

    await wait_for(all_acked)
    assert (consumer.acks.acked, consumer.acks.frames) == (8, 1)
    await consumer.close()
    assert await queued(broker, queue) == 0


async def test_an_ack_never_covers_a_message_in_hand(
    broker: AbstractRobustConnection, namespace: str
) -> None:
    topo = Topology(namespace)
    queue = topo.queue(OPENAI_REQUESTS)
    release = asyncio.Event()
    never = asyncio.Event()

    async def handler(message: AbstractIncomingMessage) -> None:
        if message.body == b"held":
            await never.wait()
        await release.wait()

    consumer = ConcurrentConsumer(broker, topo, queue, handler, concurrency=16)
    await consumer.start()
    # The oldest delivery stays in hand; the five after it finish together.
    await publish(broker, topo, ["held", *(f"m{n}" for n in range(5))])

    async def all_in_hand() -> bool:
        return consumer.in_flight == 6

    await wait_for(all_in_hand)
    release.set()

    async def five_acked() -> bool:
        return consumer.stats.handled == 5

    await wait_for(five_acked)
    assert consumer.acks.acked == 5
    await consumer.close(drain_timeout_seconds=0.5)  # "held" is cancelled, never acked
    assert await queued(broker, queue) == 1


async def test_a_batch_is_acked_in_one_frame(
    broker: AbstractRobustConnection, namespace: str
) -> None:
    topo = Topology(namespace)
    queue = topo.queue(OPENAI_REQUESTS)
    await publish(broker, topo, [f"m{n}" for n in range(20)])
    batches: list[int] = []

    async def handler(messages: Sequence[AbstractIncomingMessage]) -> None:
        batches.append(len(messages))

    consumer = BatchConsumer(broker, topo, queue, handler, max_wait_seconds=0.2)
    await consumer.start()

    async def all_acked() -> bool:
        return consumer.stats.handled == 20

    await wait_for(all_acked)
    assert consumer.acks.acked == 20
    assert consumer.acks.frames == len(batches) < 20
    await consumer.close()
    assert await queued(broker, queue) == 0
