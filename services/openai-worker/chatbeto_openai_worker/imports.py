"""The import worker: runs the ChatGPT export imports uploaded through `POST /api/v1/imports`.

It runs inside the openai-worker process, on that process's one runtime (pool, broker link,
health port): the contract deploys three workers with three health ports, and an import is
rare and long, so it gets no process of its own; its module sits next to the worker that runs
it (`main.services`).

One job per message (prefetch 1: a job is long and memory-bound). The upload is spooled from
Postgres to a temporary file and imported like the CLI does; progress lands in `jobs` as it
goes. A job redelivered after a crash starts over — the import is idempotent, so that only adds
what is still missing. A file that is not an export fails the job at once (no retry helps).
"""

from __future__ import annotations

import tempfile
import time

from aio_pika.abc import AbstractIncomingMessage
from chatbeto import topology
from chatbeto.consumer import attempt_of
from chatbeto.importer.export import ExportError
from chatbeto.importer.run import Summary, import_file
from chatbeto.logging import REQUEST_ID, get_logger
from chatbeto.messages import ImportJob, parse
from chatbeto.service import Service, WorkerRuntime
from chatbeto.settings import WorkerSettings
from chatbeto.store import jobs

log = get_logger(__name__)
ACCEPTED_VERSIONS = frozenset({1})
PROGRESS_EVERY_SECONDS = 0.5


def failures_of(summary: Summary) -> list[dict[str, str]]:
    return [{"title": f.title, "id": f.id, "reason": f.reason} for f in summary.failures]


class ImportWorker(Service):
    POOL_SIZE = 2

    def __init__(self, settings: WorkerSettings, *, max_tries: int = 5) -> None:
        super().__init__(settings)
        self.max_tries = max_tries

    async def setup(self, runtime: WorkerRuntime) -> None:
        # One job at a time: a job is a whole export.
        runtime.consume_each(topology.IMPORTS, self.handle, concurrency=1, max_tries=self.max_tries)

    async def handle(self, message: AbstractIncomingMessage) -> None:
        envelope = parse(message.body, ImportJob, ImportJob.TYPE, ACCEPTED_VERSIONS)
        token = REQUEST_ID.set(envelope.request_id)
        try:
            await self.run_job(envelope.data)
        except Exception as exc:
            if attempt_of(message) >= self.max_tries:
                # The consumer dead-letters it now: say so in the job instead of 'running'.
                await self.give_up(envelope.data, exc)
            raise
        finally:
            REQUEST_ID.reset(token)

    async def give_up(self, job: ImportJob, exc: Exception) -> None:
        reason = f"gave up after {self.max_tries} tries: {type(exc).__name__}: {exc}"[:500]
        try:
            await jobs.report(
                self.pool,
                job.job_id,
                total=0,
                done=0,
                failed=0,
                errors=[{"title": "", "id": "", "reason": reason}],
                state=jobs.FAILED,
            )
        except Exception as db_exc:  # the database may be what is failing
            log.warning("could not mark import job failed", error=type(db_exc).__name__)

    async def run_job(self, job: ImportJob) -> None:
        pool = self.pool
        if not await jobs.start(pool, job.job_id, jobs.IMPORT, restart=True):
            log.info("import job already finished or gone", job_id=str(job.job_id))
            return
        started = time.monotonic()
        last_write = 0.0

        async def progress(summary: Summary, fraction: float) -> None:
            nonlocal last_write
            if time.monotonic() - last_write < PROGRESS_EVERY_SECONDS:
                return
            last_write = time.monotonic()
            await jobs.report(
                pool,
                job.job_id,
                total=summary.seen,
                done=summary.seen - summary.failed,
                failed=summary.failed,
                errors=failures_of(summary),
            )

        with tempfile.NamedTemporaryFile(prefix="chatbeto-import-", suffix=".export") as spool:
            async with pool.acquire() as conn:
                size = await jobs.spool(conn, job.job_id, spool)
            try:
                summary = await import_file(
                    self.settings.database_url, spool.name, job.project_id, progress
                )
            except ExportError as exc:
                await jobs.report(
                    pool,
                    job.job_id,
                    total=0,
                    done=0,
                    failed=0,
                    errors=[{"title": "", "id": "", "reason": str(exc)}],
                    state=jobs.FAILED,
                )
                await jobs.delete_upload(pool, job.job_id)
                log.warning("import job failed: not an importable export", job_id=str(job.job_id))
                return
        await jobs.report(
            pool,
            job.job_id,
            total=summary.seen,
            done=summary.seen - summary.failed,
            failed=summary.failed,
            errors=failures_of(summary),
            state=jobs.DONE,
        )
        await jobs.delete_upload(pool, job.job_id)
        log.info(
            "import job done",
            job_id=str(job.job_id),
            size_bytes=size,
            imported=summary.imported,
            updated=summary.updated,
            skipped=summary.skipped,
            failed=summary.failed,
            messages=summary.messages,
            duration_ms=round((time.monotonic() - started) * 1000),
        )
