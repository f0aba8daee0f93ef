"""The metrics-ingest worker: many broker messages, one transaction, then ack them all.

Each message carries many clients' records (the gateway's group commit), so every outcome is
per record: a record that cannot be stored (invalid, or refused by Postgres for its data) is
dead-lettered alone with the reason while the rest commit; an event whose session is not
committed yet is retried in a message of its own; only a transient error (connection lost,
serialization failure) retries whole messages.
"""

from __future__ import annotations

import asyncio
from collections.abc import Iterator, Sequence
from dataclasses import dataclass

from aio_pika.abc import AbstractIncomingMessage
from chatbeto import topology
from chatbeto.consumer import PartialFailure
from chatbeto.db import Conn
from chatbeto.logging import get_logger
from chatbeto.messages import EventRecord, InvalidMessage, MetricsBatch, SessionRecord, envelope
from chatbeto.observability import ROWS_DEAD_LETTERED, ROWS_STORED
from chatbeto.service import Service, WorkerRuntime
from chatbeto.settings import MetricsIngestSettings

from chatbeto_metrics_ingest import repo
from chatbeto_metrics_ingest.dead_letters import dead_letter
from chatbeto_metrics_ingest.decode import Decoded, decode
from chatbeto_metrics_ingest.isolate import store_isolating
from chatbeto_metrics_ingest.live import LivePublisher
from chatbeto_metrics_ingest.partitions import Partitions

log = get_logger(__name__)


# Storing transactions one worker keeps in flight (each on its own connection).
STORING_AT_ONCE = 2


@dataclass(frozen=True)
class InFlight:
    task: asyncio.Task[None]
    sessions: set[int]  # the ints of the session ids it stores


class SessionNotStored(Exception):
    """An event names a session no worker has committed yet: retry later."""


@dataclass(frozen=True)
class Bad:
    origin: Decoded
    position: str
    kind: str
    record: object  # JSON-able, as it will sit in the dead-letter queue
    reason: str


def _why(exc: Exception) -> str:
    return f"{type(exc).__name__}: {exc}"


class MetricsIngest(Service):
    settings: MetricsIngestSettings
    SESSION_SQL = (repo.STAGE_DDL,)

    def __init__(self, settings: MetricsIngestSettings) -> None:
        super().__init__(settings)
        self.live = LivePublisher(None, settings.topology)
        self.partitions = Partitions(settings.events_retention_days)
        self._maintenance: asyncio.Task[None] | None = None

    async def setup(self, runtime: WorkerRuntime) -> None:
        self.live = LivePublisher(runtime.connection, self.settings.topology)
        runtime.on_close(self.live.close)
        # Before consuming: the coming days' partitions exist, expired ones are gone.
        await self.partitions.maintain(runtime.pool)
        self._maintenance = asyncio.create_task(self.partitions.run(runtime.pool))
        runtime.on_close(self._stop_maintenance)
        runtime.consume_batches(
            topology.METRICS_INGEST,
            self.handle,
            prefetch=self.settings.ingest_prefetch,
            max_batch=self.settings.ingest_prefetch,
            max_tries=self.settings.ingest_max_tries,
        )

    async def handle(self, messages: Sequence[AbstractIncomingMessage]) -> None:
        failures: dict[AbstractIncomingMessage, Exception] = {}
        bodies: dict[AbstractIncomingMessage, bytes] = {}
        # At most INGEST_BATCH_MAX_EVENTS records per transaction (a bigger message goes alone);
        # all are acked once every group committed. The next group is decoded (CPU, here) while
        # Postgres stores the previous ones (on its own cores), up to STORING_AT_ONCE
        # transactions at once, each on its own connection and rollup shard: a batch of several
        # groups is a backlog, which one transaction at a time could not catch up with.
        in_flight: list[InFlight] = []
        try:
            for group in self._groups(messages, failures):
                for earlier in self._needed_by(group, in_flight):
                    await earlier.task
                if len(in_flight) >= STORING_AT_ONCE:
                    await asyncio.wait(
                        [f.task for f in in_flight], return_when=asyncio.FIRST_COMPLETED
                    )
                for f in [f for f in in_flight if f.task.done()]:
                    in_flight.remove(f)
                    f.task.result()  # its failure surfaces here
                in_flight.append(
                    InFlight(
                        asyncio.create_task(self._store(group, failures, bodies)),
                        {s.id.int for d in group for s in d.sessions},
                    )
                )
            for f in in_flight:
                await f.task
        finally:
            pending = [f.task for f in in_flight if not f.task.done()]
            for task in pending:
                task.cancel()
            await asyncio.gather(*pending, return_exceptions=True)
        if failures:
            raise PartialFailure(failures, bodies)

    @staticmethod
    def _needed_by(group: list[Decoded], in_flight: list[InFlight]) -> list[InFlight]:
        """The transactions in flight storing a session this group's events name: those must
        commit first, or the events would find no session and wait on the retry ladder."""
        storing = [f for f in in_flight if f.sessions]
        if not storing:
            return []  # the common case: no session in flight, nothing computed per event
        named = {e.sesion_id.int for d in group for e in d.events}
        return [f for f in storing if not f.sessions.isdisjoint(named)]

    def _groups(
        self,
        messages: Sequence[AbstractIncomingMessage],
        failures: dict[AbstractIncomingMessage, Exception],
    ) -> Iterator[list[Decoded]]:
        group: list[Decoded] = []
        size = 0
        for message in messages:
            try:
                d = decode(message)
            except InvalidMessage as exc:
                failures[message] = exc  # dead-lettered whole: it is no metrics batch at all
                continue
            records = len(d.sessions) + len(d.events)
            if group and size + records > self.settings.ingest_batch_max_events:
                yield group
                group, size = [], 0
            group.append(d)
            size += records
        if group:
            yield group

    async def _store(
        self,
        group: list[Decoded],
        failures: dict[AbstractIncomingMessage, Exception],
        bodies: dict[AbstractIncomingMessage, bytes],
    ) -> None:
        """One transaction for these messages' records; what cannot be stored is set aside."""
        bad = [
            Bad(d, f"r{n}", r.kind, r.raw, r.reason)
            for d in group
            for n, r in enumerate(d.rejected)
        ]
        sessions = [s for d in group for s in d.sessions]
        events = [e for d in group for e in d.events]
        waiting: list[EventRecord] = []
        # DDL outside the storing transaction: a late event's day gets its partition first.
        await self.partitions.ensure_for(self.pool, [e.timestamp for e in events])
        async with self.pool.acquire() as conn, conn.transaction():
            # Rollup rows of this transaction's own: replicas never wait for each other's.
            shard = await repo.rollup_shard(conn)

            async def store_sessions(c: Conn, rows: Sequence[SessionRecord]) -> list[int]:
                return [await repo.store_sessions(c, rows, shard)]

            counts, bad_sessions = await store_isolating(conn, sessions, store_sessions)
            lost = {s.id: exc for s, exc in bad_sessions}
            bad += [self._bad(group, "session", s, exc) for s, exc in bad_sessions]
            known = await repo.sessions_of(conn, events)
            # By the UUIDs' ints: a uuid.UUID's hash is Python code (0.13 -> 0.05 us an event).
            known_ints = {k.int for k in known}
            ready: list[EventRecord] = []
            for e in events:
                if e.sesion_id.int in known_ints:
                    ready.append(e)
                elif e.sesion_id in lost:
                    why = f"its session could not be stored: {_why(lost[e.sesion_id])}"
                    bad.append(self._bad(group, "event", e, why))
                else:
                    waiting.append(e)

            async def store(c: Conn, rows: Sequence[EventRecord]) -> list[EventRecord]:
                return await repo.store_events(c, rows, known, shard, staged=True)

            stored, bad_events = await store_isolating(conn, ready, store, savepoint=False)
            bad += [self._bad(group, "event", e, exc) for e, exc in bad_events]
        ROWS_STORED.labels("sessions").inc(sum(counts))
        ROWS_STORED.labels("events").inc(len(stored))
        # After the commit: a crash in between redelivers the message, whose good records are
        # then no-ops and whose bad ones are dead-lettered again (same dead-letter ids).
        await self._dead_letter(bad)
        if stored:
            await self.live.publish(stored, known)
        if waiting:
            ids = {id(e) for e in waiting}
            for d in group:
                mine = [e for e in d.events if id(e) in ids]
                if mine:
                    failures[d.message] = SessionNotStored(
                        f"{len(mine)} event(s) wait for a session"
                    )
                    bodies[d.message] = self._retry_body(d, mine)

    async def _stop_maintenance(self) -> None:
        if self._maintenance is not None:
            self._maintenance.cancel()
            await asyncio.gather(self._maintenance, return_exceptions=True)

    @staticmethod
    def _bad(
        group: list[Decoded], kind: str, record: SessionRecord | EventRecord, exc: Exception | str
    ) -> Bad:
        """A record to dead-letter, with the message it came in (found only now: rare)."""
        for d in group:
            rows: Sequence[SessionRecord | EventRecord] = (
                d.sessions if kind == "session" else d.events
            )
            for n, row in enumerate(rows):
                if row is record:
                    reason = exc if isinstance(exc, str) else _why(exc)
                    return Bad(d, f"{kind[0]}{n}", kind, record.model_dump(mode="json"), reason)
        raise AssertionError("a record of no message in the group")

    @staticmethod
    def _retry_body(origin: Decoded, events: list[EventRecord]) -> bytes:
        # Only what still waits: the records stored or dead-lettered now are not tried again.
        env = envelope(MetricsBatch(events=tuple(events)), request_id=origin.request_id)
        return env.model_dump_json().encode()

    async def _dead_letter(self, bad: list[Bad]) -> None:
        assert self.runtime is not None
        dlq = self.settings.topology.queue(topology.METRICS_INGEST).dlq
        for b in bad:
            message = dead_letter(
                b.origin.message, b.position, b.kind, b.record, b.reason, b.origin.request_id
            )
            # Confirmed before the original is acked; a failure raises, so it is redelivered.
            await self.runtime.publisher.publish(message, dlq, exchange="")
            ROWS_DEAD_LETTERED.labels(f"{b.kind}s").inc()
            log.warning(
                "record dead-lettered",
                kind=b.kind,
                message_id=b.origin.message.message_id,
                dead_letter_id=message.message_id,
                error=b.reason.split(":", 1)[0],
            )
