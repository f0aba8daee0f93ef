"""The exchange store (openai-worker `store.py`): an exchange is committed (visible) before the
WAL flush, `durable` waits for the flush, and a flush barrier that fails stores again what it
covered, from memory, once."""

from __future__ import annotations

import uuid
from decimal import Decimal
from typing import Any

import asyncpg
from chatbeto import spend
from chatbeto.db import create_pool
from chatbeto.store.conversations import NewMessage
from chatbeto_openai_worker import repo
from chatbeto_openai_worker.store import ExchangeStore, open_fast_pool

from tests.conftest import Factory


def exchange(project_id: int, key_id: int | None = None) -> repo.Exchange:
    mid = uuid.uuid4().hex
    return repo.Exchange(
        external_id=mid,
        messages=[
            NewMessage(role="user", content="hola", external_id=f"{mid}:in:0"),
            NewMessage(
                role="assistant", content="echo", external_id=f"{mid}:answer", model="gpt-4"
            ),
        ],
        request_id=None,
        project_id=project_id,
        charge=spend.Charge(
            external_id=mid,
            key_id=key_id,
            project_id=project_id,
            model="gpt-4",
            input_tokens=1,
            cached_input_tokens=0,
            output_tokens=1,
            cost_usd=Decimal("0.001"),
        ),
    )


class FailingOnce:
    """A pool whose first flush barrier fails (as if Postgres restarted)."""

    def __init__(self, pool: asyncpg.Pool) -> None:
        self.pool = pool
        self.barriers = 0

    def acquire(self) -> Any:
        return self.pool.acquire()

    async def fetchval(self, query: str) -> Any:  # the barrier
        self.barriers += 1
        if self.barriers == 1:
            raise asyncpg.exceptions.ConnectionDoesNotExistError("cut")
        return await self.pool.fetchval(query)


async def test_stored_before_the_flush_durable_after(
    database: str, db: asyncpg.Connection, factory: Factory
) -> None:
    project = await factory.project()
    pool = await create_pool(database)
    fast = await open_fast_pool(database)
    store = ExchangeStore(pool, fast)
    try:
        conv = await store.store(exchange(project))
        # Visible to every reader (a redelivery replays it) before any flush was awaited.
        assert await db.fetchval(
            "SELECT count(*) FROM messages WHERE conversation_id = $1", conv.id
        )
        await store.durable()
        await store.durable()  # nothing left: returns at once
        assert await db.fetchval("SELECT count(*) FROM spend") == 1
    finally:
        await store.close()
        await fast.close()
        await pool.close()


async def test_failed_barrier_stores_again_once(
    database: str, db: asyncpg.Connection, factory: Factory
) -> None:
    project = await factory.project()
    await factory.key(project)
    key_id = await db.fetchval("SELECT id FROM api_keys")
    pool = await create_pool(database)
    failing = FailingOnce(pool)
    fast = await open_fast_pool(database)
    store = ExchangeStore(failing, fast)  # type: ignore[arg-type]
    try:
        first, second = exchange(project, key_id), exchange(project, key_id)
        await store.store(first)
        await store.store(second)
        await store.durable()  # the first barrier failed: what it covered was stored again
        assert failing.barriers >= 1
        assert await db.fetchval("SELECT count(*) FROM conversations") == 2
        assert await db.fetchval("SELECT count(*) FROM messages") == 4
        assert await db.fetchval("SELECT count(*) FROM spend") == 2
        # The spend's windows were counted with the rows, once (docs/COSTS.md).
        assert await db.fetchval("SELECT sum(calls) FROM key_spend_windows") == 2
        await store.store(exchange(project))
        await store.durable()  # barriers work again
        assert failing.barriers >= 2
        assert await db.fetchval("SELECT count(*) FROM conversations") == 3
    finally:
        await store.close()
        await fast.close()
        await pool.close()
