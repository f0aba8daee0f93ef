"""The metrics-ingest worker: many broker messages, one transaction, then ack them all."""

from __future__ import annotations

from collections.abc import Sequence

import asyncpg
from aio_pika.abc import AbstractIncomingMessage
from chatbeto import topology
from chatbeto.logging import get_logger
from chatbeto.messages import EventRecord, MetricsBatch, SessionRecord, parse
from chatbeto.observability import ROWS_STORED
from chatbeto.service import QueueWorker
from chatbeto.settings import MetricsIngestSettings

from chatbeto_metrics_ingest import repo
from chatbeto_metrics_ingest.live import LivePublisher

log = get_logger(__name__)
ACCEPTED_VERSIONS = frozenset({1})


def decode(message: AbstractIncomingMessage) -> MetricsBatch:
    return parse(message.body, MetricsBatch, MetricsBatch.TYPE, ACCEPTED_VERSIONS).data


class MetricsIngest(QueueWorker):
    settings: MetricsIngestSettings
    QUEUE = topology.METRICS_INGEST

    def __init__(self, settings: MetricsIngestSettings) -> None:
        super().__init__(
            settings,
            prefetch=settings.ingest_prefetch,
            max_batch=settings.ingest_prefetch,
            max_tries=settings.ingest_max_tries,
        )
        self.live = LivePublisher(None, settings.topology)

    async def start(self) -> None:
        await super().start()
        self.live = LivePublisher(self.connection, self.settings.topology)

    async def handle(self, messages: Sequence[AbstractIncomingMessage]) -> None:
        sessions: list[SessionRecord] = []
        events: list[EventRecord] = []
        for message in messages:
            batch = decode(message)
            sessions.extend(batch.sessions)
            events.extend(batch.events)
        assert self.pool is not None
        stored: list[asyncpg.Record] = []
        async with self.pool.acquire() as conn, conn.transaction():
            new_sessions, new_events = await repo.store(conn, sessions, events, stored)
        ROWS_STORED.labels("sessions").inc(new_sessions)
        ROWS_STORED.labels("events").inc(new_events)
        if stored:
            await self.live.publish(stored)

    async def close_resources(self) -> None:
        await self.live.close()
