"""0016_rollup_fillfactor.sql: the rollups' upserts of rows already there are HOT updates (no
new index entry per update), also once the rows fill whole pages."""

from __future__ import annotations

import uuid
from datetime import UTC, datetime

import asyncpg
from chatbeto.messages import EventRecord, SessionRecord

from tests.conftest import Factory, event_record

USERS = 400  # several pages of rows in each user tier


async def test_updates_of_the_rollups_stay_on_their_pages(
    db: asyncpg.Connection, factory: Factory
) -> None:
    from chatbeto_metrics_ingest import repo

    await factory.gpt("g")
    gpt_pk = await db.fetchval("SELECT pk FROM gpts WHERE gpt_id = 'g'")
    now = datetime.now(UTC)
    await db.fetchval("SELECT events_partition_for($1)", now.date())
    sessions = [
        SessionRecord(id=uuid.uuid4(), gpt_pk=gpt_pk, usuario_id=f"user{n}", timestamp_inicio=now)
        for n in range(USERS)
    ]

    def events() -> list[EventRecord]:
        return [
            event_record(s.id, now, contenido="", tokens_entrada=0, tokens_salida=0)
            for s in sessions
        ]

    async with db.transaction():
        await repo.store_sessions(db, sessions)
        first = events()
        known = await repo.sessions_of(db, first)
        await repo.store_events(db, first, known)
    # A second batch for the same users and hour: every user row is updated, once.
    # This backend's counts not yet sent to the statistics (earlier transactions' too): the
    # difference is the second batch's.
    query = """SELECT relname, n_tup_upd, n_tup_hot_upd FROM pg_stat_xact_user_tables
               WHERE relname LIKE 'user_rollups%' ORDER BY 1"""
    async with db.transaction():
        before = await db.fetch(query)
        await repo.store_events(db, events(), known)
        after = await db.fetch(query)
    assert [r["relname"] for r in after] == [r["relname"] for r in before]
    assert len(after) == 3
    for b, a in zip(before, after, strict=True):
        updated, hot = a["n_tup_upd"] - b["n_tup_upd"], a["n_tup_hot_upd"] - b["n_tup_hot_upd"]
        assert updated == USERS, a
        assert hot >= 0.9 * USERS, (a["relname"], updated, hot)
    assert await db.fetchval("SELECT sum(events) FROM user_rollups_weekly") == 2 * USERS
