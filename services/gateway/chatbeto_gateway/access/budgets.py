"""Budgets and token caps per key, checked on the model routes before a call is handed on.

A key's spend in its budget window and its tokens in the current minute are one row each in
`key_spend_windows`, written by the openai-worker in the transaction that stores the exchange
(`chatbeto.spend`). Every gateway reads the same rows, so a budget holds across replicas with
no coordination of their own: a model route costs one indexed read for a key that has a budget
or a cap, none for others. Once a window is spent, a replica answers 429 from memory until the
window ends (spend in a window only grows). Calls already in flight when the budget runs out
still count: docs/COSTS.md says by how much a budget can be overshot.
"""

from __future__ import annotations

import math
import re
from datetime import UTC, datetime
from decimal import Decimal
from functools import lru_cache
from typing import Any

import asyncpg
import orjson
from aiohttp import web
from chatbeto import spend
from chatbeto.api_keys import KeyRecord
from chatbeto.logging import get_logger

from chatbeto_gateway.http.errors import ApiError, ValidationFailed, database_unavailable

log = get_logger(__name__)
# POST routes that call a model (a conversation or message route may not, but is one anyway:
# a spent key is refused before anything is queued).
MODEL_ROUTE_RE = re.compile(
    r"^/(?:v1/(?:chat/completions|responses|embeddings|completions)"
    r"|api/v1/openai/(?:chat/completions|conversations(?:/[^/]+/messages)?))$"
)
MAX_REMEMBERED = 100_000


def is_model_route(method: str, path: str) -> bool:
    return method == "POST" and MODEL_ROUTE_RE.match(path) is not None


async def require_stream_usage(request: web.Request) -> None:
    """A limited key's streamed `/v1/chat/completions` must ask for the usage chunk: without it
    OpenAI reports no usage, the call could not be priced, and the budget would not see it.
    (Seed routes and the Responses API always carry usage.) Bad JSON is the handler's to
    answer."""
    if request.path != "/v1/chat/completions":
        return
    try:
        body: Any = orjson.loads(await request.read())
    except orjson.JSONDecodeError:
        return
    if not isinstance(body, dict) or body.get("stream") is not True:
        return
    options = body.get("stream_options")
    if isinstance(options, dict) and options.get("include_usage") is True:
        return
    raise ValidationFailed.of(
        "stream_options.include_usage",
        "must be true for a key with a budget or a token cap (a stream without usage cannot "
        "be priced)",
    )


def _retry_after(end: datetime, now: datetime) -> str:
    return str(max(1, math.ceil((end - now).total_seconds())))


class BudgetExceeded(ApiError):
    def __init__(self, budget: spend.Budget, spent: Decimal, end: datetime, now: datetime):
        retry = _retry_after(end, now)
        super().__init__(
            429,
            "budget_exceeded",
            f"this key's budget of {budget.usd} USD per {budget.period} is spent; "
            f"it resets in {retry} s",
            details={
                "budgetUsd": float(budget.usd),
                "spentUsd": float(spent),
                "window": str(budget.period),
                "resetAt": end.isoformat(),
            },
            headers={"Retry-After": retry},
        )


class TokenLimited(ApiError):
    def __init__(self, tpm: int, used: int, end: datetime, now: datetime):
        retry = _retry_after(end, now)
        super().__init__(
            429,
            "token_limit",
            f"this key's limit of {tpm} tokens per minute is used up; retry in {retry} s",
            details={"tpm": tpm, "usedTokens": used, "resetAt": end.isoformat()},
            headers={"Retry-After": retry},
        )


@lru_cache(maxsize=1024)
def _budget(text: str) -> spend.Budget:
    return spend.Budget.parse(text)  # validated when the key was created


class SpendGuard:
    def __init__(self, pool: asyncpg.Pool) -> None:
        self._pool = pool
        # (key id, kind, its limit) -> (window start, window end, what was spent): known spent.
        self._spent: dict[tuple[int, str, str], tuple[datetime, datetime, Decimal]] = {}

    async def check(self, key: KeyRecord, request: web.Request | None = None) -> None:
        """Raise BudgetExceeded / TokenLimited if the key's window is spent (and a 422 for a
        stream that would carry no usage)."""
        if key.budget is None and key.tpm is None:
            return
        now = datetime.now(UTC)
        budget = _budget(key.budget) if key.budget else None
        self._from_memory(key, budget, now)
        if request is not None:
            await require_stream_usage(request)
        try:
            in_budget, in_minute = await spend.key_windows(self._pool, key.id, key.budget, now)
        except (OSError, asyncpg.PostgresError, asyncpg.InterfaceError) as exc:
            # Fail closed: with Postgres gone nothing could be stored or charged anyway.
            log.warning("budget check failed", error=type(exc).__name__)
            raise database_unavailable() from None
        if budget is not None and in_budget.usd >= budget.usd:
            self._remember((key.id, "budget", key.budget or ""), in_budget, in_budget.usd)
            raise BudgetExceeded(budget, in_budget.usd, in_budget.end, now)
        if key.tpm is not None and in_minute.tokens >= key.tpm:
            self._remember((key.id, "tpm", str(key.tpm)), in_minute, Decimal(in_minute.tokens))
            raise TokenLimited(key.tpm, in_minute.tokens, in_minute.end, now)

    def _from_memory(self, key: KeyRecord, budget: spend.Budget | None, now: datetime) -> None:
        if budget is not None:
            hit = self._spent.get((key.id, "budget", key.budget or ""))
            if hit is not None and hit[0] <= now < hit[1]:
                raise BudgetExceeded(budget, hit[2], hit[1], now)
        if key.tpm is not None:
            hit = self._spent.get((key.id, "tpm", str(key.tpm)))
            if hit is not None and hit[0] <= now < hit[1]:
                raise TokenLimited(key.tpm, int(hit[2]), hit[1], now)

    def _remember(self, slot: tuple[int, str, str], window: spend.Window, spent: Decimal) -> None:
        if len(self._spent) >= MAX_REMEMBERED:
            self._spent.clear()
        self._spent[slot] = (window.start, window.end, spent)

    def forget_ended(self, now: datetime) -> None:
        self._spent = {k: v for k, v in self._spent.items() if v[1] > now}
