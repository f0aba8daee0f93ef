"""The users' weekly rollups (0014_user_rollups_weekly.sql): exactly what the raw rows say, per
GPT, project, ISO week and user, as metrics-ingest keeps them and as the migration backfills
them; and the stats' user table, which reads them for whole weeks, equal to the raw rows."""

from __future__ import annotations

import uuid
from datetime import UTC, datetime, timedelta

import asyncpg
import pytest
from chatbeto.messages import EventRecord, SessionRecord
from chatbeto.migrate import apply_migrations
from chatbeto_gateway.metrics import stats as metrics_stats

from tests.test_migrations import empty_database, migrate_below  # noqa: F401 (fixture)

# A Sunday evening: the data spans the end of one ISO week and the start of the next three.
BASE = datetime(2026, 3, 1, 21, 30, tzinfo=UTC)

# The weekly table from the raw rows, as 0006's backfill builds the other tiers (shards summed).
RAW_WEEKLY = """
    SELECT gpt_pk, project_key, week, usuario_id, sum(sessions) AS sessions,
           sum(events) AS events, max(last_seen) AS last_seen
    FROM (
        SELECT gpt_pk, coalesce(project_id, 0) AS project_key,
               date_trunc('week', timestamp_inicio, 'UTC') AS week, usuario_id,
               1 AS sessions, 0 AS events, timestamp_inicio AS last_seen
        FROM sessions
        UNION ALL
        SELECT gpt_pk, coalesce(project_id, 0), date_trunc('week', ts, 'UTC'), usuario_id, 0, 1,
               ts
        FROM events
    ) AS x
    GROUP BY 1, 2, 3, 4"""
ROLLED_WEEKLY = """
    SELECT gpt_pk, project_key, week, usuario_id, sum(sessions), sum(events), max(last_seen)
    FROM user_rollups_weekly GROUP BY 1, 2, 3, 4"""


async def differences(conn: asyncpg.Connection) -> int:
    """Rows in one side and not the other, both ways."""
    n: int = await conn.fetchval(
        f"""SELECT (SELECT count(*) FROM (({RAW_WEEKLY}) EXCEPT ALL ({ROLLED_WEEKLY})) a)
                 + (SELECT count(*) FROM (({ROLLED_WEEKLY}) EXCEPT ALL ({RAW_WEEKLY})) b)"""
    )
    return n


async def store(conn: asyncpg.Connection, gpt_pk: int, project: int | None) -> None:
    """Sessions of 4 users every 7 hours over 17 days, 3 events each over the next hours, in
    batches split between two shards, each batch stored twice (a redelivery)."""
    from chatbeto_metrics_ingest import repo

    for day in range(-1, 19):
        await conn.fetchval("SELECT events_partition_for($1)", (BASE + timedelta(day)).date())
    sessions = [
        SessionRecord(
            id=uuid.uuid4(),
            gpt_pk=gpt_pk,
            usuario_id=f"user-{n % 4}",
            timestamp_inicio=BASE + timedelta(hours=7 * n),
            project_id=project,
        )
        for n in range(56)
    ]
    for n in range(0, len(sessions), 10):
        for _ in range(2):
            async with conn.transaction():
                await repo.store_sessions(conn, sessions[n : n + 10], n // 10 % 2)
    events = [
        EventRecord(
            id=uuid.uuid4(),
            sesion_id=s.id,
            tipo="query",
            contenido="",
            latency_ms=k,
            tokens_entrada=1,
            tokens_salida=1,
            timestamp=s.timestamp_inicio + timedelta(hours=2 * k, minutes=5),
        )
        for s in sessions
        for k in range(3)
    ]
    for n in range(0, len(events), 25):
        for _ in range(2):
            async with conn.transaction():
                known = await repo.sessions_of(conn, events[n : n + 25])
                await repo.store_events(conn, events[n : n + 25], known, n // 25 % 2)


async def test_ingest_keeps_the_weekly_user_rollups_exact(db: asyncpg.Connection) -> None:
    project = await db.fetchval("INSERT INTO projects (name) VALUES ('p') RETURNING id")
    gpt_pk = await db.fetchval("INSERT INTO gpts (gpt_id, name) VALUES ('g', 'G') RETURNING pk")
    await store(db, gpt_pk, None)
    await store(db, gpt_pk, project)  # the built-in GPT's per-project rows: their own key
    assert await db.fetchval("SELECT count(DISTINCT week) FROM user_rollups_weekly") == 4
    assert await db.fetchval("SELECT count(DISTINCT shard) FROM user_rollups_weekly") == 2
    assert await differences(db) == 0
    assert await db.fetchval("SELECT sum(events) FROM user_rollups_weekly") == 2 * 56 * 3
    assert await db.fetchval("SELECT sum(sessions) FROM user_rollups_weekly") == 2 * 56


@pytest.mark.parametrize(
    ("start_offset", "end_offset"),
    [
        (timedelta(hours=-3), timedelta(days=16)),  # a day, two whole weeks, days after
        (timedelta(hours=2, minutes=17), timedelta(days=12, hours=5, minutes=41)),  # ragged
        (timedelta(days=1, hours=2, minutes=30), timedelta(days=8, hours=2, minutes=30)),
        (timedelta(days=-2), timedelta(days=30)),  # every week whole
    ],
)
async def test_stats_users_from_the_weekly_tier_match_raw_rows(
    database: str, db: asyncpg.Connection, start_offset: timedelta, end_offset: timedelta
) -> None:
    project = await db.fetchval("INSERT INTO projects (name) VALUES ('p') RETURNING id")
    gpt_pk = await db.fetchval("INSERT INTO gpts (gpt_id, name) VALUES ('g', 'G') RETURNING pk")
    await store(db, gpt_pk, project)
    start, end = BASE + start_offset, BASE + end_offset
    want = {
        r["usuario_id"]: (r["sessions"], r["events"])
        for r in await db.fetch(
            """SELECT usuario_id, sum(s)::int AS sessions, sum(e)::int AS events FROM (
                   SELECT usuario_id, 1 AS s, 0 AS e FROM sessions
                   WHERE timestamp_inicio >= $1 AND timestamp_inicio < $2
                   UNION ALL SELECT usuario_id, 0, 1 FROM events WHERE ts >= $1 AND ts < $2) x
               GROUP BY 1""",
            start,
            end,
        )
    }
    pool = await asyncpg.create_pool(database, min_size=1, max_size=4)
    try:
        got = await metrics_stats.stats(pool, gpt_pk, start, end, "day", None)
    finally:
        await pool.close()
    assert {u["usuario_id"]: (u["sessions"], u["events"]) for u in got["users"]} == want


def test_weeks_cut_whole_days_at_mondays() -> None:
    monday = datetime(2026, 3, 2, tzinfo=UTC)
    day = timedelta(days=1)
    # Sunday to the Tuesday a week later: Sunday and Monday+Tuesday daily, one week weekly.
    days, week = metrics_stats.weeks((monday - day, monday + 9 * day))
    assert days == ((monday - day, monday), (monday + 7 * day, monday + 9 * day))
    assert week == (monday, monday + 7 * day)
    # No whole week inside: every day daily.
    end = monday + 6 * day
    assert metrics_stats.weeks((monday + day, end)) == (
        ((monday + day, end), (end, end)),
        (end, end),
    )
    assert metrics_stats.weeks((monday, monday + 7 * day))[1] == (monday, monday + 7 * day)


async def test_the_migration_backfills_the_weekly_tier_from_the_daily_one(
    empty_database: str,  # noqa: F811
) -> None:
    conn = await asyncpg.connect(empty_database)
    try:
        await migrate_below(conn, 14)
        gpt_pk = await conn.fetchval(
            "INSERT INTO gpts (gpt_id, name) VALUES ('g', 'G') RETURNING pk"
        )
        # Daily rows as 0013's metrics-ingest kept them: two shards, two projects, 3 weeks.
        await conn.executemany(
            """INSERT INTO user_rollups (gpt_pk, project_key, day, usuario_id, sessions, events,
                                         last_seen, shard)
               VALUES ($1, $2, $3::timestamptz, $4, $5, $6, $3::timestamptz + interval '5 hours', $7)""",
            [
                (gpt_pk, p, BASE.replace(hour=0, minute=0) + timedelta(d), f"u{u}", d % 3, u + d, s)
                for p in (0, 7)
                for d in range(18)
                for u in range(3)
                for s in (0, 1)
            ],
        )
        await apply_migrations(empty_database)
        mismatched = await conn.fetchval(
            """SELECT count(*) FROM (
                   (SELECT gpt_pk, project_key, date_trunc('week', day, 'UTC'), usuario_id, shard,
                           sum(sessions), sum(events), max(last_seen)
                    FROM user_rollups GROUP BY 1, 2, 3, 4, 5)
                   EXCEPT ALL
                   (SELECT gpt_pk, project_key, week, usuario_id, shard, sessions, events,
                           last_seen FROM user_rollups_weekly)) x"""
        )
        assert mismatched == 0
        assert await conn.fetchval("SELECT count(*) FROM user_rollups_weekly") == 2 * 4 * 3 * 2
        assert await conn.fetchval(
            "SELECT sum(events) FROM user_rollups_weekly"
        ) == await conn.fetchval("SELECT sum(events) FROM user_rollups")
    finally:
        await conn.close()
