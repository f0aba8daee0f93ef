"""Where exchanges are committed: group commit of the exchanges that finish together, answered
before the disk flush, acknowledged after it.

`store` returns once the exchange is committed — visible to every reader and every worker, so
a redelivery of its request finds it and replays it instead of calling the model again — but
without waiting for the WAL flush (`synchronous_commit = off` for that transaction only): the
client's answer no longer waits for an fsync. `durable` is the barrier the request's ack waits
for: one synchronous transaction (`SELECT txid_current()` assigns an id, so its commit waits
until the WAL is flushed up to its own commit record, hence past every commit before it). If
Postgres restarted in between (an unflushed commit may be lost), every exchange the barrier
covers is stored again, synchronously, from memory — the same rows, the same ids, so nothing
is stored twice. A 200 therefore still means "stored exactly once": a killed worker leaves a
committed exchange and an unacked request (its redelivery replays the stored answer); a
Postgres crash leaves a worker that stores again what it answered; only both at once, within
the few milliseconds before the flush, could lose an answered exchange.

Requests that finish together share one transaction. If a shared transaction fails, each
exchange is retried in its own, so one unstorable exchange (a value Postgres refuses) fails
alone and never takes the others with it.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections import deque

import asyncpg
from chatbeto.logging import get_logger

from chatbeto_openai_worker import repo

log = get_logger(__name__)
MAX_GROUP = 64
MAX_IN_FLIGHT = 4


class ExchangeStore:
    def __init__(self, pool: asyncpg.Pool) -> None:
        self._pool = pool
        self._pending: deque[tuple[repo.Exchange, asyncio.Future[repo.Conversation]]] = deque()
        self._in_flight = 0
        self._tasks: set[asyncio.Task[None]] = set()
        # Committed without a flush, in commit order: (sequence number, exchange).
        self._unflushed: deque[tuple[int, repo.Exchange]] = deque()
        self._seq = 0
        self._barrier: asyncio.Task[None] | None = None

    async def store(self, exchange: repo.Exchange) -> repo.Conversation:
        """Returns once the exchange is committed (not yet flushed: see `durable`); raises what
        storing it alone raised."""
        future: asyncio.Future[repo.Conversation] = asyncio.get_running_loop().create_future()
        self._pending.append((exchange, future))
        self._kick()
        return await future

    async def durable(self) -> None:
        """Returns once everything stored so far is flushed to disk (stored again,
        synchronously, if Postgres lost it); raises if it could not be."""
        target = self._seq
        while self._unflushed and self._unflushed[0][0] <= target:
            if self._barrier is None or self._barrier.done():
                self._start_barrier()
            assert self._barrier is not None
            await asyncio.shield(self._barrier)

    async def barrier(self) -> None:
        """Flush what another process committed (a redelivery replaying the answer its first,
        killed, worker stored): nothing of it is in memory here to store again."""
        await self._pool.fetchval("SELECT txid_current()")

    def _start_barrier(self) -> None:
        if self._barrier is None or self._barrier.done():
            self._barrier = asyncio.create_task(self._flush_wal())
            self._barrier.add_done_callback(_retrieved)

    async def _flush_wal(self) -> None:
        upto = self._seq  # every commit counted here finished before the barrier's
        try:
            await self._pool.fetchval("SELECT txid_current()")
        except Exception as exc:
            log.warning("WAL flush barrier failed; storing again", error=type(exc).__name__)
            for seq, exchange in [item for item in self._unflushed if item[0] <= upto]:
                await self._commit([exchange], flushed=True)
                self._forget(seq)
            return
        while self._unflushed and self._unflushed[0][0] <= upto:
            self._unflushed.popleft()

    def _forget(self, seq: int) -> None:
        self._unflushed = deque(item for item in self._unflushed if item[0] != seq)

    def _committed(self, exchanges: list[repo.Exchange]) -> None:
        for exchange in exchanges:
            self._seq += 1
            self._unflushed.append((self._seq, exchange))
        self._start_barrier()  # the flush overlaps the reply and the metrics event

    def _kick(self) -> None:
        while self._pending and self._in_flight < MAX_IN_FLIGHT:
            group = [self._pending.popleft() for _ in range(min(MAX_GROUP, len(self._pending)))]
            self._in_flight += 1
            task = asyncio.create_task(self._flush(group))
            self._tasks.add(task)
            task.add_done_callback(self._tasks.discard)

    async def _flush(
        self, group: list[tuple[repo.Exchange, asyncio.Future[repo.Conversation]]]
    ) -> None:
        try:
            if len(group) > 1:
                try:
                    convs = await self._commit([exchange for exchange, _ in group])
                except Exception as exc:
                    log.warning("group store failed, storing one by one", error=type(exc).__name__)
                else:
                    for (_, future), conv in zip(group, convs, strict=True):
                        if not future.done():
                            future.set_result(conv)
                    return
            for exchange, future in group:
                try:
                    (conv,) = await self._commit([exchange])
                except BaseException as exc:
                    if not future.done():
                        future.set_exception(exc)
                    if not isinstance(exc, Exception):
                        raise
                else:
                    if not future.done():
                        future.set_result(conv)
        finally:
            self._in_flight -= 1
            self._kick()

    async def _commit(
        self, exchanges: list[repo.Exchange], *, flushed: bool = False
    ) -> list[repo.Conversation]:
        async with self._pool.acquire() as conn:
            one = exchanges[0]
            if len(exchanges) == 1 and one.conversation_id is None and one.charge is None:
                # One statement, atomic and flushed by itself: no BEGIN/COMMIT round trips.
                return [await repo.store_exchange(conn, exchanges[0])]
            if flushed:
                async with conn.transaction():
                    return [await repo.store_exchange(conn, exchange) for exchange in exchanges]
            # BEGIN and the setting in one round trip; the setting ends with the transaction.
            await conn.execute("BEGIN; SET LOCAL synchronous_commit TO off")
            try:
                convs = [await repo.store_exchange(conn, exchange) for exchange in exchanges]
                await conn.execute("COMMIT")
            except BaseException:
                if not conn.is_closed():
                    with contextlib.suppress(Exception):
                        await conn.execute("ROLLBACK")
                raise
        self._committed(exchanges)
        return convs

    async def close(self) -> None:
        while self._tasks:
            await asyncio.gather(*list(self._tasks), return_exceptions=True)
        with contextlib.suppress(Exception):
            await self.durable()


def _retrieved(task: asyncio.Task[None]) -> None:
    if not task.cancelled():
        task.exception()  # seen by the waiters; never "exception was never retrieved"
