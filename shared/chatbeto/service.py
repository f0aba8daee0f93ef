"""The life of a worker process: start, serve health, run until SIGTERM, drain, close."""

from __future__ import annotations

import asyncio
import signal
from typing import Protocol

from chatbeto import health
from chatbeto.logging import get_logger

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
