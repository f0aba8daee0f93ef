"""The gateway's app factory: `create_app(settings)`; resources open in cleanup contexts."""

from __future__ import annotations

import asyncio
import gc
import multiprocessing
import os
import signal
from collections.abc import AsyncIterator, Callable, Sequence
from typing import Any

import asyncpg
from aiohttp import web
from chatbeto import session_ids
from chatbeto.broker import GroupPublisher, Publisher, connect
from chatbeto.db import REPORT_TIMEOUT_SECONDS, create_pool, is_database_outage, mask_dsn
from chatbeto.failures import UsageError, reason
from chatbeto.logging import get_logger
from chatbeto.messages import EventRecord, MetricsBatch, SessionRecord, envelope, to_outgoing
from chatbeto.observability import REQUEST_STATS
from chatbeto.settings import GatewaySettings

from chatbeto_gateway.access.auth import KeyCache
from chatbeto_gateway.access.ratelimit import Limiter
from chatbeto_gateway.admin import costs, keys, projects
from chatbeto_gateway.conversations import chat
from chatbeto_gateway.conversations import routes as conversation_routes
from chatbeto_gateway.http.middleware import UNMATCHED, observed, observed_routes, unmatched
from chatbeto_gateway.imports import routes as import_routes
from chatbeto_gateway.metrics import dashboard, live
from chatbeto_gateway.metrics import routes as metrics_routes
from chatbeto_gateway.metrics.gpt_cache import GptCache
from chatbeto_gateway.ops import routes as ops_routes
from chatbeto_gateway.proxy import calls, v1
from chatbeto_gateway.state import (
    BROKER,
    GPTS,
    KEYS,
    LIMITER,
    METRICS_PUBLISHER,
    POOL,
    PUBLISHER,
    REPORT_POOL,
    SESSION_KEY,
    SETTINGS,
)
from chatbeto_gateway.webhooks import routes as webhook_routes

log = get_logger(__name__)
MAX_BODY_BYTES = 1024 * 1024
# Young-generation collections every 700 allocations (the default) ran 35 times a second under
# load; requests' objects die by reference counting long before 20,000 allocations.
GC_THRESHOLDS = (20_000, 20, 20)
METRICS_ROUTING_KEY = "metrics.batch"

# Every feature's routes and extra resources, listed here so the factory is the one place the
# app is assembled.
ROUTE_TABLES: list[web.RouteTableDef] = [
    ops_routes.routes,
    metrics_routes.routes,
    webhook_routes.routes,
    keys.routes,
    costs.routes,
    import_routes.routes,
]
EXTRA_CONTEXTS: list[Callable[[web.Application], AsyncIterator[None]]] = []
# Live dashboards: one broker subscription per process (needs the broker context above).
ROUTE_TABLES += [live.routes, dashboard.routes]
EXTRA_CONTEXTS.append(live.live_ctx)
# Conversations and chat through the openai-worker (request/reply over the broker).
ROUTE_TABLES += [
    projects.routes,
    conversation_routes.routes,
    chat.routes,
    v1.routes,
]
EXTRA_CONTEXTS.append(calls.openai_ctx)


def build_metrics_message(items: Sequence[Any]) -> Any:
    # By exact type: isinstance on a pydantic model class runs its metaclass's Python-level
    # __instancecheck__, twice per item.
    sessions = tuple(i for i in items if type(i) is SessionRecord)
    events = tuple(i for i in items if type(i) is EventRecord)
    # Without an aio_pika.Message, encoded by orjson (`to_outgoing`): 56 -> 30 us a message of
    # 30 events.
    return to_outgoing(
        envelope(
            MetricsBatch.trusted(sessions=sessions, events=events),
            request_id=items[0].request_id if len(items) == 1 else None,
        )
    )


# Each of the gateway's statements but the reports' (REPORT_TIMEOUT_SECONDS): all are short
# (keys, GPTs, lease rows, pages of a listing), and against a Postgres that drops packets a
# caller waits for each in turn before its 503.
GATEWAY_QUERY_TIMEOUT_SECONDS = 5.0


async def database_ctx(app: web.Application) -> AsyncIterator[None]:
    settings = app[SETTINGS]
    log.info("connecting to postgres", dsn=mask_dsn(settings.database_url))
    pool = await create_pool(
        settings.database_url,
        min_size=2,
        max_size=20,
        command_timeout=GATEWAY_QUERY_TIMEOUT_SECONDS,
    )
    app[POOL] = pool
    app[REPORT_POOL] = await report_pool(settings.database_read_url) or pool
    app[SESSION_KEY] = await session_ids.load_key(pool)
    app[GPTS] = GptCache(pool)
    keys = KeyCache(pool)
    keys.start()
    app[KEYS] = keys
    limiter = Limiter(pool)
    limiter.start()
    app[LIMITER] = limiter
    yield
    await limiter.close()
    await keys.close()
    if app[REPORT_POOL] is not pool:
        await app[REPORT_POOL].close()
    await pool.close()


async def report_pool(read_url: str | None) -> asyncpg.Pool | None:
    """The read replica's pool, if one is set. A replica that refuses the reports (a missing
    database, wrong credentials, no schema) stops the start with one line naming
    DATABASE_READ_URL; one that does not answer yet costs the reports a 503 until it does, and
    nothing else (the pool connects on use: min_size 0)."""
    if not read_url:
        return None
    shown = mask_dsn(read_url)
    pool = await create_pool(
        read_url, min_size=0, max_size=10, command_timeout=REPORT_TIMEOUT_SECONDS
    )
    try:
        async with pool.acquire() as conn:
            await conn.fetchval("SELECT 1 FROM gpts LIMIT 1")  # a copy of the schema is there
    except Exception as exc:
        if not is_database_outage(exc):
            await pool.close()
            raise UsageError(
                f"the read replica in DATABASE_READ_URL ({shown}) cannot serve the reports: "
                f"{reason(exc)}"
            ) from exc
        log.warning("the read replica does not answer yet", dsn=shown, error=type(exc).__name__)
    log.info("reports read from a replica", dsn=shown)
    return pool


async def request_stats_ctx(_: web.Application) -> AsyncIterator[None]:
    """Request counts reach Prometheus every second (and before each scrape, `ops.routes`)."""

    async def flush_loop() -> None:
        while True:
            await asyncio.sleep(REQUEST_STATS.FLUSH_INTERVAL_SECONDS)
            REQUEST_STATS.flush()

    task = asyncio.create_task(flush_loop())
    yield
    task.cancel()
    await asyncio.gather(task, return_exceptions=True)
    REQUEST_STATS.flush()


async def broker_ctx(app: web.Application) -> AsyncIterator[None]:
    connection = await connect(app[SETTINGS].amqp_url, attempts=30)
    channel = await connection.channel()
    await app[SETTINGS].topology.declare(channel)
    await channel.close()
    app[BROKER] = connection
    publisher = Publisher(connection, app[SETTINGS].topology)
    app[PUBLISHER] = publisher
    app[METRICS_PUBLISHER] = GroupPublisher(publisher, METRICS_ROUTING_KEY, build_metrics_message)
    yield
    await app[METRICS_PUBLISHER].close()
    await publisher.close()
    await connection.close()


def create_app(settings: GatewaySettings) -> web.Application:
    app = web.Application(client_max_size=MAX_BODY_BYTES)
    app[SETTINGS] = settings
    app.cleanup_ctx.append(request_stats_ctx)
    app.cleanup_ctx.append(database_ctx)
    app.cleanup_ctx.append(broker_ctx)
    for ctx in EXTRA_CONTEXTS:
        app.cleanup_ctx.append(ctx)
    # Before aiohttp waits for open handlers: end live streams so shutdown isn't held up.
    app.on_shutdown.append(live.end_live_streams)
    for table in ROUTE_TABLES:
        app.router.add_routes(observed_routes(table))
    # Last: what no route above serves, answered in its surface's error shape.
    app.router.add_route("*", "/{tail:.*}", observed(unmatched), name=UNMATCHED)
    return app


async def _freeze_heap(_: web.Application) -> None:
    """Exclude everything alive after start-up (modules, schemas, pools) from garbage
    collection: a full collection walked that whole heap, a 80-110 ms pause of every request in
    flight every few seconds under load (the ingest p99), now it walks what requests allocate."""
    gc.collect()
    gc.freeze()
    gc.set_threshold(*GC_THRESHOLDS)


async def _watch_parent(app: web.Application) -> None:
    """A worker whose supervisor died (SIGKILL, OOM) stops by itself instead of lingering."""
    parent = multiprocessing.parent_process()
    if parent is None:
        return
    loop = asyncio.get_running_loop()

    def orphaned() -> None:
        loop.remove_reader(parent.sentinel)
        os.kill(os.getpid(), signal.SIGTERM)  # the same graceful path as the supervisor's

    loop.add_reader(parent.sentinel, orphaned)


def run(settings: GatewaySettings, *, reuse_port: bool = False, watch_parent: bool = False) -> None:
    """Serve until SIGTERM / SIGINT; `reuse_port` lets several processes share the port."""
    try:
        import uvloop

        uvloop.install()
    except ImportError:  # pragma: no cover - uvloop is optional off Linux
        pass
    app = create_app(settings)
    app.on_startup.append(_freeze_heap)
    if watch_parent:
        app.on_startup.append(_watch_parent)
    web.run_app(
        app,
        host=settings.gateway_host,
        port=settings.gateway_port,
        access_log=None,
        print=None,
        handle_signals=True,
        shutdown_timeout=30,
        reuse_port=reuse_port or None,
    )
