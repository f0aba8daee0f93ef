"""The events' cost in the rollups (0015_rollup_costs.sql): exactly the raw rows' sum per GPT,
project, hour or day, event type and latency bin, as metrics-ingest keeps it (across shards and
redeliveries) and as the migration backfills it; NULL where nothing was priced, never 0; and the
stats' cost, read with the same tiering as the counts, equal to the raw rows' for aligned and
unaligned periods."""

from __future__ import annotations

import uuid
from datetime import UTC, datetime, timedelta
from decimal import Decimal

import asyncpg
import pytest
from chatbeto.messages import EventRecord, SessionRecord
from chatbeto.migrate import apply_migrations
from chatbeto_gateway.metrics import stats as metrics_stats

from tests.test_migrations import empty_database, migrate_below  # noqa: F401 (fixture)

BASE = datetime(2026, 3, 1, 21, 30, tzinfo=UTC)
HOURS = 80

# Per rollup key (shards summed) from the raw rows, and from each tier.
RAW = """
    SELECT gpt_pk, coalesce(project_id, 0) AS project_key, date_trunc('{unit}', ts, 'UTC') AS t,
           tipo, latency_bin(latency_ms) AS bin, count(*) AS events, sum(cost_usd) AS usd
    FROM events GROUP BY 1, 2, 3, 4, 5"""
ROLLED = """
    SELECT gpt_pk, project_key, {col}, tipo, bin, sum(events), sum(cost_usd)
    FROM {table} GROUP BY 1, 2, 3, 4, 5"""


async def differences(conn: asyncpg.Connection) -> int:
    """Keys whose count or cost differ between the raw rows and a tier, both ways, both tiers
    (`EXCEPT` compares NULLs as equal: a NULL cost matches only a NULL one)."""
    n = 0
    for unit, col, table in (
        ("hour", "hour", "event_rollups"),
        ("day", "day", "event_rollups_daily"),
    ):
        raw, rolled = RAW.format(unit=unit), ROLLED.format(col=col, table=table)
        n += await conn.fetchval(
            f"""SELECT (SELECT count(*) FROM (({raw}) EXCEPT ALL ({rolled})) a)
                     + (SELECT count(*) FROM (({rolled}) EXCEPT ALL ({raw})) b)"""
        )
    return n


def price(n: int) -> Decimal | None:
    """Every third call unpriced (a model without a price), the others a few exact cents."""
    return None if n % 3 == 0 else Decimal(n % 7) / 100 + Decimal("0.000123")


async def store(conn: asyncpg.Connection, gpt_pk: int, project: int | None) -> None:
    """A session every 5 hours over HOURS hours, 4 events each over the next hours (priced and
    not, of two types, one type never priced), in batches split between two shards, each batch
    stored twice (a redelivery)."""
    from chatbeto_metrics_ingest import repo

    for day in range(-1, 6):
        await conn.fetchval("SELECT events_partition_for($1)", (BASE + timedelta(day)).date())
    sessions = [
        SessionRecord(
            id=uuid.uuid4(),
            gpt_pk=gpt_pk,
            usuario_id=f"user-{n % 3}",
            timestamp_inicio=BASE + timedelta(hours=5 * n),
            project_id=project,
        )
        for n in range(HOURS // 5)
    ]
    for _ in range(2):
        async with conn.transaction():
            await repo.store_sessions(conn, sessions)
    events = [
        EventRecord(
            id=uuid.uuid4(),
            sesion_id=s.id,
            tipo="completion" if k % 2 else "feedback",
            contenido="",
            latency_ms=100 * k,
            tokens_entrada=1,
            tokens_salida=1,
            timestamp=s.timestamp_inicio + timedelta(hours=k, minutes=13 * k),
            cost_usd=price(n * 4 + k) if k % 2 else None,
        )
        for n, s in enumerate(sessions)
        for k in range(4)
    ]
    for n in range(0, len(events), 7):
        for _ in range(2):
            async with conn.transaction():
                known = await repo.sessions_of(conn, events[n : n + 7])
                await repo.store_events(conn, events[n : n + 7], known, n // 7 % 2)


async def gpt(conn: asyncpg.Connection, name: str) -> int:
    pk: int = await conn.fetchval(
        "INSERT INTO gpts (gpt_id, name) VALUES ($1, $1) RETURNING pk", name
    )
    return pk


async def test_ingest_keeps_the_cost_exact_across_shards_and_redeliveries(
    db: asyncpg.Connection,
) -> None:
    project = await db.fetchval("INSERT INTO projects (name) VALUES ('p') RETURNING id")
    gpt_pk = await gpt(db, "g")
    await store(db, gpt_pk, None)
    await store(db, gpt_pk, project)
    assert await db.fetchval("SELECT count(DISTINCT shard) FROM event_rollups") == 2
    assert await differences(db) == 0
    # Stored once: the rollups' total is the raw rows', which are each call once.
    total = await db.fetchval("SELECT sum(cost_usd) FROM events")
    assert total == 2 * sum(
        p for n in range(HOURS // 5) for k in (1, 3) if (p := price(n * 4 + k)) is not None
    )
    for table in ("event_rollups", "event_rollups_daily"):
        assert await db.fetchval(f"SELECT sum(cost_usd) FROM {table}") == total
        # The never-priced type is NULL, not 0; an unpriced call beside priced ones adds nothing.
        assert (
            await db.fetchval(
                f"SELECT count(*) FROM {table} WHERE tipo = 'feedback' AND cost_usd IS NOT NULL"
            )
            == 0
        )
    assert (
        await db.fetchval(
            "SELECT count(*) FROM events WHERE cost_usd IS NULL AND tipo = 'completion'"
        )
        > 0
    )


@pytest.mark.parametrize("bucket", ["hour", "day", "week"])
@pytest.mark.parametrize(
    ("start_offset", "end_offset"),
    [
        (timedelta(hours=-21, minutes=-30), timedelta(days=3, hours=2, minutes=30)),  # days
        (timedelta(minutes=30), timedelta(hours=40, minutes=30)),  # whole hours
        (timedelta(minutes=17), timedelta(days=2, hours=5, minutes=41)),  # ragged edges
        (timedelta(hours=3, minutes=1), timedelta(hours=3, minutes=59)),  # inside one hour
    ],
)
async def test_stats_cost_equals_the_raw_rows_for_any_period(
    database: str,
    db: asyncpg.Connection,
    bucket: metrics_stats.Bucket,
    start_offset: timedelta,
    end_offset: timedelta,
) -> None:
    project = await db.fetchval("INSERT INTO projects (name) VALUES ('p') RETURNING id")
    gpt_pk = await gpt(db, "g")
    await store(db, gpt_pk, project)
    await store(db, gpt_pk, None)  # another project's rows: the filter leaves them out
    start, end = BASE + start_offset, BASE + end_offset
    want = {
        r["b"].isoformat(): float(r["usd"])
        for r in await db.fetch(
            """SELECT date_trunc($4, ts, 'UTC') AS b, sum(cost_usd) AS usd FROM events
               WHERE ts >= $1 AND ts < $2 AND project_id = $3 GROUP BY 1
               HAVING sum(cost_usd) IS NOT NULL""",
            start,
            end,
            project,
            bucket,
        )
    }
    total = await db.fetchval(
        "SELECT sum(cost_usd) FROM events WHERE ts >= $1 AND ts < $2 AND project_id = $3",
        start,
        end,
        project,
    )
    pool = await asyncpg.create_pool(database, min_size=1, max_size=4)
    try:
        got = await metrics_stats.stats(pool, gpt_pk, start, end, bucket, project)
    finally:
        await pool.close()
    assert got["cost"] == {"usd": None if total is None else float(total)}
    assert {
        p["bucket"]: p["cost"]["usd"] for p in got["series"] if p["cost"]["usd"] is not None
    } == want


async def test_stats_cost_is_null_for_a_gpt_with_no_priced_events(
    database: str, db: asyncpg.Connection
) -> None:
    gpt_pk = await gpt(db, "g")
    await store(db, await gpt(db, "priced"), None)  # another GPT's costs stay its own
    from chatbeto_metrics_ingest import repo

    session = SessionRecord(id=uuid.uuid4(), gpt_pk=gpt_pk, usuario_id="u", timestamp_inicio=BASE)
    async with db.transaction():
        await repo.store_sessions(db, [session])
        events = [
            EventRecord(
                id=uuid.uuid4(),
                sesion_id=session.id,
                tipo="query",
                contenido="",
                latency_ms=5,
                tokens_entrada=1,
                tokens_salida=1,
                timestamp=BASE + timedelta(hours=n),
            )
            for n in range(30)
        ]
        await repo.store_events(db, events, await repo.sessions_of(db, events))
    pool = await asyncpg.create_pool(database, min_size=1, max_size=4)
    try:
        got = await metrics_stats.stats(
            pool, gpt_pk, BASE - timedelta(minutes=10), BASE + timedelta(days=2), "day", None
        )
    finally:
        await pool.close()
    assert got["totals"]["events"] == 30
    assert got["cost"] == {"usd": None}
    assert {p["cost"]["usd"] for p in got["series"]} == {None}


async def test_the_migration_backfills_the_cost_from_the_raw_rows(
    empty_database: str,  # noqa: F811
) -> None:
    conn = await asyncpg.connect(empty_database)
    try:
        await migrate_below(conn, 15)
        builtin = await conn.fetchval("SELECT pk FROM gpts WHERE builtin")
        other = await gpt(conn, "g")
        project = await conn.fetchval("INSERT INTO projects (name) VALUES ('p') RETURNING id")
        for day in range(-1, 6):
            await conn.fetchval("SELECT events_partition_for($1)", (BASE + timedelta(day)).date())
        # Raw rows as 0014's metrics-ingest stored them: the built-in GPT's priced and not (two
        # projects and none), another GPT's unpriced.
        session = uuid.uuid4()
        rows = [
            (
                uuid.uuid4(),
                session,
                pk,
                f"u{n % 3}",
                project if pk == builtin and n % 3 else None,
                ("completion", "query")[n % 2],
                100 * (n % 4),
                BASE + timedelta(minutes=47 * n),
                price(n) if pk == builtin else None,
            )
            for pk in (builtin, other)
            for n in range(120)
        ]
        await conn.executemany(
            """INSERT INTO events (id, session_id, gpt_pk, usuario_id, project_id, tipo,
                                   contenido, latency_ms, tokens_entrada, tokens_salida, ts,
                                   cost_usd)
               VALUES ($1, $2, $3, $4, $5, $6, '', $7, 1, 1, $8, $9)""",
            rows,
        )
        # Their rollups as it kept them, split over two shards (a row's shard: its transaction's).
        for unit, table in (("hour", "event_rollups"), ("day", "event_rollups_daily")):
            await conn.execute(
                f"""INSERT INTO {table}
                    SELECT gpt_pk, coalesce(project_id, 0), date_trunc('{unit}', ts, 'UTC'), tipo,
                           latency_bin(latency_ms), count(*), sum(latency_ms),
                           sum(tokens_entrada), sum(tokens_salida), shard
                    FROM (SELECT *, (hashtext(id::text) & 1)::smallint AS shard FROM events) e
                    GROUP BY 1, 2, 3, 4, 5, 10"""
            )
        assert await conn.fetchval("SELECT count(DISTINCT shard) FROM event_rollups") == 2
        await apply_migrations(empty_database)
        assert await differences(conn) == 0
        total = await conn.fetchval("SELECT sum(cost_usd) FROM events")
        assert total is not None
        for table in ("event_rollups", "event_rollups_daily"):
            assert await conn.fetchval(f"SELECT sum(cost_usd) FROM {table}") == total
            assert (
                await conn.fetchval(
                    f"SELECT count(*) FROM {table} WHERE gpt_pk = $1 AND cost_usd IS NOT NULL",
                    other,
                )
                == 0
            )
    finally:
        await conn.close()
