"""The gateway's hot-path caches renew themselves before they run out, so that a request under
load never waits on Postgres for a key, a GPT or a rate-limit lease mid-window."""

from __future__ import annotations

import asyncio
import time

import asyncpg
from chatbeto.settings import RateLimit

from tests.conftest import Factory, wait_for


async def test_limiter_tops_up_before_the_tokens_run_out(database: str) -> None:
    from chatbeto_gateway.access.ratelimit import Limiter, block_size

    rate = RateLimit(100_000, 3600)
    block = block_size(rate.limit)
    assert block == 1000
    async with asyncpg.create_pool(database, min_size=1, max_size=2) as pool:
        limiter = Limiter(pool)
        first = await limiter.take("ingest:key:1", rate)  # leases the first block
        assert first.allowed
        # Spend from memory until a quarter of the block is left: a lease starts by itself.
        taken = 1
        while taken < block - block // 4 + 1:
            decision = limiter.take_leased("ingest:key:1", rate)
            assert decision is not None and decision.allowed
            taken += 1

        async def used() -> int | None:
            value: int = await pool.fetchval(
                "SELECT used FROM rate_windows WHERE bucket = 'ingest:key:1'"
            )
            return value if value > block else None

        # Topped up to one block held, never more (what a window's end strands stays a block).
        assert await wait_for(used) == block + (block - block // 4 + 1)
        # The rest of the old block and the new one answer without a coroutine.
        for _ in range(block):
            decision = limiter.take_leased("ingest:key:1", rate)
            assert decision is not None and decision.allowed
        await limiter.close()
        # The total still never exceeds what was leased.
        assert await pool.fetchval("SELECT used FROM rate_windows") <= 3 * block


async def test_small_limits_are_never_leased_ahead(database: str) -> None:
    from chatbeto_gateway.access.ratelimit import Limiter

    rate = RateLimit(3, 3600)
    async with asyncpg.create_pool(database, min_size=1, max_size=2) as pool:
        limiter = Limiter(pool)
        assert (await limiter.take("api:key:2", rate)).allowed
        assert not limiter._refills  # a token held ahead would be lost to other replicas
        assert await pool.fetchval("SELECT used FROM rate_windows") == 1
        await limiter.close()


async def test_key_entries_are_looked_up_again_before_they_end(
    database: str, factory: Factory
) -> None:
    from chatbeto import api_keys
    from chatbeto_gateway.access import auth
    from chatbeto_gateway.access.auth import MISS, KeyCache

    project = await factory.project()
    plain = await factory.key(project)
    async with asyncpg.create_pool(database, min_size=1, max_size=2) as pool:
        cache = KeyCache(pool)
        assert cache.cached(plain) is MISS
        record = await cache.resolve(plain)
        assert record is not None
        digest = api_keys.hash_key(plain)
        # Close to its end, the entry still answers, and asks Postgres again in the background.
        cache._entries[digest] = (time.monotonic() + auth.REFRESH_AHEAD_SECONDS / 2, record)
        assert cache.cached(plain) == record
        lookup = cache._lookups[digest]
        assert await asyncio.shield(lookup) == record
        # Renewed for a whole TTL from the lookup, so it answers without a miss.
        assert cache._entries[digest][0] > time.monotonic() + auth.REFRESH_AHEAD_SECONDS
        assert cache.cached(plain) == record
        await cache.close()


async def test_gpt_entries_are_looked_up_again_before_they_end(
    database: str, factory: Factory
) -> None:
    from chatbeto_gateway.metrics import gpt_cache
    from chatbeto_gateway.metrics.gpt_cache import GptCache

    gpt_id = await factory.gpt(project_id=await factory.project())
    async with asyncpg.create_pool(database, min_size=1, max_size=2) as pool:
        cache = GptCache(pool)
        gpt = await cache.by_id(gpt_id)
        assert gpt is not None
        cache._by_pk[gpt.pk] = (time.monotonic() + gpt_cache.REFRESH_AHEAD_SECONDS / 2, gpt)
        assert cache.cached_pk(gpt.pk) == gpt
        lookup = cache._lookups["pk", gpt.pk]
        assert await asyncio.shield(lookup) == gpt
        assert cache._by_pk[gpt.pk][0] > time.monotonic() + gpt_cache.REFRESH_AHEAD_SECONDS
