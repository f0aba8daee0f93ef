"""The first reply of a loop turn leaves at once; the others sent in that turn leave together in
one write, each to its own gateway, in order, whole (a body larger than a frame too)."""

from __future__ import annotations

import asyncio

from aio_pika.abc import AbstractIncomingMessage, AbstractRobustConnection
from chatbeto.messages import OpenAIReply, ReplyChunk, parse
from chatbeto.topology import Topology
from chatbeto_openai_worker.replies import Replies

from tests.conftest import wait_for


async def test_replies_of_one_turn_leave_in_one_write(
    broker: AbstractRobustConnection, namespace: str
) -> None:
    topo = Topology(namespace)
    channel = await broker.channel()
    got: dict[str, list[AbstractIncomingMessage]] = {"one": [], "two": []}
    for gateway, received in got.items():
        queue = await topo.declare_reply_queue(channel, gateway)

        async def keep(
            message: AbstractIncomingMessage, into: list[AbstractIncomingMessage] = received
        ) -> None:
            into.append(message)

        await queue.consume(keep, no_ack=True)
    replies = Replies(broker, topo)
    await replies.start()
    big = "x" * 300_000  # past the broker's frame_max (128 KiB): split into body frames
    sends = [
        replies.send(
            topo.reply_queue_name("one" if n % 2 else "two"),
            f"c{n}",
            OpenAIReply(part=ReplyChunk(attempt="a", data=big if n == 3 else f"part {n}")),
        )
        for n in range(6)
    ]
    await asyncio.gather(*sends)
    # The first at once, the five sent after it in its turn in one write.
    assert (replies.writes, replies.sent) == (2, 6)

    async def all_arrived() -> bool:
        return len(got["one"]) == 3 and len(got["two"]) == 3

    await wait_for(all_arrived)
    for gateway, numbers in (("one", [1, 3, 5]), ("two", [0, 2, 4])):
        received = got[gateway]
        assert [m.correlation_id for m in received] == [f"c{n}" for n in numbers]
        for n, message in zip(numbers, received, strict=True):
            part = parse(message.body, OpenAIReply, OpenAIReply.TYPE, frozenset({1, 2})).data.part
            assert isinstance(part, ReplyChunk)
            assert part.data == (big if n == 3 else f"part {n}")
    # A later turn is a write of its own.
    await replies.send(
        topo.reply_queue_name("one"), "c6", OpenAIReply(part=ReplyChunk(attempt="a", data="z"))
    )
    assert (replies.writes, replies.sent) == (3, 7)
    await replies.close()
    await channel.close()


async def test_a_lone_reply_is_queued_without_waiting_for_a_flush(
    broker: AbstractRobustConnection, namespace: str
) -> None:
    topo = Topology(namespace)
    channel = await broker.channel()
    queue = await topo.declare_reply_queue(channel, "one")
    got: list[AbstractIncomingMessage] = []

    async def keep(message: AbstractIncomingMessage) -> None:
        got.append(message)

    await queue.consume(keep, no_ack=True)
    replies = Replies(broker, topo)
    await replies.start()
    for n in range(3):  # each in a turn of its own: each at once
        sending = asyncio.create_task(
            replies.send(
                topo.reply_queue_name("one"),
                f"c{n}",
                OpenAIReply(part=ReplyChunk(attempt="a", data=f"part {n}")),
            )
        )
        # One loop turn: the send's first step ran. A flush task would only run in the next.
        await asyncio.sleep(0)
        assert replies.writes == n + 1
        await sending

    async def all_arrived() -> bool:
        return len(got) == 3

    await wait_for(all_arrived)
    assert [m.correlation_id for m in got] == ["c0", "c1", "c2"]
    await replies.close()
    await channel.close()
