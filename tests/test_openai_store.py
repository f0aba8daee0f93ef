"""The exchange store (openai-worker `store.py`): an exchange is committed (visible) before the
WAL flush, `durable` waits for the flush, and a flush barrier that fails stores again what it
covered, from memory, once."""

from __future__ import annotations

import asyncio
import uuid
from dataclasses import replace
from decimal import Decimal
from typing import Any

import asyncpg
import pytest
from chatbeto import api_keys, spend
from chatbeto.db import connect, create_pool
from chatbeto.store import conversations
from chatbeto.store.conversations import NewMessage
from chatbeto_openai_worker import repo
from chatbeto_openai_worker.store import BARRIER_SQL, ExchangeStore, open_fast_pool

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
    fast = await open_fast_pool(database)
    failing = FailingOnce(fast)
    store = ExchangeStore(pool, failing)  # type: ignore[arg-type]
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


# --- a new conversation's exchange: one statement with its spend ------------------------------


async def budget_key(db: asyncpg.Connection, project: int, tpm: int | None = 100_000) -> int:
    _, key = await api_keys.create(db, is_admin=False, project_id=project, budget="5/1d", tpm=tpm)
    return key.id


async def test_a_new_exchange_is_one_statement_with_its_spend_and_windows(
    database: str, db: asyncpg.Connection, factory: Factory
) -> None:
    project = await factory.project()
    key_id = await budget_key(db, project)
    conn = await connect(database)
    statements: list[str] = []
    conn.add_query_logger(lambda record: statements.append(record.query))
    keys = spend.KeyLimits()
    try:
        await repo.store_exchanges(conn, [exchange(project, key_id)], keys)  # reads the key
        statements.clear()
        one = exchange(project, key_id)
        (conv,) = await repo.store_exchanges(conn, [one], keys)
        assert len(statements) == 1  # no BEGIN/COMMIT, no key lookup, no spend statements
    finally:
        await conn.close()
    assert [r["external_id"] for r in await messages_of(db, conv.id)] == [
        f"{one.external_id}:in:0",
        f"{one.external_id}:answer",
    ]
    row = await db.fetchrow("SELECT * FROM spend WHERE external_id = $1", one.external_id)
    assert row is not None
    assert (row["key_id"], row["project_id"], row["model"]) == (key_id, project, "gpt-4")
    assert (row["input_tokens"], row["output_tokens"], row["cost_usd"]) == (1, 1, Decimal("0.001"))
    await assert_windows_match_the_ledger(db, key_id, calls=2)


async def test_a_redelivered_exchange_is_stored_and_charged_once(
    database: str, db: asyncpg.Connection, factory: Factory
) -> None:
    project = await factory.project()
    key_id = await budget_key(db, project)
    pool = await create_pool(database)
    fast = await open_fast_pool(database)
    store = ExchangeStore(pool, fast)
    try:
        one = exchange(project, key_id)
        first = await store.store(one)
        again = await store.store(one)  # the conversation exists: the transaction path
        # ... and again in a group with a fresh exchange, one round trip for both
        both = await repo.store_exchanges(db, [one, exchange(project, key_id)], spend.KeyLimits())
        await store.durable()
    finally:
        await store.close()
        await fast.close()
        await pool.close()
    assert first.id == again.id == both[0].id != both[1].id
    assert len(await messages_of(db, first.id)) == 2
    assert await db.fetchval("SELECT count(*) FROM spend") == 2
    await assert_windows_match_the_ledger(db, key_id, calls=2)


async def test_exchanges_stored_together_count_exactly_in_the_windows(
    database: str, db: asyncpg.Connection, factory: Factory
) -> None:
    project = await factory.project()
    key_id = await budget_key(db, project)
    other = await budget_key(db, project, tpm=None)
    pool = await create_pool(database)
    fast = await open_fast_pool(database)
    store = ExchangeStore(pool, fast)
    try:
        # More at once than there are commits in flight: the rest are stored as groups.
        async with asyncio.TaskGroup() as tg:
            for n in range(40):
                tg.create_task(store.store(exchange(project, key_id if n % 4 else other)))
        await store.durable()
    finally:
        await store.close()
        await fast.close()
        await pool.close()
    assert await db.fetchval("SELECT count(*) FROM conversations") == 40
    assert await db.fetchval("SELECT count(*) FROM messages") == 80
    await assert_windows_match_the_ledger(db, key_id, calls=30)
    await assert_windows_match_the_ledger(db, other, calls=10, tpm=False)


async def test_an_unstorable_exchange_fails_alone_in_its_group(
    database: str, db: asyncpg.Connection, factory: Factory, monkeypatch: pytest.MonkeyPatch
) -> None:
    groups: list[list[str]] = []
    store_exchanges = repo.store_exchanges

    async def seen(conn: Any, exchanges: Any, keys: Any) -> Any:
        groups.append([e.external_id for e in exchanges])
        return await store_exchanges(conn, exchanges, keys)

    monkeypatch.setattr(repo, "store_exchanges", seen)
    project = await factory.project()
    key_id = await budget_key(db, project)
    pool = await create_pool(database)
    fast = await open_fast_pool(database)
    store = ExchangeStore(pool, fast)
    bad = exchange(project, key_id)
    bad = replace(bad, messages=[replace(bad.messages[0], content="nul \x00 byte")])
    try:
        # Submitted together after the commits in flight: `bad` shares a group with others.
        batch = [exchange(project, key_id) for _ in range(12)]
        batch.insert(8, bad)
        results = await asyncio.gather(*(store.store(e) for e in batch), return_exceptions=True)
        await store.durable()
    finally:
        await store.close()
        await fast.close()
        await pool.close()
    assert any(bad.external_id in g and len(g) > 1 for g in groups), groups
    failed = [r for r in results if isinstance(r, BaseException)]
    assert len(failed) == 1
    assert isinstance(failed[0], asyncpg.DataError)
    assert isinstance(results[8], asyncpg.DataError)
    assert await db.fetchval("SELECT count(*) FROM conversations") == 12
    assert (
        await db.fetchval("SELECT count(*) FROM spend WHERE external_id = $1", bad.external_id) == 0
    )
    await assert_windows_match_the_ledger(db, key_id, calls=12)


async def test_the_fast_pool_keeps_no_reset_round_trip(database: str) -> None:
    fast = await open_fast_pool(database)
    default = await create_pool(database, max_size=1)
    try:
        for pool, kept in ((fast, True), (default, False)):
            async with pool.acquire() as conn:
                await conn.execute("SET application_name = 'left behind'")
                pid = await conn.fetchval("SELECT pg_backend_pid()")
            async with pool.acquire() as conn:
                assert await conn.fetchval("SELECT pg_backend_pid()") == pid
                left = await conn.fetchval("SHOW application_name") == "left behind"
                assert left is kept  # reset_session=False: no `RESET ALL` on release
                assert await conn.fetchval("SHOW synchronous_commit") == (
                    "off" if pool is fast else "on"
                )
    finally:
        await fast.close()
        await default.close()


async def test_the_barrier_commits_synchronously_on_a_fast_connection(database: str) -> None:
    fast = await open_fast_pool(database)
    try:
        async with fast.acquire() as conn:
            row = await conn.fetchrow(BARRIER_SQL)
            assert row is not None
            assert row[0] == "on" and row[1] > 0
            # Local to the barrier's own transaction: the connection stays asynchronous.
            assert await conn.fetchval("SHOW synchronous_commit") == "off"
    finally:
        await fast.close()


async def messages_of(db: asyncpg.Connection, conversation_id: int) -> list[asyncpg.Record]:
    return list(
        await db.fetch(
            "SELECT external_id FROM messages WHERE conversation_id = $1 ORDER BY position",
            conversation_id,
        )
    )


async def assert_windows_match_the_ledger(
    db: asyncpg.Connection, key_id: int, *, calls: int, tpm: bool = True
) -> None:
    ledger = await db.fetchrow(
        """SELECT count(*) AS calls, sum(cost_usd) AS usd,
                  sum(input_tokens + output_tokens) AS tokens
           FROM spend WHERE key_id = $1""",
        key_id,
    )
    assert ledger is not None
    assert ledger["calls"] == calls
    windows = {
        r["kind"]: r
        for r in await db.fetch(
            """SELECT kind, sum(usd) AS usd, sum(tokens) AS tokens, sum(calls) AS calls
               FROM key_spend_windows WHERE key_id = $1 GROUP BY kind""",
            key_id,
        )
    }
    assert set(windows) == ({"budget", "tpm"} if tpm else {"budget"})
    for window in windows.values():  # summed: the test may straddle a minute's end
        assert (window["calls"], window["usd"], window["tokens"]) == (
            ledger["calls"],
            ledger["usd"],
            ledger["tokens"],
        )


async def test_a_group_writes_its_keys_in_key_order(
    database: str, db: asyncpg.Connection, factory: Factory, monkeypatch: pytest.MonkeyPatch
) -> None:
    # Every group locks its keys' window rows in the same order: two groups never deadlock.
    project = await factory.project()
    low, high = await budget_key(db, project), await budget_key(db, project)
    seen: list[int | None] = []
    create_many = conversations.create_many_with_messages

    async def spy(conn: Any, items: Any) -> Any:
        seen.extend(charge.charge.key_id if charge else None for _, _, charge in items)
        return await create_many(conn, items)

    monkeypatch.setattr(conversations, "create_many_with_messages", spy)
    batch = [exchange(project, high), exchange(project), exchange(project, low)]
    convs = await repo.store_exchanges(db, batch, spend.KeyLimits())
    assert seen == [None, low, high]
    # ... and each result is still its own exchange's.
    for e, conv in zip(batch, convs, strict=True):
        assert conv.id == await db.fetchval(
            "SELECT id FROM conversations WHERE external_id = $1", e.external_id
        )
