"""DATABASE_READ_URL: the reports (stats, costs) read the replica and everything else the
primary; a replica that is down costs the reports a 503 and nothing else.

The replica is a snapshot of the test's database (`CREATE DATABASE ... TEMPLATE`), which then
falls behind: events stored in the primary afterwards are what a lagging replica lacks.
"""

from __future__ import annotations

import uuid
from collections.abc import AsyncIterator
from datetime import UTC, datetime, timedelta

import asyncpg
import pytest
from chatbeto.db import database_name, with_database
from chatbeto.messages import SessionRecord
from chatbeto.settings import GatewaySettings
from pytest_aiohttp import AiohttpClient

from tests.conftest import Client, Factory, event_record
from tests.test_cli import chatbeto, closed_port, one_line_failure

BASE = datetime(2026, 3, 1, 9, 0, tzinfo=UTC)
PERIOD = {
    "from": (BASE - timedelta(hours=1)).isoformat(),
    "to": (BASE + timedelta(days=1)).isoformat(),
}


async def store(conn: asyncpg.Connection, gpt_pk: int, events: int) -> None:
    """One session of the GPT with `events` events over its first hours."""
    from chatbeto_metrics_ingest import repo

    await conn.fetchval("SELECT events_partition_for($1)", BASE.date())
    session = SessionRecord(id=uuid.uuid4(), gpt_pk=gpt_pk, usuario_id="u", timestamp_inicio=BASE)
    records = [event_record(session.id, BASE + timedelta(minutes=7 * n), n) for n in range(events)]
    async with conn.transaction():
        await repo.store_sessions(conn, [session])
        await repo.store_events(conn, records, await repo.sessions_of(conn, records))


async def gateway_on(
    aiohttp_client: AiohttpClient, settings: GatewaySettings, read_url: str
) -> Client:
    from chatbeto_gateway.app import create_app

    return await aiohttp_client(
        create_app(settings.model_copy(update={"database_read_url": read_url}))
    )


@pytest.fixture
async def seeded(database: str) -> tuple[str, str]:
    """An admin key and a GPT with 5 stored events, in the test's database."""
    conn = await asyncpg.connect(database)
    try:
        factory = Factory(conn)
        key = await factory.key(admin=True)
        gpt = await factory.gpt()
        await store(conn, await conn.fetchval("SELECT pk FROM gpts WHERE gpt_id = $1", gpt), 5)
    finally:
        await conn.close()
    return key, gpt


@pytest.fixture
async def replica(database: str, seeded: tuple[str, str]) -> AsyncIterator[str]:
    """A copy of the seeded database, taken while nothing is connected to it."""
    name = f"{database_name(database)}_ro"
    admin = await asyncpg.connect(with_database(database, "postgres"))
    try:
        await admin.execute(f'CREATE DATABASE "{name}" TEMPLATE "{database_name(database)}"')
        yield with_database(database, name)
    finally:
        await admin.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
        await admin.close()


async def test_stats_read_the_replica_while_writes_and_other_reads_use_the_primary(
    aiohttp_client: AiohttpClient,
    gateway_settings: GatewaySettings,
    database: str,
    seeded: tuple[str, str],
    replica: str,
) -> None:
    key, gpt = seeded
    conn = await asyncpg.connect(database)
    try:
        # After the snapshot: 3 more events and a GPT that only the primary has.
        await store(conn, await conn.fetchval("SELECT pk FROM gpts WHERE gpt_id = $1", gpt), 3)
        newer = await Factory(conn).gpt()
    finally:
        await conn.close()
    gateway = await gateway_on(aiohttp_client, gateway_settings, replica)
    headers = {"X-API-Key": key}

    resp = await gateway.get(f"/api/gpts/{gpt}/stats", params=PERIOD, headers=headers)
    assert resp.status == 200
    assert (await resp.json())["totals"]["events"] == 5  # the replica's, not the primary's 8
    # The GPT is looked up in the primary: one the replica lacks has (empty) stats, not a 404.
    resp = await gateway.get(f"/api/gpts/{newer}/stats", params=PERIOD, headers=headers)
    assert resp.status == 200
    assert (await resp.json())["totals"]["events"] == 0
    resp = await gateway.get("/api/gpts", headers=headers)
    assert {g["id"] for g in await resp.json()} >= {gpt, newer}

    # With DATABASE_READ_URL on the primary itself, the same stats see all 8.
    gateway = await gateway_on(aiohttp_client, gateway_settings, database)
    resp = await gateway.get(f"/api/gpts/{gpt}/stats", params=PERIOD, headers=headers)
    assert (await resp.json())["totals"]["events"] == 8


async def test_a_replica_that_is_down_answers_the_reports_503_and_nothing_else(
    aiohttp_client: AiohttpClient,
    gateway_settings: GatewaySettings,
    seeded: tuple[str, str],
) -> None:
    key, gpt = seeded
    down = f"postgresql://postgres@127.0.0.1:{closed_port()}/chatbeto"
    gateway = await gateway_on(aiohttp_client, gateway_settings, down)  # it starts regardless
    headers = {"X-API-Key": key}

    for path in (f"/api/gpts/{gpt}/stats", "/api/v1/costs"):
        resp = await gateway.get(path, headers=headers)
        assert resp.status == 503, path
        assert resp.headers["Retry-After"]
        body = await resp.json()
        error = body["error"]
        assert error["code"] == "database_unavailable", path
    assert (await gateway.get("/readyz")).status == 200
    assert (await gateway.get("/api/gpts", headers=headers)).status == 200
    assert (await gateway.get("/api/v1/keys", headers=headers)).status == 200
    resp = await gateway.post(
        "/api/sessions", json={"gpt_id": gpt, "usuario_id": "u"}, headers=headers
    )
    assert resp.status == 201


async def test_a_conflict_with_recovery_on_the_replica_answers_503_not_500(
    aiohttp_client: AiohttpClient,
    gateway_settings: GatewaySettings,
    seeded: tuple[str, str],
    replica: str,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """A hot standby cancels a read that conflicts with what it replays (the primary's DROP of
    an expired partition, say) with SQLSTATE 40001: the caller may retry."""
    from chatbeto_gateway.metrics import stats

    async def cancelled(*_: object) -> None:
        raise asyncpg.SerializationError("canceling statement due to conflict with recovery")

    key, gpt = seeded
    gateway = await gateway_on(aiohttp_client, gateway_settings, replica)
    monkeypatch.setattr(stats, "stats", cancelled)
    resp = await gateway.get(f"/api/gpts/{gpt}/stats", headers={"X-API-Key": key})
    assert resp.status == 503
    assert resp.headers["Retry-After"]
    assert (await resp.json())["error"]["code"] == "database_unavailable"


async def test_a_replica_that_refuses_the_reports_stops_the_gateway_with_one_line(
    env: dict[str, str],
) -> None:
    env["DATABASE_READ_URL"] = with_database(env["DATABASE_URL"], "cbt_no_such_replica")
    env["GATEWAY_PORT"] = "0"
    code, _, err = await chatbeto("run", "gateway", env=env)
    one_line_failure(code, err, "DATABASE_READ_URL", "cbt_no_such_replica", "does not exist")


def test_database_read_url_must_be_a_postgres_url_and_empty_is_unset() -> None:
    assert GatewaySettings(_env_file=None, database_read_url="").database_read_url is None
    with pytest.raises(ValueError, match="postgresql://"):
        GatewaySettings(_env_file=None, database_read_url="mysql://x/y")
