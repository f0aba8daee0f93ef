"""Where exchanges are committed: group commit of the exchanges that finish together.

Each caller waits for the commit of the transaction that carries its exchange, so "stored"
still means "committed" before anyone is answered, but requests that finish together share one
transaction. If a shared transaction fails, each exchange is retried in its own, so one
unstorable exchange (a value Postgres refuses) fails alone and never takes the others with it.
"""

from __future__ import annotations

import asyncio
from collections import deque

import asyncpg
from chatbeto.logging import get_logger
from chatbeto.store.conversations import Conversation

from chatbeto_openai_worker import repo

log = get_logger(__name__)
MAX_GROUP = 64
MAX_IN_FLIGHT = 4


class ExchangeStore:
    def __init__(self, pool: asyncpg.Pool) -> None:
        self._pool = pool
        self._pending: deque[tuple[repo.Exchange, asyncio.Future[Conversation]]] = deque()
        self._in_flight = 0
        self._tasks: set[asyncio.Task[None]] = set()

    async def store(self, exchange: repo.Exchange) -> Conversation:
        """Returns once the exchange is committed; raises what storing it alone raised."""
        future: asyncio.Future[Conversation] = asyncio.get_running_loop().create_future()
        self._pending.append((exchange, future))
        self._kick()
        return await future

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

    async def _commit(self, exchanges: list[repo.Exchange]) -> list[Conversation]:
        async with self._pool.acquire() as conn:
            one = exchanges[0]
            if len(exchanges) == 1 and one.conversation_id is None and one.charge is None:
                # One statement, atomic by itself: no BEGIN/COMMIT round trips.
                return [await repo.store_exchange(conn, exchanges[0])]
            async with conn.transaction():
                return [await repo.store_exchange(conn, exchange) for exchange in exchanges]

    async def close(self) -> None:
        while self._tasks:
            await asyncio.gather(*list(self._tasks), return_exceptions=True)
