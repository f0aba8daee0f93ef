"""Fixtures for the OpenAI side: the local OpenAI-compatible stub, served in the test's loop."""

from __future__ import annotations

from collections.abc import AsyncIterator, Awaitable, Callable
from typing import TYPE_CHECKING, Any

import pytest
from aiohttp.test_utils import TestServer
from chatbeto.settings import GatewaySettings, OpenAIWorkerSettings
from chatbeto_tools.stub import create_stub_app
from pytest_aiohttp import AiohttpClient

from tests.conftest import Client

if TYPE_CHECKING:
    from chatbeto_openai_worker.worker import OpenAIWorker


@pytest.fixture
async def openai_stub_server() -> AsyncIterator[TestServer]:
    server = TestServer(create_stub_app(), host="127.0.0.1")
    await server.start_server()
    yield server
    await server.close()


@pytest.fixture
def openai_stub(openai_stub_server: TestServer) -> str:
    """Base URL (ending in /v1) of a fresh stub of this test's own."""
    return str(openai_stub_server.make_url("/v1"))


StartWorker = Callable[..., Awaitable["OpenAIWorker"]]


@pytest.fixture
async def start_openai_worker(
    database: str, amqp_url: str, namespace: str, openai_stub: str
) -> AsyncIterator[StartWorker]:
    """Start openai-workers in this test's loop (settings overridable); closed afterwards."""
    from chatbeto_openai_worker.worker import OpenAIWorker

    started: list[OpenAIWorker] = []

    async def start(**overrides: Any) -> OpenAIWorker:
        fields: dict[str, Any] = {
            "database_url": database,
            "amqp_url": amqp_url,
            "amqp_namespace": namespace,
            "health_port": 0,
            "openai_api_key": "sk-test",
            "openai_base_url": openai_stub,
            "openai_timeout": 10,
        }
        fields.update(overrides)
        worker = OpenAIWorker(OpenAIWorkerSettings(_env_file=None, **fields))
        await worker.start()
        started.append(worker)
        return worker

    yield start
    for worker in reversed(started):
        await worker.close()


@pytest.fixture
async def openai_worker(start_openai_worker: StartWorker) -> OpenAIWorker:
    """One openai-worker on this test's database, names and stub."""
    return await start_openai_worker()


@pytest.fixture
def openai_gateway_settings(
    database: str, amqp_url: str, namespace: str, openai_stub: str
) -> GatewaySettings:
    """Gateway settings with OpenAI configured (the stub) and a generous API rate limit."""
    return GatewaySettings(
        _env_file=None,
        database_url=database,
        amqp_url=amqp_url,
        amqp_namespace=namespace,
        gateway_port=0,
        openai_api_key="sk-test",
        openai_base_url=openai_stub,
        openai_timeout=10,
        rate_limit="100000/1m",
    )


@pytest.fixture
async def chat_gateway(
    aiohttp_client: AiohttpClient, openai_gateway_settings: GatewaySettings
) -> Client:
    """The real gateway app, configured for OpenAI, as an aiohttp test client."""
    from chatbeto_gateway.app import create_app

    return await aiohttp_client(create_app(openai_gateway_settings))
