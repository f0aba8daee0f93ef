"""The metrics-ingest worker: many broker messages, one transaction, then ack them all."""

from __future__ import annotations

from collections.abc import Sequence

import asyncpg
from aio_pika.abc import AbstractIncomingMessage
from chatbeto import topology
from chatbeto.logging import get_logger
from chatbeto.messages import EventRecord, MetricsBatch, SessionRecord, parse
from chatbeto.observability import ROWS_STORED
from chatbeto.service import Service, WorkerRuntime
from chatbeto.settings import MetricsIngestSettings

from chatbeto_metrics_ingest import repo
from chatbeto_metrics_ingest.live import LivePublisher

log = get_logger(__name__)
ACCEPTED_VERSIONS = frozenset({1})


def decode(message: AbstractIncomingMessage) -> MetricsBatch:
    return parse(message.body, MetricsBatch, MetricsBatch.TYPE, ACCEPTED_VERSIONS).data


class MetricsIngest(Service):
    settings: MetricsIngestSettings

    def __init__(self, settings: MetricsIngestSettings) -> None:
        super().__init__(settings)
        self.live = LivePublisher(None, settings.topology)

    async def setup(self, runtime: WorkerRuntime) -> None:
        self.live = LivePublisher(runtime.connection, self.settings.topology)
        runtime.on_close(self.live.close)
        runtime.consume_batches(
            topology.METRICS_INGEST,
            self.handle,
            prefetch=self.settings.ingest_prefetch,
            max_batch=self.settings.ingest_prefetch,
            max_tries=self.settings.ingest_max_tries,
        )

    async def handle(self, messages: Sequence[AbstractIncomingMessage]) -> None:
        sessions: list[SessionRecord] = []
        events: list[EventRecord] = []
        for message in messages:
            batch = decode(message)
            sessions.extend(batch.sessions)
            events.extend(batch.events)
        stored: list[asyncpg.Record] = []
        async with self.pool.acquire() as conn, conn.transaction():
            new_sessions, new_events = await repo.store(conn, sessions, events, stored)
        ROWS_STORED.labels("sessions").inc(new_sessions)
        ROWS_STORED.labels("events").inc(new_events)
        if stored:
            await self.live.publish(stored)
