"""One worker runtime per process: pool, broker connection, health server, consumers, drain.

A worker process is one `WorkerRuntime` hosting one or more `Service`s. Each service sets
itself up on the runtime (`setup`): it opens its own resources (closed after its consumers
drained, via `on_close`) and registers consumers (`consume_batches` / `consume_each`). The
runtime owns what they share: the asyncpg pool, the robust broker connection, one confirmed
publisher (retries), the health server whose `/readyz` is 503 unless Postgres answers and every
consumer is registered on the broker, and the shutdown: SIGTERM stops taking messages, drains
what is in hand, closes, and logs per queue how many messages were handled, retried and
dead-lettered. A second signal, or a shutdown that outlives its budget, exits at once.
"""

from __future__ import annotations

import asyncio
import errno
import os
import signal
from collections.abc import Awaitable, Callable, Sequence
from typing import ClassVar, TypeVar

import asyncpg
from aio_pika.abc import AbstractIncomingMessage, AbstractRobustConnection

from chatbeto import health
from chatbeto.broker import Publisher, connect
from chatbeto.consumer import BatchConsumer, BatchHandler, ConcurrentConsumer, Consumer
from chatbeto.db import create_pool, mask_dsn
from chatbeto.failures import UsageError
from chatbeto.logging import get_logger
from chatbeto.settings import WorkerSettings

log = get_logger(__name__)
# Below the 45 s stop grace of compose and k8s: the drain (30 s) plus closing the links.
SHUTDOWN_BUDGET_SECONDS = 40.0
CONNECT_ATTEMPTS = 30
Closer = Callable[[], Awaitable[None]]
C = TypeVar("C", bound=Consumer)


class WorkerRuntime:
    def __init__(self, settings: WorkerSettings) -> None:
        self.settings = settings
        self._pool: asyncpg.Pool | None = None
        self._connection: AbstractRobustConnection | None = None
        self._publisher: Publisher | None = None
        self.consumers: list[Consumer] = []
        self._closers: list[Closer] = []
        # Filled as resources open; the health server reads it on each request.
        self.checks: dict[str, health.Check] = {
            "database": health.postgres_check(lambda: self._pool),
            "broker": health.broker_check(lambda: self._connection),
        }

    @property
    def pool(self) -> asyncpg.Pool:
        assert self._pool is not None, "the runtime is not started"
        return self._pool

    @property
    def connection(self) -> AbstractRobustConnection:
        assert self._connection is not None, "the runtime is not started"
        return self._connection

    @property
    def publisher(self) -> Publisher:
        """Persistent, confirmed publishing to the work exchange, shared by the process."""
        assert self._publisher is not None, "the runtime is not started"
        return self._publisher

    def consume_batches(
        self, queue: str, handler: BatchHandler, *, prefetch: int, max_batch: int, max_tries: int
    ) -> BatchConsumer:
        """Register a consumer of the work queue `queue` (a topology base name) in batches."""
        topo = self.settings.topology
        consumer = BatchConsumer(
            self.connection,
            topo,
            topo.queue(queue),
            handler,
            publisher=self.publisher,
            prefetch=prefetch,
            max_batch=max_batch,
            max_tries=max_tries,
        )
        return self._register(consumer)

    def consume_each(
        self,
        queue: str,
        handler: Callable[[AbstractIncomingMessage], Awaitable[None]],
        *,
        concurrency: int,
        max_tries: int,
    ) -> ConcurrentConsumer:
        """Register a consumer that handles up to `concurrency` messages at once."""
        topo = self.settings.topology
        consumer = ConcurrentConsumer(
            self.connection,
            topo,
            topo.queue(queue),
            handler,
            publisher=self.publisher,
            concurrency=concurrency,
            max_tries=max_tries,
        )
        return self._register(consumer)

    def _register(self, consumer: C) -> C:
        self.consumers.append(consumer)
        self.checks[f"consumer:{consumer.queue.name}"] = consumer.consuming
        return consumer

    def on_close(self, closer: Closer) -> None:
        """Close a service's resource after the consumers drained, before the links close."""
        self._closers.append(closer)

    async def start(self, services: Sequence[Service]) -> None:
        """Open the links, set every service up, then start consuming."""
        settings = self.settings
        try:
            log.info("connecting", dsn=mask_dsn(settings.database_url))
            # No reset between borrowers (a round trip on every release, a tenth of a small
            # ingest transaction's): the services keep no session state but what they ask
            # each new connection to make (SESSION_SQL).
            self._pool = await create_pool(
                settings.database_url,
                min_size=1,
                max_size=sum(s.POOL_SIZE for s in services) or 1,
                reset_session=False,
                session_sql=[sql for s in services for sql in s.SESSION_SQL],
            )
            self._connection = await connect(settings.amqp_url, attempts=CONNECT_ATTEMPTS)
            self._publisher = Publisher(self._connection, settings.topology)
            for service in services:
                service.runtime = self
                await service.setup(self)
            for consumer in self.consumers:
                await consumer.start()
        except BaseException:
            await self.close()
            raise

    async def close(self) -> None:
        """Drain the consumers (in-flight work finishes), close the services' resources, then
        the links; log what each consumer did."""
        await asyncio.gather(*(c.close() for c in self.consumers), return_exceptions=True)
        for closer in reversed(self._closers):
            try:
                await closer()
            except Exception as exc:
                log.warning("closing a resource failed", error=f"{type(exc).__name__}: {exc}")
        self._closers.clear()
        if self._publisher is not None:
            await self._publisher.close()
        if self._connection is not None:
            try:
                async with asyncio.timeout(5):
                    await self._connection.close()
            except Exception as exc:
                log.info("broker connection close skipped", error=type(exc).__name__)
        if self._pool is not None:
            try:
                async with asyncio.timeout(10):
                    await self._pool.close()
            except Exception as exc:
                log.info("database pool close cut short", error=type(exc).__name__)
                self._pool.terminate()


class Service:
    """One service's consumers and resources, set up on its process's runtime.

    `start` / `close` run it alone on a runtime of its own (tests, one-service processes).
    """

    POOL_SIZE: ClassVar[int] = 4
    # Run on each new connection of the process's pool, which is never reset between
    # borrowers: session state that the service's statements rely on.
    SESSION_SQL: ClassVar[tuple[str, ...]] = ()

    def __init__(self, settings: WorkerSettings) -> None:
        self.settings = settings
        self.runtime: WorkerRuntime | None = None

    @property
    def pool(self) -> asyncpg.Pool:
        assert self.runtime is not None, "the service is not started"
        return self.runtime.pool

    @property
    def connection(self) -> AbstractRobustConnection:
        assert self.runtime is not None, "the service is not started"
        return self.runtime.connection

    async def setup(self, runtime: WorkerRuntime) -> None:
        """Open this service's resources (register their closing with `runtime.on_close`) and
        register its consumers."""
        raise NotImplementedError

    async def start(self) -> None:
        await WorkerRuntime(self.settings).start([self])

    async def close(self) -> None:
        if self.runtime is not None:
            await self.runtime.close()


async def serve(settings: WorkerSettings, services: Sequence[Service]) -> None:
    loop = asyncio.get_running_loop()
    stop = asyncio.Event()

    def give_up() -> None:
        log.error("shutdown did not finish in time: exiting now")
        os._exit(1)

    def on_signal() -> None:
        if stop.is_set():
            log.warning("second signal: exiting now")
            os._exit(1)
        stop.set()
        loop.call_later(SHUTDOWN_BUDGET_SECONDS, give_up)

    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, on_signal)
    runtime = WorkerRuntime(settings)
    variable = settings.HEALTH_PORT_VARIABLE
    # Bound first: a taken port stops the process before it connects anywhere.
    try:
        runner = await health.serve(settings.health_host, settings.health_port, runtime.checks)
    except OSError as exc:
        where = f"{settings.health_host}:{settings.health_port}"
        if exc.errno == errno.EADDRINUSE:
            line = (
                f"health port {where} is already in use:"
                f" set {variable} to a free port (0 picks one)"
            )
        else:
            line = (
                f"cannot listen on health port {where} ({os.strerror(exc.errno or 0)}):"
                f" check HEALTH_HOST and {variable}"
            )
        # The process entry prints it as the one line (chatbeto.failures).
        raise UsageError(line) from exc
    port = health.bound_port(runner)
    try:
        starting = asyncio.create_task(runtime.start(services))
        stopping = asyncio.create_task(stop.wait())
        await asyncio.wait({starting, stopping}, return_when=asyncio.FIRST_COMPLETED)
        if not starting.done():  # stopped while still connecting
            starting.cancel()
            await asyncio.gather(starting, return_exceptions=True)
            return
        starting.result()
        log.info(
            "worker started",
            health_port=port,
            queues=[c.queue.name for c in runtime.consumers],
        )
        await stopping
        log.info("stopping: draining in-flight work")
        await runtime.close()
        log.info("worker stopped")
    finally:
        await runner.cleanup()


def run_worker(settings: WorkerSettings, *services: Service) -> int:
    try:
        import uvloop

        uvloop.install()
    except ImportError:  # pragma: no cover
        pass
    asyncio.run(serve(settings, services))
    return 0
