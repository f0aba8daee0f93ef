"""Budgets and token caps per key: the spend store, the 429s on the model routes of every
gateway, spend in the key listings and the admin cost report."""

from __future__ import annotations

import subprocess
import sys
from datetime import UTC, datetime
from decimal import Decimal
from pathlib import Path

import asyncpg
import pytest
from chatbeto import api_keys, spend
from chatbeto.settings import GatewaySettings
from chatbeto.spend import Budget, Charge, Period
from pytest_aiohttp import AiohttpClient

from tests.conftest import Client, Factory

CHATBETO = str(Path(sys.executable).with_name("chatbeto"))
LIMIT_HEADERS = ("RateLimit-Limit", "RateLimit-Remaining", "RateLimit-Reset")


def bearer(key: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {key}"}


async def budget_key(
    db: asyncpg.Connection,
    project: int,
    *,
    budget: str | None = None,
    tpm: int | None = None,
) -> tuple[str, api_keys.KeyRecord]:
    return await api_keys.create(db, is_admin=False, project_id=project, budget=budget, tpm=tpm)


def charge(key: api_keys.KeyRecord, n: int, usd: str | None, tokens: int = 10) -> Charge:
    return Charge(
        external_id=f"msg-{key.id}-{n}",
        key_id=key.id,
        project_id=key.project_id,
        model="test-model",
        input_tokens=tokens,
        cached_input_tokens=0,
        output_tokens=0,
        cost_usd=None if usd is None else Decimal(usd),
    )


async def second_gateway(aiohttp_client: AiohttpClient, settings: GatewaySettings) -> Client:
    from chatbeto_gateway.app import create_app

    return await aiohttp_client(create_app(settings))


# --- windows and the store ----------------------------------------------------------------


@pytest.mark.parametrize(
    ("text", "canonical"),
    [("20/1mo", "20/1mo"), ("$0.50/1d", "0.5/1d"), ("5/mo", "5/1mo"), ("1.25 / 12h", "1.25/12h")],
)
def test_budget_parses_and_prints(text: str, canonical: str) -> None:
    assert str(Budget.parse(text)) == canonical


@pytest.mark.parametrize("text", ["20", "0/1mo", "-1/1d", "20/0d", "20/1y", "abc/1d", "1e3/1d"])
def test_bad_budget_is_refused(text: str) -> None:
    with pytest.raises(ValueError, match=r"budget|expected"):
        Budget.parse(text)


def test_windows_are_aligned() -> None:
    at = datetime(2026, 12, 31, 23, 59, 30, tzinfo=UTC)
    assert Period(1, "mo").window(at) == (
        datetime(2026, 12, 1, tzinfo=UTC),
        datetime(2027, 1, 1, tzinfo=UTC),
    )
    assert Period(3, "mo").window(at) == (
        datetime(2026, 10, 1, tzinfo=UTC),
        datetime(2027, 1, 1, tzinfo=UTC),
    )
    assert Period(1, "d").window(at) == (
        datetime(2026, 12, 31, tzinfo=UTC),
        datetime(2027, 1, 1, tzinfo=UTC),
    )
    assert Period(1, "m").window(at) == (
        datetime(2026, 12, 31, 23, 59, tzinfo=UTC),
        datetime(2027, 1, 1, tzinfo=UTC),
    )


async def test_record_is_idempotent_and_windows_match_the_ledger(
    db: asyncpg.Connection, factory: Factory
) -> None:
    project = await factory.project()
    _, key = await budget_key(db, project, budget="1/1mo", tpm=1000)
    for n, usd in enumerate(["0.1", "0.25", None, "0.000001"]):
        async with db.transaction():
            assert await spend.record(db, charge(key, n, usd, tokens=7))
    # A redelivered request (same message id) adds nothing.
    async with db.transaction():
        assert not await spend.record(db, charge(key, 1, "0.25", tokens=7))
    in_budget, in_minute = await spend.key_windows(db, key.id, key.budget)
    assert in_budget.usd == Decimal("0.350001") and in_budget.calls == 4
    assert in_minute.tokens == 28
    ledger = await db.fetchval("SELECT sum(cost_usd) FROM spend WHERE key_id = $1", key.id)
    assert ledger == in_budget.usd
    assert await db.fetchval("SELECT count(*) FROM spend WHERE cost_usd IS NULL") == 1


async def test_a_failed_transaction_records_no_spend(
    db: asyncpg.Connection, factory: Factory
) -> None:
    project = await factory.project()
    _, key = await budget_key(db, project, budget="1/1d")

    async def store_then_fail() -> None:
        async with db.transaction():
            await spend.record(db, charge(key, 0, "0.5"))
            raise RuntimeError("the exchange could not be stored")

    with pytest.raises(RuntimeError):
        await store_then_fail()
    in_budget, _ = await spend.key_windows(db, key.id, key.budget)
    assert in_budget.usd == 0
    assert await db.fetchval("SELECT count(*) FROM spend") == 0


# --- the gateway --------------------------------------------------------------------------


async def test_spent_budget_answers_429_on_every_gateway_and_route(
    aiohttp_client: AiohttpClient,
    gateway: Client,
    gateway_settings: GatewaySettings,
    db: asyncpg.Connection,
    factory: Factory,
) -> None:
    other = await second_gateway(aiohttp_client, gateway_settings)
    project = await factory.project()
    plain, key = await budget_key(db, project, budget="0.5/1mo")
    async with db.transaction():
        await spend.record(db, charge(key, 0, "0.3"))
        await spend.record(db, charge(key, 1, "0.2"))  # exactly the budget: spent
    month_end = spend.DEFAULT_PERIOD.window(datetime.now(UTC))[1]
    for gw in (gateway, other):
        resp = await gw.post(
            "/v1/chat/completions",
            json={"model": "gpt-4o", "messages": [{"role": "user", "content": "hi"}]},
            headers=bearer(plain),
        )
        assert resp.status == 429
        retry = int(resp.headers["Retry-After"])
        expected = (month_end - datetime.now(UTC)).total_seconds()
        assert abs(retry - expected) <= 5
        assert all(name in resp.headers for name in LIMIT_HEADERS)
        body = await resp.json()
        # OpenAI's error shape on /v1, so an OpenAI SDK raises RateLimitError.
        assert body["error"]["code"] == "budget_exceeded"
        assert body["error"]["type"] == "budget_exceeded"
        resp = await gw.post(
            "/api/v1/openai/chat/completions",
            json={"messages": [{"role": "user", "content": "hi"}]},
            headers=bearer(plain),
        )
        assert resp.status == 429 and "Retry-After" in resp.headers
        body = await resp.json()
        assert body["status"] == "error" and body["error"]["code"] == "budget_exceeded"
        assert body["error"]["details"] == body["error"]["details"] | {
            "budgetUsd": 0.5,
            "spentUsd": 0.5,
            "window": "1mo",
            "resetAt": month_end.isoformat(),
        }
        # Routes that call no model still answer.
        resp = await gw.get("/api/v1/openai/conversations", headers=bearer(plain))
        assert resp.status == 200


async def test_token_cap_answers_429_token_limit(
    gateway: Client, db: asyncpg.Connection, factory: Factory
) -> None:
    project = await factory.project()
    plain, key = await budget_key(db, project, tpm=100)
    async with db.transaction():
        await spend.record(db, charge(key, 0, None, tokens=100))  # unpriced, still tokens
    resp = await gateway.post(
        "/v1/chat/completions",
        json={"messages": [{"role": "user", "content": "hi"}]},
        headers=bearer(plain),
    )
    assert resp.status == 429
    assert 1 <= int(resp.headers["Retry-After"]) <= 60
    body = await resp.json()
    assert body["error"]["code"] == "token_limit"


async def test_keys_api_sets_and_shows_budget_and_spend(
    gateway: Client, db: asyncpg.Connection, factory: Factory
) -> None:
    admin = await factory.key(admin=True)
    project = await factory.project()
    resp = await gateway.post(
        "/api/v1/keys",
        json={"projectId": project, "budget": "$20/1mo", "tpm": 5000},
        headers=bearer(admin),
    )
    assert resp.status == 201, await resp.text()
    made = (await resp.json())["data"]["apiKey"]
    assert made["budget"] == "20/1mo" and made["tpm"] == 5000 and made["spend"]["usd"] == 0
    record = await api_keys.lookup(db, (await resp.json())["data"]["key"])
    assert record is not None and record.budget == "20/1mo"
    async with db.transaction():
        await spend.record(db, charge(record, 0, "1.5", tokens=40))
    resp = await gateway.get("/api/v1/keys", headers=bearer(admin))
    listed = {k["prefix"]: k for k in (await resp.json())["data"]["keys"]}
    shown = listed[made["prefix"]]["spend"]
    assert shown["usd"] == 1.5 and shown["calls"] == 1 and shown["tokens"] == 40
    assert shown["windowStart"].startswith(datetime.now(UTC).strftime("%Y-%m-01T00:00:00"))
    for bad in ({"budget": "20"}, {"budget": "0/1mo"}, {"tpm": 0}, {"tpm": "many"}):
        resp = await gateway.post(
            "/api/v1/keys", json={"projectId": project, **bad}, headers=bearer(admin)
        )
        assert resp.status == 422, bad
        fields = [d["field"] for d in (await resp.json())["error"]["details"]]
        assert fields == [next(iter(bad))]


async def test_costs_report_per_project_and_key(
    gateway: Client, db: asyncpg.Connection, factory: Factory
) -> None:
    admin = await factory.key(admin=True)
    a, b = await factory.project("a"), await factory.project("b")
    _, ka = await budget_key(db, a)
    _, kb = await budget_key(db, b)
    async with db.transaction():
        await spend.record(db, charge(ka, 0, "0.125"))
        await spend.record(db, charge(ka, 1, None))
        await spend.record(db, charge(kb, 0, "2"))
    resp = await gateway.get("/api/v1/costs", headers=bearer(admin))
    assert resp.status == 200, await resp.text()
    data = (await resp.json())["data"]
    assert data["total"]["usd"] == 2.125 and data["total"]["calls"] == 3
    by_project = {p["projectId"]: p for p in data["projects"]}
    assert by_project[a]["usd"] == 0.125 and by_project[a]["unpricedCalls"] == 1
    assert by_project[b]["name"] == "b" and by_project[b]["usd"] == 2
    by_key = {k["prefix"]: k for k in data["keys"]}
    assert by_key[ka.prefix]["calls"] == 2 and by_key[kb.prefix]["usd"] == 2
    assert sum(x["usd"] for x in data["buckets"]) == 2.125
    resp = await gateway.get(f"/api/v1/costs?projectId={a}", headers=bearer(admin))
    assert [p["projectId"] for p in (await resp.json())["data"]["projects"]] == [a]
    resp = await gateway.get(
        "/api/v1/costs?from=2020-01-01T00:00:00Z&to=2020-02-01T00:00:00Z", headers=bearer(admin)
    )
    assert (await resp.json())["data"]["total"] == (await resp.json())["data"]["total"] | {
        "usd": 0,
        "calls": 0,
    }
    for bad in ("bucket=year", "from=yesterday", "projectId=-1", "from=2030-01-01T00:00:00Z"):
        resp = await gateway.get(f"/api/v1/costs?{bad}", headers=bearer(admin))
        assert resp.status == 422, bad
    # Admin only: a project key does not see the route.
    project_key = await factory.key(a)
    assert (await gateway.get("/api/v1/costs", headers=bearer(project_key))).status == 404


def test_cli_keys_create_with_budget_and_list_shows_spend(env: dict[str, str]) -> None:
    def run(*args: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            [CHATBETO, *args], env=env, capture_output=True, text=True, timeout=60, check=False
        )

    project = run("projects", "create", "budgets").stdout.strip().splitlines()[-1]
    made = run("keys", "create", "--project", project, "--budget", "20/1mo", "--tpm", "900")
    assert made.returncode == 0, made.stderr
    prefix = made.stdout.strip().splitlines()[-1].split("_")[1]
    listed = run("keys", "list")
    header, *rows = listed.stdout.strip().splitlines()
    assert "budget" in header.split("\t") and "spent_usd" in header.split("\t")
    row = next(r.split("\t") for r in rows if r.startswith(prefix))
    assert "20/1mo" in row and "900" in row and "0.000000" in row
    bad = run("keys", "create", "--project", project, "--budget", "lots")
    assert bad.returncode == 2 and bad.stderr.strip().startswith("--budget: ")
    bad = run("keys", "create", "--project", project, "--tpm", "0")
    assert bad.returncode == 2 and "--tpm" in bad.stderr


async def test_budget_check_without_postgres_is_503_and_a_spent_window_stays_refused(
    database: str, db: asyncpg.Connection, factory: Factory
) -> None:

    from chatbeto_gateway.access.budgets import BudgetExceeded, SpendGuard
    from chatbeto_gateway.http.errors import ApiError

    from tests.tcp_proxy import proxy_to

    project = await factory.project()
    _, spent_key = await budget_key(db, project, budget="0.1/1d")
    _, fresh_key = await budget_key(db, project, budget="0.1/1d")
    async with db.transaction():
        await spend.record(db, charge(spent_key, 0, "0.1"))
    proxy, dsn = await proxy_to(database, 5432)
    pool = await asyncpg.create_pool(dsn, min_size=1, max_size=1)
    try:
        guard = SpendGuard(pool)
        with pytest.raises(BudgetExceeded):
            await guard.check(spent_key)
        await proxy.stop()
        with pytest.raises(ApiError) as caught:
            await guard.check(fresh_key)
        assert caught.value.status == 503 and caught.value.code == "database_unavailable"
        assert int(caught.value.headers["Retry-After"]) > 0
        # Known spent: refused from memory, no Postgres needed.
        with pytest.raises(BudgetExceeded):
            await guard.check(spent_key)
    finally:
        await proxy.stop()
        pool.terminate()
