"""Acks of one consumer's channel, sent once per loop turn: the messages that finish together
(a shared commit, WAL barrier or metrics confirm wakes them all in one turn) are acknowledged with
one `basic.ack(multiple=True)` frame instead of one frame each.

`multiple=True` acknowledges every unsettled delivery of the channel up to its tag, so it is only
sent for a run of the channel's oldest unsettled deliveries that are all due to be acked now:
a delivery still in hand (or rejected, requeued) is never covered. Deliveries outside that run
get their own ack, in the same turn. Every delivery of the channel is tracked here (`delivered`
when it arrives, `settled` when it is rejected or requeued), which holds because each consumer
has a channel of its own and settles only through this class.

Durability is unchanged: a message is acked only when its handler asked for it (after its rows
committed), and an ack is fire-and-forget in AMQP anyway (the broker confirms none; a lost one
is a redelivery, stored once). The frames are queued without waiting for the socket drain
(`wait=False`): waiting made the connection's writer task drain once per ack.
"""

from __future__ import annotations

import asyncio
import weakref
from collections.abc import Iterable

import aiormq
from aio_pika.abc import AbstractIncomingMessage

from chatbeto.logging import get_logger

log = get_logger(__name__)


class Acks:
    def __init__(self) -> None:
        # Per channel (a dead one is dropped with it): its deliveries not settled yet.
        self._unsettled: weakref.WeakKeyDictionary[aiormq.abc.AbstractChannel, set[int]] = (
            weakref.WeakKeyDictionary()
        )
        self._due: dict[aiormq.abc.AbstractChannel, list[tuple[int, asyncio.Future[bool]]]] = {}
        self._flushing: asyncio.Task[None] | None = None
        self.frames = 0  # ack frames sent
        self.acked = 0  # messages those frames acknowledged

    def delivered(self, message: AbstractIncomingMessage) -> None:
        tag = message.delivery_tag
        try:
            channel = message.channel
        except aiormq.exceptions.ChannelInvalidStateError:
            return  # delivered on a channel that died: never handled (the broker redelivers)
        if tag is not None:
            self._unsettled.setdefault(channel, set()).add(tag)

    def settled(self, message: AbstractIncomingMessage) -> None:
        """The message is settled another way (reject, nack): never cover it with an ack."""
        try:
            channel = message.channel
        except aiormq.exceptions.ChannelInvalidStateError:
            return
        unsettled = self._unsettled.get(channel)
        if unsettled is not None and message.delivery_tag is not None:
            unsettled.discard(message.delivery_tag)

    def ack(self, message: AbstractIncomingMessage) -> asyncio.Future[bool]:
        """Resolves True once the ack is queued on the channel, False if the channel died (the
        broker delivers the message again)."""
        future: asyncio.Future[bool] = asyncio.get_running_loop().create_future()
        try:
            channel = message.channel
        except aiormq.exceptions.ChannelInvalidStateError:
            future.set_result(False)
            return future
        assert message.delivery_tag is not None, "a consumer that acks gets delivery tags"
        self._due.setdefault(channel, []).append((message.delivery_tag, future))
        if self._flushing is None:
            # Runs after the callbacks already due in this turn: the handlers woken with this
            # one add their acks first.
            self._flushing = asyncio.create_task(self._flush())
        return future

    async def _flush(self) -> None:
        due, self._due = self._due, {}
        self._flushing = None
        for channel, items in due.items():
            try:
                await self._send(channel, [tag for tag, _ in items])
            except Exception as exc:
                ok = False
                self._unsettled.pop(channel, None)
                log.warning("could not ack; the broker delivers again", error=type(exc).__name__)
            else:
                ok = True
            for _, future in items:
                if not future.done():
                    future.set_result(ok)

    async def _send(self, channel: aiormq.abc.AbstractChannel, tags: Iterable[int]) -> None:
        due = set(tags)
        unsettled = self._unsettled.setdefault(channel, set())
        upto = None
        for tag in sorted(unsettled):  # the oldest deliveries first
            if tag not in due:
                break
            upto = tag
        covered = {tag for tag in due if upto is not None and tag <= upto}
        if len(covered) > 1:
            assert upto is not None
            await channel.basic_ack(upto, multiple=True, wait=False)
            self.frames += 1
            single = sorted(due - covered)
        else:
            single = sorted(due)
        for tag in single:
            await channel.basic_ack(tag, wait=False)
            self.frames += 1
        self.acked += len(due)
        unsettled.difference_update(due)
