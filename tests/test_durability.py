"""Durability, proven by killing things: the worker (kill -9, SIGTERM) and the broker link."""

from __future__ import annotations

import asyncio
import os
import signal
import subprocess
import sys
import uuid
from functools import partial
from pathlib import Path
from urllib.parse import urlsplit

import aio_pika
import asyncpg
import pytest
from chatbeto.settings import GatewaySettings, MetricsIngestSettings
from chatbeto.topology import METRICS_INGEST, Topology
from chatbeto_metrics_ingest.consumer import MetricsIngest
from pytest_aiohttp import AiohttpClient

from tests.conftest import Client, Factory, make_event, wait_for
from tests.tcp_proxy import TcpProxy

CHATBETO = str(Path(sys.executable).with_name("chatbeto"))
# Generous: CI runs on a busy 2-core machine, and these tests restart processes.
pytestmark = [pytest.mark.slow, pytest.mark.timeout(300)]


def spawn_ingest(env: dict[str, str], log: Path | None = None) -> subprocess.Popen[bytes]:
    """metrics-ingest as an operator starts it; its log goes to `log` (appended)."""
    with open(log or os.devnull, "ab") as sink:
        return subprocess.Popen(
            [CHATBETO, "run", "metrics-ingest"], env=env, stdout=subprocess.DEVNULL, stderr=sink
        )


async def count_ids(db: asyncpg.Connection, ids: list[str]) -> int:
    return int(await db.fetchval("SELECT count(*) FROM events WHERE id = ANY($1::uuid[])", ids))


async def setup_sessions(gateway: Client, factory: Factory, n: int = 5) -> tuple[str, list[str]]:
    project = await factory.project()
    key = await factory.key(project)
    gpt = await factory.gpt(project_id=project)
    sessions = []
    for i in range(n):
        resp = await gateway.post(
            "/api/sessions", json={"gpt_id": gpt, "usuario_id": f"u{i}"}, headers={"X-API-Key": key}
        )
        assert resp.status == 201
        sessions.append((await resp.json())["id"])
    return key, sessions


async def test_kill_9_ingest_while_events_stream_loses_nothing_stores_nothing_twice(
    gateway: Client, factory: Factory, db: asyncpg.Connection, env: dict[str, str]
) -> None:
    key, sessions = await setup_sessions(gateway, factory)
    accepted: list[str] = []
    done = asyncio.Event()

    async def producer(n: int) -> None:
        i = 0
        while not done.is_set():
            if i % 3 == 0:
                batch = [
                    make_event(sessions[(i + j) % len(sessions)], id=str(uuid.uuid4()))
                    for j in range(40)
                ]
                resp = await gateway.post(
                    "/api/events/batch", json={"events": batch}, headers={"X-API-Key": key}
                )
                assert resp.status == 207
                accepted.extend(
                    r["id"] for r in (await resp.json())["results"] if r["status"] == 202
                )
            else:
                resp = await gateway.post(
                    "/api/events",
                    json=make_event(sessions[i % len(sessions)]),
                    headers={"X-API-Key": key},
                )
                assert resp.status == 202
                accepted.append((await resp.json())["id"])
            i += 1
            await asyncio.sleep(0)

    worker = spawn_ingest(env)
    try:
        # A TaskGroup: a producer's failed assertion (a 429, a 5xx) ends the test with it.
        async with asyncio.TaskGroup() as group:
            for n in range(4):
                group.create_task(producer(n))
            for round_ in range(3):
                # Let it store part of the stream, then kill it mid-flight and start a new one.
                await wait_for(partial(_len_at_least, accepted, 400 * (round_ + 1)), timeout=120)
                stored = await db.fetchval("SELECT count(*) FROM events")
                await wait_for(partial(_at_least, db, stored + 1), timeout=120)
                worker.send_signal(signal.SIGKILL)
                await asyncio.to_thread(worker.wait, 30)
                worker = spawn_ingest(env)
            done.set()
        assert len(accepted) > 500
        await wait_for(lambda: _exactly(db, accepted), timeout=120)
        total = await db.fetchval("SELECT count(*) FROM events")
        distinct = await db.fetchval("SELECT count(DISTINCT id) FROM events")
        assert total == distinct == len(set(accepted))
    finally:
        done.set()
        worker.send_signal(signal.SIGTERM)
        await asyncio.to_thread(worker.wait, 60)


async def _at_least(db: asyncpg.Connection, n: int) -> bool:
    return bool(await db.fetchval("SELECT count(*) FROM events") >= n)


async def _exactly(db: asyncpg.Connection, ids: list[str]) -> bool:
    return await count_ids(db, ids) == len(set(ids))


async def test_sigterm_drains_and_exits_cleanly(
    gateway: Client, factory: Factory, db: asyncpg.Connection, env: dict[str, str], tmp_path: Path
) -> None:
    key, sessions = await setup_sessions(gateway, factory, 2)
    log = tmp_path / "ingest.log"
    worker = spawn_ingest(env, log)
    accepted: list[str] = []
    for i in range(30):
        batch = [make_event(sessions[i % 2]) for _ in range(50)]
        resp = await gateway.post(
            "/api/events/batch", json={"events": batch}, headers={"X-API-Key": key}
        )
        accepted.extend(r["id"] for r in (await resp.json())["results"])
    await wait_for(lambda: _at_least(db, 1), timeout=60)
    worker.send_signal(signal.SIGTERM)
    assert await asyncio.to_thread(worker.wait, 45) == 0
    assert "worker stopped" in log.read_text()
    # What it had not taken is still on the broker: a new worker stores all of it, once.
    worker = spawn_ingest(env)
    try:
        await wait_for(lambda: _exactly(db, accepted), timeout=120)
        assert await db.fetchval("SELECT count(*) FROM events") == len(accepted)
    finally:
        worker.send_signal(signal.SIGTERM)
        await asyncio.to_thread(worker.wait, 60)


async def test_broker_outage_answers_503_never_2xx_and_recovers(
    aiohttp_client: AiohttpClient,
    database: str,
    amqp_url: str,
    namespace: str,
    factory: Factory,
    db: asyncpg.Connection,
    ingest: MetricsIngest,
) -> None:
    from chatbeto_gateway.app import create_app

    parts = urlsplit(amqp_url)
    proxy = TcpProxy(parts.hostname or "127.0.0.1", parts.port or 5672)
    await proxy.start()
    proxied = amqp_url.replace(f":{parts.port or 5672}", f":{proxy.port}", 1)
    if f":{proxy.port}" not in proxied:
        proxied = (
            f"amqp://{parts.username}:{parts.password}@127.0.0.1:{proxy.port}{parts.path or '/'}"
        )
    settings = GatewaySettings(
        _env_file=None,
        database_url=database,
        amqp_url=proxied,
        amqp_namespace=namespace,
    )
    gateway = await aiohttp_client(create_app(settings))
    key, sessions = await setup_sessions(gateway, factory, 3)
    accepted: list[str] = []
    statuses: list[int] = []
    stop = asyncio.Event()

    async def producer() -> None:
        i = 0
        while not stop.is_set():
            event = make_event(sessions[i % 3], id=str(uuid.uuid4()))
            resp = await gateway.post("/api/events", json=event, headers={"X-API-Key": key})
            statuses.append(resp.status)
            assert resp.status in (202, 503), await resp.text()
            if resp.status == 202:
                accepted.append(event["id"])
            else:
                assert (await resp.json())["error"]["code"] == "broker_unavailable"
            i += 1
            await asyncio.sleep(0.002)

    try:
        # A TaskGroup: an answer other than 202/503 (a 429 once the outage used up the limit,
        # a 500) fails the test instead of hiding in a gather(return_exceptions=True).
        async with asyncio.TaskGroup() as group:
            for _ in range(8):
                group.create_task(producer())
            await wait_for(lambda: _len_at_least(accepted, 100), timeout=60)
            await proxy.stop()  # the broker is gone for this gateway
            cut_at = len(statuses)
            await wait_for(lambda: _has_503_after(statuses, cut_at), timeout=30)
            ready = await gateway.get("/readyz")
            assert ready.status == 503
            assert "broker" in (await ready.json())["failing"]
            await proxy.start()  # back, on the same port: the gateway reconnects by itself
            back_at = len(accepted)
            await wait_for(lambda: _len_at_least(accepted, back_at + 100), timeout=60)
            assert (await gateway.get("/readyz")).status == 200
            stop.set()
    finally:
        stop.set()
        await proxy.stop()
    assert 503 in statuses
    # Every 202 is stored: nothing was answered 2xx without being on the broker.
    await wait_for(lambda: _exactly(db, accepted), timeout=120)


async def _len_at_least(items: list[str], n: int) -> bool:
    return len(items) >= n


async def _has_503_after(statuses: list[int], start: int) -> bool:
    return 503 in statuses[start:]


async def test_poison_message_is_dead_lettered_and_can_be_replayed(
    amqp_url: str, namespace: str, ingest: MetricsIngest, db: asyncpg.Connection
) -> None:
    topo = Topology(namespace)
    queue = topo.queue(METRICS_INGEST)
    connection = await aio_pika.connect(amqp_url)
    async with connection:
        channel = await connection.channel(publisher_confirms=True)
        exchange = await channel.get_exchange(topo.exchange)
        await exchange.publish(
            aio_pika.Message(
                b"{not json", message_id="poison-1", delivery_mode=aio_pika.DeliveryMode.PERSISTENT
            ),
            routing_key="metrics.batch",
        )

        async def dead_letters() -> int:
            declared = await channel.declare_queue(queue.dlq, passive=True)
            return declared.declaration_result.message_count or 0

        assert await wait_for(dead_letters) == 1
        message = await (await channel.declare_queue(queue.dlq, passive=True)).get(timeout=5)
        assert message.message_id == "poison-1"
        await message.nack(requeue=True)


async def test_transient_failure_retries_then_dead_letters_then_replays(
    amqp_url: str,
    namespace: str,
    database: str,
    factory: Factory,
    db: asyncpg.Connection,
    env: dict[str, str],
    gateway: Client,
) -> None:
    """An event whose session never arrives is retried with backoff, then dead-lettered; once the
    session exists, `chatbeto dlq replay` stores it."""
    from chatbeto import session_ids
    from chatbeto.messages import EventRecord, MetricsBatch, envelope, to_amqp

    project = await factory.project()
    await factory.gpt("g1", project)
    gpt_pk = await db.fetchval("SELECT pk FROM gpts WHERE gpt_id = 'g1'")
    session_id = session_ids.issue(await session_ids.load_key(db), gpt_pk)
    event = EventRecord(
        id=uuid.uuid4(),
        sesion_id=session_id,
        tipo="t",
        contenido="c",
        latency_ms=1,
        tokens_entrada=1,
        tokens_salida=1,
        timestamp="2026-01-01T00:00:00Z",
    )
    settings = MetricsIngestSettings(
        _env_file=None,
        database_url=database,
        amqp_url=amqp_url,
        amqp_namespace=namespace,
        ingest_max_tries=2,
    )
    from chatbeto_metrics_ingest.consumer import MetricsIngest

    worker = MetricsIngest(settings)
    await worker.start()
    topo = Topology(namespace)
    try:
        connection = await aio_pika.connect(amqp_url)
        async with connection:
            channel = await connection.channel(publisher_confirms=True)
            exchange = await channel.get_exchange(topo.exchange)
            await exchange.publish(
                to_amqp(envelope(MetricsBatch(events=(event,)))), routing_key="metrics.batch"
            )

            async def dead_letters() -> int:
                declared = await channel.declare_queue(topo.queue(METRICS_INGEST).dlq, passive=True)
                return declared.declaration_result.message_count or 0

            assert await wait_for(dead_letters, timeout=60) == 1
            assert await db.fetchval("SELECT count(*) FROM events") == 0
        # The session shows up; the operator replays.
        await db.execute(
            "INSERT INTO sessions (id, gpt_pk, usuario_id, timestamp_inicio) "
            "VALUES ($1, $2, 'u', now())",
            session_id,
            gpt_pk,
        )
        out = await asyncio.to_thread(
            subprocess.run,
            [CHATBETO, "dlq", "replay", "metrics.ingest"],
            env=env,
            capture_output=True,
            text=True,
            timeout=60,
            check=True,
        )
        assert "replayed 1 message" in out.stdout
        await wait_for(lambda: db.fetchval("SELECT count(*) FROM events WHERE id = $1", event.id))
    finally:
        await worker.close()
