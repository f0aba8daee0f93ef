"""Stats over rollups: exact against the raw rows, duplicates counted once, edges of a period,
the histogram percentiles, the built-in GPT's per-project filter, the dashboard's static files."""

from __future__ import annotations

import random
import uuid
from datetime import UTC, datetime, timedelta
from typing import Any

import asyncpg
import pytest
from chatbeto_gateway.metrics import stats as metrics_stats

from tests.conftest import Client, Factory, make_event, wait_for

pytestmark = pytest.mark.usefixtures("ingest")


def h(key: str) -> dict[str, str]:
    return {"X-API-Key": key}


async def seed(
    gateway: Client, db: asyncpg.Connection, gpt: str, key: str, base: datetime, n_events: int = 60
) -> list[dict[str, Any]]:
    """Sessions and events spread over ~3 days from `base`, some sent twice (retries)."""
    rng = random.Random(7)
    sent: list[dict[str, Any]] = []
    sessions = []
    for n in range(6):
        when = base + timedelta(hours=11 * n, minutes=17 * n)
        resp = await gateway.post(
            "/api/sessions",
            json={
                "gpt_id": gpt,
                "usuario_id": f"user-{n % 3}",
                "timestamp_inicio": when.isoformat(),
            },
            headers=h(key),
        )
        assert resp.status == 201
        sessions.append(((await resp.json())["id"], when))
    for n in range(n_events):
        session, when = sessions[n % len(sessions)]
        event = make_event(
            session,
            id=str(uuid.uuid4()),
            tipo=rng.choice(["query", "feedback", "error"]),
            latency_ms=rng.randint(5, 4000),
            tokens_entrada=rng.randint(0, 50),
            tokens_salida=rng.randint(0, 500),
            timestamp=(when + timedelta(minutes=7 * n)).isoformat(),
        )
        sent.append(event)
    resp = await gateway.post("/api/events/batch", json={"events": sent}, headers=h(key))
    assert resp.status == 207
    # Retries of the first ten: stored once, counted once.
    resp = await gateway.post("/api/events/batch", json={"events": sent[:10]}, headers=h(key))
    assert resp.status == 207

    async def stored() -> bool:
        return bool(await db.fetchval("SELECT count(*) FROM events") == n_events)

    await wait_for(stored)
    return sent


async def raw_stats(
    db: asyncpg.Connection, start: datetime, end: datetime, project: int | None = None
) -> dict[str, Any]:
    """The same figures straight from the raw tables (what the rollups must reproduce)."""
    row = await db.fetchrow(
        """SELECT count(*) AS n, avg(latency_ms)::float8 AS avg,
                  coalesce(sum(tokens_entrada), 0) AS tin, coalesce(sum(tokens_salida), 0) AS tout
           FROM events WHERE ts >= $1 AND ts < $2 AND ($3::bigint IS NULL OR project_id = $3)""",
        start,
        end,
        project,
    )
    assert row is not None
    sessions = await db.fetchval(
        """SELECT count(*) FROM sessions WHERE timestamp_inicio >= $1 AND timestamp_inicio < $2
           AND ($3::bigint IS NULL OR project_id = $3)""",
        start,
        end,
        project,
    )
    users = await db.fetch(
        """SELECT usuario_id, sum(s)::int AS sessions, sum(e)::int AS events FROM (
               SELECT usuario_id, 1 AS s, 0 AS e FROM sessions
               WHERE timestamp_inicio >= $1 AND timestamp_inicio < $2
               UNION ALL SELECT usuario_id, 0, 1 FROM events WHERE ts >= $1 AND ts < $2) x
           GROUP BY 1""",
        start,
        end,
    )
    return {
        "events": row["n"],
        "avg": row["avg"],
        "tokens": {"entrada": row["tin"], "salida": row["tout"]},
        "sessions": sessions,
        "users": {r["usuario_id"]: (r["sessions"], r["events"]) for r in users},
    }


@pytest.mark.parametrize(
    ("start_offset", "end_offset", "bucket"),
    [
        (timedelta(days=-1), timedelta(days=5), "day"),  # aligned: all from rollups
        (timedelta(hours=5, minutes=13), timedelta(days=2, hours=3, minutes=41), "hour"),
        (timedelta(minutes=20), timedelta(minutes=50), "day"),  # inside one hour: all raw
        (timedelta(days=-10), timedelta(days=40), "week"),
    ],
)
async def test_rollup_stats_match_raw_rows(
    gateway: Client,
    db: asyncpg.Connection,
    factory: Factory,
    start_offset: timedelta,
    end_offset: timedelta,
    bucket: str,
) -> None:
    project = await factory.project()
    key = await factory.key(project)
    gpt = await factory.gpt(project_id=project)
    base = datetime(2026, 3, 2, 9, 30, tzinfo=UTC)
    await seed(gateway, db, gpt, key, base)
    start, end = base + start_offset, base + end_offset
    resp = await gateway.get(
        f"/api/gpts/{gpt}/stats",
        params={"from": start.isoformat(), "to": end.isoformat(), "bucket": bucket},
        headers=h(key),
    )
    assert resp.status == 200
    stats = await resp.json()
    want = await raw_stats(db, start, end)
    assert stats["totals"] == {"sessions": want["sessions"], "events": want["events"]}
    assert sum(s["count"] for s in stats["sessions"]) == want["sessions"]
    assert sum(t["count"] for t in stats["eventTypes"]) == want["events"]
    assert sum(p["events"] for p in stats["series"]) == want["events"]
    assert stats["tokens"] == want["tokens"]
    if want["events"]:
        assert stats["latency"]["avg"] == pytest.approx(want["avg"])
        assert stats["latency"]["percentiles"] == "exact"
    users = {u["usuario_id"]: (u["sessions"], u["events"]) for u in stats["users"]}
    assert users == want["users"]
    # Every bucket of the period is present (empty ones as zero), in order.
    buckets = [p["bucket"] for p in stats["series"]]
    assert buckets == sorted(buckets) and len(buckets) == len(set(buckets))


async def test_rollups_count_each_event_once(
    gateway: Client, db: asyncpg.Connection, factory: Factory
) -> None:
    project = await factory.project()
    key = await factory.key(project)
    gpt = await factory.gpt(project_id=project)
    await seed(gateway, db, gpt, key, datetime(2026, 3, 2, 9, 30, tzinfo=UTC), n_events=40)
    assert await db.fetchval("SELECT sum(events) FROM event_rollups") == 40
    assert await db.fetchval("SELECT sum(events) FROM user_rollups") == 40
    assert await db.fetchval("SELECT sum(sessions) FROM session_rollups") == 6
    assert await db.fetchval("SELECT sum(sessions) FROM user_rollups") == 6
    assert await db.fetchval("SELECT sum(events) FROM event_rollups_daily") == 40
    assert await db.fetchval("SELECT sum(events) FROM user_rollups_hourly") == 40
    assert await db.fetchval("SELECT sum(sessions) FROM user_rollups_hourly") == 6
    by_bin = await db.fetchval(
        """SELECT count(*) FROM (SELECT latency_bin(latency_ms) AS b, count(*) AS n FROM events
           GROUP BY 1) e FULL JOIN (SELECT bin, sum(events) AS n FROM event_rollups GROUP BY 1) r
           ON r.bin = e.b WHERE r.n IS DISTINCT FROM e.n"""
    )
    assert by_bin == 0


async def test_histogram_percentiles_when_the_period_is_large(
    gateway: Client, db: asyncpg.Connection, factory: Factory, monkeypatch: pytest.MonkeyPatch
) -> None:
    project = await factory.project()
    key = await factory.key(project)
    gpt = await factory.gpt(project_id=project)
    base = datetime(2026, 3, 2, 9, 30, tzinfo=UTC)
    await seed(gateway, db, gpt, key, base, n_events=200)
    params = {"from": "2026-03-01T00:00:00Z", "to": "2026-04-01T00:00:00Z"}
    exact = await (
        await gateway.get(f"/api/gpts/{gpt}/stats", params=params, headers=h(key))
    ).json()
    monkeypatch.setattr(metrics_stats, "EXACT_PERCENTILE_MAX_EVENTS", 0)
    approx = await (
        await gateway.get(f"/api/gpts/{gpt}/stats", params=params, headers=h(key))
    ).json()
    assert exact["latency"]["percentiles"] == "exact"
    assert approx["latency"]["percentiles"] == "histogram"
    assert approx["latency"]["avg"] == exact["latency"]["avg"]  # sums are exact either way
    bins = metrics_stats.LATENCY_BIN_LOWER_MS
    for q in ("p50", "p95"):
        # The estimate lies in the bin that holds the exact value, or a neighbour.
        real, est = exact["latency"][q], approx["latency"][q]
        index = max(i for i, low in enumerate(bins) if low <= real)
        assert bins[max(index - 1, 0)] <= est <= bins[min(index + 2, len(bins) - 1)], (q, real, est)


async def test_latency_bins_agree_with_the_database(db: asyncpg.Connection) -> None:
    for n, low in enumerate(metrics_stats.LATENCY_BIN_LOWER_MS, start=1):
        assert await db.fetchval("SELECT latency_bin($1)", low) == n
        assert await db.fetchval("SELECT latency_bin($1)", low + 1) == n


def test_percentile_from_histogram() -> None:
    assert metrics_stats.percentile_from_histogram({}, 0.5) is None
    # 100 events in [100, 150): the median interpolates to the middle of the bin.
    assert metrics_stats.percentile_from_histogram({6: 100}, 0.5) == 125


async def test_builtin_gpt_stats_only_show_the_readers_project(
    gateway: Client, db: asyncpg.Connection, factory: Factory
) -> None:
    mine, theirs = await factory.project("mine"), await factory.project("theirs")
    key = await factory.key(mine)
    pk = await db.fetchval("SELECT pk FROM gpts WHERE gpt_id = 'chatbeto'")
    when = datetime(2026, 3, 3, 10, tzinfo=UTC)
    for project, count in ((mine, 2), (theirs, 5)):
        session = uuid.uuid4()
        await db.execute(
            """INSERT INTO sessions (id, gpt_pk, usuario_id, timestamp_inicio, project_id)
               VALUES ($1, $2, 'u', $3, $4)""",
            session,
            pk,
            when,
            project,
        )
        for _ in range(count):
            await db.execute(
                """INSERT INTO events (id, session_id, gpt_pk, usuario_id, project_id, tipo,
                       contenido, latency_ms, tokens_entrada, tokens_salida, ts)
                   VALUES ($1, $2, $3, 'u', $4, 'completion', '', 100, 1, 1, $5)""",
                uuid.uuid4(),
                session,
                pk,
                project,
                when,
            )
    # Rows written straight to the tables are not in the rollups; the stats of a partial hour
    # read them raw, which is what this checks (the rollup path is covered above).
    resp = await gateway.get(
        "/api/gpts/chatbeto/stats",
        params={"from": "2026-03-03T10:00:00Z", "to": "2026-03-03T10:59:00Z"},
        headers=h(key),
    )
    stats = await resp.json()
    assert stats["totals"] == {"sessions": 1, "events": 2}


async def test_dashboard_page_and_static_files(gateway: Client) -> None:
    resp = await gateway.get("/dashboard")
    assert resp.status == 200
    assert resp.content_type == "text/html"
    assert "default-src 'none'" in resp.headers["Content-Security-Policy"]
    html = await resp.text()
    for hook in ("gpt-select", "period-select", "sessions-total", "users-table", "chart-tokens"):
        assert f'data-testid="{hook}"' in html
    js = await gateway.get("/dashboard/static/vendor/chart.umd.min.js")
    assert js.status == 200 and js.content_type == "text/javascript"
    assert (await gateway.get("/dashboard/static/vendor/chart.js.LICENSE.txt")).status == 200
    for bad in (
        "/dashboard/static/../dashboard.py",
        "/dashboard/static/%2e%2e/live.py",
        "/dashboard/static/vendor",
        "/dashboard/static/nope.js",
    ):
        assert (await gateway.get(bad)).status == 404, bad
    spec = await (await gateway.get("/openapi.json")).json()
    assert "/dashboard" in spec["paths"] and "/api/gpts/{gpt_id}/live" in spec["paths"]


def test_tiers_cut_a_period_into_days_hours_and_raw_edges() -> None:
    t = datetime(2026, 3, 2, 9, 30, tzinfo=UTC)
    cut = metrics_stats.tiers(t, t + timedelta(days=3))
    h = timedelta(hours=1)
    assert cut.raw == ((t, t + h / 2), (t + timedelta(days=3) - h / 2, t + timedelta(days=3)))
    assert cut.daily == (datetime(2026, 3, 3, tzinfo=UTC), datetime(2026, 3, 5, tzinfo=UTC))
    assert cut.hourly == (
        (t + h / 2, datetime(2026, 3, 3, tzinfo=UTC)),
        (datetime(2026, 3, 5, tzinfo=UTC), t + timedelta(days=3) - h / 2),
    )
    # Whole days only: nothing raw, nothing hourly (empty ranges sit at the end).
    day = datetime(2026, 3, 1, tzinfo=UTC)
    cut = metrics_stats.tiers(day, day + timedelta(days=30))
    end = day + timedelta(days=30)
    assert cut.daily == (day, end)
    assert all(a == b for a, b in (*cut.raw, *cut.hourly))
    # Inside one hour: all raw. Hourly buckets: no daily tier.
    assert metrics_stats.tiers(t, t + h / 4).raw[0] == (t, t + h / 4)
    assert metrics_stats.tiers(day, end, daily=False).daily == (end, end)
