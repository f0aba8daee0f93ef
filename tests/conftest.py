"""Shared fixtures: real Postgres and RabbitMQ, one database and one broker namespace per test.

Services come from DATABASE_URL / AMQP_URL or the local defaults; where neither answers and a
Docker engine exists, testcontainers starts them.
"""

from __future__ import annotations

import asyncio
import os
import socket
import time
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator
from datetime import datetime
from typing import TYPE_CHECKING, Any, TypeAlias, TypeVar
from urllib.parse import urlsplit

import aio_pika
import asyncpg
import pytest
from aio_pika.abc import AbstractRobustConnection
from aiohttp import web
from aiohttp.test_utils import TestClient
from chatbeto import api_keys
from chatbeto.db import with_database
from chatbeto.messages import EventRecord
from chatbeto.migrate import apply_migrations
from chatbeto.settings import GatewaySettings, MetricsIngestSettings
from chatbeto.topology import Topology
from pytest_aiohttp import AiohttpClient

if TYPE_CHECKING:
    from chatbeto_metrics_ingest.consumer import MetricsIngest

DEFAULT_PG = "postgresql://postgres@127.0.0.1:5432/postgres"
DEFAULT_AMQP = "amqp://guest:guest@127.0.0.1:5672/"
T = TypeVar("T")
# What the `gateway` / `chat_gateway` fixtures give: the real app behind aiohttp's test client.
Client: TypeAlias = TestClient[web.Request, web.Application]
pytest_plugins = ["tests.conftest_openai", "tests.rabbit_node"]


def _answers(url: str, default_port: int) -> bool:
    parts = urlsplit(url)
    try:
        with socket.create_connection(
            (parts.hostname or "127.0.0.1", parts.port or default_port), 2
        ):
            return True
    except OSError:
        return False


@pytest.fixture(scope="session")
def pg_base_url() -> Iterator[str]:
    url = os.environ.get("DATABASE_URL", DEFAULT_PG)
    if _answers(url, 5432):
        yield url
        return
    from testcontainers.postgres import PostgresContainer  # fallback where Docker exists

    with PostgresContainer("postgres:16", driver=None) as pg:
        yield pg.get_connection_url()


@pytest.fixture(scope="session")
def amqp_url() -> Iterator[str]:
    url = os.environ.get("AMQP_URL", DEFAULT_AMQP)
    if _answers(url, 5672):
        yield url
        return
    from testcontainers.rabbitmq import RabbitMqContainer

    with RabbitMqContainer("rabbitmq:3.13-management") as mq:
        params = mq.get_connection_params()
        yield f"amqp://guest:guest@{params.host}:{params.port}/"


@pytest.fixture
async def database(pg_base_url: str) -> AsyncIterator[str]:
    """A fresh, migrated database of this test's own."""
    name = f"cbt_{uuid.uuid4().hex[:16]}"
    dsn = with_database(pg_base_url, name)
    await apply_migrations(dsn)
    yield dsn
    admin = await asyncpg.connect(with_database(pg_base_url, "postgres"))
    try:
        await admin.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
    finally:
        await admin.close()


@pytest.fixture
async def db(database: str) -> AsyncIterator[asyncpg.Connection]:
    conn = await asyncpg.connect(database)
    yield conn
    await conn.close()


@pytest.fixture
async def namespace(amqp_url: str) -> AsyncIterator[str]:
    """Broker names of this test's own; everything is deleted afterwards."""
    ns = f"t{uuid.uuid4().hex[:10]}."
    yield ns
    connection = await aio_pika.connect(amqp_url)
    async with connection:
        channel = await connection.channel()
        await Topology(ns).delete(channel)


@pytest.fixture
async def broker(amqp_url: str, namespace: str) -> AsyncIterator[AbstractRobustConnection]:
    """A robust connection with the test's namespace declared (queues, exchanges)."""
    connection = await aio_pika.connect_robust(amqp_url)
    channel = await connection.channel()
    await Topology(namespace).declare(channel)
    yield connection
    await connection.close()


@pytest.fixture
def env(database: str, amqp_url: str, namespace: str) -> dict[str, str]:
    """Environment for a service started as a process in this test's database and names."""
    out = {k: v for k, v in os.environ.items() if not k.startswith(("OPENAI_", "WEBHOOK_"))}
    out.update(
        DATABASE_URL=database,
        AMQP_URL=amqp_url,
        AMQP_NAMESPACE=namespace,
        LOG_LEVEL="info",
        LOG_FORMAT="json",
        HEALTH_PORT="0",
    )
    return out


@pytest.fixture
def gateway_settings(database: str, amqp_url: str, namespace: str) -> GatewaySettings:
    return GatewaySettings(
        _env_file=None,
        database_url=database,
        amqp_url=amqp_url,
        amqp_namespace=namespace,
        gateway_port=0,
        # Nothing here needs the production grace; a call nobody answers fails 4 s sooner.
        reply_grace_seconds=1.0,
    )


@pytest.fixture
def ingest_settings(database: str, amqp_url: str, namespace: str) -> MetricsIngestSettings:
    return MetricsIngestSettings(
        _env_file=None,
        database_url=database,
        amqp_url=amqp_url,
        amqp_namespace=namespace,
        health_port=0,
    )


@pytest.fixture
async def gateway(aiohttp_client: AiohttpClient, gateway_settings: GatewaySettings) -> Client:
    from chatbeto_gateway.app import create_app

    return await aiohttp_client(create_app(gateway_settings))


@pytest.fixture
async def ingest(ingest_settings: MetricsIngestSettings) -> AsyncIterator[MetricsIngest]:
    """metrics-ingest running in this event loop."""
    from chatbeto_metrics_ingest.consumer import MetricsIngest

    worker = MetricsIngest(ingest_settings)
    await worker.start()
    yield worker
    await worker.close()


async def wait_for(
    probe: Callable[[], Awaitable[T | None]], *, timeout: float = 10.0, interval: float = 0.05
) -> T:
    """Poll `probe` until it returns something truthy; fail after `timeout` seconds."""
    deadline = time.monotonic() + timeout
    last: T | None = None
    while time.monotonic() < deadline:
        last = await probe()
        if last:
            return last
        await asyncio.sleep(interval)
    raise AssertionError(f"condition not met within {timeout}s (last value: {last!r})")


class Factory:
    """Data factories: projects, keys and GPTs straight in this test's database."""

    def __init__(self, conn: asyncpg.Connection) -> None:
        self.conn = conn

    async def project(self, name: str | None = None) -> int:
        # Names are unique: each unnamed project gets its own.
        value: int = await self.conn.fetchval(
            "INSERT INTO projects (name) VALUES ($1) RETURNING id",
            name or f"demo-{uuid.uuid4().hex[:8]}",
        )
        return value

    async def key(
        self, project_id: int | None = None, *, admin: bool = False, rate_limit: str | None = None
    ) -> str:
        plain, _ = await api_keys.create(
            self.conn, is_admin=admin, project_id=project_id, rate_limit=rate_limit
        )
        return plain

    async def gpt(
        self, gpt_id: str | None = None, project_id: int | None = None, *, keyless: bool = False
    ) -> str:
        gpt_id = gpt_id or f"gpt-{uuid.uuid4().hex[:8]}"
        await self.conn.execute(
            "INSERT INTO gpts (gpt_id, name, project_id, keyless_ingest) VALUES ($1, $2, $3, $4)",
            gpt_id,
            gpt_id.title(),
            project_id,
            keyless,
        )
        return gpt_id


@pytest.fixture
def factory(db: asyncpg.Connection) -> Factory:
    return Factory(db)


def event_record(session: uuid.UUID, now: datetime, n: int = 1, **overrides: object) -> EventRecord:
    """An event record as the gateway queues it (validated), the n-th of a test's."""
    fields: dict[str, object] = {
        "id": uuid.uuid4(),
        "sesion_id": session,
        "tipo": "query",
        "contenido": f"e{n}",
        "latency_ms": n,
        "tokens_entrada": 1,
        "tokens_salida": 2,
        "timestamp": now,
    }
    fields.update(overrides)
    return EventRecord.model_validate(fields)


def make_event(session_id: str, **overrides: Any) -> dict[str, Any]:
    event: dict[str, Any] = {
        "sesion_id": session_id,
        "tipo": "query",
        "contenido": "¿Cómo despliego?",
        "latency_ms": 120,
        "tokens_entrada": 10,
        "tokens_salida": 42,
    }
    event.update(overrides)
    return event
