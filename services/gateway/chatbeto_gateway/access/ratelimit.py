"""Rate limits shared by every gateway replica, cheap on the hot path.

Fixed windows counted in Postgres (`rate_windows`). A gateway does not ask Postgres per request:
it *leases* a block of tokens from the window's row with one atomic upsert and spends them in
memory, then leases again. A lease never grants more than the limit has left, so the total over
all replicas never exceeds the limit; small limits lease blocks of 1 (exact). Tokens a replica
leased but did not spend are lost to the others until the window ends (at most one block per
replica, about 1% of the limit). A replica tops its tokens up to a block in the background once
a quarter of a block is left, so that no request waits on Postgres mid-window. Once a window is exhausted a replica answers 429 from memory
until the window ends. See docs/SECURITY.md.

A request answered 5xx gives its token back (`settle`): the failure was ours, and a client that
retries through an outage must not find itself locked out after it. Budgets and token caps on
the model routes are checked here too (`budgets.SpendGuard`, docs/COSTS.md).
"""

from __future__ import annotations

import asyncio
import math
import time
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from functools import lru_cache
from typing import Literal, NamedTuple

import asyncpg
from aiohttp import web
from chatbeto import spend
from chatbeto.api_keys import KeyRecord
from chatbeto.logging import get_logger
from chatbeto.settings import GatewaySettings, RateLimit
from multidict import CIMultiDict

from chatbeto_gateway.access.budgets import SpendGuard, is_model_route
from chatbeto_gateway.http.errors import ApiError

log = get_logger(__name__)
Scope = Literal["api", "ingest"]
# A block is this fraction of the limit: at most 1% of a window is stranded per replica.
BLOCK_DIVISOR = 100
MAX_BLOCK = 1000
# Top up in the background once this fraction of a block is left (blocks of 4 and more): a
# request that found the tokens spent waited for the lease, and so did every request behind it
# (64 clients: 6 % of all ingest requests waited a Postgres round trip, the p99).
REFILL_DIVISOR = 4
# Counters are bigint; a larger limit is no limit at all.
MAX_LIMIT = 1 << 60
MAX_LOCAL_BUCKETS = 100_000
PRUNE_INTERVAL_SECONDS = 60.0
# After a lease failed, requests that need one pass uncounted without asking for this long:
# against a Postgres that drops packets each lease waits for its statement timeout, and a
# bucket's requests queue on its lock, each behind the one before (5, 10, 15 s ...).
LEASE_RETRY_SECONDS = 1.0
# Spend windows are read only while current; kept a while past their end for clock skew.
SPEND_WINDOW_GRACE = timedelta(hours=1)

LEASE_SQL = """
INSERT INTO rate_windows AS w (bucket, window_start, window_end, used, last_grant)
VALUES ($1, $2, $3, LEAST($4::bigint, $5::bigint), LEAST($4::bigint, $5::bigint))
ON CONFLICT (bucket, window_start) DO UPDATE
    SET used = w.used + LEAST(EXCLUDED.last_grant, $5::bigint - w.used),
        last_grant = LEAST(EXCLUDED.last_grant, $5::bigint - w.used)
    WHERE w.used < $5::bigint
RETURNING used, last_grant
"""


class RateLimited(ApiError):
    def __init__(self, decision: Decision) -> None:
        retry = max(1, decision.reset_seconds)
        super().__init__(
            429,
            "rate_limited",
            f"rate limit of {decision.limit} requests exceeded; retry in {retry} s",
            headers={"Retry-After": str(retry)},
        )


class Decision(NamedTuple):
    # A tuple, not a frozen dataclass: one per limited request.
    allowed: bool
    limit: int
    remaining: int
    reset_at: int  # unix seconds, end of the window
    # False when Postgres could not be asked and the request was let through uncounted.
    counted: bool = True
    # Where the token came from, for `settle` to give back (None: nothing to give back).
    limiter: Limiter | None = None
    bucket: str = ""
    window_start: int = 0

    @property
    def reset_seconds(self) -> int:
        return max(0, math.ceil(self.reset_at - time.time()))

    def headers(self) -> dict[str, str]:
        return {
            "RateLimit-Limit": str(self.limit),
            "RateLimit-Remaining": str(max(0, self.remaining)),
            "RateLimit-Reset": str(self.reset_seconds),
        }

    def add_to(self, headers: CIMultiDict[str]) -> None:
        headers["RateLimit-Limit"] = str(self.limit)
        headers["RateLimit-Remaining"] = str(max(0, self.remaining))
        headers["RateLimit-Reset"] = str(self.reset_seconds)


DECISION = web.RequestKey("ratelimit_decision", Decision)
_new_decision = tuple.__new__


@dataclass
class _Bucket:
    window_start: int
    window_end: int
    limit: int
    tokens: int = 0  # leased, not yet spent
    used: int = 0  # the shared count after our last lease
    exhausted: bool = False
    refilling: bool = False  # a background lease is under way
    lock: asyncio.Lock = field(default_factory=asyncio.Lock)

    def __post_init__(self) -> None:
        # Fewer tokens than this: top up (0 for small blocks, which are never topped up).
        self.low_water = block_size(self.limit) // REFILL_DIVISOR

    @property
    def low(self) -> bool:
        return self.tokens < self.low_water and not self.refilling and not self.exhausted


def block_size(limit: int) -> int:
    return max(1, min(limit // BLOCK_DIVISOR, MAX_BLOCK))


class Limiter:
    def __init__(self, pool: asyncpg.Pool) -> None:
        self._pool = pool
        self._buckets: dict[str, _Bucket] = {}
        self._task: asyncio.Task[None] | None = None
        self._refills: set[asyncio.Task[None]] = set()
        self._unreachable_until = 0.0  # monotonic; see LEASE_RETRY_SECONDS
        self.spend = SpendGuard(pool)

    def take_leased(self, bucket: str, rate: RateLimit) -> Decision | None:
        """`take` without a coroutine while this replica holds leased tokens (or knows the
        window is spent); None when a lease must be asked for."""
        now = time.time()
        window = rate.window_seconds
        start = int(now // window) * window
        state = self._buckets.get(bucket)
        if state is None or state.window_start != start or state.limit != rate.limit:
            return None
        if state.tokens:
            state.tokens -= 1
            if state.low:
                self._refill(bucket, rate, state)
            # tuple.__new__ itself: the named tuple's own __new__ is one more Python call.
            return _new_decision(
                Decision,
                (
                    True,
                    rate.limit,
                    rate.limit - state.used + state.tokens,
                    start + window,
                    True,
                    self,
                    bucket,
                    start,
                ),
            )
        if state.exhausted:
            return Decision(False, rate.limit, 0, start + window)
        return None

    async def take(self, bucket: str, rate: RateLimit) -> Decision:
        """Spend one token of `bucket`; a denied decision means 429."""
        if rate.limit > MAX_LIMIT:
            rate = RateLimit(MAX_LIMIT, rate.window_seconds)
        now = time.time()
        start = int(now // rate.window_seconds) * rate.window_seconds
        end = start + rate.window_seconds
        state = self._buckets.get(bucket)
        if state is None or state.window_start != start or state.limit != rate.limit:
            if len(self._buckets) >= MAX_LOCAL_BUCKETS:
                self._buckets.clear()
            state = self._buckets[bucket] = _Bucket(start, end, rate.limit)
        while state.tokens == 0 and not state.exhausted:
            if self._unreachable():
                return Decision(True, rate.limit, rate.limit, end, counted=False)
            async with state.lock:
                if state.tokens == 0 and not state.exhausted:
                    if self._unreachable() or not await self._lease(bucket, rate, state):
                        # Postgres unreachable: fail open rather than refuse all traffic.
                        return Decision(True, rate.limit, rate.limit, end, counted=False)
        if state.tokens == 0:
            return Decision(False, rate.limit, 0, end)
        state.tokens -= 1
        if state.low:
            self._refill(bucket, rate, state)
        return Decision(
            True, rate.limit, rate.limit - state.used + state.tokens, end, True, self, bucket, start
        )

    def give_back(self, bucket: str, window_start: int) -> None:
        """Return a token spent in this window (the request failed on our side). It goes back
        to this replica's leased tokens: the shared count never exceeds what was answered."""
        state = self._buckets.get(bucket)
        if state is not None and state.window_start == window_start:
            state.tokens += 1

    def _refill(self, bucket: str, rate: RateLimit, state: _Bucket) -> None:
        state.refilling = True
        task = asyncio.create_task(self._top_up(bucket, rate, state))
        self._refills.add(task)
        task.add_done_callback(self._refills.discard)

    def _unreachable(self) -> bool:
        return time.monotonic() < self._unreachable_until

    async def _top_up(self, bucket: str, rate: RateLimit, state: _Bucket) -> None:
        try:
            async with state.lock:
                # A request that found no tokens may have leased meanwhile.
                if state.tokens < state.low_water and not self._unreachable():
                    await self._lease(bucket, rate, state)
        finally:
            state.refilling = False

    async def _lease(self, bucket: str, rate: RateLimit, state: _Bucket) -> bool:
        try:
            row = await self._pool.fetchrow(
                LEASE_SQL,
                bucket,
                state.window_start,
                state.window_end,
                # Up to one block held: what is stranded at the window's end stays a block.
                max(1, block_size(rate.limit) - state.tokens),
                rate.limit,
            )
        except (OSError, asyncpg.PostgresError, asyncpg.InterfaceError) as exc:
            log.warning("rate limit lease failed; allowing", error=type(exc).__name__)
            self._unreachable_until = time.monotonic() + LEASE_RETRY_SECONDS
            return False
        if row is None or row["last_grant"] <= 0:
            state.exhausted = True
            state.used = rate.limit
        else:
            state.tokens += row["last_grant"]
            state.used = row["used"]
        return True

    def start(self) -> None:
        self._task = asyncio.create_task(self._prune_loop())

    async def _prune_loop(self) -> None:
        while True:
            await asyncio.sleep(PRUNE_INTERVAL_SECONDS)
            await self.prune()

    async def prune(self) -> None:
        """Drop ended windows (any replica may; the DELETE is idempotent)."""
        now = time.time()
        self._buckets = {k: b for k, b in self._buckets.items() if b.window_end > now}
        wall = datetime.now(UTC)
        self.spend.forget_ended(wall)
        try:
            await self._pool.execute("DELETE FROM rate_windows WHERE window_end < $1", int(now) - 1)
            await spend.prune(self._pool, wall - SPEND_WINDOW_GRACE)
        except (OSError, asyncpg.PostgresError, asyncpg.InterfaceError) as exc:
            log.warning("rate window cleanup failed", error=type(exc).__name__)

    async def close(self) -> None:
        tasks = [*self._refills, *([self._task] if self._task is not None else [])]
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)


def scope_of(path: str) -> Scope | None:
    if path.startswith(("/api/v1/", "/v1/")):
        return "api"
    if path.startswith("/api/"):
        return "ingest"
    return None


@lru_cache(maxsize=1024)
def _parse(text: str) -> RateLimit | None:
    try:
        rate = RateLimit.parse(text)
    except ValueError:
        return None
    return RateLimit(MAX_LIMIT, rate.window_seconds) if rate.limit > MAX_LIMIT else rate


def _default(settings: GatewaySettings, scope: Scope) -> RateLimit:
    # Settings were validated at start, so this parses (once, cached).
    rate = _parse(settings.rate_limit if scope == "api" else settings.ingest_rate_limit)
    assert rate is not None
    return rate


class KeyPlan(NamedTuple):
    """What counting a key's request needs, worked out once per key record and scope."""

    record: KeyRecord
    bucket: str
    rate: RateLimit
    priced: bool  # a budget or token cap: the model routes check spend too


# By (id of the record, scope): the key cache hands out the same record object until its
# entry is refreshed, and the entry keeps the record alive (checked by identity on each hit).
_plans: dict[tuple[int, Scope], KeyPlan] = {}
MAX_PLANS = 10_000


def _plan(record: KeyRecord, scope: Scope, settings: GatewaySettings) -> KeyPlan:
    plan = _plans.get((id(record), scope))
    if plan is not None and plan.record is record:
        return plan
    if len(_plans) >= MAX_PLANS:
        _plans.clear()
    # The key's own limit (`--rate-limit`) replaces the default of either scope.
    rate = (_parse(record.rate_limit) if record.rate_limit else None) or _default(settings, scope)
    plan = _plans[id(record), scope] = KeyPlan(
        record,
        f"{scope}:key:{record.id}",
        rate,
        record.budget is not None or record.tpm is not None,
    )
    return plan


def _allow(request: web.Request, decision: Decision) -> Decision:
    request[DECISION] = decision
    if not decision.allowed:
        raise RateLimited(decision)
    return decision


def settle(request: web.Request, status: int) -> None:
    """Called with the final status: a 5xx is not charged against the caller's limit."""
    if status >= 500:
        decision = request.get(DECISION)
        if decision is not None and decision.limiter is not None:
            decision.limiter.give_back(decision.bucket, decision.window_start)


def charge_key_leased(
    request: web.Request,
    limiter: Limiter,
    record: KeyRecord,
    scope: Scope,
    settings: GatewaySettings,
) -> Decision | None:
    """`charge_key` without a coroutine, when this replica holds a leased token (or knows the
    window is spent) and the request needs no spend check: the common case under load. None:
    await `charge_key`."""
    plan = _plan(record, scope, settings)
    if plan.priced and is_model_route(request.method, request.path):
        return None
    decision = limiter.take_leased(plan.bucket, plan.rate)
    if decision is None:
        return None
    return _allow(request, decision)


async def charge_key(
    request: web.Request,
    limiter: Limiter,
    record: KeyRecord,
    scope: Scope,
    settings: GatewaySettings,
) -> Decision:
    """Count a request with a valid key against that key (`access.guard`, once per request);
    a keyless ingest is counted per GPT by `charge_gpt`."""
    plan = _plan(record, scope, settings)
    rate = plan.rate
    decision = _allow(
        request, limiter.take_leased(plan.bucket, rate) or await limiter.take(plan.bucket, rate)
    )
    if plan.priced and is_model_route(request.method, request.path):
        await limiter.spend.check(record, request)
    return decision


async def charge_gpt(
    request: web.Request, limiter: Limiter, settings: GatewaySettings, gpt_pk: int
) -> None:
    """Count a keyless ingest request against its GPT, once per request."""
    if DECISION in request:
        return
    rate = _default(settings, "ingest")
    bucket = f"ingest:gpt:{gpt_pk}"
    _allow(request, limiter.take_leased(bucket, rate) or await limiter.take(bucket, rate))


def add_headers(request: web.Request, response: web.StreamResponse) -> None:
    """Every limited response carries the RateLimit-* headers: the middleware adds them to what
    a handler returns, a streaming handler before it prepares its response. (Not an
    `on_response_prepare` signal: sending it cost a coroutine per request.)"""
    decision = request.get(DECISION)
    if decision is not None:
        decision.add_to(response.headers)
