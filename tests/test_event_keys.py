"""store_events' two ways: new keys by plain inserts, and the fall-back for a batch holding a key
stored before (a retry, a redelivery) or by a transaction committing meanwhile: each event is
stored and counted once either way."""

from __future__ import annotations

import asyncio
import time
import uuid
from datetime import UTC, datetime

import asyncpg
from chatbeto.messages import EventRecord, SessionRecord

from tests.conftest import Factory, event_record


async def _session(db: asyncpg.Connection, factory: Factory) -> tuple[SessionRecord, datetime]:
    from chatbeto_metrics_ingest import repo

    await factory.gpt("g")
    gpt_pk = await db.fetchval("SELECT pk FROM gpts WHERE gpt_id = 'g'")
    now = datetime.now(UTC)
    await db.fetchval("SELECT events_partition_for($1)", now.date())
    session = SessionRecord(id=uuid.uuid4(), gpt_pk=gpt_pk, usuario_id="u", timestamp_inicio=now)
    async with db.transaction():
        assert await repo.store_sessions(db, [session]) == 1
    return session, now


async def _counted(db: asyncpg.Connection) -> list[int]:
    """Rows in events and event_ids, and the events each rollup counts."""
    return [
        await db.fetchval(f"SELECT coalesce(sum({column}), 0) FROM {table}")
        for table, column in (
            ("(SELECT 1 AS n FROM events) AS x", "n"),
            ("(SELECT 1 AS n FROM event_ids) AS x", "n"),
            ("event_rollups", "events"),
            ("event_rollups_daily", "events"),
            ("user_rollups_hourly", "events"),
            ("user_rollups", "events"),
            ("user_rollups_weekly", "events"),
        )
    ]


async def test_a_batch_with_a_stored_key_stores_only_the_new_ones(
    db: asyncpg.Connection, factory: Factory
) -> None:
    from chatbeto_metrics_ingest import repo

    session, now = await _session(db, factory)
    first = [event_record(session.id, now, n) for n in range(3)]
    async with db.transaction():
        known = await repo.sessions_of(db, first)
        assert await repo.store_events(db, first, known) == first
    # A retry of one, with another time (the gateway stamps the arrival when none was sent).
    retry = event_record(session.id, now, 0, id=first[0].id, timestamp=datetime.now(UTC))
    second = [event_record(session.id, now, n) for n in range(3, 5)]
    async with db.transaction():
        assert await repo.store_events(db, [retry, *second], known) == second
    assert await _counted(db) == [5] * 7
    assert await db.fetchval("SELECT sum(latency_sum) FROM event_rollups") == 0 + 1 + 2 + 3 + 4


async def test_a_key_an_open_transaction_holds_is_stored_once_when_it_commits(
    database: str, db: asyncpg.Connection, factory: Factory
) -> None:
    """Two replicas storing the same event at once (a redelivery while the first is still
    committing): the second waits for the first's key, then stores only its other events."""
    from chatbeto_metrics_ingest import repo

    session, now = await _session(db, factory)
    shared, other = event_record(session.id, now, 1), event_record(session.id, now, 2)
    first, second = await asyncpg.connect(database), await asyncpg.connect(database)
    try:
        known = await repo.sessions_of(first, [shared])
        holding = first.transaction()
        await holding.start()
        assert await repo.store_events(first, [shared], known) == [shared]
        waiter_pid = await second.fetchval("SELECT pg_backend_pid()")

        async def store_second() -> list[EventRecord]:
            async with second.transaction():
                return await repo.store_events(second, [shared, other], known, shard=1)

        task = asyncio.create_task(store_second())
        deadline = time.monotonic() + 30
        while not await db.fetchval(
            "SELECT wait_event_type = 'Lock' FROM pg_stat_activity WHERE pid = $1", waiter_pid
        ):
            assert time.monotonic() < deadline, "the second store never waited for the key"
            assert not task.done(), task
            await asyncio.sleep(0.05)
        await holding.commit()
        assert await asyncio.wait_for(task, timeout=30) == [other]
    finally:
        await first.close()
        await second.close()
    assert await _counted(db) == [2] * 7


async def test_a_batch_carrying_a_retry_beside_its_original_stores_it_once(
    db: asyncpg.Connection, factory: Factory
) -> None:
    """The batch's own duplicates go before the COPY (keyed by GPT and id)."""
    from chatbeto_metrics_ingest import repo

    session, now = await _session(db, factory)
    original = event_record(session.id, now, 1)
    # The same id as a new uuid.UUID object, another time: the gateway's stamp of a retry.
    retry = event_record(
        session.id, now, 1, id=uuid.UUID(str(original.id)), timestamp=datetime.now(UTC)
    )
    other = event_record(session.id, now, 2)
    async with db.transaction():
        known = await repo.sessions_of(db, [original, retry, other])
        assert list(known) == [session.id]
        assert await repo.store_events(db, [original, retry, other], known) == [original, other]
    assert await _counted(db) == [2] * 7
