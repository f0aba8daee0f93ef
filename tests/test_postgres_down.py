"""Postgres down (issue 11 item 5): every route that needs it answers 503 `database_unavailable`
with Retry-After, never 500, and the gateway serves again once Postgres is back. So do the model
routes when only the openai-worker's Postgres is away: at once (no 504 at the deadline), with
nothing stored later by a retry.

The gateway (or the worker) reaches Postgres through a TCP proxy the test cuts; the machine's
Postgres, used by every other test, is never touched.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator
from dataclasses import dataclass
from typing import Any

import asyncpg
import openai
import pytest
from aiohttp.test_utils import TestServer
from chatbeto.settings import GatewaySettings
from chatbeto.topology import OPENAI_REQUESTS, RETRY_DELAYS_MS
from chatbeto_tools.stub import CALLS
from pytest_aiohttp import AiohttpClient

from tests.conftest import Client, Factory, make_event, wait_for
from tests.conftest_openai import StartWorker
from tests.tcp_proxy import TcpProxy, proxy_to, through

pytestmark = pytest.mark.slow


@pytest.fixture
async def pg_proxy(database: str) -> AsyncIterator[TcpProxy]:
    proxy, _ = await proxy_to(database, 5432)
    yield proxy
    await proxy.stop()


@pytest.fixture
async def cut_gateway(
    aiohttp_client: AiohttpClient,
    database: str,
    amqp_url: str,
    namespace: str,
    pg_proxy: TcpProxy,
    openai_stub: str,
) -> Client:
    from chatbeto_gateway.app import create_app

    settings = GatewaySettings(
        _env_file=None,
        database_url=through(database, pg_proxy),
        amqp_url=amqp_url,
        amqp_namespace=namespace,
        openai_api_key="sk-test",
        openai_base_url=openai_stub,
        openai_timeout=10,
    )
    return await aiohttp_client(create_app(settings))


@dataclass(frozen=True)
class Tenant:
    project: int
    gpt: str
    cold_gpt: str  # never asked for before the cut: the gateway's GPT cache must ask Postgres
    session: str  # opened through the gateway: its GPT and key are in its caches
    as_project: dict[str, str]
    as_admin: dict[str, str]


async def _tenant(gateway: Client, factory: Factory) -> Tenant:
    project = await factory.project()
    as_project = {"X-API-Key": await factory.key(project)}
    gpt = await factory.gpt(project_id=project)
    cold_gpt = await factory.gpt(project_id=project)
    resp = await gateway.post(
        "/api/sessions", json={"gpt_id": gpt, "usuario_id": "u"}, headers=as_project
    )
    assert resp.status == 201
    session = (await resp.json())["id"]
    as_admin = {"X-API-Key": await factory.key(admin=True)}
    return Tenant(project, gpt, cold_gpt, session, as_project, as_admin)


async def test_every_route_answers_503_with_retry_after_while_postgres_is_down(
    cut_gateway: Client, pg_proxy: TcpProxy, factory: Factory
) -> None:
    t = await _tenant(cut_gateway, factory)
    project, gpt, cold_gpt, session = t.project, t.gpt, t.cold_gpt, t.session
    as_project, as_admin = t.as_project, t.as_admin
    # The ingest hot path needs no Postgres while its caches are fresh: records go to the broker.
    cached: list[tuple[str, str, dict[str, str], Any]] = [
        ("POST", "/api/sessions", as_project, {"gpt_id": gpt, "usuario_id": "v"}),
        ("POST", "/api/events", as_project, make_event(session)),
    ]
    calls: list[tuple[str, str, dict[str, str], Any]] = [
        # metrics
        ("POST", "/api/sessions", as_project, {"gpt_id": cold_gpt, "usuario_id": "v"}),
        ("GET", f"/api/gpts/{gpt}/stats", as_project, None),
        ("GET", "/api/gpts", as_project, None),
        ("GET", f"/api/sessions/{session}", as_project, None),
        # conversations and chat (a chat POST that needs no gateway query goes on to the
        # openai-worker, which meets Postgres itself; none runs here)
        ("GET", "/api/v1/openai/conversations", as_project, None),
        ("GET", "/api/v1/openai/conversations/1", as_project, None),
        ("POST", "/api/v1/openai/sync", as_project, {"projectId": project}),
        # admin
        ("GET", "/api/v1/keys", as_admin, None),
        ("POST", "/api/v1/projects", as_admin, {"name": "while-down"}),
        ("GET", "/api/v1/projects", as_admin, None),
        ("GET", "/api/v1/webhooks/deliveries", as_admin, None),
    ]
    await pg_proxy.stop()  # Postgres is gone for this gateway (and refuses new connections)
    for method, path, headers, body in cached:
        resp = await cut_gateway.request(method, path, json=body, headers=headers)
        assert resp.status in (201, 202, 503), (method, path, resp.status, await resp.text())
    wrong = []
    for method, path, headers, body in calls:
        resp = await cut_gateway.request(method, path, json=body, headers=headers)
        payload = await resp.json()
        error = payload.get("error", {})
        if not (
            resp.status == 503
            and resp.headers.get("Retry-After", "").isdigit()
            and error.get("code") == "database_unavailable"
        ):
            wrong.append((method, path, resp.status, payload))
    assert not wrong
    ready = await cut_gateway.get("/readyz")
    assert ready.status == 503
    assert "database" in (await ready.json())["failing"]

    await pg_proxy.start()  # back on the same port: the pool reconnects by itself

    async def serving() -> bool:
        resp = await cut_gateway.get("/api/v1/projects", headers=as_admin)
        return resp.status == 200

    await wait_for(serving, timeout=60, interval=0.5)
    resp = await cut_gateway.post("/api/events", json=make_event(session), headers=as_project)
    assert resp.status == 202
    assert (await cut_gateway.get("/readyz")).status == 200


def _unavailable(status: int, headers: Any, error: dict[str, Any]) -> bool:
    return (
        status == 503
        and headers.get("Retry-After", "").isdigit()
        and error.get("code") == "database_unavailable"
    )


async def test_model_calls_answer_503_at_once_while_the_workers_postgres_is_down(
    chat_gateway: Client,
    start_openai_worker: StartWorker,
    openai_stub_server: TestServer,
    database: str,
    pg_proxy: TcpProxy,
    factory: Factory,
    db: asyncpg.Connection,
) -> None:
    # Only the worker goes through the proxy: the gateway keeps its own Postgres.
    worker = await start_openai_worker(database_url=through(database, pg_proxy))
    assert worker.runtime is not None
    (requests,) = [c for c in worker.runtime.consumers if c.queue.name.endswith(OPENAI_REQUESTS)]
    project = await factory.project()
    key = await factory.key(project)
    auth = {"X-API-Key": key}
    chat = "/api/v1/openai/chat/completions"
    resp = await chat_gateway.post(
        chat,
        json={"messages": [{"role": "user", "content": "before"}], "projectId": project},
        headers=auth,
    )
    assert resp.status == 200, await resp.text()
    conversation = (await resp.json())["data"]["conversationId"]
    remaining = int(resp.headers["RateLimit-Remaining"])

    async def flushed() -> bool:  # acked after its WAL flush: cut before it, it would retry
        return requests.stats.handled == 1

    await wait_for(flushed, timeout=30)
    handled = requests.stats.handled
    called = sum(openai_stub_server.app[CALLS].values())

    await pg_proxy.stop()
    started = time.monotonic()
    down: list[tuple[str, dict[str, Any]]] = [
        (chat, {"messages": [{"role": "user", "content": "down-chat"}], "projectId": project}),
        (f"/api/v1/openai/conversations/{conversation}/messages", {"message": "down-message"}),
        ("/api/v1/openai/conversations", {"projectId": project, "initialMessage": "down-create"}),
    ]
    for path, body in down:
        resp = await chat_gateway.post(path, json=body, headers=auth)
        payload = await resp.json()
        assert payload["status"] == "error", (path, payload)
        assert _unavailable(resp.status, resp.headers, payload["error"]), (path, payload)
    # A stream that sent chunks already ends with the error as its last event.
    resp = await chat_gateway.post(
        chat,
        json={
            "messages": [{"role": "user", "content": "down-stream"}],
            "projectId": project,
            "stream": True,
        },
        headers=auth,
    )
    text = await resp.text()
    assert resp.status == 200
    assert '"delta"' in text and '"code":"database_unavailable"' in text, text
    assert '"done":true' not in text
    base_url = str(chat_gateway.make_url("/v1"))
    async with openai.AsyncOpenAI(api_key=key, base_url=base_url, max_retries=0) as sdk:
        with pytest.raises(openai.InternalServerError) as caught:
            await sdk.chat.completions.create(
                model="gpt-4", messages=[{"role": "user", "content": "down-v1"}]
            )
    assert caught.value.status_code == 503
    assert caught.value.response.headers.get("Retry-After", "").isdigit()
    assert caught.value.code == "database_unavailable"
    # Answered at once: well before any deadline (OPENAI_TIMEOUT is 10 s per call).
    assert time.monotonic() - started < 10 * len(down)
    # Each model call made at most once: the message's history could not be read (no call).
    assert sum(openai_stub_server.app[CALLS].values()) - called <= len(down) + 1

    async def settled() -> bool:
        return requests.stats.handled - handled >= len(down) + 2

    # Acked, not parked on the retry ladder (whose copy would store it once Postgres is back).
    await wait_for(settled, timeout=30)
    assert requests.stats.retried == 0 and requests.stats.dead_lettered == 0

    await pg_proxy.start()  # back on the same port: the worker's pools reconnect by itself

    async def served() -> Any:
        resp = await chat_gateway.post(
            chat,
            json={"messages": [{"role": "user", "content": "after"}], "projectId": project},
            headers=auth,
        )
        return (resp.headers, await resp.json()) if resp.status == 200 else None

    headers, after = await wait_for(served, timeout=60, interval=0.5)
    # The 503s were not charged against the key's rate limit: only this request and the stream
    # (a 200 whose end is the error, as any answer cut mid-stream) were.
    assert int(headers["RateLimit-Remaining"]) == remaining - 2
    stored = "SELECT count(*) FROM messages WHERE content LIKE $1"
    assert await db.fetchval(stored, "%after%") == 2  # the question and the stub's echo
    assert after["data"]["conversationId"] != conversation
    # Nothing of the 503'd requests is stored later: watched past the retry ladder's first rung.
    watch_until = time.monotonic() + 2 * RETRY_DELAYS_MS[0] / 1000
    while time.monotonic() < watch_until:
        assert await db.fetchval(stored, "%down-%") == 0
        await asyncio.sleep(0.1)


async def test_model_calls_answer_503_before_the_deadline_while_the_workers_postgres_drops_packets(
    chat_gateway: Client,
    start_openai_worker: StartWorker,
    database: str,
    pg_proxy: TcpProxy,
    factory: Factory,
) -> None:
    """A Postgres that drops packets (a partition, a hung server) refuses nothing: every wait
    on it must be bounded, or the caller gets the gateway's 504 at its deadline instead."""
    worker = await start_openai_worker(database_url=through(database, pg_proxy))
    assert worker.runtime is not None
    project = await factory.project()
    key = await factory.key(project)
    base_url = str(chat_gateway.make_url("/v1"))
    async with openai.AsyncOpenAI(api_key=key, base_url=base_url, max_retries=0) as sdk:
        before = await sdk.chat.completions.create(
            model="gpt-4", messages=[{"role": "user", "content": "before"}]
        )
        assert before.choices
        pg_proxy.drop()
        started = time.monotonic()
        with pytest.raises(openai.APIStatusError) as caught:
            await sdk.chat.completions.create(
                model="gpt-4", messages=[{"role": "user", "content": "dropped"}]
            )
        waited = time.monotonic() - started
    assert caught.value.status_code == 503, caught.value
    assert caught.value.response.headers.get("Retry-After", "").isdigit()
    assert caught.value.code == "database_unavailable"
    # The gateway's own deadline is OPENAI_TIMEOUT (10 s) + the reply grace (5 s): its 504
    # comes at 15 s, so a 503 means the worker's wait on Postgres was bounded.
    assert waited < 15, waited


async def test_gateway_routes_answer_503_well_before_the_statement_timeout_while_postgres_drops_packets(
    cut_gateway: Client, pg_proxy: TcpProxy, factory: Factory
) -> None:
    """A Postgres that drops packets refuses nothing: each of the gateway's own queries waits
    for its timeout. That is short for request queries (`GATEWAY_QUERY_TIMEOUT_SECONDS`), so a
    caller gets its 503 in seconds; only reports may run long (`REPORT_TIMEOUT_SECONDS`)."""
    from chatbeto_gateway.app import GATEWAY_QUERY_TIMEOUT_SECONDS

    t = await _tenant(cut_gateway, factory)
    cold_gpt, session = t.cold_gpt, t.session
    as_project, as_admin = t.as_project, t.as_admin
    assert (await cut_gateway.get("/api/v1/keys", headers=as_admin)).status == 200  # admin cached
    calls: list[tuple[str, str, dict[str, str], Any]] = [
        ("POST", "/api/sessions", as_project, {"gpt_id": cold_gpt, "usuario_id": "v"}),
        ("GET", "/api/gpts", as_project, None),
        ("GET", f"/api/sessions/{session}", as_project, None),
        ("GET", "/api/v1/openai/conversations", as_project, None),
        ("GET", "/api/v1/keys", as_admin, None),
        ("POST", "/api/v1/projects", as_admin, {"name": "while-dropped"}),
    ]
    pg_proxy.drop()

    async def timed(method: str, path: str, headers: dict[str, str], body: Any) -> Any:
        started = time.monotonic()
        resp = await cut_gateway.request(method, path, json=body, headers=headers)
        payload = await resp.json()
        return path, resp.status, resp.headers, payload, time.monotonic() - started

    # At once: each waits its own timeout, not the others' (the old statement timeout, 30 s).
    event = ("POST", "/api/events", as_project, make_event(session))
    answers = await asyncio.gather(*(timed(*call) for call in [event, *calls]))
    (_, event_status, _, event_payload, event_waited), *others = answers
    # The ingest hot path answers from its caches while they are fresh (a key is checked again
    # within 5 s, for revocations): 202, or a prompt 503 once it must ask Postgres.
    assert event_status in (202, 503) and event_waited < 25, (event_status, event_payload)
    wrong = [
        (path, status, payload, round(waited, 1))
        for path, status, headers, payload, waited in others
        if not _unavailable(status, headers, payload.get("error", {})) or waited >= 25
    ]
    assert not wrong, (GATEWAY_QUERY_TIMEOUT_SECONDS, wrong)
    ready = await cut_gateway.get("/readyz")
    assert ready.status == 503
    assert "database" in (await ready.json())["failing"]

    await pg_proxy.stop()  # the hung connections are cut: the pool opens fresh ones
    await pg_proxy.start()

    async def serving() -> bool:
        resp = await cut_gateway.get("/api/v1/projects", headers=as_admin)
        return resp.status == 200

    await wait_for(serving, timeout=60, interval=0.5)


async def test_a_keys_requests_do_not_queue_behind_each_others_rate_limit_leases_while_postgres_drops_packets(
    cut_gateway: Client, pg_proxy: TcpProxy, factory: Factory
) -> None:
    """A key's default limit (50/15m) is leased a token at a time, under the bucket's lock: a
    lease that waits for its statement timeout must let the requests queued behind it through
    (fail open) at once, not each after a timeout of its own."""
    project = await factory.project()
    key = await factory.key(project)
    auth = {"X-API-Key": key}
    assert (await cut_gateway.get("/api/v1/openai/status", headers=auth)).status == 200
    pg_proxy.drop()

    async def timed() -> tuple[int, Any, float]:
        started = time.monotonic()
        resp = await cut_gateway.get("/api/v1/openai/status", headers=auth)
        return resp.status, await resp.json(), time.monotonic() - started

    answers = await asyncio.gather(*(timed() for _ in range(5)))
    assert all(
        status == 200 and body["data"]["database"]["status"] == "unhealthy"
        for status, body, _ in answers
    ), answers
    # All waited for the same first lease (then for the status page's own check of Postgres,
    # side by side): within a second or so of each other. Queued behind each other's leases
    # they answered 5 s apart, the last after 32 s.
    waits = sorted(waited for _, _, waited in answers)
    assert waits[-1] - waits[0] < 4, waits
