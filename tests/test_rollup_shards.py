"""Rollup shards (0013_rollup_shards.sql): concurrent storing transactions take different
shards, so they never wait for each other's rollup rows, and every event is still counted
exactly once across the shards."""

from __future__ import annotations

import asyncio
import uuid
from datetime import UTC, datetime

import asyncpg
from chatbeto.messages import SessionRecord

from tests.conftest import Factory, event_record


async def test_concurrent_transactions_write_their_own_shards(
    database: str, db: asyncpg.Connection, factory: Factory
) -> None:
    from chatbeto_metrics_ingest import repo

    await factory.gpt("g")
    gpt_pk = await db.fetchval("SELECT pk FROM gpts WHERE gpt_id = 'g'")
    now = datetime.now(UTC)
    await db.fetchval("SELECT events_partition_for($1)", now.date())
    session = SessionRecord(id=uuid.uuid4(), gpt_pk=gpt_pk, usuario_id="u", timestamp_inicio=now)
    first, second = await asyncpg.connect(database), await asyncpg.connect(database)
    try:
        async with first.transaction(), second.transaction():
            a, b = await repo.rollup_shard(first), await repo.rollup_shard(second)
            assert {a, b} == {0, 1}  # the first free shard each; one writer alone gets 0
            assert await repo.store_sessions(first, [session], a) == 1
            known = await repo.sessions_of(first, [event_record(session.id, now, 0)])
            # Both store the same GPT and hour at once: neither waits for the other's rows.
            stored = await asyncio.wait_for(
                asyncio.gather(
                    repo.store_events(
                        first, [event_record(session.id, now, n) for n in range(5)], known, a
                    ),
                    repo.store_events(
                        second, [event_record(session.id, now, n) for n in range(7)], known, b
                    ),
                ),
                timeout=30,
            )
        assert [len(s) for s in stored] == [5, 7]
        async with first.transaction():
            assert await repo.rollup_shard(first) == 0  # released at the end of a transaction
    finally:
        await first.close()
        await second.close()
    assert await db.fetchval("SELECT count(DISTINCT shard) FROM event_rollups") == 2
    for table in ("event_rollups", "event_rollups_daily", "user_rollups", "user_rollups_hourly"):
        assert await db.fetchval(f"SELECT sum(events) FROM {table}") == 12
    assert await db.fetchval("SELECT sum(latency_sum) FROM event_rollups") == 10 + 21
    assert await db.fetchval("SELECT sum(sessions) FROM session_rollups") == 1
