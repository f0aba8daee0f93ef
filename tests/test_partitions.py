"""Events live in daily partitions the service makes; retention drops whole expired days; an
event id stays unique per GPT across partitions, restarts and the migration of an old table."""

from __future__ import annotations

import uuid
from datetime import UTC, date, datetime, timedelta, timezone
from typing import Any

import asyncpg
from chatbeto.migrate import apply_migrations
from chatbeto.settings import MetricsIngestSettings
from chatbeto_metrics_ingest.consumer import MetricsIngest

from tests.conftest import Client, Factory, make_event, wait_for
from tests.test_migrations import empty_database, migrate_below  # noqa: F401 (fixture)


def h(key: str) -> dict[str, str]:
    return {"X-API-Key": key}


async def partitions(db: asyncpg.Connection) -> list[str]:
    rows = await db.fetch(
        """SELECT c.relname FROM pg_inherits i JOIN pg_class c ON c.oid = i.inhrelid
           WHERE i.inhparent = 'events'::regclass ORDER BY 1"""
    )
    return [r["relname"] for r in rows]


async def tenant(gateway: Client, factory: Factory) -> tuple[str, str, str]:
    project = await factory.project()
    key = await factory.key(project)
    gpt = await factory.gpt(project_id=project)
    resp = await gateway.post(
        "/api/sessions", json={"gpt_id": gpt, "usuario_id": "u"}, headers=h(key)
    )
    assert resp.status == 201
    return key, gpt, (await resp.json())["id"]


async def stored_once(
    gateway: Client, db: asyncpg.Connection, key: str, session: str, event_id: str
) -> int:
    """Send a marker after the retries: once it is stored, so are they (same session, one
    gateway, in order)."""
    resp = await gateway.post("/api/events", json=make_event(session), headers=h(key))
    marker = (await resp.json())["id"]
    await wait_for(
        lambda: db.fetchval("SELECT 1 FROM events WHERE id = $1::uuid", marker), timeout=60
    )
    return int(await db.fetchval("SELECT count(*) FROM events WHERE id = $1::uuid", event_id))


async def test_ingest_makes_the_coming_days_partitions_at_start(
    ingest: MetricsIngest, db: asyncpg.Connection
) -> None:
    names = await partitions(db)
    today = datetime.now(UTC).date()
    for n in range(-1, 8):
        assert f"events_p{today + timedelta(days=n):%Y%m%d}" in names
    assert "events_default" in names


async def test_a_retry_across_a_partition_boundary_and_a_restart_is_stored_once(
    gateway: Client,
    factory: Factory,
    db: asyncpg.Connection,
    ingest_settings: MetricsIngestSettings,
) -> None:
    from chatbeto_metrics_ingest.consumer import MetricsIngest

    key, _, session = await tenant(gateway, factory)
    event_id = str(uuid.uuid4())
    # A late day (no partition ahead of it): the worker makes it on demand.
    late = datetime.now(UTC).date() - timedelta(days=20)
    before = f"{late:%Y-%m-%d}T23:59:59.900Z"
    after = f"{late + timedelta(days=1):%Y-%m-%d}T00:00:00.100Z"
    worker = MetricsIngest(ingest_settings)
    await worker.start()
    try:
        for stamp in (before, after):  # the retry was stamped again, in the next day
            resp = await gateway.post(
                "/api/events",
                json=make_event(session, id=event_id, timestamp=stamp),
                headers=h(key),
            )
            assert resp.status == 202
            # The retry follows a stored original (a late day's first message may take the retry
            # ladder while its partition is made, and the two would race for the id).
            await wait_for(
                lambda: db.fetchval("SELECT 1 FROM events WHERE id = $1::uuid", event_id),
                timeout=60,
            )
        assert await stored_once(gateway, db, key, session, event_id) == 1
    finally:
        await worker.close()
    names = await partitions(db)
    assert (
        f"events_p{late:%Y%m%d}" in names and f"events_p{late + timedelta(days=1):%Y%m%d}" in names
    )
    row = await db.fetchrow(
        "SELECT tableoid::regclass::text AS part, ts FROM events WHERE id = $1", uuid.UUID(event_id)
    )
    assert row is not None
    assert row["part"] == f"events_p{late:%Y%m%d}"
    # A new worker (a restart) forgets nothing: the key is in the database, not in memory.
    worker = MetricsIngest(ingest_settings)
    await worker.start()
    try:
        for stamp in (after, datetime.now(UTC).isoformat()):
            resp = await gateway.post(
                "/api/events",
                json=make_event(session, id=event_id, timestamp=stamp),
                headers=h(key),
            )
            assert resp.status == 202
        assert await stored_once(gateway, db, key, session, event_id) == 1
        assert (
            await db.fetchval("SELECT count(*) FROM event_ids WHERE id = $1", uuid.UUID(event_id))
            == 1
        )
    finally:
        await worker.close()


async def test_retention_drops_only_whole_expired_partitions_and_keeps_the_stats(
    gateway: Client,
    factory: Factory,
    db: asyncpg.Connection,
    ingest_settings: MetricsIngestSettings,
) -> None:
    from chatbeto_metrics_ingest.consumer import MetricsIngest

    key, gpt, session = await tenant(gateway, factory)
    today = datetime.now(UTC).date()
    ages = (10, 6, 5, 4, 1, 0)
    worker = MetricsIngest(ingest_settings)
    await worker.start()
    try:
        for age in ages:
            day = today - timedelta(days=age)
            for stamp in ("00:00:00Z", "12:00:00Z", "23:59:59.999Z"):
                resp = await gateway.post(
                    "/api/events",
                    json=make_event(session, timestamp=f"{day:%Y-%m-%d}T{stamp}"),
                    headers=h(key),
                )
                assert resp.status == 202
        total = len(ages) * 3
        await _wait_for_count(db, total)
    finally:
        await worker.close()
    start, end = (today - timedelta(days=30)).isoformat(), (today + timedelta(days=1)).isoformat()

    async def stats() -> dict[str, Any]:
        resp = await gateway.get(
            f"/api/gpts/{gpt}/stats",
            params={"from": f"{start}T00:00:00Z", "to": f"{end}T00:00:00Z"},
            headers=h(key),
        )
        assert resp.status == 200
        body: dict[str, Any] = await resp.json()
        return body

    before = await stats()
    assert before["totals"]["events"] == total
    # Keep 5 days: the days aged 10 and 6 are wholly older than that and go; the one aged 5
    # (whose start is exactly 5 days back) stays whole.
    settings = ingest_settings.model_copy(update={"events_retention_days": 5})
    worker = MetricsIngest(settings)
    await worker.start()  # maintenance runs at start
    await worker.close()
    names = await partitions(db)
    for age in (10, 6):
        assert f"events_p{today - timedelta(days=age):%Y%m%d}" not in names
    for age in (5, 4, 1, 0):
        assert f"events_p{today - timedelta(days=age):%Y%m%d}" in names
    days = [
        r["d"]
        for r in await db.fetch(
            "SELECT DISTINCT (ts AT TIME ZONE 'UTC')::date AS d FROM events ORDER BY 1"
        )
    ]
    assert days == [today - timedelta(days=a) for a in (5, 4, 1, 0)]
    assert await db.fetchval("SELECT count(*) FROM events") == 4 * 3
    assert await db.fetchval("SELECT count(*) FROM event_ids") == 4 * 3
    # The rollups keep the history of the stats.
    after = await stats()
    assert after["totals"] == before["totals"]
    assert after["tokens"] == before["tokens"] and after["eventTypes"] == before["eventTypes"]
    kept = ("bucket", "sessions", "events", "latencyAvg", "tokensEntrada", "tokensSalida")
    assert [{k: p[k] for k in kept} for p in after["series"]] == [
        {k: p[k] for k in kept} for p in before["series"]
    ]
    # Percentiles of dropped days come from the rollups' histogram now, never from the rows
    # that are left (that would call a part the whole).
    assert after["latency"]["percentiles"] == "histogram"


async def _wait_for_count(db: asyncpg.Connection, n: int) -> None:
    """Wait until `events` holds `n` rows; on failure, say where the rows are (by partition)."""

    async def full() -> bool:
        return bool(await db.fetchval("SELECT count(*) FROM events") == n)

    try:
        await wait_for(full, timeout=60)
    except AssertionError:
        where = await db.fetch(
            """SELECT tableoid::regclass::text AS part, count(*) AS n FROM events
               GROUP BY 1 ORDER BY 1"""
        )
        keys = await db.fetchval("SELECT count(*) FROM event_ids")
        raise AssertionError(
            f"events: {[(r['part'], r['n']) for r in where]}, event_ids: {keys}, wanted {n}"
        ) from None


async def test_migrating_an_unpartitioned_events_table_keeps_every_row(
    empty_database: str,  # noqa: F811
) -> None:
    from chatbeto.messages import EventRecord
    from chatbeto_metrics_ingest import repo

    conn = await asyncpg.connect(empty_database)
    try:
        await migrate_below(conn, 9)
        gpt_pk = await conn.fetchval(
            "INSERT INTO gpts (gpt_id, name) VALUES ('g', 'G') RETURNING pk"
        )
        other_pk = await conn.fetchval(
            "INSERT INTO gpts (gpt_id, name) VALUES ('h', 'H') RETURNING pk"
        )
        session = uuid.uuid4()
        await conn.execute(
            "INSERT INTO sessions (id, gpt_pk, usuario_id, timestamp_inicio) VALUES ($1, $2, 'u', now())",
            session,
            gpt_pk,
        )
        now = datetime.now(UTC)
        stamps = [
            now,
            now - timedelta(days=1),
            now - timedelta(days=40),
            datetime(1500, 6, 1, tzinfo=UTC),
            datetime(9999, 1, 1, tzinfo=UTC),
        ]
        shared = uuid.uuid4()
        rows = [(uuid.uuid4(), gpt_pk, t, n) for n, t in enumerate(stamps * 20)]
        rows.append((shared, gpt_pk, now, 7))
        rows.append((shared, other_pk, now, 8))  # the same id in another GPT: another event
        await conn.executemany(
            """INSERT INTO events (id, session_id, gpt_pk, usuario_id, tipo, contenido, latency_ms,
                                   tokens_entrada, tokens_salida, ts, cost_usd)
               VALUES ($1, $5, $2, 'u', 'q', $6, $4, 1, 2, $3, 0.5)""",
            [(*r, session, f"c{r[3]}") for r in rows],
        )
        before = await conn.fetch("SELECT * FROM events ORDER BY gpt_pk, id")
        await apply_migrations(empty_database)
        after = await conn.fetch(
            "SELECT id, session_id, gpt_pk, usuario_id, project_id, tipo, contenido, latency_ms,"
            " tokens_entrada, tokens_salida, ts, request_id, stored_at, cost_usd"
            " FROM events ORDER BY gpt_pk, id"
        )
        assert [tuple(r) for r in after] == [tuple(r) for r in before]
        assert len(after) == 102
        assert await conn.fetchval("SELECT count(*) FROM event_ids") == 102
        names = await partitions(conn)
        for t in stamps:
            assert f"events_p{t.date():%Y%m%d}" in names
        assert await conn.fetchval("SELECT to_regclass('events_unpartitioned')") is None
        # A migrated id retried is stored once.
        record = EventRecord(
            id=shared,
            sesion_id=session,
            tipo="q",
            contenido="again",
            latency_ms=1,
            tokens_entrada=1,
            tokens_salida=1,
            timestamp=now + timedelta(days=1),
        )
        async with conn.transaction():
            known = await repo.sessions_of(conn, [record])
            assert await repo.store_events(conn, [record], known) == []
        assert await conn.fetchval("SELECT count(*) FROM events WHERE id = $1", shared) == 2
    finally:
        await conn.close()


def test_partition_names_sort_by_day() -> None:
    from chatbeto_metrics_ingest.partitions import partition_name

    assert partition_name(date(2026, 1, 2)) == "events_p20260102"


async def test_a_batch_inside_the_known_days_needs_no_check_and_a_late_one_gets_its_day(
    database: str, db: asyncpg.Connection
) -> None:
    from chatbeto_metrics_ingest.partitions import Partitions, partition_name

    pool = await asyncpg.create_pool(database, min_size=1, max_size=2)
    try:
        parts = Partitions(None)
        await parts.maintain(pool)
        now = datetime.now(UTC)
        before = await partitions(db)
        # Inside the run of known days (an offset too): nothing made, the run is remembered.
        await parts.ensure_for(pool, [now, now.astimezone(timezone(timedelta(hours=-11)))])
        assert await partitions(db) == before
        assert parts._covered is not None and parts._covered[0] <= now < parts._covered[1]
        # A late event's day is not in the run: made, and the run asked for again.
        late = now - timedelta(days=20)
        await parts.ensure_for(pool, [now, late])
        assert partition_name(late.date()) in await partitions(db)
        assert parts._covered is None
        # The day before it, in a batch whose other times all lie in the known run.
        await parts.ensure_for(pool, [now, late - timedelta(days=1), now])
        assert partition_name(late.date() - timedelta(days=1)) in await partitions(db)
        assert parts.known >= {late.date(), late.date() - timedelta(days=1)}
        # The longest run is still today's.
        await parts.ensure_for(pool, [now])
        assert parts._covered is not None and parts._covered[0] <= now < parts._covered[1]
    finally:
        await pool.close()
