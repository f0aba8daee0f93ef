"""Every model call priced end to end (gateway, openai-worker, the stub through the real SDK):
exact costs from a test price file, cached tokens, unknown models, and a budget and a token cap
shared by two gateways."""

from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncIterator
from datetime import UTC, datetime
from decimal import Decimal
from pathlib import Path
from typing import Any

import asyncpg
import openai
import pytest
from chatbeto import api_keys
from chatbeto.settings import GatewaySettings
from chatbeto.spend import TPM_PERIOD
from chatbeto_metrics_ingest.consumer import MetricsIngest
from chatbeto_openai_worker.worker import OpenAIWorker
from openai import AsyncOpenAI
from pytest_aiohttp import AiohttpClient

from tests.conftest import Client, Factory, wait_for
from tests.conftest_openai import StartWorker

# USD per 1M tokens: large round numbers, so a call of a few tokens costs an exact amount.
INPUT, CACHED, OUTPUT = Decimal(1000), Decimal(250), Decimal(2000)
MODEL = "gpt-cost-test"  # the stub serves any gpt-* name; only the test price file knows it
M = Decimal(1_000_000)


@pytest.fixture
def price_file(tmp_path: Path) -> Path:
    path = tmp_path / "prices.json"
    path.write_text(
        json.dumps(
            {
                "models": {
                    MODEL: {"input": int(INPUT), "cached_input": int(CACHED), "output": int(OUTPUT)}
                }
            }
        )
    )
    return path


@pytest.fixture
def priced_settings(openai_gateway_settings: GatewaySettings, price_file: Path) -> GatewaySettings:
    return openai_gateway_settings.model_copy(update={"prices_file": price_file})


@pytest.fixture
async def gateways(aiohttp_client: AiohttpClient, priced_settings: GatewaySettings) -> list[Client]:
    """Two gateway replicas on one database and broker."""
    from chatbeto_gateway.app import create_app

    return [await aiohttp_client(create_app(priced_settings)) for _ in range(2)]


@pytest.fixture
async def worker(start_openai_worker: StartWorker, price_file: Path) -> OpenAIWorker:
    return await start_openai_worker(prices_file=price_file)


@pytest.fixture
async def project(factory: Factory) -> int:
    return await factory.project()


async def sdk_for(gateway: Client, key: str) -> AsyncOpenAI:
    return AsyncOpenAI(api_key=key, base_url=str(gateway.make_url("/v1")), max_retries=0)


@pytest.fixture
async def sdk(
    gateways: list[Client], worker: OpenAIWorker, factory: Factory, project: int
) -> AsyncIterator[tuple[AsyncOpenAI, str]]:
    key = await factory.key(project)
    async with await sdk_for(gateways[0], key) as client:
        yield client, key


def cost(prompt: int, cached: int, completion: int) -> Decimal:
    return ((prompt - cached) * INPUT + cached * CACHED + completion * OUTPUT) / M


async def stored_answer(gateway: Client, key: str) -> dict[str, Any]:
    headers = {"Authorization": f"Bearer {key}"}
    resp = await gateway.get("/api/v1/openai/conversations", headers=headers)
    conversations = (await resp.json())["data"]["conversations"]
    resp = await gateway.get(
        f"/api/v1/openai/conversations/{conversations[0]['id']}", headers=headers
    )
    answer: dict[str, Any] = (await resp.json())["data"]["messages"][-1]
    return answer


@pytest.mark.parametrize("streamed", [False, True])
async def test_a_call_costs_exactly_its_usage_at_the_file_price_with_cached_tokens(
    sdk: tuple[AsyncOpenAI, str],
    gateways: list[Client],
    db: asyncpg.Connection,
    factory: Factory,
    streamed: bool,
) -> None:
    client, key = sdk
    # `prompt_cache_key` makes the stub report half the prompt as cached.
    params: dict[str, Any] = {
        "model": MODEL,
        "messages": [{"role": "user", "content": "uno dos tres cuatro"}],
        "prompt_cache_key": "tenant-1",
    }
    if streamed:
        usage = None
        async for chunk in await client.chat.completions.create(
            **params, stream=True, stream_options={"include_usage": True}
        ):
            usage = chunk.usage or usage
    else:
        usage = (await client.chat.completions.create(**params)).usage
    assert usage is not None and usage.prompt_tokens_details is not None
    cached = usage.prompt_tokens_details.cached_tokens or 0
    assert cached == 2
    expected = cost(usage.prompt_tokens, cached, usage.completion_tokens)
    assert expected == Decimal("0.0125")  # (2 * 1000 + 2 * 250 + 5 * 2000) / 1M
    row = await db.fetchrow("SELECT * FROM spend")
    assert row is not None
    assert row["cost_usd"] == expected and row["cached_input_tokens"] == 2
    assert row["model"] == MODEL and row["project_id"] is not None
    answer = await stored_answer(gateways[0], key)
    assert answer["costUsd"] == float(expected)
    admin = await factory.key(admin=True)
    resp = await gateways[1].get("/api/v1/keys", headers={"X-API-Key": admin})
    spent = {k["prefix"]: k["spend"] for k in (await resp.json())["data"]["keys"]}
    assert spent[key.split("_")[1]]["usd"] == float(expected)


async def test_unknown_model_costs_null_and_embeddings_are_priced(
    sdk: tuple[AsyncOpenAI, str], gateways: list[Client], db: asyncpg.Connection, factory: Factory
) -> None:
    client, key = sdk
    await client.chat.completions.create(
        model="gpt-nobody-prices-this", messages=[{"role": "user", "content": "uno"}]
    )
    assert (await stored_answer(gateways[0], key))["costUsd"] is None
    out = await client.embeddings.create(model="text-embedding-3-small", input="uno dos tres")
    rows = await db.fetch("SELECT model, cost_usd, input_tokens FROM spend ORDER BY model")
    by_model = {r["model"]: r for r in rows}
    assert by_model["gpt-nobody-prices-this"]["cost_usd"] is None
    # The shipped price of text-embedding-3-small: 0.02 USD per 1M input tokens.
    embedding = by_model["text-embedding-3-small"]
    assert embedding["input_tokens"] == out.usage.prompt_tokens == 3
    assert embedding["cost_usd"] == Decimal("0.02") * 3 / M
    admin = await factory.key(admin=True)
    resp = await gateways[0].get("/api/v1/costs", headers={"X-API-Key": admin})
    total = (await resp.json())["data"]["total"]
    assert total["calls"] == 2 and total["unpricedCalls"] == 1
    assert total["usd"] == float(Decimal("0.00000006"))


async def test_a_redelivered_request_is_charged_once(
    sdk: tuple[AsyncOpenAI, str], db: asyncpg.Connection
) -> None:
    client, _ = sdk
    await client.chat.completions.create(model=MODEL, messages=[{"role": "user", "content": "uno"}])
    row = await db.fetchrow("SELECT * FROM spend")
    assert row is not None
    # What a second delivery of the same request writes: nothing.
    from chatbeto import spend

    charge = spend.Charge(
        row["external_id"], row["key_id"], row["project_id"], MODEL, 1, 0, 2, row["cost_usd"]
    )
    async with db.transaction():
        assert not await spend.record(db, charge)
    assert await db.fetchval("SELECT count(*) FROM spend") == 1
    assert await db.fetchval("SELECT sum(calls) FROM key_spend_windows") == 1


async def call(gateway: Client, key: str, text: str = "uno") -> int:
    resp = await gateway.post(
        "/v1/chat/completions",
        json={"model": MODEL, "messages": [{"role": "user", "content": text}]},
        headers={"Authorization": f"Bearer {key}"},
    )
    return int(resp.status)


async def test_budget_shared_by_two_gateways_lets_through_what_it_pays_for(
    gateways: list[Client], worker: OpenAIWorker, db: asyncpg.Connection, project: int
) -> None:
    # "uno" costs (1 * 1000 + 2 * 2000) / 1M = 0.005 USD; 0.0175 pays for 3.5 calls: calls go
    # through while the spend is below the budget, so the 4th does and the 5th does not.
    per_call = cost(1, 0, 2)
    plain, key = await api_keys.create(db, is_admin=False, project_id=project, budget="0.0175/1d")
    statuses = [await call(gateways[n % 2], plain) for n in range(8)]
    assert statuses == [200, 200, 200, 200, 429, 429, 429, 429]
    spent = await db.fetchval("SELECT sum(cost_usd) FROM spend WHERE key_id = $1", key.id)
    assert spent == 4 * per_call  # overshoot: one call, the one that crossed the budget
    # The SDK raises what it raises for OpenAI's own 429s.
    async with await sdk_for(gateways[1], plain) as client:
        with pytest.raises(openai.RateLimitError) as caught:
            await client.chat.completions.create(
                model=MODEL, messages=[{"role": "user", "content": "uno"}]
            )
    assert caught.value.code == "budget_exceeded"
    retry = int(caught.value.response.headers["Retry-After"])
    day_end = 86400 - datetime.now(UTC).timestamp() % 86400
    assert abs(retry - day_end) <= 5


async def test_calls_in_flight_when_a_budget_runs_out_still_count(
    gateways: list[Client], worker: OpenAIWorker, db: asyncpg.Connection, project: int
) -> None:
    """The documented overshoot: calls admitted while the spend was below the budget complete
    and count; at most the cost of the calls in flight is spent beyond the budget."""
    plain, key = await api_keys.create(db, is_admin=False, project_id=project, budget="0.0175/1d")
    in_flight = 6
    async with asyncio.TaskGroup() as group:
        tasks = [
            group.create_task(call(gateways[n % 2], plain, "uno [[slow:1.5]]"))
            for n in range(in_flight)
        ]
    statuses = [t.result() for t in tasks]
    rows = await db.fetch("SELECT cost_usd FROM spend WHERE key_id = $1", key.id)
    per_call = rows[0]["cost_usd"]
    spent = sum(r["cost_usd"] for r in rows)
    assert statuses.count(200) == len(rows)
    # At least what the budget pays for went through; beyond it, only what was in flight.
    assert len(rows) >= 4
    assert spent < Decimal("0.0175") + in_flight * per_call
    assert [await call(gw, plain) for gw in gateways] == [429, 429]


async def test_token_cap_per_minute(
    gateways: list[Client], worker: OpenAIWorker, db: asyncpg.Connection, project: int
) -> None:
    # "uno" is 1 prompt + 2 completion tokens: with a cap of 5, the 3rd call in a minute is
    # refused. A minute that turns during the calls starts a new count: then try again.
    for _ in range(3):
        minute = TPM_PERIOD.window(datetime.now(UTC))[0]
        plain, _ = await api_keys.create(db, is_admin=False, project_id=project, tpm=5)
        statuses = [await call(gateways[n % 2], plain) for n in range(3)]
        if TPM_PERIOD.window(datetime.now(UTC))[0] == minute:
            break
    assert statuses == [200, 200, 429]
    resp = await gateways[0].post(
        "/v1/chat/completions",
        json={"model": MODEL, "messages": [{"role": "user", "content": "uno"}]},
        headers={"Authorization": f"Bearer {plain}"},
    )
    assert resp.status == 429 and 1 <= int(resp.headers["Retry-After"]) <= 60
    assert (await resp.json())["error"]["code"] == "token_limit"


async def test_a_limited_key_must_stream_with_usage(
    gateways: list[Client], worker: OpenAIWorker, db: asyncpg.Connection, project: int
) -> None:
    plain, _ = await api_keys.create(db, is_admin=False, project_id=project, budget="5/1d")
    body = {"model": MODEL, "messages": [{"role": "user", "content": "uno"}], "stream": True}
    resp = await gateways[0].post(
        "/v1/chat/completions", json=body, headers={"Authorization": f"Bearer {plain}"}
    )
    assert resp.status == 422
    assert (await resp.json())["error"]["param"] == "stream_options.include_usage"
    resp = await gateways[0].post(
        "/v1/chat/completions",
        json={**body, "stream_options": {"include_usage": True}},
        headers={"Authorization": f"Bearer {plain}"},
    )
    assert resp.status == 200
    await resp.read()
    assert await wait_for(lambda: db.fetchval("SELECT cost_usd FROM spend")) == cost(1, 0, 2)


async def test_metrics_event_and_stats_carry_the_cost(
    sdk: tuple[AsyncOpenAI, str],
    gateways: list[Client],
    db: asyncpg.Connection,
    ingest: MetricsIngest,
) -> None:
    client, key = sdk
    for text in ("uno", "uno dos"):
        await client.chat.completions.create(
            model=MODEL, messages=[{"role": "user", "content": text}]
        )
    await client.chat.completions.create(
        model="gpt-nobody-prices-this", messages=[{"role": "user", "content": "uno"}]
    )
    expected = cost(1, 0, 2) + cost(2, 0, 3)

    async def events() -> list[Any]:
        rows = await db.fetch("SELECT contenido, cost_usd FROM events ORDER BY cost_usd")
        return list(rows) if len(rows) == 3 else []

    rows = await wait_for(events, timeout=30)
    assert [r["cost_usd"] for r in rows] == [cost(1, 0, 2), cost(2, 0, 3), None]
    resp = await gateways[1].get(
        "/api/gpts/chatbeto/stats?bucket=day", headers={"Authorization": f"Bearer {key}"}
    )
    assert resp.status == 200
    stats = await resp.json()
    assert stats["cost"] == {"usd": float(expected)}
    priced = [p["cost"]["usd"] for p in stats["series"] if p["cost"]["usd"] is not None]
    assert priced == [float(expected)]
    # Another project's reader sees none of it.
    other = await Factory(db).key(await Factory(db).project("other"))
    resp = await gateways[0].get(
        "/api/gpts/chatbeto/stats", headers={"Authorization": f"Bearer {other}"}
    )
    assert (await resp.json())["cost"] == {"usd": None}
