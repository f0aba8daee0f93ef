"""The import pipeline: parse in a thread while Postgres stores the previous batch.

Conversations travel in batches of whole conversations, one transaction per batch. When a
batch fails in Postgres, its conversations are retried one transaction each, so one bad
conversation is reported and the others still land.
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import asyncpg

from chatbeto.db import connect
from chatbeto.importer.convert import MalformedConversation, convert, label
from chatbeto.importer.export import ExportError, Source, open_export
from chatbeto.logging import get_logger
from chatbeto.store import conversations, projects
from chatbeto.store.conversations import ImportedConversation

log = get_logger(__name__)
BATCH_MESSAGES = 5000
BATCH_CONVERSATIONS = 500
MAX_REPORTED = 1000


@dataclass(frozen=True)
class Failure:
    title: str
    id: str
    reason: str


@dataclass
class Summary:
    imported: int = 0  # new conversations
    updated: int = 0  # known conversations that gained messages
    skipped: int = 0  # known conversations with nothing new
    failed: int = 0
    messages: int = 0  # messages written
    failures: list[Failure] = field(default_factory=list)
    skipped_titles: list[str] = field(default_factory=list)

    @property
    def seen(self) -> int:
        return self.imported + self.updated + self.skipped + self.failed

    def fail(self, failure: Failure) -> None:
        self.failed += 1
        if len(self.failures) < MAX_REPORTED:
            self.failures.append(failure)


Progress = Callable[[Summary, float], Awaitable[None]]


@dataclass
class Batch:
    conversations: list[ImportedConversation] = field(default_factory=list)
    failures: list[Failure] = field(default_factory=list)
    done: bool = False


def _batches(source: Source) -> Iterator[Batch]:
    batch, size, ids = Batch(), 0, set[str]()
    for index, raw in enumerate(source.conversations()):
        try:
            conv = convert(raw)
        except MalformedConversation as exc:
            title, cid = label(raw, index)
            batch.failures.append(Failure(title, cid, str(exc)))
            continue
        if conv.external_id in ids:
            # The same conversation twice: store the first before looking at the second.
            yield batch
            batch, size, ids = Batch(), 0, set[str]()
        batch.conversations.append(conv)
        ids.add(conv.external_id)
        size += len(conv.messages)
        if size >= BATCH_MESSAGES or len(batch.conversations) >= BATCH_CONVERSATIONS:
            yield batch
            batch, size, ids = Batch(), 0, set[str]()
    batch.done = True
    yield batch


def _next(batches: Iterator[Batch]) -> Batch:
    return next(batches)


async def import_file(
    dsn: str, path: str | Path, project_id: int, progress: Progress | None = None
) -> Summary:
    """Import one export file into a project. Raises `ExportError` for a file that is not one."""
    summary = Summary()
    conn = await connect(dsn)
    try:
        if not await projects.exists(conn, project_id):
            raise ExportError(f"project {project_id} does not exist")
        with open_export(path) as source:
            batches = _batches(source)
            pending = asyncio.ensure_future(asyncio.to_thread(_next, batches))
            try:
                while True:
                    batch = await pending
                    if not batch.done:
                        pending = asyncio.ensure_future(asyncio.to_thread(_next, batches))
                    for failure in batch.failures:
                        summary.fail(failure)
                    await _store(conn, project_id, batch.conversations, summary)
                    if progress is not None:
                        await progress(summary, source.fraction)
                    if batch.done:
                        break
            finally:
                # The parser thread reads the file: let it finish before the file closes.
                await asyncio.gather(pending, return_exceptions=True)
    finally:
        await conn.close()
    return summary


async def _store(
    conn: asyncpg.Connection, project_id: int, batch: list[ImportedConversation], summary: Summary
) -> None:
    if not batch:
        return
    try:
        async with conn.transaction():
            results = await conversations.import_batch(conn, project_id, batch)
    except asyncpg.PostgresError as exc:
        if len(batch) == 1:
            summary.fail(Failure(batch[0].title, batch[0].external_id, _reason(exc)))
            return
        log.warning("import batch failed; storing its conversations one by one", error=str(exc))
        for conv in batch:
            await _store(conn, project_id, [conv], summary)
        return
    for conv, result in zip(batch, results, strict=True):
        summary.messages += result.new_messages
        if result.created:
            summary.imported += 1
        elif result.new_messages or result.removed_messages:
            summary.updated += 1
        else:
            summary.skipped += 1
            if len(summary.skipped_titles) < MAX_REPORTED:
                summary.skipped_titles.append(conv.title)


def _reason(exc: Any) -> str:
    return f"database refused it: {type(exc).__name__}: {exc}"[:300]
