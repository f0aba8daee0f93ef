"""Group commit (`chatbeto.broker.GroupPublisher`) against the real broker: callers that arrive
while a publish is in flight ride the next message, which starts before the first is confirmed
once enough of them wait.

The confirms are real; the test holds their return (`HeldPublisher`) instead of hoping that a
quorum queue's fsync outlasts a number of loop turns, which a loaded machine does not promise."""

from __future__ import annotations

import asyncio
from collections.abc import Sequence
from typing import Any

import aio_pika
from chatbeto.broker import PUBLISH_TIMEOUT_SECONDS, GroupPublisher, Publisher, connect
from chatbeto.messages import MetricsBatch, Outgoing, envelope, to_amqp
from chatbeto.topology import Topology


class HeldPublisher(Publisher):
    """The real publish and its confirm, whose return waits until `release` is set."""

    def __init__(self, *args: Any) -> None:
        super().__init__(*args)
        self.release = asyncio.Event()
        self.release.set()

    async def publish(
        self,
        message: aio_pika.Message | Outgoing,
        routing_key: str,
        *,
        exchange: str | None = None,
        timeout_seconds: float = PUBLISH_TIMEOUT_SECONDS,
    ) -> None:
        await super().publish(
            message, routing_key, exchange=exchange, timeout_seconds=timeout_seconds
        )
        await self.release.wait()


async def _until(condition: Any, turns: int = 1000) -> None:
    """Loop turns until `condition()`: what it waits for needs no I/O, only tasks to run."""
    for _ in range(turns):
        if condition():
            return
        await asyncio.sleep(0)
    raise AssertionError("not reached within the loop turns")


async def test_sixteen_waiting_callers_start_a_second_publish(
    amqp_url: str, namespace: str
) -> None:
    topo = Topology(namespace)
    connection = await connect(amqp_url)
    try:
        channel = await connection.channel()
        await topo.declare(channel)
        await channel.close()
        sizes: list[int] = []

        def build(items: Sequence[Any]) -> aio_pika.Message:
            sizes.append(len(items))
            return to_amqp(envelope(MetricsBatch.trusted()))

        publisher = HeldPublisher(connection, topo)
        group = GroupPublisher(publisher, "metrics.batch", build)
        await group.submit([0])  # opens the channel
        publisher.release.clear()  # from here on, no publish returns until the test says so
        first = asyncio.create_task(group.submit([1]))
        await _until(lambda: group._in_flight == 1 and not group._forming)
        async with asyncio.TaskGroup() as tasks:
            waiting = [tasks.create_task(group.submit([n])) for n in range(15)]
            await _until(lambda: len(group._pending) == 15)
            assert group._in_flight == 1  # 15 waiting: they wait for the confirm in flight
            waiting.append(tasks.create_task(group.submit([15])))
            await _until(lambda: len(group._pending) == 16 or group._in_flight == 2)
            # The sixteenth starts the next publish before the first one returned.
            assert group._in_flight == 2
            assert not first.done()
            publisher.release.set()
        await first
        assert all(task.done() for task in waiting)
        assert sizes == [1, 1, 16]
        await group.close()
    finally:
        await connection.close()
