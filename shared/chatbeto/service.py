"""The life of a worker process: start, serve health, run until SIGTERM, drain, close."""

from __future__ import annotations

import asyncio
import signal
from collections.abc import Sequence
from typing import Protocol

import asyncpg
from aio_pika.abc import AbstractIncomingMessage, AbstractRobustConnection

from chatbeto import health
from chatbeto.broker import connect
from chatbeto.consumer import BatchConsumer
from chatbeto.db import create_pool, mask_dsn
from chatbeto.logging import get_logger
from chatbeto.settings import BaseServiceSettings

log = get_logger(__name__)


class Worker(Protocol):
    async def start(self) -> None: ...
    async def run(self) -> None: ...
    async def close(self) -> None: ...
    def checks(self) -> dict[str, health.Check]: ...


async def serve_worker(worker: Worker, host: str, port: int) -> None:
    loop = asyncio.get_running_loop()
    stop = asyncio.Event()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    await worker.start()
    runner = await health.serve(host, port, worker.checks())
    log.info("worker started", health_port=port)
    running = asyncio.create_task(worker.run())
    stopper = asyncio.create_task(stop.wait())
    await asyncio.wait({running, stopper}, return_when=asyncio.FIRST_COMPLETED)
    log.info("stopping: draining in-flight work")
    await worker.close()
    stopper.cancel()
    await asyncio.gather(running, return_exceptions=True)
    await runner.cleanup()
    log.info("worker stopped")


def run_worker(worker: Worker, host: str, port: int) -> int:
    try:
        import uvloop

        uvloop.install()
    except ImportError:  # pragma: no cover
        pass
    asyncio.run(serve_worker(worker, host, port))
    return 0


class QueueWorker:
    """A worker that consumes one work queue in batches, with its own pool and broker link.

    Subclasses set QUEUE (a topology base name), implement `handle`, and may extend `start` /
    `close` for resources of their own.
    """

    QUEUE: str
    # Health check names; a worker sharing a process with another gives its own prefix.
    CHECK_PREFIX = ""

    def __init__(
        self,
        settings: BaseServiceSettings,
        *,
        prefetch: int,
        max_batch: int,
        max_tries: int,
        pool_size: int = 4,
    ) -> None:
        self.settings = settings
        self.pool: asyncpg.Pool | None = None
        self.connection: AbstractRobustConnection | None = None
        self.consumer: BatchConsumer | None = None
        self._prefetch = prefetch
        self._max_batch = max_batch
        self.max_tries = max_tries
        self._pool_size = pool_size

    def checks(self) -> dict[str, health.Check]:
        return {
            f"{self.CHECK_PREFIX}database": health.postgres_check(lambda: self.pool),
            f"{self.CHECK_PREFIX}broker": health.broker_check(lambda: self.connection),
        }

    async def handle(self, messages: Sequence[AbstractIncomingMessage]) -> None:
        raise NotImplementedError

    async def start(self) -> None:
        log.info("connecting", dsn=mask_dsn(self.settings.database_url), queue=self.QUEUE)
        self.pool = await create_pool(
            self.settings.database_url, min_size=1, max_size=self._pool_size
        )
        self.connection = await connect(self.settings.amqp_url, attempts=30)
        self.consumer = BatchConsumer(
            self.connection,
            self.settings.topology,
            self.settings.topology.queue(self.QUEUE),
            self.handle,
            prefetch=self._prefetch,
            max_batch=self._max_batch,
            max_tries=self.max_tries,
        )
        await self.consumer.start()

    async def run(self) -> None:
        assert self.consumer is not None
        await self.consumer.wait()

    async def close(self) -> None:
        """Drain the consumer first (in-flight work finishes), then close the links."""
        if self.consumer is not None:
            await self.consumer.close()
        await self.close_resources()
        if self.connection is not None:
            await self.connection.close()
        if self.pool is not None:
            await self.pool.close()

    async def close_resources(self) -> None:
        """Resources of a subclass, closed after the consumer and before the links."""
