"""Answers to the gateway: transient messages on the replies exchange, routed by `reply_to` to
the one gateway process waiting for them (its exclusive queue), matched by `correlation_id`.

The first reply of a loop turn is queued on the connection's writer at once (alone — one client,
or one request finishing — it waits for no flush task: measured, the flush task was ~0.1 ms of
the answer's path at 1 client). The replies sent after it in the same turn (a group commit wakes
all its callers in one turn, and they all answer) leave together in one socket write: their
frames are marshalled into one `ChannelFrame` and queued once on the writer, instead of one
`basic_publish` each (each its own lock, timeout and frame, so its own write: measured, the
writes and the publish machinery were most of a reply's cost). Frames still leave in the order
the replies were sent, so a stream's chunks stay ordered. The channel has no publisher confirms (see `start`), so nothing else is owed per
publish: the broker numbers nothing, and `basic_publish` would add only its lock and timeout.
"""

from __future__ import annotations

import asyncio
from dataclasses import dataclass
from typing import cast

import aiormq
from aio_pika.abc import AbstractChannel, AbstractRobustConnection
from aiormq.abc import ChannelFrame
from chatbeto.logging import get_logger
from chatbeto.messages import OpenAIReply, envelope, to_outgoing
from chatbeto.topology import Topology
from pamqp import commands as spec
from pamqp import frame
from pamqp.body import ContentBody
from pamqp.header import ContentHeader

log = get_logger(__name__)
# Marshalled `basic.publish` frames by (channel number, reply_to): the same few gateways every
# time, and pamqp's marshalling of the method frame cost as much as building the reply's body.
MAX_PUBLISH_FRAMES = 1024


@dataclass(frozen=True)
class _Due:
    reply_to: str
    properties: spec.Basic.Properties
    body: bytes
    future: asyncio.Future[None]


class Replies:
    def __init__(self, connection: AbstractRobustConnection, topo: Topology) -> None:
        self._connection = connection
        self._topology = topo
        self._channel: AbstractChannel | None = None
        self._due: list[_Due] = []
        self._flushing: asyncio.Task[None] | None = None
        self._turn_open = False  # a reply left at once in this loop turn
        self.writes = 0  # frames queued on the writer (each one socket write)
        self.sent = 0  # replies they carried
        self._publish_frames: dict[tuple[int, str], bytes] = {}

    async def start(self) -> None:
        # No confirms: a reply is worth nothing once its gateway stopped waiting, and the
        # request itself is only acked after the reply left.
        self._channel = await self._connection.channel(publisher_confirms=False)

    async def send(self, reply_to: str, correlation_id: str, reply: OpenAIReply) -> None:
        """Returns once the reply is queued on the connection's writer; raises if the channel is
        gone. The writer task writes it before this caller goes on to its next step (the
        metrics event): the answer leaves first."""
        # The body and pamqp properties as `to_amqp` makes them, without an aio_pika.Message
        # and pydantic's serialiser (the request's own path: `messages.to_outgoing`).
        message = to_outgoing(envelope(reply), persistent=False, correlation_id=correlation_id)
        loop = asyncio.get_running_loop()
        future: asyncio.Future[None] = loop.create_future()
        self._due.append(_Due(reply_to, message.properties, message.body, future))
        if self._flushing is None:
            if not self._turn_open:
                # The first of this turn: out now. Those sent after it in this turn (callers
                # woken with this one) wait for the flush task and leave together.
                self._turn_open = True
                loop.call_soon(self._close_turn)
                await self._write()
                # One turn for the writer task, which was woken first: it writes the reply
                # before this caller goes on.
                await asyncio.sleep(0)
                await future  # done: raises what the write raised
                return
            # Runs after the callbacks already due in this turn: the callers woken with this
            # one add their replies first.
            self._flushing = asyncio.create_task(self._flush())
        await future

    def _close_turn(self) -> None:
        self._turn_open = False

    async def _flush(self) -> None:
        try:
            while self._due:  # more only if a write waited for the connection meanwhile
                await self._write()
        finally:
            self._flushing = None

    async def _write(self) -> None:
        """Queue every reply due, in order, as one frame on the writer; their futures say how
        it went."""
        due: list[_Due] = []
        try:
            assert self._channel is not None, "replies are not started"
            # Neither await suspends while the connection is up (so nothing overtakes these).
            channel = cast(aiormq.Channel, await self._channel.get_underlay_channel())
            if channel.is_closed:
                raise aiormq.exceptions.ChannelInvalidStateError("the replies channel is closed")
            due, self._due = self._due, []
            if not due:  # another write, resumed first, took them
                return
            number, size = channel.number, channel.max_content_size
            frames: list[bytes] = []
            for reply in due:
                frames.append(self._publish_frame(number, reply.reply_to))
                header = ContentHeader(properties=reply.properties, body_size=len(reply.body))
                frames.append(frame.marshal(header, number))
                frames += _body_frames(reply.body, number, size)
            # What `ChannelFrame.marshall` makes of the same frames, in one payload.
            await channel.write_queue.put(
                ChannelFrame(payload=b"".join(frames), should_close=False)
            )
        except Exception as exc:
            if not due:
                due, self._due = self._due, []
            for reply in due:
                if not reply.future.done():
                    reply.future.set_exception(exc)
            return
        self.writes += 1
        self.sent += len(due)
        for reply in due:
            if not reply.future.done():
                reply.future.set_result(None)

    def _publish_frame(self, number: int, reply_to: str) -> bytes:
        key = (number, reply_to)
        found = self._publish_frames.get(key)
        if found is None:
            if len(self._publish_frames) >= MAX_PUBLISH_FRAMES:
                self._publish_frames.clear()
            method = spec.Basic.Publish(
                exchange=self._topology.replies_exchange, routing_key=reply_to
            )
            found = self._publish_frames[key] = frame.marshal(method, number)
        return found

    async def close(self) -> None:
        if self._flushing is not None:
            await asyncio.gather(self._flushing, return_exceptions=True)
        if self._channel is not None and not self._channel.is_closed:
            await self._channel.close()
        log.info("replies stopped", sent=self.sent, writes=self.writes)


def _body_frames(body: bytes, number: int, max_size: int) -> list[bytes]:
    """A message's body frames, each within the connection's frame_max (as aiormq splits)."""
    return [
        frame.marshal(ContentBody(body[n : n + max_size]), number)
        for n in range(0, len(body), max_size)
    ]
