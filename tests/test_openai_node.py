"""The "new user" check: the source document's JavaScript flows, unchanged, under Node's fetch
against a running gateway. Skipped only where `node` is not installed."""

from __future__ import annotations

import asyncio
import shutil
from pathlib import Path

import orjson
import pytest
from chatbeto_openai_worker.worker import OpenAIWorker

from tests.conftest import Client, Factory

NODE = shutil.which("node")
SCRIPT = Path(__file__).parent / "js" / "chatbeto_flows.mjs"


@pytest.mark.skipif(NODE is None, reason="node is not installed")
async def test_javascript_flows_run_under_node_fetch(
    chat_gateway: Client, openai_worker: OpenAIWorker, factory: Factory
) -> None:
    project = await factory.project()
    key = await factory.key(project)
    base = str(chat_gateway.make_url("")).rstrip("/")
    assert NODE is not None
    proc = await asyncio.create_subprocess_exec(
        NODE,
        str(SCRIPT),
        base,
        key,
        str(project),
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
    )
    out, err = await asyncio.wait_for(proc.communicate(), 60)
    assert proc.returncode == 0, err.decode()
    result = orjson.loads(out.decode().strip().splitlines()[-1])
    assert result["first"] == "echo[1]: ¿Cómo despliego?"
    assert result["followUp"] == "echo[3]: ¿Y en producción?"
    assert result["chat"] == "echo[2]: Hola"
