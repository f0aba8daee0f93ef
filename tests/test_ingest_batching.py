"""How metrics-ingest takes its batches and stores them: a batch is what was delivered while the
previous one was stored, held back for more (100 ms at most) only while it is small (light load:
one transaction for several messages; under load waiting idled Postgres every batch), and its
groups are stored up to two transactions at once, a group waiting only for the transaction
that stores a session its events name."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import cast

import asyncpg
import pytest
from aio_pika.abc import AbstractIncomingMessage, AbstractRobustConnection
from chatbeto import session_ids
from chatbeto.consumer import BatchConsumer
from chatbeto.messages import EventRecord, MetricsBatch, SessionRecord, envelope
from chatbeto.settings import MetricsIngestSettings
from chatbeto.topology import METRICS_INGEST, Topology
from chatbeto_metrics_ingest.consumer import MetricsIngest

from tests.conftest import Factory, event_record, wait_for


async def _nothing(messages: Sequence[AbstractIncomingMessage]) -> None:
    pass


async def _next_batch(consumer: BatchConsumer, first_bytes: int) -> int:
    """The size of the next batch when one message of `first_bytes` is in hand and a second
    arrives 50 ms later."""
    buffer = consumer._buffer  # the delivered messages, as _on_message queues them
    buffer.put_nowait(cast(AbstractIncomingMessage, Delivered(b"x" * first_bytes)))
    second = cast(AbstractIncomingMessage, Delivered(b"{}"))
    asyncio.get_running_loop().call_later(0.05, buffer.put_nowait, second)
    return len(await consumer._next_batch())


async def test_a_small_batch_waits_for_company_and_a_large_one_goes_at_once(
    broker: AbstractRobustConnection, namespace: str
) -> None:
    topo = Topology(namespace)
    queue = topo.queue(METRICS_INGEST)
    waiting = BatchConsumer(broker, topo, queue, _nothing, max_wait_seconds=5, gather_bytes=1000)
    assert await _next_batch(waiting, 10) == 2  # light load: waited for the second
    waiting._buffer = asyncio.Queue()
    assert await _next_batch(waiting, 1000) == 1  # enough in hand: took what it had
    eager = BatchConsumer(broker, topo, queue, _nothing, max_wait_seconds=0)
    assert await _next_batch(eager, 10) == 1  # no gathering wait at all


async def test_metrics_ingest_gathers_only_small_batches(ingest: MetricsIngest) -> None:
    assert ingest.runtime is not None
    (consumer,) = ingest.runtime.consumers
    assert isinstance(consumer, BatchConsumer)
    assert consumer.max_wait_seconds > 0 and consumer.gather_bytes > 0


async def test_every_pooled_connection_has_its_staging_table_and_keeps_it(
    ingest: MetricsIngest,
) -> None:
    """The store skips the staging table's DDL (a round trip a transaction): each connection
    of the pool makes it when it opens, and no reset between borrowers takes it away."""
    pool = ingest.pool
    # Every connection the pool may open, borrowed at once: each one was opened for this.
    conns = [await pool.acquire() for _ in range(pool.get_max_size())]
    try:
        pids = set()
        for conn in conns:
            assert await conn.fetchval("SELECT to_regclass('pg_temp.event_batch') IS NOT NULL")
            await conn.execute("SET application_name = 'borrowed before'")
            pids.add(conn.get_server_pid())
        assert len(pids) == len(conns)
    finally:
        for conn in conns:
            await pool.release(conn)
    again = [await pool.acquire() for _ in range(pool.get_max_size())]
    try:
        for conn in again:
            assert conn.get_server_pid() in pids  # the same sessions, not reopened ones
            assert await conn.fetchval("SELECT to_regclass('pg_temp.event_batch') IS NOT NULL")
            assert await conn.fetchval("SHOW application_name") == "borrowed before"  # no reset
    finally:
        for conn in again:
            await pool.release(conn)


@dataclass(eq=False)
class Delivered:
    """What `handle` reads of a delivered message."""

    body: bytes
    message_id: str | None = None
    headers: dict[str, object] | None = None


def delivered(
    sessions: Sequence[SessionRecord] = (), events: Sequence[EventRecord] = ()
) -> AbstractIncomingMessage:
    batch = MetricsBatch(sessions=tuple(sessions), events=tuple(events))
    return cast(AbstractIncomingMessage, Delivered(envelope(batch).model_dump_json().encode()))


@pytest.fixture
async def one_per_group(ingest_settings: MetricsIngestSettings) -> AsyncIterator[MetricsIngest]:
    """metrics-ingest storing every record of a batch in a transaction of its own."""
    worker = MetricsIngest(ingest_settings.model_copy(update={"ingest_batch_max_events": 1}))
    await worker.start()
    yield worker
    await worker.close()


async def stored(db: asyncpg.Connection, e: EventRecord) -> bool:
    return bool(await db.fetchval("SELECT count(*) FROM events WHERE id = $1", e.id))


async def test_a_group_is_stored_while_an_earlier_one_waits(
    one_per_group: MetricsIngest, db: asyncpg.Connection, factory: Factory, database: str
) -> None:
    await factory.gpt("g")
    gpt_pk = await db.fetchval("SELECT pk FROM gpts WHERE gpt_id = 'g'")
    session = session_ids.issue(await session_ids.load_key(db), gpt_pk)
    await db.execute(
        "INSERT INTO sessions (id, gpt_pk, usuario_id, timestamp_inicio) "
        "VALUES ($1, $2, 'u', now())",
        session,
        gpt_pk,
    )
    first, second = (
        event_record(session, datetime.now(UTC), 5, contenido="hola"),
        event_record(session, datetime.now(UTC), 5, contenido="hola"),
    )
    # Another transaction holds the first event's key: its group waits for it to end.
    holder = await asyncpg.connect(database)
    hold = holder.transaction()
    await hold.start()
    await holder.execute(
        "INSERT INTO event_ids (gpt_pk, id, ts) VALUES ($1, $2, now())", gpt_pk, first.id
    )
    handled = asyncio.create_task(
        one_per_group.handle([delivered(events=[first]), delivered(events=[second])])
    )
    try:
        await wait_for(lambda: stored(db, second), timeout=30)
        assert not await stored(db, first)
    finally:
        await hold.rollback()
        await holder.close()
    await handled
    assert await stored(db, first)


async def test_events_wait_for_the_transaction_storing_their_session(
    one_per_group: MetricsIngest, db: asyncpg.Connection, factory: Factory, database: str
) -> None:
    await factory.gpt("g")
    gpt_pk = await db.fetchval("SELECT pk FROM gpts WHERE gpt_id = 'g'")
    session = SessionRecord(
        id=session_ids.issue(await session_ids.load_key(db), gpt_pk),
        gpt_pk=gpt_pk,
        usuario_id="u",
        timestamp_inicio=datetime.now(UTC),
    )
    later = event_record(session.id, datetime.now(UTC), 5, contenido="hola")
    # Another transaction inserts the same session: the group storing it waits for it to end.
    holder = await asyncpg.connect(database)
    hold = holder.transaction()
    await hold.start()
    await holder.execute(
        "INSERT INTO sessions (id, gpt_pk, usuario_id, timestamp_inicio) "
        "VALUES ($1, $2, 'u', now())",
        session.id,
        gpt_pk,
    )
    handled = asyncio.create_task(
        one_per_group.handle([delivered(sessions=[session]), delivered(events=[later])])
    )

    async def blocked() -> bool:
        return bool(
            await db.fetchval(
                """SELECT count(*) FROM pg_stat_activity
                   WHERE datname = current_database() AND wait_event_type = 'Lock'"""
            )
        )

    try:
        await wait_for(blocked, timeout=30)
    finally:
        await hold.rollback()
        await holder.close()
    await handled  # no PartialFailure: the event found its session, no retry
    assert await stored(db, later)
