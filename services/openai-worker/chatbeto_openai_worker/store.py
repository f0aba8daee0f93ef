"""Where exchanges are committed: group commit of the exchanges that finish together, answered
before the disk flush, acknowledged after it.

`store` returns once the exchange is committed — visible to every reader and every worker, so
a redelivery of its request finds it and replays it instead of calling the model again — but
without waiting for the WAL flush: the commits run on connections of their own with
`synchronous_commit = off` (`open_fast_pool`), so the answer waits for no fsync. `durable` is
the barrier the request's ack waits for: one statement that commits synchronously
(`BARRIER_SQL`: `txid_current()` assigns an id, so its commit waits until the WAL is flushed
up to its own commit record, hence past every commit before it), shared by every exchange
committed before it started, and started as soon as the committed exchanges' callers have
sent their answers, so it overlaps the reply and the metrics event.
If the barrier fails (Postgres restarted: an unflushed commit may be lost), every exchange it
covered is stored again, synchronously, from memory — the same rows and ids, so nothing is
stored twice. A 200 therefore still means "stored exactly once": a killed worker leaves a
committed exchange and an unacked request (its redelivery replays the stored answer); a
Postgres crash leaves a worker that stores again what it answered; only both at once, within
the milliseconds before the flush, could lose an answered exchange.

A new conversation's exchange is one statement (its messages and spend included:
`repo.store_exchanges`), so it needs no BEGIN/COMMIT. Requests that finish together are stored
in one round trip (their statements pipelined, atomic together). If a shared store fails, each
exchange is retried alone, so one unstorable exchange (a value Postgres refuses) fails alone
and never takes the others with it.

The fast connections keep no session state between borrowers (no LISTEN, advisory locks or
SETs: only these statements), so the pool does not reset them on release — a round trip less
per store (`chatbeto.db.create_pool(reset_session=False)`).
"""

from __future__ import annotations

import asyncio
import contextlib
from collections import deque

import asyncpg
from chatbeto import spend
from chatbeto.db import create_pool
from chatbeto.logging import get_logger
from chatbeto.store.conversations import Conversation

from chatbeto_openai_worker import repo

log = get_logger(__name__)
MAX_GROUP = 64
# One group in flight: the exchanges that finish while it commits form the next group, so the
# groups grow with the load (measured at 32 clients, CPU per request relative to the stub's:
# 4 in flight -> 1 cut Postgres' by a fifth and the worker's by 6%; 1-client latency is
# unchanged, a lone exchange never waits).
MAX_IN_FLIGHT = 1
FAST_POOL_SIZE = 6
# A commit on the answer's path takes milliseconds; one that hangs (Postgres dropping packets)
# must end while the gateway still waits (OPENAI_TIMEOUT plus the reply grace, 5 s by
# default), so that its caller gets the 503 `database_unavailable`, not the 504.
COMMIT_TIMEOUT_SECONDS = 4.0
# One statement, so one round trip; `set_config(..., true)` holds for its own transaction,
# whose commit therefore waits for the flush even on a `synchronous_commit = off` connection.
BARRIER_SQL = "SELECT set_config('synchronous_commit', 'on', true), txid_current()"


async def open_fast_pool(dsn: str) -> asyncpg.Pool:
    """Connections whose commits do not wait for the WAL flush."""
    return await create_pool(
        dsn,
        max_size=FAST_POOL_SIZE,
        server_settings={"synchronous_commit": "off"},
        reset_session=False,
        command_timeout=COMMIT_TIMEOUT_SECONDS,
    )


class ExchangeStore:
    def __init__(self, pool: asyncpg.Pool, fast: asyncpg.Pool | None = None) -> None:
        """`pool` commits synchronously (stores again); `fast` does not (None: every store is
        synchronous and `durable` has nothing to wait for). Barriers run on `fast`."""
        self._pool = pool
        self._fast = fast or pool
        self.keys = spend.KeyLimits()  # every key's limits, read once (docs/COSTS.md)
        self._pending: deque[tuple[repo.Exchange, asyncio.Future[Conversation]]] = deque()
        self._in_flight = 0
        self._tasks: set[asyncio.Task[None]] = set()
        # Committed without a flush, in commit order: (sequence number, exchange).
        self._unflushed: deque[tuple[int, repo.Exchange]] = deque()
        self._seq = 0
        self._barrier: asyncio.Task[None] | None = None

    async def store(self, exchange: repo.Exchange) -> Conversation:
        """Returns once the exchange is committed (not yet flushed: see `durable`); raises what
        storing it alone raised."""
        future: asyncio.Future[Conversation] = asyncio.get_running_loop().create_future()
        self._pending.append((exchange, future))
        self._kick()
        return await future

    async def durable(self) -> None:
        """Returns once everything stored so far is flushed to disk (stored again,
        synchronously, if Postgres lost it); raises if it could not be."""
        target = self._seq
        while self._unflushed and self._unflushed[0][0] <= target:
            self._start_barrier()
            assert self._barrier is not None
            await asyncio.shield(self._barrier)

    async def barrier(self) -> None:
        """Flush what another process committed (a redelivery replaying the answer its first,
        killed, worker stored): nothing of it is in memory here to store again."""
        await self._fast.fetchval(BARRIER_SQL)

    def _start_barrier(self) -> None:
        if self._barrier is None or self._barrier.done():
            self._barrier = asyncio.create_task(self._flush_wal())
            self._barrier.add_done_callback(_retrieved)

    async def _flush_wal(self) -> None:
        upto = self._seq  # every commit counted here finished before the barrier's
        try:
            await self.barrier()
        except Exception as exc:
            log.warning("WAL flush barrier failed; storing again", error=type(exc).__name__)
            for seq, exchange in [item for item in self._unflushed if item[0] <= upto]:
                await self._commit([exchange], self._pool)
                self._unflushed = deque(item for item in self._unflushed if item[0] != seq)
            return
        while self._unflushed and self._unflushed[0][0] <= upto:
            self._unflushed.popleft()

    def _kick(self) -> None:
        while self._pending and self._in_flight < MAX_IN_FLIGHT:
            group = [self._pending.popleft() for _ in range(min(MAX_GROUP, len(self._pending)))]
            self._in_flight += 1
            task = asyncio.create_task(self._flush(group))
            self._tasks.add(task)
            task.add_done_callback(self._tasks.discard)

    async def _flush(self, group: list[tuple[repo.Exchange, asyncio.Future[Conversation]]]) -> None:
        try:
            if len(group) > 1:
                try:
                    convs = await self._commit([exchange for exchange, _ in group], self._fast)
                except Exception as exc:
                    log.warning("group store failed, storing one by one", error=type(exc).__name__)
                else:
                    for (_, future), conv in zip(group, convs, strict=True):
                        if not future.done():
                            future.set_result(conv)
                    self._barrier_soon()
                    return
            for exchange, future in group:
                try:
                    (conv,) = await self._commit([exchange], self._fast)
                except BaseException as exc:
                    if not future.done():
                        future.set_exception(exc)
                    if not isinstance(exc, Exception):
                        raise
                else:
                    if not future.done():
                        future.set_result(conv)
            self._barrier_soon()
        finally:
            self._in_flight -= 1
            self._kick()

    async def _commit(
        self, exchanges: list[repo.Exchange], pool: asyncpg.Pool
    ) -> list[Conversation]:
        async with pool.acquire() as conn:
            convs = await repo.store_exchanges(conn, exchanges, self.keys)
        if pool is not self._pool:
            for exchange in exchanges:
                self._seq += 1
                self._unflushed.append((self._seq, exchange))
        return convs

    def _barrier_soon(self) -> None:
        """Start the flush once the callers just woken have run: their answers leave first,
        and the flush overlaps them and the metrics events."""
        if self._unflushed:
            asyncio.get_running_loop().call_soon(self._start_barrier)

    async def close(self) -> None:
        while self._tasks:
            await asyncio.gather(*list(self._tasks), return_exceptions=True)
        with contextlib.suppress(Exception):
            await self.durable()


def _retrieved(task: asyncio.Task[None]) -> None:
    if not task.cancelled():
        task.exception()  # seen by the waiters; never "exception was never retrieved"
