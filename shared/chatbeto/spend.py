"""Spend: the priced record of every model call, and each key's spend in its budget window.

The openai-worker writes a call's spend with the exchange it stores, atomically, so spend is
exactly what was stored: a restart loses none, and a redelivered request (same broker message
id, the ledger's primary key) adds nothing. The same statement adds the call to the key's
current budget window and, for a key with a token cap, its current minute
(`key_spend_windows`); a gateway checks a budget by reading that one row. A new conversation's
exchange is one statement with its spend (`ledger_sql` inside
`chatbeto.store.conversations.create_with_messages`); `record` is the same write alone. See
docs/COSTS.md.
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from decimal import Decimal, InvalidOperation
from typing import Any, TypeAlias

import asyncpg
from asyncpg.pool import PoolConnectionProxy

from chatbeto.db import REPORT_TIMEOUT_SECONDS, Conn

# Reads and the prune may go through a pool; `record` takes the caller's transaction.
Executor: TypeAlias = "asyncpg.Connection[Any] | PoolConnectionProxy[Any] | asyncpg.Pool[Any]"

UNIT_SECONDS = {"s": 1, "m": 60, "h": 3600, "d": 86400}
BUDGET_RE = re.compile(r"^\s*\$?\s*(\d+(?:\.\d+)?)\s*/\s*(\d*)\s*(mo|[smhd])\s*$")
MAX_BUDGET_USD = Decimal(10) ** 12
MAX_PERIOD_COUNT = 10_000
EPOCH = datetime(1970, 1, 1, tzinfo=UTC)


@dataclass(frozen=True)
class Period:
    """A window length: `count` seconds/minutes/hours/days, or `count` calendar months (UTC).
    Windows are fixed and aligned (as rate limits): `1mo` runs from the 1st of each month."""

    count: int
    unit: str

    def window(self, at: datetime) -> tuple[datetime, datetime]:
        if self.unit == "mo":
            index = at.year * 12 + at.month - 1
            first = index - index % self.count
            return _month(first), _month(first + self.count)
        size = self.count * UNIT_SECONDS[self.unit]
        start = int((at - EPOCH).total_seconds()) // size * size
        return EPOCH + timedelta(seconds=start), EPOCH + timedelta(seconds=start + size)

    def __str__(self) -> str:
        return f"{self.count}{self.unit}"


def _month(index: int) -> datetime:
    return datetime(index // 12, index % 12 + 1, 1, tzinfo=UTC)


# A key without a budget still has its spend shown, per calendar month.
DEFAULT_PERIOD = Period(1, "mo")
TPM_PERIOD = Period(1, "m")


@dataclass(frozen=True)
class Budget:
    """`20/1mo`: at most 20 USD per calendar month; `0.5/1d`, `5/12h` likewise."""

    usd: Decimal
    period: Period

    @classmethod
    def parse(cls, text: str) -> Budget:
        match = BUDGET_RE.match(text)
        if not match:
            raise ValueError(f"expected USD/<window> such as 20/1mo or 0.5/1d, got {text!r}")
        amount, count, unit = match.groups()
        try:
            usd = Decimal(amount)
        except InvalidOperation:
            raise ValueError(f"not an amount of USD: {amount!r}") from None
        n = int(count or "1")
        if usd <= 0 or usd > MAX_BUDGET_USD:
            raise ValueError("a budget must be more than 0 USD")
        if not 0 < n <= MAX_PERIOD_COUNT:
            raise ValueError(f"a budget window must be 1 to {MAX_PERIOD_COUNT} units")
        return cls(usd, Period(n, unit))

    def __str__(self) -> str:
        amount = format(self.usd.normalize(), "f")
        return f"{amount}/{self.period}"


def budget_of(text: str | None) -> Budget | None:
    return None if text is None else Budget.parse(text)


@dataclass(frozen=True)
class Charge:
    """One priced model call. `cost_usd` is None for a model the price table does not know:
    it is recorded (tokens count against a token cap) but adds nothing to a budget."""

    external_id: str
    key_id: int | None
    project_id: int | None
    model: str
    input_tokens: int
    cached_input_tokens: int
    output_tokens: int
    cost_usd: Decimal | None

    @property
    def tokens(self) -> int:
        return self.input_tokens + self.output_tokens


@dataclass(frozen=True)
class Limits:
    """What decides a key's windows. Both are set when the key is created and never change
    (`api_keys.create`), so a process may remember them (`KeyLimits`)."""

    budget: str | None
    tpm: int | None

    def windows(self, at: datetime) -> list[tuple[str, datetime, datetime]]:
        """(kind, start, end) of each window a call at `at` adds to."""
        out = [("budget", *_period(self.budget).window(at))]
        if self.tpm is not None:
            out.append(("tpm", *TPM_PERIOD.window(at)))
        return out


async def limits_of(conn: Executor, key_id: int) -> Limits | None:
    row = await conn.fetchrow("SELECT budget, tpm FROM api_keys WHERE id = $1", key_id)
    return None if row is None else Limits(row["budget"], row["tpm"])


class KeyLimits:
    """A process's memory of its keys' limits: each key is read once, so a call's windows are
    known before its statement and the charge takes no round trip of its own."""

    MAX_KEYS = 100_000  # a bound on memory, far above the keys of one deployment

    def __init__(self) -> None:
        self._known: dict[int, Limits] = {}

    async def get(self, conn: Executor, key_id: int) -> Limits | None:
        known = self._known.get(key_id)
        if known is None:
            known = await limits_of(conn, key_id)
            if known is not None:  # a key missing now stays unknown: nothing to remember
                if len(self._known) >= self.MAX_KEYS:
                    self._known.clear()
                self._known[key_id] = known
        return known


@dataclass(frozen=True)
class Entry:
    """A charge ready to be written in one statement: its time and the key windows it adds to
    (none without a key)."""

    charge: Charge
    at: datetime
    windows: Sequence[tuple[str, datetime, datetime]] = ()


async def entry(
    conn: Executor, charge: Charge, keys: KeyLimits | None = None, at: datetime | None = None
) -> Entry:
    """The charge's entry; its key's limits from `keys` (None: read now)."""
    at = at or datetime.now(UTC)
    if charge.key_id is None:
        return Entry(charge, at)
    limits = await (keys or KeyLimits()).get(conn, charge.key_id)
    return Entry(charge, at, limits.windows(at) if limits is not None else ())


LEDGER_PARAMS = 12


def ledger_sql(first: int, source: str) -> str:
    """Two CTEs (`ledger`, `windows`; no WITH) that write an entry whose `ledger_args` are the
    parameters $first…: its ledger row, once per row of the FROM item `source` (a CTE: only if
    it returned a row), and — only if that row is new (the ledger's key is the call's broker
    message id: a redelivery adds nothing) — its key's windows. No entry (NULL id): nothing."""
    p = [f"${first + n}" for n in range(LEDGER_PARAMS)]
    return f"""ledger AS (
        INSERT INTO spend (external_id, key_id, project_id, model, input_tokens,
                           cached_input_tokens, output_tokens, cost_usd, at)
        SELECT {p[0]}::text, {p[1]}::bigint, {p[2]}::bigint, {p[3]}::text, {p[4]}::bigint,
               {p[5]}::bigint, {p[6]}::bigint, {p[7]}::numeric, {p[8]}::timestamptz
        FROM {source} WHERE {p[0]}::text IS NOT NULL
        ON CONFLICT (external_id) DO NOTHING
        RETURNING key_id, cost_usd, input_tokens + output_tokens AS tokens),
    windows AS (
        INSERT INTO key_spend_windows AS w
            (key_id, kind, window_start, window_end, usd, tokens, calls)
        SELECT l.key_id, u.kind, u.ws, u.we, coalesce(l.cost_usd, 0), l.tokens, 1
        FROM ledger AS l,
             unnest({p[9]}::text[], {p[10]}::timestamptz[], {p[11]}::timestamptz[])
                 AS u(kind, ws, we)
        WHERE l.key_id IS NOT NULL
        ON CONFLICT (key_id, kind, window_start) DO UPDATE
            SET usd = w.usd + EXCLUDED.usd, tokens = w.tokens + EXCLUDED.tokens,
                calls = w.calls + 1
        RETURNING 1)"""


def ledger_args(posted: Entry | None) -> list[Any]:
    """The `LEDGER_PARAMS` parameters of `ledger_sql` (all NULL: no entry)."""
    if posted is None:
        return [None] * LEDGER_PARAMS
    c = posted.charge
    return [
        c.external_id,
        c.key_id,
        c.project_id,
        c.model,
        c.input_tokens,
        c.cached_input_tokens,
        c.output_tokens,
        c.cost_usd,
        posted.at,
        [kind for kind, _, _ in posted.windows],
        [start for _, start, _ in posted.windows],
        [end for _, _, end in posted.windows],
    ]


_RECORD_SQL = f"WITH {ledger_sql(1, '(VALUES (1)) AS one')} SELECT count(*) FROM ledger"


async def record(
    conn: Conn, charge: Charge, at: datetime | None = None, keys: KeyLimits | None = None
) -> bool:
    """Add one call: one statement, atomic by itself (or in the caller's transaction), after
    reading its key's limits unless `keys` knows them. False if it was recorded before."""
    posted = await entry(conn, charge, keys, at)
    added = await conn.fetchval(_RECORD_SQL, *ledger_args(posted))
    return bool(added)


def _period(budget: str | None) -> Period:
    parsed = budget_of(budget)
    return DEFAULT_PERIOD if parsed is None else parsed.period


@dataclass(frozen=True)
class Window:
    start: datetime
    end: datetime
    usd: Decimal
    tokens: int
    calls: int


async def key_windows(
    conn: Executor, key_id: int, budget: str | None, at: datetime | None = None
) -> tuple[Window, Window]:
    """The key's current budget window and current minute, as the gateway checks them."""
    at = at or datetime.now(UTC)
    b_start, b_end = _period(budget).window(at)
    t_start, t_end = TPM_PERIOD.window(at)
    rows = await conn.fetch(
        """SELECT kind, usd, tokens, calls FROM key_spend_windows
           WHERE key_id = $1 AND ((kind = 'budget' AND window_start = $2)
                                  OR (kind = 'tpm' AND window_start = $3))""",
        key_id,
        b_start,
        t_start,
    )
    found = {r["kind"]: r for r in rows}

    def window(kind: str, start: datetime, end: datetime) -> Window:
        row = found.get(kind)
        if row is None:
            return Window(start, end, Decimal(0), 0, 0)
        return Window(start, end, row["usd"], row["tokens"], row["calls"])

    return window("budget", b_start, b_end), window("tpm", t_start, t_end)


async def budget_windows(
    conn: Executor, keys: list[tuple[int, str | None]], at: datetime | None = None
) -> dict[int, Window]:
    """Each key's current budget window (its budget's, or the calendar month), for listings."""
    at = at or datetime.now(UTC)
    windows = {key_id: _period(budget).window(at) for key_id, budget in keys}
    if not windows:
        return {}
    rows = await conn.fetch(
        """SELECT w.key_id, w.usd, w.tokens, w.calls FROM key_spend_windows w
           JOIN unnest($1::bigint[], $2::timestamptz[]) AS k(id, ws)
             ON w.key_id = k.id AND w.window_start = k.ws
           WHERE w.kind = 'budget'""",
        list(windows),
        [start for start, _ in windows.values()],
    )
    found = {r["key_id"]: r for r in rows}
    out = {}
    for key_id, (start, end) in windows.items():
        row = found.get(key_id)
        out[key_id] = (
            Window(start, end, row["usd"], row["tokens"], row["calls"])
            if row
            else Window(start, end, Decimal(0), 0, 0)
        )
    return out


async def prune(conn: Executor, before: datetime) -> None:
    """Drop windows that ended before `before` (the ledger keeps the history)."""
    await conn.execute("DELETE FROM key_spend_windows WHERE window_end < $1", before)


# --- reports ------------------------------------------------------------------------------

_TOTALS = """coalesce(sum(s.cost_usd), 0) AS usd, count(*) AS calls,
             count(*) FILTER (WHERE s.cost_usd IS NULL) AS unpriced_calls,
             coalesce(sum(s.input_tokens), 0)::bigint AS input_tokens,
             coalesce(sum(s.cached_input_tokens), 0)::bigint AS cached_input_tokens,
             coalesce(sum(s.output_tokens), 0)::bigint AS output_tokens"""
_PERIOD = "s.at >= $1 AND s.at < $2 AND ($3::bigint IS NULL OR s.project_id = $3)"


async def report(
    conn: Executor, start: datetime, end: datetime, project_id: int | None, bucket: str
) -> dict[str, list[asyncpg.Record]]:
    """Spend in [start, end): in total, per project, per key and per `bucket` (day, week,
    month; UTC). Unpriced calls are counted apart and add nothing to `usd`."""
    args = (start, end, project_id)
    total = await conn.fetch(
        f"SELECT {_TOTALS} FROM spend s WHERE {_PERIOD}", *args, timeout=REPORT_TIMEOUT_SECONDS
    )
    projects = await conn.fetch(
        f"""SELECT s.project_id, p.name, {_TOTALS} FROM spend s
            LEFT JOIN projects p ON p.id = s.project_id
            WHERE {_PERIOD} GROUP BY s.project_id, p.name ORDER BY usd DESC, s.project_id""",
        *args,
        timeout=REPORT_TIMEOUT_SECONDS,
    )
    keys = await conn.fetch(
        f"""SELECT k.prefix, k.name, k.project_id, k.is_admin, {_TOTALS} FROM spend s
            JOIN api_keys k ON k.id = s.key_id
            WHERE {_PERIOD} GROUP BY k.id ORDER BY usd DESC, k.id""",
        *args,
        timeout=REPORT_TIMEOUT_SECONDS,
    )
    buckets = await conn.fetch(
        f"""SELECT date_trunc($4, s.at AT TIME ZONE 'UTC') AT TIME ZONE 'UTC' AS bucket, {_TOTALS}
            FROM spend s WHERE {_PERIOD} GROUP BY 1 ORDER BY 1""",
        *args,
        bucket,
        timeout=REPORT_TIMEOUT_SECONDS,
    )
    return {"total": total, "projects": projects, "keys": keys, "buckets": buckets}
