"""The daily partitions of `events` (0009_events_partitioned.sql), made and dropped by the service.

Ahead: at start and every hour, the partitions of yesterday through `AHEAD_DAYS` from now exist,
so the live stream never waits for DDL. On demand: a batch holding events of a past day without
a partition (a late or backfilled event) makes that day's partition first, outside the storing
transaction; days further back than `BACKFILL_DAYS` (or already past retention) stay in the
default partition rather than growing one table per stray timestamp. Retention
(`EVENTS_RETENTION_DAYS`): a day's partition is dropped whole once all of it is older than that;
the rollups keep its statistics. The event-id keys and default-partition rows of that age go too.
"""

from __future__ import annotations

import asyncio
import re
from collections.abc import Iterable, Sequence
from datetime import UTC, date, datetime, timedelta

import asyncpg
from chatbeto.logging import get_logger

log = get_logger(__name__)
AHEAD_DAYS = 7
BACKFILL_DAYS = 400
MAINTAIN_EVERY_SECONDS = 3600.0
# Dropping a partition locks `events` briefly; never queue behind a long reader for it.
DROP_LOCK_TIMEOUT = "5s"
NAME = re.compile(r"^events_p(\d{8})$")


def partition_name(day: date) -> str:
    return f"events_p{day:%Y%m%d}"


def today() -> date:
    return datetime.now(UTC).date()


class Partitions:
    def __init__(self, retention_days: int | None) -> None:
        self.retention_days = retention_days
        self.known: set[date] = set()
        # [start, end) of the longest run of consecutive known days, None until asked again
        # after `known` changed: most batches fall inside it, checked with two comparisons.
        self._covered: tuple[datetime, datetime] | None = None

    def cutoff(self, now: date) -> date | None:
        """The first day kept: partitions of earlier days are dropped."""
        return None if self.retention_days is None else now - timedelta(days=self.retention_days)

    async def load(self, pool: asyncpg.Pool) -> set[date]:
        rows = await pool.fetch(
            """SELECT c.relname FROM pg_inherits i JOIN pg_class c ON c.oid = i.inhrelid
               WHERE i.inhparent = 'events'::regclass"""
        )
        found = set()
        for r in rows:
            match = NAME.match(r["relname"])
            if match:
                found.add(datetime.strptime(match.group(1), "%Y%m%d").date())
        self.known = found
        self._covered = None
        return found

    async def ensure(
        self, pool: asyncpg.Pool, days: Iterable[date], now: date | None = None
    ) -> None:
        """Make the partitions of these days that are missing (and worth one)."""
        now = now or today()
        cutoff = self.cutoff(now)
        earliest = max(now - timedelta(days=BACKFILL_DAYS), cutoff or date.min)
        latest = now + timedelta(days=AHEAD_DAYS)
        for day in sorted(set(days) - self.known):
            if not earliest <= day <= latest:
                continue  # the default partition holds it
            await pool.fetchval("SELECT events_partition_for($1)", day)
            self.known.add(day)
            self._covered = None
            log.info("events partition ready", partition=partition_name(day))

    async def ensure_for(self, pool: asyncpg.Pool, timestamps: Sequence[datetime]) -> None:
        if not timestamps:
            return
        covered = self._covered or self._run()
        if covered[0] <= min(timestamps) and max(timestamps) < covered[1]:
            return  # the common case: no date computed per event (it was 3 % of the CPU)
        days = {t.astimezone(UTC).date() for t in timestamps}
        if days - self.known:
            await self.ensure(pool, days)

    def _run(self) -> tuple[datetime, datetime]:
        """The longest run of consecutive known days, as times (empty when none is known)."""
        best: tuple[date, date] | None = None
        for day in self.known:
            if day - timedelta(days=1) in self.known:
                continue  # not the first of its run
            end = day + timedelta(days=1)
            while end in self.known:
                end += timedelta(days=1)
            if best is None or end - day > best[1] - best[0]:
                best = (day, end)
        if best is None:
            never = datetime.max.replace(tzinfo=UTC)
            covered = (never, never)
        else:
            first, end = best
            covered = (
                datetime(first.year, first.month, first.day, tzinfo=UTC),
                datetime(end.year, end.month, end.day, tzinfo=UTC),
            )
        self._covered = covered
        return covered

    async def maintain(self, pool: asyncpg.Pool, now: date | None = None) -> list[str]:
        """Partitions ahead, expired ones dropped; returns the names dropped."""
        now = now or today()
        await self.load(pool)
        await self.ensure(pool, (now + timedelta(days=n) for n in range(-1, AHEAD_DAYS + 1)), now)
        cutoff = self.cutoff(now)
        if cutoff is None:
            return []
        dropped = []
        for day in sorted(d for d in self.known if d < cutoff):
            name = partition_name(day)
            async with pool.acquire() as conn, conn.transaction():
                await conn.execute(f"SET LOCAL lock_timeout = '{DROP_LOCK_TIMEOUT}'")
                await conn.execute(f'DROP TABLE IF EXISTS "{name}"')
            self.known.discard(day)
            self._covered = None
            dropped.append(name)
            log.info("events partition dropped (retention)", partition=name)
        limit = datetime(cutoff.year, cutoff.month, cutoff.day, tzinfo=UTC)
        await pool.execute("DELETE FROM events_default WHERE ts < $1", limit)
        await pool.execute("DELETE FROM event_ids WHERE ts < $1", limit)
        return dropped

    async def run(self, pool: asyncpg.Pool) -> None:
        """Maintain every hour until cancelled; a failed round is retried next time."""
        while True:
            await asyncio.sleep(MAINTAIN_EVERY_SECONDS)
            try:
                await self.maintain(pool)
            except Exception as exc:
                log.warning("partition maintenance failed", error=f"{type(exc).__name__}: {exc}")
