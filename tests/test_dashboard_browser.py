"""The dashboard in a real browser: Debian's headless Chromium driven by Playwright (no browser
download). Real gateway, broker, metrics-ingest and Postgres behind it."""

from __future__ import annotations

import socket
import time
from collections.abc import AsyncIterator
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import TYPE_CHECKING, Any

import aiohttp
import asyncpg
import pytest
from aiohttp import web
from chatbeto.settings import GatewaySettings
from chatbeto_gateway.app import create_app
from chatbeto_openai_worker.worker import OpenAIWorker

from tests.conftest import Client, Factory, make_event, wait_for

if TYPE_CHECKING:
    from playwright.async_api import Browser, Page

playwright_api = pytest.importorskip("playwright.async_api")
CHROMIUM = Path("/usr/bin/chromium")
CHROMIUM_ARGS = [
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
]
ARTIFACTS = Path(__file__).resolve().parent.parent / "test-artifacts"
CHARTS = ("chart-sessions", "chart-types", "chart-latency", "chart-tokens")

pytestmark = [
    pytest.mark.usefixtures("ingest"),
    pytest.mark.skipif(not CHROMIUM.exists(), reason="needs Debian's chromium (apt-get install)"),
]


@pytest.fixture
async def browser() -> AsyncIterator[Browser]:
    async with playwright_api.async_playwright() as pw:
        chromium = await pw.chromium.launch(executable_path=str(CHROMIUM), args=CHROMIUM_ARGS)
        yield chromium
        await chromium.close()


class Console:
    """Errors the page reports: console.error lines and uncaught exceptions."""

    def __init__(self, page: Page) -> None:
        self.errors: list[str] = []
        page.on("console", lambda m: self.errors.append(m.text) if m.type == "error" else None)
        page.on("pageerror", lambda e: self.errors.append(f"pageerror: {e}"))


async def seed(gateway: Client, db: asyncpg.Connection, gpt: str, key: str) -> None:
    """Three users over the last ten days, a few event types."""
    now = datetime.now(UTC)
    events = []
    for n, (user, days_ago) in enumerate(
        [("ana", 0), ("ana", 3), ("bob", 1), ("carla", 9), ("bob", 6)]
    ):
        when = now - timedelta(days=days_ago, minutes=5)
        resp = await gateway.post(
            "/api/sessions",
            json={"gpt_id": gpt, "usuario_id": user, "timestamp_inicio": when.isoformat()},
            headers={"X-API-Key": key},
        )
        session = (await resp.json())["id"]
        for k in range(3 + n):
            events.append(
                make_event(
                    session,
                    tipo=("query", "feedback", "query", "error")[k % 4],
                    latency_ms=80 + 40 * k + 15 * n,
                    tokens_entrada=10 + k,
                    tokens_salida=40 + 5 * k,
                    timestamp=(when + timedelta(seconds=30 * k)).isoformat(),
                )
            )
    resp = await gateway.post(
        "/api/events/batch", json={"events": events}, headers={"X-API-Key": key}
    )
    assert resp.status == 207

    async def stored() -> bool:
        return bool(await db.fetchval("SELECT count(*) FROM events") == len(events))

    await wait_for(stored)


@pytest.fixture
async def tenant(gateway: Client, db: asyncpg.Connection, factory: Factory) -> dict[str, Any]:
    project = await factory.project("alpha")
    key = await factory.key(project)
    gpt = await factory.gpt("support-bot", project_id=project)
    await factory.gpt("other-bot", project_id=project)
    await seed(gateway, db, gpt, key)
    return {"key": key, "gpt": gpt}


async def open_dashboard(
    browser: Browser, base: str, key: str, gpt: str
) -> tuple[Any, Console, list[str]]:
    page = await browser.new_page(viewport={"width": 1280, "height": 900})
    console = Console(page)
    urls: list[str] = []
    page.on("request", lambda r: urls.append(r.url))
    await page.goto(f"{base}/dashboard#key={key}&gpt={gpt}")
    await page.wait_for_selector("body[data-loaded]")
    return page, console, urls


async def test_dashboard_shows_the_apis_numbers_and_live_events(
    browser: Browser, gateway: Client, tenant: dict[str, Any]
) -> None:
    key, gpt = tenant["key"], tenant["gpt"]
    base = str(gateway.make_url("")).rstrip("/")
    page, console, urls = await open_dashboard(browser, base, key, gpt)

    # The key left the address bar for session storage, and never went into a URL.
    assert page.url == f"{base}/dashboard"
    assert await page.evaluate("sessionStorage.getItem('chatbeto.key')") == key
    assert not [u for u in urls if key in u]
    assert await page.input_value("[data-testid=gpt-select]") == gpt
    options = await page.eval_on_selector_all(
        "[data-testid=gpt-select] option", "os => os.map(o => o.value)"
    )
    assert sorted(options) == ["chatbeto", "other-bot", "support-bot"]

    # The numbers are the API's, for the request the page made.
    stats_url = next(u for u in urls if "/stats?" in u)
    resp = await gateway.get(stats_url.removeprefix(base), headers={"X-API-Key": key})
    stats = await resp.json()

    async def shown(testid: str) -> str:
        return str(await page.get_attribute(f"[data-testid={testid}]", "data-value"))

    async def shown_is(testid: str, value: str) -> bool:
        return await shown(testid) == value

    assert stats["totals"] == {"sessions": 5, "events": 25}
    assert await shown("sessions-total") == "5"
    assert await shown("events-total") == "25"
    assert await shown("latency-avg") == str(round(stats["latency"]["avg"]))
    assert await shown("tokens-entrada") == str(stats["tokens"]["entrada"])
    assert await shown("tokens-salida") == str(stats["tokens"]["salida"])
    assert await page.inner_text("[data-testid=events-total]") == "25"
    rows = await page.eval_on_selector_all(
        "[data-testid=users-table] tbody tr",
        "trs => trs.map(tr => [...tr.cells].slice(0, 3).map(td => td.textContent))",
    )
    assert rows == [[u["usuario_id"], str(u["sessions"]), str(u["events"])] for u in stats["users"]]
    assert len(rows) == 3

    # Every chart exists, holds the data, and painted pixels.
    for testid in CHARTS:
        drawn = await page.evaluate(
            """id => {
                const canvas = document.querySelector(`[data-testid=${id}]`);
                const chart = Chart.getChart(canvas);
                const values = chart.data.datasets.flatMap(d => d.data).filter(v => v);
                const pixels = canvas.getContext('2d')
                    .getImageData(0, 0, canvas.width, canvas.height).data;
                let painted = 0;
                for (let i = 3; i < pixels.length; i += 4) if (pixels[i] > 0) painted++;
                return {values: values.length, painted, width: canvas.width};
            }""",
            testid,
        )
        assert drawn["values"] > 0 and drawn["painted"] > 1000 and drawn["width"] > 100, (
            testid,
            drawn,
        )
    sessions_chart = await page.evaluate(
        "Chart.getChart(document.querySelector('[data-testid=chart-sessions]')).data.datasets[0].data"
    )
    assert sum(sessions_chart) == 5 and len(sessions_chart) == len(stats["series"])

    ARTIFACTS.mkdir(exist_ok=True)
    await page.screenshot(path=str(ARTIFACTS / "dashboard.png"), full_page=True)

    # Live: a new event shows up without a reload, within 2 seconds, and the totals follow.
    await page.wait_for_selector("[data-testid=live-status].live")
    resp = await gateway.post(
        "/api/sessions", json={"gpt_id": gpt, "usuario_id": "dora"}, headers={"X-API-Key": key}
    )
    session = (await resp.json())["id"]
    sent = time.monotonic()
    resp = await gateway.post(
        "/api/events", json=make_event(session, tipo="live.demo"), headers={"X-API-Key": key}
    )
    event_id = (await resp.json())["id"]
    await page.wait_for_selector(f"[data-event-id='{event_id}']", timeout=2000)
    assert time.monotonic() - sent < 2.0
    # (Polled from here: the page's CSP forbids the eval that wait_for_function uses.)
    await wait_for(lambda: shown_is("events-total", "26"), timeout=3)
    assert await shown("sessions-total") == "6"
    await page.screenshot(path=str(ARTIFACTS / "dashboard-live.png"), full_page=True)

    # Another period: the custom range of one day ending yesterday has less.
    before = await page.get_attribute("body", "data-loaded")
    await page.select_option("[data-testid=period-select]", "day")

    async def reloaded() -> bool:
        return await page.get_attribute("body", "data-loaded") != before

    await wait_for(reloaded)
    assert (await page.get_attribute("[data-testid=range-label]", "class")) == "muted"
    assert console.errors == []


async def test_dashboard_on_a_phone(
    browser: Browser, gateway: Client, tenant: dict[str, Any]
) -> None:
    base = str(gateway.make_url("")).rstrip("/")
    page = await browser.new_page(viewport={"width": 390, "height": 844}, is_mobile=True)
    console = Console(page)
    await page.goto(f"{base}/dashboard#key={tenant['key']}&gpt={tenant['gpt']}")
    await page.wait_for_selector("body[data-loaded]")
    # Nothing wider than the screen.
    assert await page.evaluate("document.documentElement.scrollWidth") <= 390
    ARTIFACTS.mkdir(exist_ok=True)
    await page.screenshot(path=str(ARTIFACTS / "dashboard-phone.png"), full_page=True)
    assert console.errors == []


async def test_wrong_key_gets_a_clear_message(browser: Browser, gateway: Client) -> None:
    base = str(gateway.make_url("")).rstrip("/")
    page = await browser.new_page()
    await page.goto(f"{base}/dashboard#key=cbk_not_a_real_key")
    message = page.locator("[data-testid=auth-error]")
    await message.wait_for(state="visible")
    assert "not accepted" in await message.inner_text()
    assert await page.is_visible("[data-testid=key-input]")
    assert await page.evaluate("sessionStorage.getItem('chatbeto.key')") is None
    ARTIFACTS.mkdir(exist_ok=True)
    await page.screenshot(path=str(ARTIFACTS / "dashboard-wrong-key.png"))


async def test_key_typed_in_the_form(
    browser: Browser, gateway: Client, tenant: dict[str, Any]
) -> None:
    base = str(gateway.make_url("")).rstrip("/")
    page = await browser.new_page()
    await page.goto(f"{base}/dashboard")
    await page.fill("[data-testid=key-input]", tenant["key"])
    await page.click("[data-testid=key-submit]")
    await page.wait_for_selector("body[data-loaded]")
    assert await page.get_attribute("[data-testid=events-total]", "data-value") is not None


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


async def start_gateway(settings: GatewaySettings, port: int) -> web.AppRunner:
    runner = web.AppRunner(create_app(settings), shutdown_timeout=5)
    await runner.setup()
    await web.TCPSite(runner, "127.0.0.1", port).start()
    return runner


async def test_live_stream_survives_a_gateway_restart(
    browser: Browser, gateway_settings: GatewaySettings, db: asyncpg.Connection, factory: Factory
) -> None:
    project = await factory.project()
    key = await factory.key(project)
    gpt = await factory.gpt(project_id=project)
    port = free_port()
    base = f"http://127.0.0.1:{port}"
    runner = await start_gateway(gateway_settings, port)
    try:
        page = await browser.new_page()
        await page.goto(f"{base}/dashboard#key={key}&gpt={gpt}")
        await page.wait_for_selector("[data-testid=live-status].live")
        await runner.cleanup()  # the gateway goes away...
        await page.wait_for_selector("[data-testid=live-status].down", timeout=5000)
        runner = await start_gateway(gateway_settings, port)  # ...and comes back
        await page.wait_for_selector("[data-testid=live-status].live", timeout=10000)
        async with aiohttp.ClientSession(headers={"X-API-Key": key}) as http:
            resp = await http.post(
                f"{base}/api/sessions", json={"gpt_id": gpt, "usuario_id": "eve"}
            )
            session = (await resp.json())["id"]
            resp = await http.post(f"{base}/api/events", json=make_event(session))
            event_id = (await resp.json())["id"]
        await page.wait_for_selector(f"[data-event-id='{event_id}']", timeout=3000)
    finally:
        await runner.cleanup()


async def test_custom_period(browser: Browser, gateway: Client, tenant: dict[str, Any]) -> None:
    base = str(gateway.make_url("")).rstrip("/")
    page = await browser.new_page()
    console = Console(page)
    await page.goto(f"{base}/dashboard#key={tenant['key']}&gpt={tenant['gpt']}")
    await page.wait_for_selector("body[data-loaded]")
    today = datetime.now(UTC).date()
    first = today - timedelta(days=3)
    await page.select_option("[data-testid=period-select]", "custom")
    await page.fill("[data-testid=from-input]", first.isoformat())
    wanted = f"from={first.isoformat()}T00%3A00%3A00.000Z"
    async with page.expect_response(lambda r: "/stats?" in r.url and wanted in r.url) as info:
        await page.fill("[data-testid=to-input]", today.isoformat())
    response = await info.value
    # The custom range is whole UTC days, `to` inclusive.
    assert f"from={first.isoformat()}T00%3A00%3A00.000Z" in response.url
    tomorrow = today + timedelta(days=1)
    assert f"to={tomorrow.isoformat()}T00%3A00%3A00.000Z" in response.url
    stats = await response.json()

    async def shows_api_numbers() -> bool:
        value = await page.get_attribute("[data-testid=sessions-total]", "data-value")
        return value == str(stats["totals"]["sessions"])

    await wait_for(shows_api_numbers)
    assert 0 < stats["totals"]["sessions"] < 5  # the seeded sessions of 6 and 9 days ago are out
    assert console.errors == []


async def open_fresh(
    browser: Browser, base: str, key: str, width: int = 1280
) -> tuple[Page, Console]:
    """A new tab (empty session storage) given only the key: the page picks the GPT."""
    page = await browser.new_page(viewport={"width": width, "height": 900})
    console = Console(page)
    await page.goto(f"{base}/dashboard#key={key}")
    await page.wait_for_selector("body[data-loaded]")
    return page, console


async def test_dashboard_opens_on_the_most_recently_active_gpt_and_names_its_period(
    browser: Browser, gateway: Client, tenant: dict[str, Any], db: asyncpg.Connection
) -> None:
    base = str(gateway.make_url("")).rstrip("/")
    key = tenant["key"]
    # support-bot has events; other-bot is newer but silent; chatbeto is built in.
    page, console = await open_fresh(browser, base, key)
    assert await page.input_value("[data-testid=gpt-select]") == "support-bot"
    today = datetime.now(UTC).date()
    label = await page.inner_text("[data-testid=range-label]")
    assert label == (
        f"Last 30 days: {(today - timedelta(days=29)).isoformat()} to {today.isoformat()} (UTC)"
    )
    assert console.errors == []

    # other-bot gets an event now: it becomes the most recently active one.
    resp = await gateway.post(
        "/api/sessions",
        json={"gpt_id": "other-bot", "usuario_id": "zoe"},
        headers={"X-API-Key": key},
    )
    session = (await resp.json())["id"]
    resp = await gateway.post("/api/events", json=make_event(session), headers={"X-API-Key": key})
    assert resp.status == 202
    await wait_for(lambda: db.fetchval("SELECT count(*) FROM events WHERE usuario_id = 'zoe'"))
    resp = await gateway.get("/api/gpts", headers={"X-API-Key": key})
    listed = {g["id"]: g for g in await resp.json()}
    assert listed["other-bot"]["lastEventAt"] > listed["support-bot"]["lastEventAt"]
    page, console = await open_fresh(browser, base, key)
    assert await page.input_value("[data-testid=gpt-select]") == "other-bot"
    assert await page.is_hidden("[data-testid=period-note]")

    # A period with nothing in it: the page says when the last event was.
    await page.select_option("[data-testid=period-select]", "custom")
    await page.fill("[data-testid=from-input]", "2020-01-01")
    async with page.expect_response(lambda r: "/stats?" in r.url and "to=2020-01-03" in r.url):
        await page.fill("[data-testid=to-input]", "2020-01-02")

    async def noted() -> str:
        return str(await page.inner_text("[data-testid=period-note]"))

    note = await wait_for(noted)
    assert note == f"Nothing in this period; the last event was on {today.isoformat()}."
    label = await page.inner_text("[data-testid=range-label]")
    assert label == "Custom period: 2020-01-01 to 2020-01-02 (UTC)"
    assert console.errors == []


async def test_dashboard_stays_readable_at_420_px(
    browser: Browser, gateway: Client, tenant: dict[str, Any]
) -> None:
    base = str(gateway.make_url("")).rstrip("/")
    page, console = await open_fresh(browser, base, tenant["key"], width=420)
    await page.select_option("[data-testid=period-select]", "custom")  # the widest controls
    assert await page.evaluate("document.documentElement.scrollWidth") <= 420
    # Nothing sticks out of the screen (the users table scrolls inside its own box).
    outside = await page.evaluate(
        """() => [...document.querySelectorAll('body *')].filter(el => {
            if (el.closest('.scroll')) return false;
            const r = el.getBoundingClientRect();
            return r.width > 0 && r.height > 0 && (r.left < 0 || r.right > 420.5);
        }).map(el => el.id || el.tagName)"""
    )
    assert outside == []
    # Text stays a readable size and the charts keep a usable width.
    smallest = await page.evaluate(
        """() => Math.min(...[...document.querySelectorAll('#dashboard *')]
            .filter(el => el.offsetParent !== null && el.childNodes.length
                && [...el.childNodes].some(n => n.nodeType === 3 && n.textContent.trim()))
            .map(el => parseFloat(getComputedStyle(el).fontSize)))"""
    )
    assert smallest >= 12
    for testid in CHARTS:
        box = await page.locator(f"[data-testid={testid}]").bounding_box()
        assert box is not None and box["width"] >= 300, (testid, box)
    assert await page.is_visible("[data-testid=range-label]")
    ARTIFACTS.mkdir(exist_ok=True)
    await page.screenshot(path=str(ARTIFACTS / "dashboard-420.png"), full_page=True)
    assert console.errors == []


async def test_dashboard_shows_the_cost_card_and_chart(
    browser: Browser,
    chat_gateway: Client,
    openai_worker: OpenAIWorker,
    db: asyncpg.Connection,
    factory: Factory,
) -> None:
    """The built-in GPT's model calls, priced (the shipped price of gpt-4o): the cost card and
    the cost-over-time chart show what the stats API says."""
    project = await factory.project("priced")
    key = await factory.key(project)
    unpriced_gpt = await factory.gpt(project_id=project)
    headers = {"Authorization": f"Bearer {key}"}
    for text in ("uno", "uno dos", "uno dos tres"):
        resp = await chat_gateway.post(
            "/v1/chat/completions",
            json={"model": "gpt-4o", "messages": [{"role": "user", "content": text}]},
            headers=headers,
        )
        assert resp.status == 200

    async def priced() -> bool:
        return bool(await db.fetchval("SELECT count(cost_usd) FROM events") == 3)

    await wait_for(priced, timeout=30)
    base = str(chat_gateway.make_url("")).rstrip("/")
    page, console, urls = await open_dashboard(browser, base, key, "chatbeto")
    stats_url = next(u for u in urls if "/stats?" in u)
    stats = await (await chat_gateway.get(stats_url.removeprefix(base), headers=headers)).json()
    expected = stats["cost"]["usd"]
    # gpt-4o: 2.5 USD per 1M input, 10 per 1M output; "echo[1]: …" answers one more word.
    assert expected == pytest.approx((6 * 2.5 + 9 * 10) / 1e6)
    shown = await page.get_attribute("[data-testid=cost-total]", "data-value")
    assert shown is not None and float(shown) == expected
    assert (await page.inner_text("[data-testid=cost-total]")).startswith("$0.000")
    drawn = await page.evaluate(
        """() => {
            const canvas = document.querySelector('[data-testid=chart-cost]');
            const chart = Chart.getChart(canvas);
            const pixels = canvas.getContext('2d')
                .getImageData(0, 0, canvas.width, canvas.height).data;
            let painted = 0;
            for (let i = 3; i < pixels.length; i += 4) if (pixels[i] > 0) painted++;
            return {data: chart.data.datasets[0].data, painted};
        }"""
    )
    assert sum(v for v in drawn["data"] if v) == pytest.approx(expected)
    assert len(drawn["data"]) == len(stats["series"]) and drawn["painted"] > 1000
    ARTIFACTS.mkdir(exist_ok=True)
    await page.screenshot(path=str(ARTIFACTS / "dashboard-cost.png"), full_page=True)
    # A GPT whose events carry no cost says so rather than showing $0.
    await page.select_option("[data-testid=gpt-select]", unpriced_gpt)
    await page.wait_for_selector("[data-testid=cost-note]:has-text('no priced model calls')")
    assert await page.get_attribute("[data-testid=cost-total]", "data-value") == ""
    assert console.errors == []
