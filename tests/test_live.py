"""`GET /api/gpts/{gpt_id}/live`: events as they are stored, one broker subscription per gateway
however many streams are open, auth, shutdown, and a live feed that can never fail ingestion."""

from __future__ import annotations

import asyncio
import subprocess
import time
import uuid
from functools import partial
from typing import Any

import aio_pika
import aiohttp
import asyncpg
import orjson
import pytest
from chatbeto.messages import LiveEvent
from chatbeto_gateway.metrics.live import LIVE, LiveHub
from chatbeto_metrics_ingest import live as ingest_live
from chatbeto_metrics_ingest.consumer import MetricsIngest

from tests.conftest import Client, Factory, make_event, wait_for

pytestmark = pytest.mark.usefixtures("ingest")


def h(key: str) -> dict[str, str]:
    return {"X-API-Key": key}


@pytest.fixture
async def tenant(factory: Factory) -> dict[str, Any]:
    project = await factory.project("alpha")
    other = await factory.project("beta")
    return {
        "key": await factory.key(project),
        "gpt": await factory.gpt(project_id=project),
        "other_key": await factory.key(other),
    }


async def next_sse(resp: Any, timeout: float = 5.0) -> tuple[str, Any]:
    """The next `event:`/`data:` block of an open stream (comments skipped)."""
    event, data = "message", ""
    deadline = time.monotonic() + timeout
    while True:
        line = await asyncio.wait_for(resp.content.readline(), deadline - time.monotonic())
        if not line:
            raise EOFError("stream ended")
        text = line.decode().rstrip("\n")
        if text == "":
            if data:
                return event, orjson.loads(data)
            continue
        if text.startswith("event:"):
            event = text[6:].strip()
        elif text.startswith("data:"):
            data += text[5:].strip()


async def open_stream(gateway: Client, gpt: str, key: str) -> aiohttp.ClientResponse:
    resp = await gateway.get(f"/api/gpts/{gpt}/live", headers=h(key))
    assert resp.status == 200
    assert resp.headers["Content-Type"].startswith("text/event-stream")
    assert await next_sse(resp) == ("ready", {"gpt_id": gpt})
    return resp


async def new_session(gateway: Client, gpt: str, key: str, user: str = "ana") -> str:
    resp = await gateway.post(
        "/api/sessions", json={"gpt_id": gpt, "usuario_id": user}, headers=h(key)
    )
    assert resp.status == 201
    return str((await resp.json())["id"])


async def test_new_events_stream_within_two_seconds(
    gateway: Client, tenant: dict[str, Any]
) -> None:
    stream = await open_stream(gateway, tenant["gpt"], tenant["key"])
    session = await new_session(gateway, tenant["gpt"], tenant["key"])
    sent = time.monotonic()
    resp = await gateway.post(
        "/api/events", json=make_event(session, tipo="live.check"), headers=h(tenant["key"])
    )
    event_id = (await resp.json())["id"]
    event, data = await next_sse(stream, timeout=2.0)
    assert time.monotonic() - sent < 2.0
    assert event == "events" and data["gpt_id"] == tenant["gpt"]
    (item,) = data["events"]
    assert item["id"] == event_id and item["tipo"] == "live.check"
    assert item["usuario_id"] == "ana" and item["sesion_id"] == session
    assert "contenido" not in item  # content stays in the database
    stream.close()


async def test_live_needs_a_key_that_sees_the_gpt(gateway: Client, tenant: dict[str, Any]) -> None:
    url = f"/api/gpts/{tenant['gpt']}/live"
    assert (await gateway.get(url)).status == 401
    # A key in the URL is not a way in (URLs end up in logs).
    assert (await gateway.get(url, params={"key": tenant["key"]})).status == 401
    assert (await gateway.get(url, headers=h("cbk_wrong"))).status == 401
    assert (await gateway.get(url, headers=h(tenant["other_key"]))).status == 404
    assert (await gateway.get("/api/gpts/nope/live", headers=h(tenant["key"]))).status == 404


def _listed(*command: str) -> list[list[str]]:
    """`rabbitmqctl -q <command>`'s rows, tab-separated columns."""
    out = subprocess.run(
        ["rabbitmqctl", "-q", *command], capture_output=True, text=True, check=True, timeout=60
    ).stdout
    return [line.split("\t") for line in out.splitlines() if "\t" in line]


def live_queues(namespace: str) -> list[tuple[str, int]]:
    rows = _listed("list_queues", "name", "consumers")
    return [(n, int(c)) for n, c in rows if n.startswith(f"{namespace}chatbeto.live.")]


def live_bindings(namespace: str) -> list[str]:
    """The queues bound to this namespace's live exchange."""
    rows = _listed("list_bindings", "source_name", "destination_name")
    return [dest for source, dest in rows if source == f"{namespace}chatbeto.live"]


async def test_the_live_queue_is_bound_only_while_a_stream_is_open(
    gateway: Client, tenant: dict[str, Any], namespace: str
) -> None:
    hub = gateway.app[LIVE]
    assert await asyncio.to_thread(live_bindings, namespace) == []  # nobody watches: no copies
    stream = await open_stream(gateway, tenant["gpt"], tenant["key"])
    assert await asyncio.to_thread(live_bindings, namespace) == [hub.queue_name]
    stream.close()

    async def unbound() -> bool:
        return await asyncio.to_thread(live_bindings, namespace) == []

    await wait_for(unbound)
    again = await open_stream(gateway, tenant["gpt"], tenant["key"])  # and bound again
    session = await new_session(gateway, tenant["gpt"], tenant["key"])
    await gateway.post("/api/events", json=make_event(session), headers=h(tenant["key"]))
    event, data = await next_sse(again)
    assert event == "events" and len(data["events"]) == 1
    again.close()


async def test_one_broker_subscription_however_many_streams(
    gateway: Client, tenant: dict[str, Any], namespace: str
) -> None:
    streams = [await open_stream(gateway, tenant["gpt"], tenant["key"]) for _ in range(5)]
    hub = gateway.app[LIVE]
    assert hub.subscriber_count == 5
    assert live_queues(namespace) == [(hub.queue_name, 1)]
    session = await new_session(gateway, tenant["gpt"], tenant["key"])
    await gateway.post("/api/events", json=make_event(session), headers=h(tenant["key"]))
    for stream in streams:  # one broker message, fanned out to every stream
        event, data = await next_sse(stream, timeout=2.0)
        assert event == "events" and len(data["events"]) == 1
        stream.close()
    await wait_for(lambda: asyncio.sleep(0, result=hub.subscriber_count == 0))


async def test_project_key_on_the_builtin_gpt_sees_only_its_project() -> None:
    hub = LiveHub()

    def event(project: int) -> LiveEvent:
        return LiveEvent(
            id=uuid.uuid4(),
            sesion_id=uuid.uuid4(),
            gpt_pk=1,
            project_id=project,
            usuario_id="u",
            tipo="completion",
            latency_ms=1,
            tokens_entrada=1,
            tokens_salida=1,
            timestamp="2026-03-01T00:00:00Z",
        )

    with (
        hub.subscribe(1, 7) as mine,
        hub.subscribe(1, None) as admin,
        hub.subscribe(2, None) as other,
    ):
        hub.dispatch((event(7), event(8)))
        assert [e.project_id for e in mine.queue.get_nowait() or []] == [7]
        assert len(admin.queue.get_nowait() or []) == 2
        assert other.queue.empty()
    assert hub.subscriber_count == 0


async def test_a_slow_stream_drops_events_instead_of_growing() -> None:
    hub = LiveHub()
    with hub.subscribe(1, None) as slow:
        for _ in range(slow.queue.maxsize + 10):
            slow.offer([object()])  # type: ignore[list-item]
        assert slow.queue.full() and slow.dropped == 10
        hub.end_streams()  # the end marker still gets in
        items = [slow.queue.get_nowait() for _ in range(slow.queue.qsize())]
        assert items[-1] is None


async def test_gateway_shutdown_ends_open_streams(gateway: Client, tenant: dict[str, Any]) -> None:
    stream = await open_stream(gateway, tenant["gpt"], tenant["key"])
    started = time.monotonic()
    await gateway.server.close()  # on_shutdown ends the stream before handlers are awaited
    assert time.monotonic() - started < 5
    with pytest.raises((EOFError, aiohttp_errors())):
        await next_sse(stream, timeout=2.0)


def aiohttp_errors() -> type[Exception]:
    import aiohttp

    return aiohttp.ClientError


async def test_live_feed_failures_never_fail_ingestion(
    gateway: Client,
    tenant: dict[str, Any],
    db: asyncpg.Connection,
    amqp_url: str,
    namespace: str,
    ingest: MetricsIngest,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    session = await new_session(gateway, tenant["gpt"], tenant["key"])

    async def stored(n: int) -> bool:
        return bool(await db.fetchval("SELECT count(*) FROM events") == n)

    # 1. Building or publishing the live message raises.
    def broken(rows: Any) -> Any:
        raise RuntimeError("live feed down")

    monkeypatch.setattr(ingest_live, "live_message", broken)
    await gateway.post("/api/events", json=make_event(session), headers=h(tenant["key"]))
    await wait_for(lambda: stored(1))

    async def failed() -> bool:  # the live publish runs just after the commit
        return bool(ingest.live.failures >= 1)

    await wait_for(failed)
    monkeypatch.undo()
    # 2. The live exchange is gone (the broker closes the publishing channel).
    connection = await aio_pika.connect(amqp_url)
    async with connection:
        channel = await connection.channel()
        await channel.exchange_delete(f"{namespace}chatbeto.live")
    for n in range(2, 5):
        await gateway.post("/api/events", json=make_event(session), headers=h(tenant["key"]))
        await wait_for(partial(stored, n))
    assert await db.fetchval("SELECT sum(events) FROM event_rollups") == 4
