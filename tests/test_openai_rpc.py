"""The request/reply path: replies reach only the gateway that asked, a redelivered request is
stored and answered once, and the concurrent consumer's retry and dead-letter paths."""

from __future__ import annotations

import asyncio
import uuid
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import aio_pika
import aiohttp
import aiormq
import asyncpg
import pytest
from aio_pika.abc import AbstractRobustConnection
from aiohttp.test_utils import TestServer
from aiormq.abc import DeliveredMessage
from chatbeto.broker import Publisher
from chatbeto.consumer import ConcurrentConsumer
from chatbeto.messages import (
    Caller,
    ChatCall,
    ChatMessage,
    ConversationCreate,
    InvalidMessage,
    OpenAIReply,
    OpenAIRequest,
    ProxyCall,
    ReplyChunk,
    ReplyResult,
    envelope,
    parse,
    to_amqp,
)
from chatbeto.settings import GatewaySettings
from chatbeto.topology import OPENAI_REQUESTS, Topology
from chatbeto_gateway.proxy.rpc import Rpc
from chatbeto_openai_worker.worker import OpenAIWorker
from chatbeto_tools.stub import SLOW_IN_FLIGHT
from pamqp.header import ContentHeader
from pytest_aiohttp import AiohttpClient

from tests.conftest import Client, Factory, wait_for


async def test_each_gateway_gets_only_its_own_replies(
    aiohttp_client: AiohttpClient,
    openai_gateway_settings: GatewaySettings,
    openai_worker: OpenAIWorker,
    factory: Factory,
) -> None:
    from chatbeto_gateway.app import create_app

    one = await aiohttp_client(create_app(openai_gateway_settings))
    two = await aiohttp_client(create_app(openai_gateway_settings))
    key = await factory.key(await factory.project())

    async def ask(client: Client, text: str) -> str:
        resp = await client.post(
            "/api/v1/openai/chat/completions",
            json={"messages": [{"role": "user", "content": text}]},
            headers={"X-API-Key": key},
        )
        assert resp.status == 200
        content: str = (await resp.json())["data"]["response"]["content"]
        return content

    texts = [f"g{n % 2}-{n}" for n in range(20)]
    answers = await asyncio.gather(
        *(ask(one if n % 2 == 0 else two, t) for n, t in enumerate(texts))
    )
    assert answers == [f"echo[1]: {t}" for t in texts]


async def test_a_redelivered_request_is_stored_and_answered_once(
    broker: AbstractRobustConnection,
    namespace: str,
    openai_worker: OpenAIWorker,
    openai_stub_server: TestServer,
    factory: Factory,
    db: asyncpg.Connection,
) -> None:
    topo = Topology(namespace)
    channel = await broker.channel()
    replies_q = await topo.declare_reply_queue(channel, "test")
    replies: list[OpenAIReply] = []

    async def on_reply(message: aio_pika.abc.AbstractIncomingMessage) -> None:
        replies.append(parse(message.body, OpenAIReply, OpenAIReply.TYPE, frozenset({2})).data)

    await replies_q.consume(on_reply, no_ack=True)
    project = await factory.project()
    request = OpenAIRequest(
        call=ChatCall(project_id=project, messages=(ChatMessage(role="user", content="una vez"),)),
        deadline=datetime.now(UTC) + timedelta(seconds=30),
    )
    env = envelope(request)
    publisher = Publisher(broker, topo)
    for _ in range(2):  # the same message (same id) twice, as a redelivery would bring it
        await publisher.publish(
            to_amqp(env, correlation_id="c1", reply_to=topo.reply_queue_name("test")),
            "openai.request.chat",
        )
    await wait_for(lambda: _count(replies, 2))
    answers = [
        r.part.answer and r.part.answer.content for r in replies if isinstance(r.part, ReplyResult)
    ]
    assert answers == ["echo[1]: una vez"] * 2
    assert await db.fetchval("SELECT count(*) FROM conversations") == 1
    assert await db.fetchval("SELECT count(*) FROM messages") == 2
    await publisher.close()


async def _count(items: list[Any], n: int) -> bool:
    return len(items) >= n


async def test_expired_requests_are_skipped(
    broker: AbstractRobustConnection,
    namespace: str,
    openai_worker: OpenAIWorker,
    factory: Factory,
    db: asyncpg.Connection,
) -> None:
    topo = Topology(namespace)
    project = await factory.project()
    publisher = Publisher(broker, topo)
    late = OpenAIRequest(
        call=ConversationCreate(project_id=project),
        deadline=datetime.now(UTC) - timedelta(seconds=1),
    )
    await publisher.publish(
        to_amqp(envelope(late), correlation_id="c", reply_to="nobody"), "openai.request.x"
    )
    on_time = OpenAIRequest(
        call=ConversationCreate(project_id=project, title="on time"),
        deadline=datetime.now(UTC) + timedelta(seconds=30),
    )
    await publisher.publish(
        to_amqp(envelope(on_time), correlation_id="c", reply_to="nobody"), "openai.request.x"
    )

    async def stored() -> list[str]:
        return [r["title"] for r in await db.fetch("SELECT title FROM conversations")]

    assert await wait_for(stored) == ["on time"]
    await publisher.close()


async def test_concurrent_consumer_retries_then_dead_letters(
    broker: AbstractRobustConnection, namespace: str
) -> None:
    topo = Topology(namespace)
    queue = topo.queue(OPENAI_REQUESTS)
    calls: dict[str, int] = {}
    handled: list[str] = []
    gate = asyncio.Event()

    async def handler(message: aio_pika.abc.AbstractIncomingMessage) -> None:
        body = message.body.decode()
        calls[body] = calls.get(body, 0) + 1
        if body == "blocked":
            await gate.wait()
        if body == "invalid":
            raise InvalidMessage("nope")
        if body == "flaky" and calls[body] == 1:
            raise RuntimeError("transient")
        if body == "broken":
            raise RuntimeError("always")
        handled.append(body)

    consumer = ConcurrentConsumer(broker, topo, queue, handler, concurrency=8, max_tries=2)
    await consumer.start()
    publisher = Publisher(broker, topo)
    for body in ("blocked", "invalid", "flaky", "broken", "fine"):
        await publisher.publish(
            aio_pika.Message(body.encode(), message_id=str(uuid.uuid4())), "openai.request.t"
        )
    # "blocked" is in flight while the others proceed.
    await wait_for(lambda: _has(handled, "fine"))
    assert consumer.in_flight >= 1
    gate.set()
    await wait_for(lambda: _has(handled, "flaky"), timeout=15)
    await wait_for(lambda: _has(handled, "blocked"))
    channel = await broker.channel()

    async def dead_lettered() -> bool:
        q = await channel.declare_queue(queue.dlq, passive=True)
        return int(q.declaration_result.message_count or 0) >= 2

    await wait_for(dead_lettered, timeout=15)
    assert calls["invalid"] == 1
    assert calls["broken"] == 2
    await consumer.close()
    await publisher.close()


async def _has(items: list[str], value: str) -> bool:
    return value in items


@pytest.mark.timeout(300)  # a worker process to start on a loaded machine
async def test_worker_process_serves_and_drains_on_sigterm(
    chat_gateway: Client,
    env: dict[str, str],
    openai_stub: str,
    openai_stub_server: TestServer,
    factory: Factory,
    tmp_path: Path,
) -> None:
    """`chatbeto run openai-worker` as an operator starts it: answers, then SIGTERM drains an
    in-flight slow request (answered, not lost) and exits 0."""
    import signal
    import sys
    from pathlib import Path

    exe = str(Path(sys.executable).with_name("chatbeto"))
    log = (tmp_path / "worker.log").open("wb")
    proc = await asyncio.create_subprocess_exec(
        exe,
        "run",
        "openai-worker",
        env={**env, "OPENAI_API_KEY": "sk-test", "OPENAI_BASE_URL": openai_stub},
        stdout=log,
        stderr=log,
    )
    key = await factory.key(await factory.project())

    async def ask(text: str) -> aiohttp.ClientResponse:
        return await chat_gateway.post(
            "/api/v1/openai/chat/completions",
            json={"messages": [{"role": "user", "content": text}]},
            headers={"X-API-Key": key},
        )

    try:
        # Until the worker is up (its first reply): on a loaded machine its start can outlast
        # one request's deadline, which then answers 504 unserved.
        deadline = asyncio.get_running_loop().time() + 120
        resp = await ask("hola")
        while resp.status == 504 and asyncio.get_running_loop().time() < deadline:
            resp = await ask("hola")
        assert resp.status == 200
        slow = asyncio.create_task(ask("[[slow:1]] despacio"))

        async def held() -> bool:  # the slow request is in flight at the worker
            return bool(openai_stub_server.app[SLOW_IN_FLIGHT][0])

        await wait_for(held)
        proc.send_signal(signal.SIGTERM)
        assert (await slow).status == 200
        assert await asyncio.wait_for(proc.wait(), 30) == 0
    finally:
        if proc.returncode is None:
            proc.kill()
            await proc.wait()
        log.close()


async def test_a_reply_reaches_its_call_in_the_channel_reader(
    broker: AbstractRobustConnection, namespace: str
) -> None:
    """The gateway's side alone, a test playing the worker: the request is on the work queue
    with its reply address; the replies come back in order; and `_on_delivery` hands a reply
    over before aiormq runs the task it returns (one loop pass less per reply)."""
    topo = Topology(namespace)
    publisher = Publisher(broker, topo)
    rpc = Rpc(broker, publisher, topo, timeout_seconds=30, grace_seconds=1)
    await rpc.start()
    channel = await broker.channel()
    calls = await channel.get_queue(topo.queue(OPENAI_REQUESTS).name)
    job = ProxyCall.trusted(
        endpoint="chat.completions", project_id=None, body={"model": "m"}, stream=True
    )
    try:
        async with rpc.call(job, Caller()) as pending:
            request = await calls.get(no_ack=True, timeout=10)
            assert parse(request.body, OpenAIRequest, OpenAIRequest.TYPE, frozenset({2}))
            correlation_id, reply_to = request.correlation_id, request.reply_to
            assert reply_to == rpc.queue_name
            parts = [
                ReplyChunk(attempt="a", data="data: 1\n\n"),
                ReplyResult(attempt="a", body="data: [DONE]\n\n"),
            ]
            for part in parts:
                reply = to_amqp(envelope(OpenAIReply(part=part)), correlation_id=correlation_id)
                await publisher.publish(reply, reply_to, exchange="")
            assert await pending.next() == parts[0]
            assert await pending.result() == parts[1]

            late = ReplyResult(attempt="b", body="{}")
            body = envelope(OpenAIReply(part=late)).model_dump_json().encode()
            properties = aiormq.spec.Basic.Properties(correlation_id=correlation_id)
            delivery = DeliveredMessage(
                delivery=aiormq.spec.Basic.Deliver(),
                header=ContentHeader(properties=properties),
                body=body,
                channel=await channel.get_underlay_channel(),
            )
            handled = rpc._on_delivery(delivery)
            async with asyncio.timeout(0):  # there already: no wait, not even one loop pass
                assert await pending.next() == late
            await handled
    finally:
        await rpc.close()
        await publisher.close()
