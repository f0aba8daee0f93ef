"""The events' rollup hour is the event's UTC hour (date_trunc('hour', ts, 'UTC')) for every
storable time, the first and last storable seconds and offsets of half an hour included."""

from __future__ import annotations

import uuid
from datetime import UTC, datetime, timedelta, timezone

import asyncpg
from chatbeto.messages import EventRecord, SessionRecord

from tests.conftest import Factory

TIMES = [
    datetime(1, 1, 1, 0, 0, 1, tzinfo=UTC),  # the first storable second
    datetime(9999, 12, 31, 23, 59, 59, tzinfo=UTC),  # the last
    datetime(2026, 12, 1, 18, 30, tzinfo=timezone(timedelta(hours=5, minutes=30))),
    datetime(2026, 3, 29, 1, 30, 0, 999999, tzinfo=timezone(timedelta(hours=-9, minutes=-30))),
    datetime(1969, 12, 31, 23, 59, 59, 500000, tzinfo=UTC),
]


async def test_each_event_counts_in_its_utc_hour(db: asyncpg.Connection, factory: Factory) -> None:
    from chatbeto_metrics_ingest import repo

    await factory.gpt("g")
    gpt_pk = await db.fetchval("SELECT pk FROM gpts WHERE gpt_id = 'g'")
    session = SessionRecord(
        id=uuid.uuid4(), gpt_pk=gpt_pk, usuario_id="u", timestamp_inicio=datetime.now(UTC)
    )
    events = [
        EventRecord(
            id=uuid.uuid4(),
            sesion_id=session.id,
            tipo=f"t{n}",  # one rollup row per event
            contenido="",
            latency_ms=1,
            tokens_entrada=0,
            tokens_salida=0,
            timestamp=ts,
        )
        for n, ts in enumerate(TIMES)
    ]
    async with db.transaction():
        await repo.store_sessions(db, [session])
        known = await repo.sessions_of(db, events)
        assert len(await repo.store_events(db, events, known)) == len(TIMES)
    wrong = await db.fetch(
        """SELECT e.ts, r.hour FROM events e JOIN event_rollups r USING (gpt_pk, tipo)
           WHERE r.hour <> date_trunc('hour', e.ts, 'UTC')"""
    )
    assert wrong == []
    assert await db.fetchval("SELECT count(*) FROM event_rollups") == len(TIMES)
    users = await db.fetch(
        "SELECT hour FROM user_rollups_hourly WHERE usuario_id = 'u' AND events > 0 ORDER BY 1"
    )
    expected = sorted({await db.fetchval("SELECT date_trunc('hour', $1::timestamptz, 'UTC')", t)
                       for t in TIMES})  # fmt: skip
    assert [r["hour"] for r in users] == expected
