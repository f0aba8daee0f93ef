"""API-key authentication with a short-lived cache.

The cache holds a key's record for `TTL_SECONDS`, so a revoked key is refused by every gateway
within that time (the contract promises 5 s). Last use is recorded in the background, batched.
"""

from __future__ import annotations

import asyncio
import enum
import time
from typing import Any, NamedTuple

import asyncpg
from aiohttp import web
from chatbeto import api_keys
from chatbeto.api_keys import KeyRecord
from chatbeto.logging import get_logger

log = get_logger(__name__)
TTL_SECONDS = 2.0
# An entry this close to its end is looked up again in the background while it still answers:
# under load every expiry made the requests in flight wait a Postgres round trip (a p99 stall
# every TTL). Entries still end TTL_SECONDS after their lookup started.
REFRESH_AHEAD_SECONDS = 0.5
TOUCH_INTERVAL_SECONDS = 5.0
MAX_CACHED_KEYS = 100_000
MAX_KEY_CHARS = 256


class Principal(NamedTuple):
    # A tuple, not a frozen dataclass: built on every keyed request (a frozen dataclass's
    # __init__ cost four times as much).
    key: KeyRecord

    @property
    def is_admin(self) -> bool:
        return self.key.is_admin

    @property
    def project_id(self) -> int | None:
        return None if self.key.is_admin else self.key.project_id

    def can_see_project(self, project_id: int | None) -> bool:
        return self.is_admin or (project_id is not None and project_id == self.key.project_id)


class Miss(enum.Enum):
    MISS = "miss"


MISS = Miss.MISS  # not in the cache (or expired): ask Postgres


def quiet(task: asyncio.Task[Any]) -> None:
    """Marks a background lookup's failure as seen: whoever awaits the lookup still gets it."""
    if not task.cancelled():
        task.exception()


class KeyCache:
    def __init__(self, pool: asyncpg.Pool) -> None:
        self._pool = pool
        self._entries: dict[bytes, tuple[float, KeyRecord | None]] = {}
        # One lookup per key at a time: when an entry expires under load, every request in
        # flight misses at once (64 clients sent 64 queries per key every TTL, a tenth of the
        # gateway's CPU and its p99); they now share one.
        self._lookups: dict[bytes, asyncio.Task[KeyRecord | None]] = {}
        self._used: set[int] = set()
        self._task: asyncio.Task[None] | None = None

    def cached(self, plain: str) -> KeyRecord | Miss | None:
        """The key's record while its entry is fresh, without a coroutine; `MISS` otherwise."""
        digest = api_keys.hash_key(plain)
        hit = self._entries.get(digest)
        if hit is None:
            return MISS
        left = hit[0] - time.monotonic()
        if left <= 0:
            return MISS
        if left < REFRESH_AHEAD_SECONDS and digest not in self._lookups:
            task = self._lookups[digest] = asyncio.create_task(self._lookup(digest, plain))
            task.add_done_callback(quiet)  # a failure is the next caller's to see, once expired
        record = hit[1]
        if record is not None:
            self._used.add(record.id)
        return record

    async def resolve(self, plain: str) -> KeyRecord | None:
        digest = api_keys.hash_key(plain)
        hit = self._entries.get(digest)
        if hit is not None and hit[0] > time.monotonic():
            record = hit[1]
        else:
            lookup = self._lookups.get(digest)
            if lookup is None:
                lookup = self._lookups[digest] = asyncio.create_task(self._lookup(digest, plain))
            # Shielded: a caller that goes away does not cancel the others' lookup.
            record = await asyncio.shield(lookup)
        if record is not None:
            self._used.add(record.id)
        return record

    async def _lookup(self, digest: bytes, plain: str) -> KeyRecord | None:
        try:
            started = time.monotonic()
            record = await api_keys.lookup(self._pool, plain)
            if len(self._entries) >= MAX_CACHED_KEYS:
                self._entries.clear()
            self._entries[digest] = (started + TTL_SECONDS, record)
            return record
        finally:
            del self._lookups[digest]

    def start(self) -> None:
        self._task = asyncio.create_task(self._touch_loop())

    async def _touch_loop(self) -> None:
        while True:
            await asyncio.sleep(TOUCH_INTERVAL_SECONDS)
            await self.flush()

    async def flush(self) -> None:
        used, self._used = self._used, set()
        try:
            await api_keys.touch(self._pool, sorted(used))
        except Exception as exc:  # losing a last-used stamp is harmless
            log.warning("could not record key use", error=type(exc).__name__)

    async def close(self) -> None:
        if self._task is not None:
            self._task.cancel()
            await asyncio.gather(self._task, return_exceptions=True)
        await asyncio.gather(*self._lookups.values(), return_exceptions=True)
        await self.flush()


def presented_key(request: web.Request) -> str | None:
    key = request.headers.get("X-API-Key")
    if key:
        return key.strip()
    auth = request.headers.get("Authorization", "")
    scheme, _, value = auth.partition(" ")
    if scheme.lower() == "bearer" and value.strip():
        return value.strip()
    return None


async def resolve_key(cache: KeyCache, plain: str) -> KeyRecord | None:
    """The key's record; None for a key that is not valid (unknown, revoked, or too long to
    be one)."""
    if len(plain) > MAX_KEY_CHARS:
        return None
    return await cache.resolve(plain)


# Set by `access.guard` on every request that presented a valid key.
PRINCIPAL = web.RequestKey("principal", Principal)


def principal_of(request: web.Request) -> Principal:
    """The caller of a route declared `auth="key"` or `auth="admin"` (the guard let it in)."""
    return request[PRINCIPAL]


def optional_principal_of(request: web.Request) -> Principal | None:
    """The caller of an `auth="optional"` route: None when no key was sent."""
    return request.get(PRINCIPAL)
