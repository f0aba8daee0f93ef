"""The stats engine: a GPT's stats over any period, read from the rollups metrics-ingest keeps
(whole days and hours) and the raw rows (the partial hours at the ends)."""

from __future__ import annotations

import asyncio
from collections import defaultdict
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from decimal import Decimal
from typing import Any, Literal

import asyncpg
from chatbeto.db import REPORT_TIMEOUT_SECONDS

# "hour" is an addition to the contract's day/week/month, for the dashboard's one-day view.
Bucket = Literal["hour", "day", "week", "month"]
# Lower bounds of the latency histogram bins; must match latency_bin() in 0006_rollups.sql.
LATENCY_BIN_LOWER_MS = (
    0, 10, 25, 50, 75, 100, 150, 200, 300, 400, 500, 750, 1000,
    1500, 2000, 3000, 5000, 7500, 10000, 15000, 20000, 30000, 60000, 120000,
)  # fmt: skip
# Up to this many events in the period, percentiles are computed exactly from the raw rows
# (an index-only scan); above it, from the rollups' histogram.
EXACT_PERCENTILE_MAX_EVENTS = 20_000
MAX_FILLED_BUCKETS = 2_000


def _floor(t: datetime, unit: Literal["hour", "day"]) -> datetime:
    t = t.astimezone(UTC)
    return (
        t.replace(minute=0, second=0, microsecond=0)
        if unit == "hour"
        else datetime(t.year, t.month, t.day, tzinfo=UTC)
    )


Range = tuple[datetime, datetime]


@dataclass(frozen=True)
class Tiers:
    """[start, end) cut into what each source answers: whole days (daily rollups), whole hours
    around them (hourly rollups), partial hours at the very ends (raw rows). Unused pieces are
    empty ranges (end, end), so every query keeps the same shape."""

    raw: tuple[Range, Range]
    hourly: tuple[Range, Range]
    daily: Range

    def args(self) -> list[datetime]:
        return [t for r in (*self.raw, *self.hourly, self.daily) for t in r]


def _ceil(t: datetime, unit: Literal["hour", "day"]) -> datetime:
    floor = _floor(t, unit)
    return floor if floor == t else floor + (timedelta(hours=1) if unit == "hour" else timedelta(1))


def tiers(start: datetime, end: datetime, *, daily: bool = True) -> Tiers:
    empty = (end, end)
    h0, h1 = _ceil(start, "hour"), _floor(end, "hour")
    if h0 >= h1:
        return Tiers(((start, end), empty), (empty, empty), empty)
    raw = ((start, h0), (h1, end))
    d0, d1 = _ceil(start, "day"), _floor(end, "day")
    if not daily or d0 >= d1:
        return Tiers(raw, ((h0, h1), empty), empty)
    return Tiers(raw, ((h0, d0), (d1, h1)), (d0, d1))


def weeks(daily: Range) -> tuple[tuple[Range, Range], Range]:
    """Whole days [d0, d1) cut into the whole ISO weeks inside (the users' weekly rollups,
    0014_user_rollups_weekly.sql) and the days before and after them (the daily ones)."""
    d0, d1 = daily
    w0 = d0 + timedelta(days=-d0.weekday() % 7)
    w1 = d1 - timedelta(days=d1.weekday())
    if w0 >= w1:
        return ((d0, d1), (d1, d1)), (d1, d1)
    return ((d0, w0), (w1, d1)), (w0, w1)


# WHERE clauses over the tier arguments ($2..$11; $1 is the GPT, $12 the project or NULL).
RAW = "(({c} >= $2 AND {c} < $3) OR ({c} >= $4 AND {c} < $5))"
HOURLY = "((hour >= $6 AND hour < $7) OR (hour >= $8 AND hour < $9))"
DAILY = "(day >= $10 AND day < $11)"


def percentile_from_histogram(hist: dict[int, int], q: float) -> float | None:
    """Linear interpolation inside the latency bin holding the q-th event."""
    total = sum(hist.values())
    if total == 0:
        return None
    rank, seen = q * total, 0
    for bin_ in sorted(hist):
        count = hist[bin_]
        if count and seen + count >= rank:
            low = LATENCY_BIN_LOWER_MS[bin_ - 1]
            high = LATENCY_BIN_LOWER_MS[bin_] if bin_ < len(LATENCY_BIN_LOWER_MS) else low * 2
            return low + (rank - seen) / count * (high - low)
        seen += count
    return float(LATENCY_BIN_LOWER_MS[-1])


def bucket_starts(start: datetime, end: datetime, bucket: Bucket) -> list[datetime]:
    """Every bucket of [start, end), so the charts show empty periods as zero."""
    t = _floor(start, "hour" if bucket == "hour" else "day")
    if bucket == "week":
        t -= timedelta(days=t.weekday())
    elif bucket == "month":
        t = t.replace(day=1)
    out: list[datetime] = []
    while t < end and len(out) < MAX_FILLED_BUCKETS:
        out.append(t)
        if bucket == "hour":
            t += timedelta(hours=1)
        elif bucket == "day":
            t += timedelta(days=1)
        elif bucket == "week":
            t += timedelta(weeks=1)
        else:
            t = t.replace(year=t.year + t.month // 12, month=t.month % 12 + 1)
    return out


async def stats(
    pool: asyncpg.Pool,
    gpt_pk: int,
    start: datetime,
    end: datetime,
    bucket: Bucket,
    project_id: int | None,
) -> dict[str, Any]:
    """Stats for one GPT over [start, end). `project_id` narrows the built-in GPT's rows. The
    cost is a rollup column (0015_rollup_costs.sql), read with the counts for any GPT.

    Whole days and hours come from the rollups metrics-ingest maintains (0006_rollups.sql), the
    partial hours at the ends of the period from the raw rows (see `tiers`), so the answer is
    exact for counts, sums (the cost too) and averages whatever the period. Percentiles are exact up to
    EXACT_PERCENTILE_MAX_EVENTS events, above that interpolated from the latency histogram.
    """
    cut = tiers(start, end, daily=bucket != "hour")
    args = (gpt_pk, *cut.args(), project_id, bucket)
    events_q = pool.fetch(
        f"""SELECT date_trunc($13, t, 'UTC') AS b, tipo, bin, sum(n)::bigint AS n,
                   sum(lat)::bigint AS lat, sum(tin)::bigint AS tin, sum(tout)::bigint AS tout,
                   sum(usd) AS usd
            FROM (
                SELECT day AS t, tipo, bin, events AS n, latency_sum AS lat,
                       tokens_entrada AS tin, tokens_salida AS tout, cost_usd AS usd
                FROM event_rollups_daily
                WHERE gpt_pk = $1 AND {DAILY} AND ($12::bigint IS NULL OR project_key = $12)
                UNION ALL
                SELECT hour, tipo, bin, events, latency_sum, tokens_entrada, tokens_salida,
                       cost_usd
                FROM event_rollups
                WHERE gpt_pk = $1 AND {HOURLY} AND ($12::bigint IS NULL OR project_key = $12)
                UNION ALL
                SELECT ts, tipo, latency_bin(latency_ms), 1, latency_ms, tokens_entrada,
                       tokens_salida, cost_usd
                FROM events
                WHERE gpt_pk = $1 AND {RAW.format(c="ts")}
                  AND ($12::bigint IS NULL OR project_id = $12)
            ) AS x
            GROUP BY 1, 2, 3""",
        *args,
        timeout=REPORT_TIMEOUT_SECONDS,
    )
    # Sessions: an hourly rollup row per hour is few enough for any period.
    sessions_q = pool.fetch(
        f"""SELECT date_trunc($13, t, 'UTC') AS b, sum(n)::bigint AS n
            FROM (
                SELECT hour AS t, sessions AS n FROM session_rollups
                WHERE gpt_pk = $1
                  AND ((hour >= $6 AND hour < $7) OR (hour >= $8 AND hour < $9)
                       OR (hour >= $10 AND hour < $11))
                  AND ($12::bigint IS NULL OR project_key = $12)
                UNION ALL
                SELECT timestamp_inicio, 1 FROM sessions
                WHERE gpt_pk = $1 AND {RAW.format(c="timestamp_inicio")}
                  AND ($12::bigint IS NULL OR project_id = $12)
            ) AS x
            GROUP BY 1 ORDER BY 1""",
        *args,
        timeout=REPORT_TIMEOUT_SECONDS,
    )
    # The user table has no time axis: it always reads whole days from the rollups, whole
    # weeks from the weekly ones.
    user_cut = tiers(start, end)
    user_days, user_weeks = weeks(user_cut.daily)
    users_q = pool.fetch(
        f"""SELECT usuario_id, sum(sessions)::bigint AS sessions, sum(events)::bigint AS events,
                   max(last_seen) AS last_seen
            FROM (
                SELECT usuario_id, sessions, events, last_seen FROM user_rollups_weekly
                WHERE gpt_pk = $1 AND week >= $14 AND week < $15
                  AND ($16::bigint IS NULL OR project_key = $16)
                UNION ALL
                SELECT usuario_id, sessions, events, last_seen FROM user_rollups
                WHERE gpt_pk = $1 AND ((day >= $10 AND day < $11) OR (day >= $12 AND day < $13))
                  AND ($16::bigint IS NULL OR project_key = $16)
                UNION ALL
                SELECT usuario_id, sessions, events, last_seen FROM user_rollups_hourly
                WHERE gpt_pk = $1 AND {HOURLY} AND ($16::bigint IS NULL OR project_key = $16)
                UNION ALL
                SELECT usuario_id, 1, 0, timestamp_inicio FROM sessions
                WHERE gpt_pk = $1 AND {RAW.format(c="timestamp_inicio")}
                  AND ($16::bigint IS NULL OR project_id = $16)
                UNION ALL
                SELECT usuario_id, 0, 1, ts FROM events
                WHERE gpt_pk = $1 AND {RAW.format(c="ts")}
                  AND ($16::bigint IS NULL OR project_id = $16)
            ) AS x
            GROUP BY usuario_id
            ORDER BY events DESC, sessions DESC, usuario_id LIMIT 500""",
        gpt_pk,
        *[t for r in (*user_cut.raw, *user_cut.hourly, *user_days, user_weeks) for t in r],
        project_id,
        timeout=REPORT_TIMEOUT_SECONDS,
    )
    # Three independent reads on three pooled connections: the answer takes the slowest, not
    # the sum.
    event_rows, session_rows, users = await asyncio.gather(events_q, sessions_q, users_q)
    total_events = sum(r["n"] for r in event_rows)
    exact: dict[datetime | None, tuple[float, float]] = {}
    if 0 < total_events <= EXACT_PERCENTILE_MAX_EVENTS:
        counted: dict[datetime | None, int] = defaultdict(int)
        for r in event_rows:
            counted[r["b"]] += r["n"]
            counted[None] += r["n"]
        # Exact only where every counted event is still a row: retention (EVENTS_RETENTION_DAYS)
        # drops old rows while the rollups keep counting them; there the histogram answers.
        exact = {
            r["b"]: (r["p50"], r["p95"])
            for r in await pool.fetch(
                """SELECT date_trunc($5, ts, 'UTC') AS b, count(*) AS n,
                           percentile_cont(0.5) WITHIN GROUP (ORDER BY latency_ms) AS p50,
                           percentile_cont(0.95) WITHIN GROUP (ORDER BY latency_ms) AS p95
                    FROM events
                    WHERE gpt_pk = $1 AND ts >= $2 AND ts < $3
                      AND ($4::bigint IS NULL OR project_id = $4)
                    GROUP BY ROLLUP (1)""",
                gpt_pk,
                start,
                end,
                project_id,
                bucket,
                timeout=REPORT_TIMEOUT_SECONDS,
            )
            if r["n"] == counted[r["b"]]
        }
    return _with_cost(
        _shape(start, end, bucket, event_rows, session_rows, users, exact), event_rows
    )


def _with_cost(shaped: dict[str, Any], event_rows: list[asyncpg.Record]) -> dict[str, Any]:
    """`cost: {"usd"}` in total and per bucket: the sum of the priced calls, null where none
    was priced (a GPT whose events carry no cost, a model without a price): the rows' `usd` is
    NULL there, and stays None here unless a priced row is added."""
    by_bucket: dict[str, Decimal] = {}
    for r in event_rows:
        if r["usd"] is not None:
            key = r["b"].isoformat()
            by_bucket[key] = by_bucket.get(key, Decimal(0)) + r["usd"]
    for point in shaped["series"]:
        usd = by_bucket.get(point["bucket"])
        point["cost"] = {"usd": None if usd is None else float(usd)}
    total = sum(by_bucket.values()) if by_bucket else None
    shaped["cost"] = {"usd": None if total is None else float(total)}
    return shaped


def _shape(
    start: datetime,
    end: datetime,
    bucket: Bucket,
    event_rows: list[asyncpg.Record],
    session_rows: list[asyncpg.Record],
    users: list[asyncpg.Record],
    exact: dict[datetime | None, tuple[float, float]],
) -> dict[str, Any]:
    series: dict[datetime, dict[str, Any]] = {
        b: {"sessions": 0, "events": 0, "lat": 0, "tin": 0, "tout": 0, "hist": defaultdict(int)}
        for b in bucket_starts(start, end, bucket)
    }

    def at(b: datetime) -> dict[str, Any]:
        return series.setdefault(
            b, {"sessions": 0, "events": 0, "lat": 0, "tin": 0, "tout": 0, "hist": defaultdict(int)}
        )

    types: dict[str, int] = defaultdict(int)
    hist: dict[int, int] = defaultdict(int)
    for r in session_rows:
        at(r["b"])["sessions"] += r["n"]
    for r in event_rows:
        point = at(r["b"])
        point["events"] += r["n"]
        point["lat"] += r["lat"]
        point["tin"] += r["tin"]
        point["tout"] += r["tout"]
        point["hist"][r["bin"]] += r["n"]
        types[r["tipo"]] += r["n"]
        hist[r["bin"]] += r["n"]
    total_events = sum(hist.values())
    total_lat = sum(p["lat"] for p in series.values())

    def p95(b: datetime, point: dict[str, Any]) -> float | None:
        if b in exact:
            return exact[b][1]
        return percentile_from_histogram(point["hist"], 0.95)

    overall = exact.get(None)
    ordered = sorted(series.items())
    return {
        "sessions": [
            {"bucket": b.isoformat(), "count": p["sessions"]} for b, p in ordered if p["sessions"]
        ],
        "eventTypes": [
            {"tipo": t, "count": n} for t, n in sorted(types.items(), key=lambda x: (-x[1], x[0]))
        ][:50],
        "latency": {
            "avg": total_lat / total_events if total_events else None,
            "p50": overall[0] if overall else percentile_from_histogram(hist, 0.5),
            "p95": overall[1] if overall else percentile_from_histogram(hist, 0.95),
            "percentiles": "exact" if overall or not total_events else "histogram",
        },
        "tokens": {
            "entrada": sum(p["tin"] for p in series.values()),
            "salida": sum(p["tout"] for p in series.values()),
        },
        "users": [
            {
                "usuario_id": r["usuario_id"],
                "sessions": r["sessions"],
                "events": r["events"],
                "lastSeen": r["last_seen"].isoformat() if r["last_seen"] else None,
            }
            for r in users
        ],
        "totals": {"sessions": sum(p["sessions"] for p in series.values()), "events": total_events},
        "series": [
            {
                "bucket": b.isoformat(),
                "sessions": p["sessions"],
                "events": p["events"],
                "latencyAvg": p["lat"] / p["events"] if p["events"] else None,
                "latencyP95": p95(b, p),
                "tokensEntrada": p["tin"],
                "tokensSalida": p["tout"],
            }
            for b, p in ordered
        ],
    }
