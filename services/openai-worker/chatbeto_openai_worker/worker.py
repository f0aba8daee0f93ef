"""The openai-worker service: request/reply answers and sync jobs, many in flight at once.

Lifecycle and wiring only: the process's `WorkerRuntime` owns the pool, the broker link, the
health port and the drain; request handling lives in `handler.py`.
"""

from __future__ import annotations

from chatbeto import session_ids, topology
from chatbeto.logging import get_logger
from chatbeto.service import Service, WorkerRuntime
from chatbeto.settings import OpenAIWorkerSettings
from chatbeto.store import gpts

from chatbeto_openai_worker import store, upstream
from chatbeto_openai_worker.client import WorkerOpenAI
from chatbeto_openai_worker.handler import RequestHandler
from chatbeto_openai_worker.replies import Replies
from chatbeto_openai_worker.sync import SyncHandler
from chatbeto_openai_worker.usage_events import UsageEvents

log = get_logger(__name__)
SYNC_CONCURRENCY = 2
# A request is retried (ladder) only for our own failures (database, broker); few tries, since
# the gateway waits at most OPENAI_TIMEOUT for it.
REQUEST_MAX_TRIES = 3


class OpenAIWorker(Service):
    settings: OpenAIWorkerSettings
    # Up to 20 requests store at once; the rest of the in-flight ones are waiting upstream.
    POOL_SIZE = 20

    def __init__(self, settings: OpenAIWorkerSettings) -> None:
        super().__init__(settings)
        self.client: WorkerOpenAI | None = None
        self.replies: Replies | None = None
        self.usage: UsageEvents | None = None
        self.handler: RequestHandler | None = None

    async def setup(self, runtime: WorkerRuntime) -> None:
        settings = self.settings
        session_key = await session_ids.load_key(runtime.pool)
        gpt_pk = await gpts.builtin_pk(runtime.pool)
        if gpt_pk is None:
            raise RuntimeError("the built-in GPT `chatbeto` is missing: run `chatbeto migrate`")
        self.client = upstream.make_client(settings)
        if self.client is None:
            log.warning("OPENAI_API_KEY is not set: model calls will answer 503")
        else:
            runtime.on_close(self.client.close)
        self.replies = Replies(runtime.connection, settings.topology)
        await self.replies.start()
        runtime.on_close(self.replies.close)
        self.usage = UsageEvents(runtime.publisher, int(gpt_pk))
        runtime.on_close(self.usage.close)
        # The exchanges' own connections: committed before the answer, flushed before the ack.
        fast_pool = await store.open_fast_pool(settings.database_url)
        runtime.on_close(fast_pool.close)
        handler = self.handler = RequestHandler(
            settings, runtime.pool, self.client, self.replies, self.usage, session_key, fast_pool
        )
        runtime.consume_each(
            topology.OPENAI_REQUESTS,
            handler.handle,
            concurrency=settings.openai_worker_concurrency,
            max_tries=REQUEST_MAX_TRIES,
        )
        runtime.consume_each(
            topology.OPENAI_JOBS,
            SyncHandler(runtime.pool, self.client).handle,
            concurrency=SYNC_CONCURRENCY,
            max_tries=5,
        )
        # Closed first (on_close runs in reverse): before the publishers it uses.
        runtime.on_close(handler.close)
