"""The openai-worker process: request/reply answers and sync jobs, many in flight at once."""

from __future__ import annotations

from collections.abc import Sequence

import asyncpg
from aio_pika.abc import AbstractRobustConnection
from chatbeto import health, session_ids, topology
from chatbeto.broker import Publisher, connect
from chatbeto.consumer import ConcurrentConsumer
from chatbeto.db import create_pool, mask_dsn
from chatbeto.logging import get_logger
from chatbeto.service import Worker
from chatbeto.settings import OpenAIWorkerSettings
from openai import AsyncOpenAI

from chatbeto_openai_worker import upstream
from chatbeto_openai_worker.handler import RequestHandler
from chatbeto_openai_worker.replies import Replies
from chatbeto_openai_worker.sync import SyncHandler
from chatbeto_openai_worker.usage_events import UsageEvents

log = get_logger(__name__)
SYNC_CONCURRENCY = 2
POOL_MAX_SIZE = 20
# A request is retried (ladder) only for our own failures (database, broker); few tries, since
# the gateway waits at most OPENAI_TIMEOUT for it.
REQUEST_MAX_TRIES = 3


class OpenAIWorker:
    def __init__(self, settings: OpenAIWorkerSettings, companions: Sequence[Worker] = ()) -> None:
        self.settings = settings
        # Other workers that share this process and its lifecycle (the import worker).
        self.companions = list(companions)
        self.pool: asyncpg.Pool | None = None
        self.connection: AbstractRobustConnection | None = None
        self.client: AsyncOpenAI | None = None
        self.replies: Replies | None = None
        self.publisher: Publisher | None = None
        self.usage: UsageEvents | None = None
        self.requests: ConcurrentConsumer | None = None
        self.jobs: ConcurrentConsumer | None = None
        self.handler: RequestHandler | None = None

    def checks(self) -> dict[str, health.Check]:
        checks = {
            "database": health.postgres_check(lambda: self.pool),
            "broker": health.broker_check(lambda: self.connection),
        }
        for companion in self.companions:
            checks.update(companion.checks())
        return checks

    async def start(self) -> None:
        settings = self.settings
        log.info("connecting", dsn=mask_dsn(settings.database_url))
        # Up to 20 requests store at once; the rest of the in-flight ones are waiting upstream.
        self.pool = await create_pool(settings.database_url, min_size=2, max_size=POOL_MAX_SIZE)
        session_key = await session_ids.load_key(self.pool)
        gpt_pk = await self.pool.fetchval("SELECT pk FROM gpts WHERE builtin ORDER BY pk LIMIT 1")
        if gpt_pk is None:
            raise RuntimeError("the built-in GPT `chatbeto` is missing: run `chatbeto migrate`")
        self.client = upstream.make_client(settings)
        if self.client is None:
            log.warning("OPENAI_API_KEY is not set: model calls will answer 503")
        self.connection = await connect(settings.amqp_url, attempts=30)
        topo = settings.topology
        self.replies = Replies(self.connection, topo)
        self.publisher = Publisher(self.connection, topo)
        self.usage = UsageEvents(self.publisher, int(gpt_pk))
        handler = self.handler = RequestHandler(
            settings, self.pool, self.client, self.replies, self.usage, session_key
        )
        self.requests = ConcurrentConsumer(
            self.connection,
            topo,
            topo.queue(topology.OPENAI_REQUESTS),
            handler.handle,
            concurrency=settings.openai_worker_concurrency,
            max_tries=REQUEST_MAX_TRIES,
        )
        self.jobs = ConcurrentConsumer(
            self.connection,
            topo,
            topo.queue(topology.OPENAI_JOBS),
            SyncHandler(self.pool, self.client).handle,
            concurrency=SYNC_CONCURRENCY,
        )
        await self.requests.start()  # declares the topology, so it goes first
        await self.replies.start()
        await self.jobs.start()
        for companion in self.companions:
            await companion.start()

    async def run(self) -> None:
        assert self.requests is not None
        await self.requests.wait()

    async def close(self) -> None:
        for companion in self.companions:
            await companion.close()
        for consumer in (self.requests, self.jobs):
            if consumer is not None:
                await consumer.close()
        if self.handler is not None:
            await self.handler.close()
        if self.usage is not None:
            await self.usage.close()
        if self.publisher is not None:
            await self.publisher.close()
        if self.replies is not None:
            await self.replies.close()
        if self.connection is not None:
            await self.connection.close()
        if self.client is not None:
            await self.client.close()
        if self.pool is not None:
            await self.pool.close()
