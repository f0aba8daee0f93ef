"""The sync job: copy stored conversations that have no remote id to OpenAI's Conversations API
(`client.conversations.create` with the stored messages as items), recording the remote id.

A rerun skips what is synced; each conversation is claimed with `SKIP LOCKED` so two jobs never
copy the same one; progress is committed after every conversation.
"""

from __future__ import annotations

from typing import Any

import asyncpg
import openai
from aio_pika.abc import AbstractIncomingMessage
from chatbeto.logging import REQUEST_ID, get_logger
from chatbeto.messages import SyncJob, parse
from chatbeto.store import conversations, jobs
from openai import AsyncOpenAI

log = get_logger(__name__)
ACCEPTED_VERSIONS = frozenset({1})
ITEMS_PER_CALL = 20  # the Conversations API takes at most 20 items per call
METADATA_VALUE_CHARS = 512
SYNCED_ROLES = frozenset({"system", "user", "assistant"})


class SyncHandler:
    def __init__(self, pool: asyncpg.Pool, client: AsyncOpenAI | None) -> None:
        self.pool = pool
        self.client = client

    async def handle(self, message: AbstractIncomingMessage) -> None:
        env = parse(message.body, SyncJob, SyncJob.TYPE, ACCEPTED_VERSIONS)
        REQUEST_ID.set(env.request_id)
        job = env.data
        async with self.pool.acquire() as conn:
            total = await conversations.count_unsynced(conn, job.project_id)
            if not await jobs.start(conn, job.job_id, jobs.SYNC, total=total):
                log.info("sync job unknown or finished; skipped", job_id=str(job.job_id))
                return
            ids = await conversations.unsynced_ids(conn, job.project_id)
        if self.client is None:
            await self._fail_job(job, "OPENAI_API_KEY is not set")
            return
        for conversation_id in ids:
            try:
                await self._sync_one(conversation_id)
            except (openai.AuthenticationError, openai.PermissionDeniedError):
                await self._fail_job(job, "OpenAI refused the credentials")
                return
            except openai.APIError as exc:
                async with self.pool.acquire() as conn:
                    await jobs.advance(
                        conn,
                        job.job_id,
                        failed=1,
                        error=f"conversation {conversation_id}: {type(exc).__name__}",
                    )
                continue
            async with self.pool.acquire() as conn:
                await jobs.advance(conn, job.job_id, done=1)
        async with self.pool.acquire() as conn:
            await jobs.finish(conn, job.job_id, jobs.DONE)
        log.info("sync job done", job_id=str(job.job_id), conversations=len(ids))

    async def _fail_job(self, job: SyncJob, reason: str) -> None:
        async with self.pool.acquire() as conn:
            await jobs.finish(conn, job.job_id, jobs.FAILED, error=reason)
        log.warning("sync job failed", job_id=str(job.job_id), reason=reason)

    async def _sync_one(self, conversation_id: int) -> None:
        assert self.client is not None
        async with self.pool.acquire() as conn, conn.transaction():
            row = await conversations.claim_unsynced(conn, conversation_id)
            if row is None:  # synced meanwhile, or another job holds it
                return
            items: list[Any] = [
                {"type": "message", "role": m.role, "content": m.content}
                for m in await conversations.history(conn, conversation_id)
                if m.role in SYNCED_ROLES
            ]
            remote = await self.client.conversations.create(
                items=items[:ITEMS_PER_CALL],
                metadata={
                    "chatbeto_conversation_id": str(conversation_id),
                    "chatbeto_project_id": str(row["project_id"]),
                    "title": str(row["title"])[:METADATA_VALUE_CHARS],
                },
            )
            for start in range(ITEMS_PER_CALL, len(items), ITEMS_PER_CALL):
                await self.client.conversations.items.create(
                    remote.id, items=items[start : start + ITEMS_PER_CALL]
                )
            await conversations.set_remote_id(conn, conversation_id, remote.id)
