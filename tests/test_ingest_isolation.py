"""A record the worker cannot store costs only itself: the rest of its message (other clients'
acknowledged events) is committed, the record alone is dead-lettered with the reason. And event
ids are scoped to their GPT."""

from __future__ import annotations

import asyncio
import subprocess
import sys
import uuid
from datetime import UTC, datetime, timedelta, timezone
from decimal import Decimal
from pathlib import Path
from typing import Any

import aio_pika
import asyncpg
import orjson
import pytest
from aio_pika.abc import AbstractChannel
from chatbeto import session_ids
from chatbeto.messages import EventRecord, SessionRecord
from chatbeto.topology import METRICS_INGEST, Topology
from chatbeto_metrics_ingest.consumer import MetricsIngest

from tests.conftest import Client, Factory, make_event, wait_for

CHATBETO = str(Path(sys.executable).with_name("chatbeto"))


def h(key: str) -> dict[str, str]:
    return {"X-API-Key": key}


def raw_event(session_id: uuid.UUID | str, **overrides: Any) -> dict[str, Any]:
    event: dict[str, Any] = {
        "id": str(uuid.uuid4()),
        "sesion_id": str(session_id),
        "tipo": "query",
        "contenido": "hola",
        "latency_ms": 5,
        "tokens_entrada": 1,
        "tokens_salida": 2,
        "timestamp": datetime.now(UTC).isoformat(),
    }
    event.update(overrides)
    return event


def raw_batch(sessions: list[dict[str, Any]], events: list[dict[str, Any]]) -> aio_pika.Message:
    """A metrics.batch message built by hand, as a buggy or hostile producer would send it."""
    message_id = str(uuid.uuid4())
    body = {
        "type": "metrics.batch",
        "version": 1,
        "message_id": message_id,
        "occurred_at": datetime.now(UTC).isoformat(),
        "request_id": f"direct-{message_id[:8]}",
        "data": {"sessions": sessions, "events": events},
    }
    return aio_pika.Message(
        orjson.dumps(body),
        message_id=message_id,
        content_type="application/json",
        delivery_mode=aio_pika.DeliveryMode.PERSISTENT,
    )


async def dlq_count(channel: AbstractChannel, namespace: str) -> int:
    declared = await channel.declare_queue(
        Topology(namespace).queue(METRICS_INGEST).dlq, passive=True
    )
    return int(declared.declaration_result.message_count or 0)


async def test_isolating_store_keeps_good_rows_and_names_the_bad_ones(
    db: asyncpg.Connection, factory: Factory
) -> None:
    """Below the worker's own validation: rows only Postgres refuses (records built without
    validation) are found by bisection; the rest commit in the same transaction."""
    from chatbeto_metrics_ingest import repo
    from chatbeto_metrics_ingest.isolate import store_isolating

    await factory.gpt("g")
    gpt_pk = await db.fetchval("SELECT pk FROM gpts WHERE gpt_id = 'g'")
    now = datetime.now(UTC)
    good_session = SessionRecord(
        id=uuid.uuid4(), gpt_pk=gpt_pk, usuario_id="u", timestamp_inicio=now
    )
    sessions = [
        good_session,
        SessionRecord.model_construct(
            id=uuid.uuid4(), gpt_pk=gpt_pk, usuario_id="a\x00b", timestamp_inicio=now
        ),
        # No such GPT: a foreign-key violation, an integrity error of this row alone.
        SessionRecord.model_construct(
            id=uuid.uuid4(), gpt_pk=999_999, usuario_id="u", timestamp_inicio=now
        ),
    ]

    def event(**overrides: Any) -> EventRecord:
        fields: dict[str, Any] = {
            "id": uuid.uuid4(),
            "sesion_id": good_session.id,
            "tipo": "q",
            "contenido": "c",
            "latency_ms": 1,
            "tokens_entrada": 1,
            "tokens_salida": 1,
            "timestamp": now,
        }
        return EventRecord.model_construct(**{**fields, **overrides})

    events = [event() for _ in range(37)]
    events[0] = event(cost_usd=Decimal("0.0012"))
    events[3] = event(contenido="nul\x00")
    events[20] = event(
        timestamp=datetime(9999, 12, 31, 23, 59, 59, tzinfo=timezone(-timedelta(hours=14)))
    )
    events[36] = event(tokens_salida=2**31)
    async with db.transaction():
        counts, bad_sessions = await store_isolating(db, sessions, _sessions)
        known = await repo.sessions_of(db, events)

        async def store(conn: Any, rows: Any) -> Any:
            return await repo.store_events(conn, rows, known)

        stored, bad_events = await store_isolating(db, events, store)
    assert sum(counts) == 1
    assert [s for s, _ in bad_sessions] == sessions[1:]
    assert all(
        isinstance(exc, asyncpg.DataError | asyncpg.IntegrityConstraintViolationError)
        for _, exc in bad_sessions + bad_events
    )
    assert [e for e, _ in bad_events] == [events[3], events[20], events[36]]
    assert len(stored) == 34
    assert await db.fetchval("SELECT count(*) FROM events") == 34
    assert await db.fetchval("SELECT cost_usd FROM events WHERE id = $1", events[0].id) == Decimal(
        "0.0012"
    )
    assert await db.fetchval("SELECT count(*) FROM sessions") == 1
    # The rollups counted exactly what was stored.
    assert await db.fetchval("SELECT sum(events) FROM event_rollups") == 34


async def _sessions(conn: Any, rows: Any) -> list[int]:
    from chatbeto_metrics_ingest import repo

    return [await repo.store_sessions(conn, rows)]


@pytest.mark.slow
async def test_bad_records_mixed_into_concurrent_load_lose_no_acknowledged_event(
    gateway: Client,
    ingest: MetricsIngest,
    factory: Factory,
    db: asyncpg.Connection,
    amqp_url: str,
    namespace: str,
    env: dict[str, str],
) -> None:
    """Clients load the gateway while a producer that skips validation publishes messages mixing
    good records with bad ones (NUL bytes, timestamps Postgres cannot hold, a session of no GPT
    and its event). Every id the gateway acknowledged is stored once, every good record of the
    mixed messages too, and each bad record sits alone in the dead-letter queue with its reason,
    where `chatbeto dlq peek` shows it and `replay` puts exactly it back."""
    project = await factory.project()
    key = await factory.key(project)
    gpt = await factory.gpt(project_id=project)
    gpt_pk = await db.fetchval("SELECT pk FROM gpts WHERE gpt_id = $1", gpt)
    session_key = await session_ids.load_key(db)
    sessions = []
    for n in range(6):
        resp = await gateway.post(
            "/api/sessions", json={"gpt_id": gpt, "usuario_id": f"u{n}"}, headers=h(key)
        )
        assert resp.status == 201
        sessions.append((await resp.json())["id"])
    acknowledged: list[str] = []
    direct_good: list[str] = []
    bad_records = 0
    sent = 0

    async def client(n: int) -> None:
        nonlocal sent
        for i in range(40):
            if i % 4 == 0:
                batch = [make_event(sessions[(n + j) % 6], id=str(uuid.uuid4())) for j in range(25)]
                sent += len(batch)
                resp = await gateway.post(
                    "/api/events/batch", json={"events": batch}, headers=h(key)
                )
                assert resp.status == 207
                results = (await resp.json())["results"]
                assert all(r["status"] == 202 for r in results), results
                acknowledged.extend(r["id"] for r in results)
            else:
                sent += 1
                resp = await gateway.post(
                    "/api/events", json=make_event(sessions[(n + i) % 6]), headers=h(key)
                )
                assert resp.status == 202, await resp.text()
                acknowledged.append((await resp.json())["id"])

    connection = await aio_pika.connect(amqp_url)
    async with connection:
        channel = await connection.channel(publisher_confirms=True)
        exchange = await channel.get_exchange(Topology(namespace).exchange)

        async def poisoner() -> None:
            nonlocal bad_records
            for round_ in range(10):
                orphan = str(uuid.uuid4())
                good = [raw_event(sessions[(round_ + j) % 6]) for j in range(20)]
                bad_sessions = [
                    {
                        "id": str(session_ids.issue(session_key, gpt_pk)),
                        "gpt_pk": gpt_pk,
                        "usuario_id": "poison\x00x",
                        "timestamp_inicio": datetime.now(UTC).isoformat(),
                    },
                    # Valid to the worker, refused by Postgres (no such GPT).
                    {
                        "id": orphan,
                        "gpt_pk": 999_999,
                        "usuario_id": "u",
                        "timestamp_inicio": datetime.now(UTC).isoformat(),
                    },
                ]
                bad_events = [
                    raw_event(sessions[0], contenido="a\x00b"),
                    raw_event(sessions[1], timestamp="9999-12-31T23:59:59-14:00"),
                    raw_event(sessions[2], timestamp="0001-01-01T00:00:00Z"),
                    raw_event(sessions[3], latency_ms=-1),
                    raw_event(orphan),  # its session is dead-lettered: so is it
                ]
                mixed = good[:10] + bad_events + good[10:]
                await exchange.publish(raw_batch(bad_sessions, mixed), routing_key="metrics.batch")
                direct_good.extend(e["id"] for e in good)
                bad_records += len(bad_sessions) + len(bad_events)
                await asyncio.sleep(0.01)

        async with asyncio.TaskGroup() as group:
            for n in range(6):
                group.create_task(client(n))
            group.create_task(poisoner())

        assert len(acknowledged) == sent
        expected = set(acknowledged) | set(direct_good)

        async def all_stored() -> bool:
            n = await db.fetchval(
                "SELECT count(*) FROM events WHERE id = ANY($1::uuid[])", list(expected)
            )
            return bool(n == len(expected))

        await wait_for(all_stored, timeout=120)
        await wait_for(lambda: _equals(dlq_count(channel, namespace), bad_records), timeout=60)
        stored = await db.fetchval("SELECT count(*) FROM events")
        distinct = await db.fetchval("SELECT count(DISTINCT id) FROM events")
        assert stored == distinct == len(expected)  # nothing lost, nothing twice, nothing bad
        assert await db.fetchval("SELECT count(*) FROM sessions") == len(sessions)

        # Each dead letter holds one record and says why.
        queue = await channel.declare_queue(
            Topology(namespace).queue(METRICS_INGEST).dlq, passive=True
        )
        reasons = []
        held = []
        for _ in range(bad_records):
            message = await queue.get(timeout=10)
            held.append(message)
            data = orjson.loads(message.body)["data"]
            assert len(data.get("sessions", [])) + len(data.get("events", [])) == 1
            reasons.append(str(message.headers["x-error"]))
        for message in held:
            await message.nack(requeue=True)
        joined = "\n".join(reasons)
        assert joined.count("usuario_id") == 10  # the NUL session, named by its field
        # The session of no GPT, and its event with it.
        assert joined.count("ForeignKeyViolationError") == 20
        assert joined.count("its session could not be stored") == 10
        assert joined.count("contenido") == 10
        assert joined.count("timestamp") >= 20
        assert joined.count("latency_ms") == 10

    peek = await asyncio.to_thread(
        subprocess.run,
        [CHATBETO, "dlq", "peek", "metrics.ingest", "--limit", str(bad_records + 5)],
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
        check=True,
    )
    lines = peek.stdout.strip().splitlines()
    assert len(lines) == bad_records
    assert all("reason=" in line and "reason=None" not in line for line in lines)
    # Replaying changes nothing stored: each record fails again, alone, and returns.
    replay = await asyncio.to_thread(
        subprocess.run,
        [CHATBETO, "dlq", "replay", "metrics.ingest"],
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
        check=True,
    )
    assert f"replayed {bad_records} message" in replay.stdout
    connection = await aio_pika.connect(amqp_url)
    async with connection:
        channel = await connection.channel()
        # An orphan's event replayed in another consumer batch than its session waits on the
        # retry ladder for it; every other record is back in the dead-letter queue at once.
        await wait_for(
            lambda: _at_least(dlq_count(channel, namespace), bad_records - 10), timeout=60
        )
    assert await db.fetchval("SELECT count(*) FROM events") == len(expected)


async def _equals(value: Any, expected: int) -> bool:
    return bool(await value == expected)


async def _at_least(value: Any, expected: int) -> bool:
    return bool(await value >= expected)


async def test_event_waiting_for_its_session_is_retried_alone(
    ingest: MetricsIngest, db: asyncpg.Connection, factory: Factory, amqp_url: str, namespace: str
) -> None:
    """An event whose session is not committed yet waits on the retry ladder; the rest of its
    message is stored at once, and nothing is dead-lettered."""
    await factory.gpt("g")
    gpt_pk = await db.fetchval("SELECT pk FROM gpts WHERE gpt_id = 'g'")
    key = await session_ids.load_key(db)
    known, later = session_ids.issue(key, gpt_pk), session_ids.issue(key, gpt_pk)
    await db.execute(
        "INSERT INTO sessions (id, gpt_pk, usuario_id, timestamp_inicio) VALUES ($1, $2, 'u', now())",
        known,
        gpt_pk,
    )
    ready, waiting = raw_event(known), raw_event(later)
    connection = await aio_pika.connect(amqp_url)
    async with connection:
        channel = await connection.channel(publisher_confirms=True)
        exchange = await channel.get_exchange(Topology(namespace).exchange)
        await exchange.publish(raw_batch([], [ready, waiting]), routing_key="metrics.batch")
        await wait_for(lambda: db.fetchval("SELECT 1 FROM events WHERE id = $1::uuid", ready["id"]))
        assert await db.fetchval("SELECT count(*) FROM events") == 1
        await db.execute(
            "INSERT INTO sessions (id, gpt_pk, usuario_id, timestamp_inicio) "
            "VALUES ($1, $2, 'u', now())",
            later,
            gpt_pk,
        )
        await wait_for(
            lambda: db.fetchval("SELECT 1 FROM events WHERE id = $1::uuid", waiting["id"]),
            timeout=60,
        )
        assert await db.fetchval("SELECT count(*) FROM events") == 2
        assert await dlq_count(channel, namespace) == 0


async def test_event_ids_are_scoped_to_their_gpt(
    gateway: Client, ingest: MetricsIngest, factory: Factory, db: asyncpg.Connection
) -> None:
    """Project B's event X never hides project A's event X; a retry inside one GPT is one row."""
    tenants = []
    for name in ("a", "b"):
        project = await factory.project(name)
        key = await factory.key(project)
        gpt = await factory.gpt(project_id=project)
        resp = await gateway.post(
            "/api/sessions", json={"gpt_id": gpt, "usuario_id": name}, headers=h(key)
        )
        tenants.append((key, (await resp.json())["id"]))
    shared_id = str(uuid.uuid4())
    (key_a, session_a), (key_b, session_b) = tenants
    for key, session in ((key_b, session_b), (key_a, session_a), (key_a, session_a)):
        resp = await gateway.post(
            "/api/events",
            json=make_event(session, id=shared_id, contenido=f"from {session}"),
            headers=h(key),
        )
        assert resp.status == 202
        assert (await resp.json())["id"] == shared_id

    async def both() -> bool:
        n = await db.fetchval("SELECT count(*) FROM events WHERE id = $1::uuid", shared_id)
        return bool(n == 2)

    await wait_for(both, timeout=30)
    for key, session in tenants:
        body = await (await gateway.get(f"/api/sessions/{session}", headers=h(key))).json()
        assert [(e["id"], e["contenido"]) for e in body["events"]] == [
            (shared_id, f"from {session}")
        ]
    marker = await gateway.post("/api/events", json=make_event(session_a), headers=h(key_a))
    marker_id = (await marker.json())["id"]
    await wait_for(lambda: db.fetchval("SELECT 1 FROM events WHERE id = $1::uuid", marker_id))
    assert await db.fetchval("SELECT count(*) FROM events WHERE id = $1::uuid", shared_id) == 2
