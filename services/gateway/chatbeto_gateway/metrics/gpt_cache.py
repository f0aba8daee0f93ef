"""GPT registrations, cached briefly: every ingest request needs one, they rarely change."""

from __future__ import annotations

import asyncio
import time
from dataclasses import dataclass

import asyncpg

from chatbeto_gateway.access.auth import quiet

TTL_SECONDS = 5.0
# Looked up again in the background this close to the end (see access.auth): no stall at expiry.
REFRESH_AHEAD_SECONDS = 1.0


@dataclass(frozen=True)
class Gpt:
    pk: int
    gpt_id: str
    name: str
    project_id: int | None
    keyless_ingest: bool
    builtin: bool


COLUMNS = "pk, gpt_id, name, project_id, keyless_ingest, builtin"


class GptCache:
    def __init__(self, pool: asyncpg.Pool) -> None:
        self._pool = pool
        self._by_pk: dict[int, tuple[float, Gpt]] = {}
        self._by_id: dict[str, tuple[float, Gpt]] = {}
        # One query per GPT at a time: at expiry every request in flight misses at once.
        self._lookups: dict[tuple[str, object], asyncio.Task[Gpt | None]] = {}

    def _store(self, gpt: Gpt) -> Gpt:
        expires = time.monotonic() + TTL_SECONDS
        self._by_pk[gpt.pk] = (expires, gpt)
        self._by_id[gpt.gpt_id] = (expires, gpt)
        return gpt

    def cached_pk(self, pk: int) -> Gpt | None:
        """The GPT while its entry is fresh, without a coroutine; None means ask `by_pk`."""
        hit = self._by_pk.get(pk)
        if hit is None:
            return None
        left = hit[0] - time.monotonic()
        if left <= 0:
            return None
        if left < REFRESH_AHEAD_SECONDS and ("pk", pk) not in self._lookups:
            task = self._lookups["pk", pk] = asyncio.create_task(self._query("pk", pk))
            task.add_done_callback(quiet)  # a failure is the next caller's to see, once expired
        return hit[1]

    async def by_pk(self, pk: int) -> Gpt | None:
        hit = self._by_pk.get(pk)
        if hit is not None and hit[0] > time.monotonic():
            return hit[1]
        return await self._fetch("pk", pk)

    async def by_id(self, gpt_id: str) -> Gpt | None:
        hit = self._by_id.get(gpt_id)
        if hit is not None and hit[0] > time.monotonic():
            return hit[1]
        return await self._fetch("gpt_id", gpt_id)

    async def _fetch(self, column: str, value: object) -> Gpt | None:
        lookup = self._lookups.get((column, value))
        if lookup is None:
            lookup = self._lookups[column, value] = asyncio.create_task(self._query(column, value))
        return await asyncio.shield(lookup)

    async def _query(self, column: str, value: object) -> Gpt | None:
        try:
            # `column` is one of two literals above, never input.
            row = await self._pool.fetchrow(
                f"SELECT {COLUMNS} FROM gpts WHERE {column} = $1",
                value,
            )
            return self._store(Gpt(**dict(row))) if row else None
        finally:
            del self._lookups[column, value]

    def remember(self, gpt: Gpt) -> None:
        self._store(gpt)
