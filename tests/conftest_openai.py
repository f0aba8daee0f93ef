"""Fixtures for the OpenAI side: the local OpenAI-compatible stub, served in the test's loop."""

from __future__ import annotations

from collections.abc import AsyncIterator

import pytest
from aiohttp.test_utils import TestServer
from chatbeto_openai_worker.stub import create_stub_app


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
