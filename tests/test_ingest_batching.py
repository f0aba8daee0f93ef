"""A batch of metrics-ingest is what was delivered while the previous one was stored: the
consumer never holds a batch back waiting for more messages (that idled Postgres every batch)."""

from __future__ import annotations

import asyncio
from collections.abc import Sequence
from typing import cast

from aio_pika.abc import AbstractIncomingMessage, AbstractRobustConnection
from chatbeto.consumer import BatchConsumer
from chatbeto.topology import METRICS_INGEST, Topology
from chatbeto_metrics_ingest.consumer import MetricsIngest


async def _nothing(messages: Sequence[AbstractIncomingMessage]) -> None:
    pass


async def _next_batch(consumer: BatchConsumer) -> list[object]:
    """The next batch when one message is in hand and a second arrives 50 ms later."""
    first, second = object(), object()
    buffer = consumer._buffer  # the delivered messages, as _on_message queues them
    buffer.put_nowait(cast(AbstractIncomingMessage, first))
    asyncio.get_running_loop().call_later(
        0.05, buffer.put_nowait, cast(AbstractIncomingMessage, second)
    )
    return list(await consumer._next_batch())


async def test_a_batch_without_a_gathering_wait_is_what_was_delivered(
    broker: AbstractRobustConnection, namespace: str
) -> None:
    topo = Topology(namespace)
    queue = topo.queue(METRICS_INGEST)
    waiting = BatchConsumer(broker, topo, queue, _nothing, max_wait_seconds=5)
    eager = BatchConsumer(broker, topo, queue, _nothing, max_wait_seconds=0)
    assert len(await _next_batch(waiting)) == 2  # waited for the second
    assert len(await _next_batch(eager)) == 1  # took what it had


async def test_metrics_ingest_never_waits_for_a_batch_to_fill(ingest: MetricsIngest) -> None:
    assert ingest.runtime is not None
    (consumer,) = ingest.runtime.consumers
    assert isinstance(consumer, BatchConsumer)
    assert consumer.max_wait_seconds == 0
