"""The fixed design's floor for the proxy bench: the least any gateway -> RabbitMQ -> worker ->
`openai` SDK path can cost on this machine, measured beside chatbeto in the same run.

Two processes, as chatbeto's gateway and openai-worker are two: `front` (aiohttp) publishes each
`POST /v1/chat/completions` body to a queue and answers with what comes back on RabbitMQ's direct
reply-to; `back` consumes it and calls the upstream through the worker's own SDK path
(`chatbeto_openai_worker.upstream.forward`/`forward_stream`), replying chunk by chunk when
streamed. Nothing else: no key, no rate limit, no validation, no storage, no metrics, no publisher
confirms, no acks (aiormq channels directly, the cheapest client). What chatbeto adds over this is
its own work; what this adds over the direct call is the design's.

    python -m bench.floor front --port P --amqp URL --queue Q
    python -m bench.floor back --amqp URL --queue Q      (OPENAI_API_KEY, OPENAI_BASE_URL set)
"""

from __future__ import annotations

import argparse
import asyncio
import itertools
import time
from typing import Any

import aiormq
import orjson
from aiohttp import web
from aiormq.abc import DeliveredMessage
from pamqp.commands import Basic
from pamqp.common import FieldValue

REPLY_TO = "amq.rabbitmq.reply-to"
# The queue removes itself a minute after its last use, so a killed bench leaves nothing.
QUEUE_ARGS: dict[str, FieldValue] = {"x-expires": 60_000}
END, ERROR, CHUNK = "end", "error", "chunk"


async def _channel(url: str) -> tuple[aiormq.abc.AbstractConnection, aiormq.abc.AbstractChannel]:
    connection = await aiormq.connect(url)
    return connection, await connection.channel(publisher_confirms=False)


async def front(port: int, url: str, queue: str) -> None:
    connection, channel = await _channel(url)
    await channel.queue_declare(queue, arguments=QUEUE_ARGS)
    waiting: dict[str, asyncio.Queue[DeliveredMessage]] = {}
    ids = itertools.count()

    async def on_reply(message: DeliveredMessage) -> None:
        inbox = waiting.get(message.header.properties.correlation_id or "")
        if inbox is not None:
            inbox.put_nowait(message)

    await channel.basic_consume(REPLY_TO, on_reply, no_ack=True)

    async def completions(request: web.Request) -> web.StreamResponse:
        body = await request.read()
        streamed = bool(orjson.loads(body).get("stream"))
        cid = str(next(ids))
        inbox: asyncio.Queue[DeliveredMessage] = asyncio.Queue()
        waiting[cid] = inbox
        try:
            await channel.basic_publish(
                body,
                routing_key=queue,
                properties=Basic.Properties(reply_to=REPLY_TO, correlation_id=cid),
                wait=False,  # type: ignore[call-arg]  # aiormq.abc lacks it; the channel has it
            )
            first = await inbox.get()
            if first.header.properties.message_type == ERROR:
                return web.Response(status=502, body=first.body)
            if not streamed:
                return web.Response(body=first.body, content_type="application/json")
            response = web.StreamResponse(headers={"Content-Type": "text/event-stream"})
            try:
                await response.prepare(request)
                message = first
                while message.header.properties.message_type == CHUNK:
                    await response.write(message.body)
                    message = await inbox.get()
                await response.write_eof()
            except ConnectionResetError:
                pass  # the load generator closed its connections as its run ended
            return response
        finally:
            del waiting[cid]

    app = web.Application()
    app.router.add_post("/v1/chat/completions", completions)
    app.router.add_get("/healthz", lambda _: web.Response(text="ok"))  # type: ignore[arg-type,return-value]
    runner = web.AppRunner(app, access_log=None)
    await runner.setup()
    await web.TCPSite(runner, "127.0.0.1", port).start()
    try:
        await asyncio.Event().wait()
    finally:
        await runner.cleanup()
        await connection.close()


async def back(url: str, queue: str) -> None:
    from chatbeto.settings import OpenAISettings
    from chatbeto_openai_worker.upstream import forward, forward_stream, make_client

    client = make_client(OpenAISettings())
    connection, channel = await _channel(url)
    await channel.queue_declare(queue, arguments=QUEUE_ARGS)
    await channel.basic_qos(prefetch_count=256)
    tasks: set[asyncio.Task[None]] = set()

    async def reply(request: DeliveredMessage, body: bytes, kind: str) -> None:
        props = request.header.properties
        await channel.basic_publish(
            body,
            routing_key=props.reply_to or "",
            properties=Basic.Properties(correlation_id=props.correlation_id, message_type=kind),
            wait=False,  # type: ignore[call-arg]
        )

    async def call(request: DeliveredMessage) -> None:
        job: dict[str, Any] = orjson.loads(request.body)
        deadline = time.monotonic() + 60
        try:
            if job.get("stream"):

                async def on_bytes(data: bytes) -> None:
                    await reply(request, data, CHUNK)

                await forward_stream(
                    client, "/chat/completions", job, deadline=deadline, on_bytes=on_bytes
                )
                await reply(request, b"", END)
            else:
                answer = await forward(client, "/chat/completions", job, deadline=deadline)
                await reply(request, answer, END)
        except Exception as exc:  # the bench reports any failure as a 502
            await reply(request, repr(exc).encode(), ERROR)

    async def on_request(message: DeliveredMessage) -> None:
        task = asyncio.create_task(call(message))
        tasks.add(task)
        task.add_done_callback(tasks.discard)

    await channel.basic_consume(queue, on_request, no_ack=True)
    try:
        await asyncio.Event().wait()
    finally:
        await connection.close()


def main() -> None:
    parser = argparse.ArgumentParser(prog="python -m bench.floor")
    parser.add_argument("role", choices=("front", "back"))
    parser.add_argument("--amqp", required=True)
    parser.add_argument("--queue", required=True)
    parser.add_argument("--port", type=int, default=0)
    args = parser.parse_args()
    job = (
        front(args.port, args.amqp, args.queue)
        if args.role == "front"
        else back(args.amqp, args.queue)
    )
    try:
        asyncio.run(job)
    except KeyboardInterrupt:
        pass


if __name__ == "__main__":
    main()
