"""The metrics-ingest worker: many broker messages, one transaction, then ack them all."""

from __future__ import annotations

from collections.abc import Sequence

import asyncpg
from aio_pika.abc import AbstractIncomingMessage, AbstractRobustConnection
from chatbeto import health, topology
from chatbeto.broker import connect
from chatbeto.consumer import BatchConsumer
from chatbeto.db import create_pool, mask_dsn
from chatbeto.logging import get_logger
from chatbeto.messages import EventRecord, MetricsBatch, SessionRecord, parse
from chatbeto.observability import ROWS_STORED
from chatbeto.settings import MetricsIngestSettings

from chatbeto_metrics_ingest import repo
from chatbeto_metrics_ingest.live import LivePublisher

log = get_logger(__name__)
ACCEPTED_VERSIONS = frozenset({1})


def decode(message: AbstractIncomingMessage) -> MetricsBatch:
    return parse(message.body, MetricsBatch, MetricsBatch.TYPE, ACCEPTED_VERSIONS).data


class MetricsIngest:
    def __init__(self, settings: MetricsIngestSettings) -> None:
        self.settings = settings
        self.pool: asyncpg.Pool | None = None
        self.connection: AbstractRobustConnection | None = None
        self.consumer: BatchConsumer | None = None
        self.live = LivePublisher(None, settings.topology)

    def checks(self) -> dict[str, health.Check]:
        return {
            "database": health.postgres_check(lambda: self.pool),
            "broker": health.broker_check(lambda: self.connection),
        }

    async def start(self) -> None:
        log.info("connecting", dsn=mask_dsn(self.settings.database_url))
        self.pool = await create_pool(self.settings.database_url, min_size=1, max_size=4)
        self.connection = await connect(self.settings.amqp_url, attempts=30)
        self.consumer = BatchConsumer(
            self.connection,
            self.settings.topology,
            self.settings.topology.queue(topology.METRICS_INGEST),
            self.handle,
            prefetch=self.settings.ingest_prefetch,
            max_batch=self.settings.ingest_prefetch,
            max_tries=self.settings.ingest_max_tries,
        )
        self.live = LivePublisher(self.connection, self.settings.topology)
        await self.consumer.start()

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

    async def run(self) -> None:
        assert self.consumer is not None
        await self.consumer.wait()

    async def close(self) -> None:
        if self.consumer is not None:
            await self.consumer.close()
        await self.live.close()
        if self.connection is not None:
            await self.connection.close()
        if self.pool is not None:
            await self.pool.close()
