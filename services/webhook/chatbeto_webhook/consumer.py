"""The webhook worker: each verified delivery acted on once, in one transaction with its record.

Per delivery: claim its key (a unique row in `webhook_deliveries`; a duplicate finds it taken
and does nothing), act in a savepoint, write the outcome, commit, then ack. A failure that no
retry can fix is recorded as `failed` and acked; a transient one (database, OpenAI) goes to the
retry ladder, and on the last try is recorded as `failed` too, so every delivery shows up.
"""

from __future__ import annotations

import time
from collections.abc import Sequence

import asyncpg
from aio_pika.abc import AbstractIncomingMessage
from chatbeto import topology
from chatbeto.consumer import attempt_of
from chatbeto.logging import REQUEST_ID, get_logger
from chatbeto.messages import Envelope, WebhookDelivery, parse
from chatbeto.service import Service, WorkerRuntime
from chatbeto.settings import WebhookSettings

from chatbeto_webhook import actions, repo
from chatbeto_webhook.openai_fetch import FetchedResponse, FetchRefused, ResponseFetcher

log = get_logger(__name__)
ACCEPTED_VERSIONS = frozenset({1})
# Deliveries are few and ordered (a message.created right behind its conversation.created):
# small batches, each delivery in its own transaction.
MAX_BATCH = 16


def decode(message: AbstractIncomingMessage) -> Envelope[WebhookDelivery]:
    return parse(message.body, WebhookDelivery, WebhookDelivery.TYPE, ACCEPTED_VERSIONS)


class WebhookService(Service):
    settings: WebhookSettings

    def __init__(self, settings: WebhookSettings) -> None:
        super().__init__(settings)
        self.fetcher = ResponseFetcher(settings)

    async def setup(self, runtime: WorkerRuntime) -> None:
        if not self.fetcher.configured:
            log.warning("OPENAI_API_KEY unset: response.completed deliveries will fail")
        runtime.on_close(self.fetcher.close)
        runtime.consume_batches(
            topology.WEBHOOK_DELIVERIES,
            self.handle,
            prefetch=self.settings.webhook_prefetch,
            max_batch=MAX_BATCH,
            max_tries=self.settings.webhook_max_tries,
        )

    async def handle(self, messages: Sequence[AbstractIncomingMessage]) -> None:
        # A delivery already committed is skipped by its key if the batch is retried.
        for message in messages:
            await self.handle_one(message)

    async def handle_one(self, message: AbstractIncomingMessage) -> None:
        env = decode(message)
        token = REQUEST_ID.set(env.request_id)
        started = time.perf_counter()
        try:
            try:
                outcome = await self.process(env)
            except Exception as exc:
                if attempt_of(message) < self.settings.webhook_max_tries:
                    raise
                # Out of tries: record the failure so it is visible, then let it go.
                outcome = await self.record_failure(env, f"gave up: {type(exc).__name__}")
            log.info(
                "webhook delivery",
                message_id=message.message_id,
                attempt=attempt_of(message),
                source=env.data.source,
                event_type=env.data.event_type,
                outcome=outcome,
                duration_ms=round((time.perf_counter() - started) * 1000, 2),
            )
        finally:
            REQUEST_ID.reset(token)

    async def process(self, env: Envelope[WebhookDelivery]) -> str:
        delivery = env.data
        fetched: FetchedResponse | None = None
        failure: str | None = None
        try:
            response_id = actions.needs_fetch(delivery)
            if response_id is not None:
                async with self.pool.acquire() as conn:
                    if await repo.is_handled(conn, delivery):
                        return "duplicate"
                # Outside any transaction: no row lock is held across a network call.
                fetched = await self.fetcher.fetch(response_id)
        except (actions.EventFailed, FetchRefused) as exc:
            failure = str(exc)
        async with self.pool.acquire() as conn, conn.transaction():
            row_id = await repo.claim(conn, delivery, env.request_id)
            if row_id is None:
                return "duplicate"
            if failure is not None:
                await repo.finish(conn, row_id, "failed", error=failure)
                return "failed"
            try:
                async with conn.transaction():  # a savepoint: a failed action leaves no rows
                    result = await actions.act(conn, delivery, fetched, env.request_id)
            except actions.EventFailed as exc:
                await repo.finish(conn, row_id, "failed", error=str(exc))
                return "failed"
            except asyncpg.DataError as exc:
                # Text Postgres can't hold (a NUL character, say): retrying can't fix it.
                error = f"invalid body: rejected by the database ({type(exc).__name__})"
                await repo.finish(conn, row_id, "failed", error=error)
                return "failed"
            await repo.finish(
                conn,
                row_id,
                result.outcome,
                project_id=result.project_id,
                conversation_id=result.conversation_id,
            )
            return result.outcome

    async def record_failure(self, env: Envelope[WebhookDelivery], error: str) -> str:
        async with self.pool.acquire() as conn, conn.transaction():
            row_id = await repo.claim(conn, env.data, env.request_id)
            if row_id is None:
                return "duplicate"
            await repo.finish(conn, row_id, "failed", error=error)
        return "failed"
