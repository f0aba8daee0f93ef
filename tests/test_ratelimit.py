"""Rate limits per key (and per GPT for keyless ingest), shared by every gateway replica."""

from __future__ import annotations

import asyncio
from typing import Any

import asyncpg
import pytest
from chatbeto.settings import GatewaySettings, RateLimit
from pytest_aiohttp import AiohttpClient

from tests.conftest import Client, Factory, make_event, wait_for
from tests.tcp_proxy import proxy_to

LIMIT_HEADERS = ("RateLimit-Limit", "RateLimit-Remaining", "RateLimit-Reset")


def h(key: str) -> dict[str, str]:
    return {"X-API-Key": key}


async def gateway_with(
    aiohttp_client: AiohttpClient, settings: GatewaySettings, **update: Any
) -> Client:
    from chatbeto_gateway.app import create_app

    return await aiohttp_client(create_app(settings.model_copy(update=update)))


async def test_key_limit_counts_down_then_429(gateway: Client, factory: Factory) -> None:
    project = await factory.project()
    key = await factory.key(project, rate_limit="3/1h")
    remaining = []
    for _ in range(3):
        resp = await gateway.get("/api/gpts", headers=h(key))
        assert resp.status == 200
        assert resp.headers["RateLimit-Limit"] == "3"
        assert 0 < int(resp.headers["RateLimit-Reset"]) <= 3600
        remaining.append(int(resp.headers["RateLimit-Remaining"]))
    assert remaining == [2, 1, 0]
    resp = await gateway.get("/api/gpts", headers=h(key))
    assert resp.status == 429
    assert 0 < int(resp.headers["Retry-After"]) <= 3600
    assert resp.headers["RateLimit-Remaining"] == "0"
    assert (await resp.json())["error"]["code"] == "rate_limited"
    # Another key of the same project has its own count.
    other = await factory.key(project, rate_limit="3/1h")
    assert (await gateway.get("/api/gpts", headers=h(other))).status == 200


async def test_default_api_limit_and_envelope(
    aiohttp_client: AiohttpClient, gateway_settings: GatewaySettings, factory: Factory
) -> None:
    gw = await gateway_with(aiohttp_client, gateway_settings, rate_limit="2/15m")
    key = await factory.key(admin=True)
    for _ in range(2):
        resp = await gw.get("/api/v1/keys", headers=h(key))
        assert resp.status == 200
        assert resp.headers["RateLimit-Limit"] == "2"
    resp = await gw.get("/api/v1/keys", headers=h(key))
    assert resp.status == 429
    body = await resp.json()
    assert body["status"] == "error" and body["error"]["code"] == "rate_limited"
    assert all(name in resp.headers for name in (*LIMIT_HEADERS, "Retry-After"))
    # The API and ingest scopes are counted apart: ingest still answers.
    resp = await gw.get("/api/gpts", headers=h(key))
    assert resp.status == 200 and resp.headers["RateLimit-Limit"] == "6000"
    # The OpenAI-compatible surface shares the API scope, with OpenAI's error shape.
    resp = await gw.get("/v1/models", headers={"Authorization": f"Bearer {key}"})
    assert resp.status == 429
    assert (await resp.json())["error"]["type"] == "rate_limited"


async def test_unlimited_routes_have_no_headers(gateway: Client, factory: Factory) -> None:
    key = await factory.key(admin=True)
    resp = await gateway.get("/healthz", headers=h(key))
    assert resp.status == 200 and "RateLimit-Limit" not in resp.headers
    resp = await gateway.get("/api/gpts", headers={"X-API-Key": "cbk_00000000_bad"})
    assert resp.status == 401 and "RateLimit-Limit" not in resp.headers


async def test_limit_holds_across_two_gateways(
    gateway: Client,
    aiohttp_client: AiohttpClient,
    gateway_settings: GatewaySettings,
    factory: Factory,
) -> None:
    other = await gateway_with(aiohttp_client, gateway_settings)
    key = await factory.key(await factory.project(), rate_limit="10/1h")

    async def call(n: int) -> int:
        resp = await (gateway if n % 2 else other).get("/api/gpts", headers=h(key))
        await resp.read()
        return int(resp.status)

    statuses = await asyncio.gather(*(call(n) for n in range(30)))
    assert statuses.count(200) == 10 and statuses.count(429) == 20


async def test_leases_share_a_large_limit_exactly(database: str) -> None:
    """Blocks larger than one token: four replicas, one window, the total still holds."""
    from chatbeto_gateway.access.ratelimit import Limiter, block_size

    rate = RateLimit(1000, 3600)
    assert block_size(rate.limit) == 10
    pools = [await asyncpg.create_pool(database, min_size=1, max_size=2) for _ in range(4)]
    try:
        limiters = [Limiter(pool) for pool in pools]
        decisions = await asyncio.gather(
            *(limiters[n % 4].take("ingest:key:1", rate) for n in range(1300))
        )
        assert sum(d.allowed for d in decisions) <= 1000
        # At most one block per replica is stranded.
        assert sum(d.allowed for d in decisions) >= 1000 - 4 * 10
        async with pools[0].acquire() as conn:
            used = await conn.fetchval(
                "SELECT used FROM rate_windows WHERE bucket = 'ingest:key:1'"
            )
        assert used == 1000
    finally:
        for pool in pools:
            await pool.close()


async def test_keyless_ingest_is_limited_per_gpt(
    aiohttp_client: AiohttpClient, gateway_settings: GatewaySettings, factory: Factory
) -> None:
    gw = await gateway_with(aiohttp_client, gateway_settings, ingest_rate_limit="2/1h")
    project = await factory.project()
    gpt = await factory.gpt(project_id=project, keyless=True)
    other_gpt = await factory.gpt(project_id=project, keyless=True)
    session = None
    for _ in range(2):
        resp = await gw.post("/api/sessions", json={"gpt_id": gpt, "usuario_id": "u"})
        assert resp.status == 201 and resp.headers["RateLimit-Limit"] == "2"
        session = (await resp.json())["id"]
    resp = await gw.post("/api/sessions", json={"gpt_id": gpt, "usuario_id": "u"})
    assert resp.status == 429 and "Retry-After" in resp.headers
    event = {
        "sesion_id": session,
        "tipo": "q",
        "contenido": "c",
        "latency_ms": 1,
        "tokens_entrada": 1,
        "tokens_salida": 1,
    }
    resp = await gw.post("/api/events", json=event)
    assert resp.status == 429
    # A batch over the limit is refused whole, not item by item.
    resp = await gw.post("/api/events/batch", json={"events": [event, event]})
    assert resp.status == 429
    resp = await gw.post("/api/sessions", json={"gpt_id": other_gpt, "usuario_id": "u"})
    assert resp.status == 201


async def test_keyless_batch_counts_once_whatever_its_events(
    aiohttp_client: AiohttpClient, gateway_settings: GatewaySettings, factory: Factory
) -> None:
    gw = await gateway_with(aiohttp_client, gateway_settings, ingest_rate_limit="3/1h")
    gpt = await factory.gpt(project_id=await factory.project(), keyless=True)
    resp = await gw.post("/api/sessions", json={"gpt_id": gpt, "usuario_id": "u"})
    assert resp.status == 201
    event = make_event((await resp.json())["id"])
    # A request is counted once, as a keyed one is: three events of one session are one.
    resp = await gw.post("/api/events/batch", json={"events": [event, event, event]})
    assert resp.status == 207 and resp.headers["RateLimit-Remaining"] == "1"
    assert [r["status"] for r in (await resp.json())["results"]] == [202, 202, 202]
    assert (await gw.post("/api/events", json=event)).status == 202
    resp = await gw.post("/api/events/batch", json={"events": [event]})
    assert resp.status == 429 and "Retry-After" in resp.headers


async def test_window_ends_and_the_key_is_served_again(gateway: Client, factory: Factory) -> None:
    key = await factory.key(await factory.project(), rate_limit="1/2s")

    async def served() -> bool:
        resp = await gateway.get("/api/gpts", headers=h(key))
        return resp.status == 200

    assert await wait_for(served, timeout=5)
    resp = await gateway.get("/api/gpts", headers=h(key))
    if resp.status == 429:  # the window may have just rolled over between the two calls
        assert int(resp.headers["Retry-After"]) <= 2
    assert await wait_for(served, timeout=5)


async def test_postgres_unreachable_fails_open(database: str) -> None:
    """Losing the counters must not take ingestion down with it: the limiter lets traffic
    through (and logs a warning) until Postgres answers again."""
    from chatbeto_gateway.access.ratelimit import Limiter

    proxy, dsn = await proxy_to(database, 5432)
    pool = await asyncpg.create_pool(dsn, min_size=1, max_size=1)
    try:
        limiter = Limiter(pool)
        rate = RateLimit(1, 3600)
        assert (await limiter.take("api:key:7", rate)).allowed
        assert not (await limiter.take("api:key:7", rate)).allowed
        await proxy.stop()
        fresh = await limiter.take("api:key:8", rate)
        assert fresh.allowed and fresh.limit == 1
        # A window already known to be exhausted stays refused from memory.
        assert not (await limiter.take("api:key:7", rate)).allowed
        await limiter.prune()  # logs, does not raise
    finally:
        await proxy.stop()
        pool.terminate()


@pytest.mark.parametrize("text", ["99999999999999999999999/1m", "1/1d"])
async def test_extreme_limits(database: str, text: str) -> None:
    from chatbeto_gateway.access.ratelimit import Limiter

    pool = await asyncpg.create_pool(database, min_size=1, max_size=1)
    try:
        decision = await Limiter(pool).take("api:key:9", RateLimit.parse(text))
        assert decision.allowed and decision.remaining >= 0
    finally:
        await pool.close()


async def test_ended_windows_are_pruned(database: str, db: asyncpg.Connection) -> None:
    from chatbeto_gateway.access.ratelimit import Limiter

    await db.execute(
        "INSERT INTO rate_windows (bucket, window_start, window_end, used, last_grant) "
        "VALUES ('api:key:1', 0, 60, 5, 5)"
    )
    pool = await asyncpg.create_pool(database, min_size=1, max_size=1)
    try:
        limiter = Limiter(pool)
        assert (await limiter.take("api:key:2", RateLimit(5, 3600))).allowed
        await limiter.prune()
    finally:
        await pool.close()
    assert await db.fetchval("SELECT array_agg(bucket) FROM rate_windows") == ["api:key:2"]


async def test_streams_carry_the_headers(gateway: Client, factory: Factory) -> None:
    """An event stream sends its headers before the handler returns: they are there too."""
    project = await factory.project()
    key = await factory.key(project, rate_limit="5/1h")
    gpt = await factory.gpt(project_id=project)
    resp = await gateway.get(f"/api/gpts/{gpt}/live", headers=h(key))
    try:
        assert resp.status == 200
        assert resp.headers["Content-Type"].startswith("text/event-stream")
        assert resp.headers["RateLimit-Limit"] == "5"
        assert resp.headers["RateLimit-Remaining"] == "4"
    finally:
        resp.close()


async def test_5xx_answers_are_not_charged(
    aiohttp_client: AiohttpClient, database: str, amqp_url: str, namespace: str, factory: Factory
) -> None:
    """Clients that retry through a broker outage get 503s that use none of their limit, and
    are served again as soon as the broker is back (not locked out by their retries)."""
    from chatbeto_gateway.app import create_app

    proxy, proxied_amqp = await proxy_to(amqp_url, 5672)
    settings = GatewaySettings(
        _env_file=None,
        database_url=database,
        amqp_url=proxied_amqp,
        amqp_namespace=namespace,
    )
    gw = await aiohttp_client(create_app(settings))
    project = await factory.project()
    key = await factory.key(project, rate_limit="5/1h")
    gpt = await factory.gpt(project_id=project)
    statuses: list[int] = []

    async def session() -> int:
        resp = await gw.post(
            "/api/sessions", json={"gpt_id": gpt, "usuario_id": "u"}, headers=h(key)
        )
        statuses.append(resp.status)
        return resp.status

    try:
        await proxy.stop()
        await wait_for(lambda: _is(session, 503), timeout=30)
        for _ in range(30):  # six times the limit, all failed on our side
            assert await session() in (201, 503)
        await proxy.start()
        await wait_for(lambda: _is(session, 201, 503, refuse=429), timeout=60)
        while statuses[-1] != 429:
            assert await session() in (201, 503, 429)
    finally:
        await proxy.stop()
    assert statuses.count(201) == 5, statuses
    assert set(statuses) == {201, 503, 429}


async def _is(probe: Any, *wanted: int, refuse: int | None = None) -> bool:
    status = await probe()
    assert status != refuse, f"answered {status} while waiting for {wanted}"
    return status == wanted[0]
