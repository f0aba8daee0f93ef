"""Postgres down (issue 11 item 5): every route that needs it answers 503 `database_unavailable`
with Retry-After, never 500, and the gateway serves again once Postgres is back.

The gateway reaches Postgres through a TCP proxy the test cuts; the machine's Postgres, used by
every other test, is never touched.
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from typing import Any

import pytest
from chatbeto.settings import GatewaySettings
from pytest_aiohttp import AiohttpClient

from tests.conftest import Client, Factory, make_event, wait_for
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


async def test_every_route_answers_503_with_retry_after_while_postgres_is_down(
    cut_gateway: Client, pg_proxy: TcpProxy, factory: Factory
) -> None:
    project = await factory.project()
    key = await factory.key(project)
    admin = await factory.key(admin=True)
    gpt = await factory.gpt(project_id=project)
    # Never asked for before the cut, so the gateway's GPT cache must go to Postgres for it.
    cold_gpt = await factory.gpt(project_id=project)
    as_project = {"X-API-Key": key}
    as_admin = {"X-API-Key": admin}
    resp = await cut_gateway.post(
        "/api/sessions", json={"gpt_id": gpt, "usuario_id": "u"}, headers=as_project
    )
    assert resp.status == 201
    session = (await resp.json())["id"]
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
