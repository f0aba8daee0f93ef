"""Conversations and their messages: every write of them, for every service and the CLI.

The one idiom (chatbeto.store): a conversation is named by (project, source, external id) and
created with `INSERT … ON CONFLICT DO NOTHING` (a redelivery finds the row it made) — a new one
with its messages and its call's spend in one statement (`create_with_messages`); appending
takes the conversation's row lock for the transaction (`lock`, which also marks it updated) and
writes after its last position only the messages whose external id it does not hold yet. The
bulk import (`import_batch`) is the same idiom per batch: its upsert takes the row locks.
"""

from __future__ import annotations

import uuid
from collections.abc import Sequence
from dataclasses import dataclass, field
from datetime import datetime
from decimal import Decimal
from typing import Any

import asyncpg
import orjson

from chatbeto import spend
from chatbeto.db import Conn
from chatbeto.messages import ChatMessage, StoredConversation

# Sources: who made a conversation (its external id is unique per project and source).
API = "api"
WEBHOOK = "webhook"
IMPORT = "import"
DEFAULT_TITLE = "New conversation"


@dataclass(frozen=True)
class Conversation:
    id: int
    project_id: int
    title: str
    model: str | None
    created_at: datetime
    metrics_session_id: uuid.UUID | None

    def stored(self) -> StoredConversation:
        return StoredConversation(
            id=self.id, project_id=self.project_id, title=self.title, created_at=self.created_at
        )


@dataclass(frozen=True)
class NewMessage:
    """One message to store. `external_id` makes it idempotent within its conversation (None:
    always stored)."""

    role: str
    content: str
    external_id: str | None = None
    model: str | None = None
    prompt_tokens: int | None = None
    completion_tokens: int | None = None
    latency_ms: int | None = None
    request_id: str | None = None
    cached_tokens: int | None = None
    reasoning_tokens: int | None = None
    tool_calls: list[dict[str, Any]] | None = None
    tool_call_id: str | None = None
    parts: list[dict[str, Any]] | None = None
    metadata: dict[str, Any] = field(default_factory=dict)
    # The answer's price (None: a model without a price, or not an answer).
    cost_usd: Decimal | None = None
    created_at: datetime | None = None  # None: now


@dataclass(frozen=True)
class NewConversation:
    """A conversation to create in a project, named by (its source, its external id)."""

    external_id: str
    source: str = API
    title: str | None = None
    model: str | None = None
    session_id: uuid.UUID | None = None
    request_id: str | None = None
    messages: Sequence[NewMessage] = ()


@dataclass(frozen=True)
class ImportedConversation:
    """A conversation of a ChatGPT export (source `import`), whole."""

    external_id: str
    title: str
    created_at: datetime
    updated_at: datetime
    model: str | None
    gizmo_id: str | None
    metadata: dict[str, Any]
    messages: list[NewMessage] = field(default_factory=list)


_CONV_COLUMNS = "id, project_id, title, model, created_at, metrics_session_id"


def _conversation(row: asyncpg.Record) -> Conversation:
    return Conversation(**{k: row[k] for k in _CONV_COLUMNS.split(", ")})


# --- creating and finding --------------------------------------------------------------------


async def create(conn: Conn, project_id: int, new: NewConversation) -> tuple[Conversation, bool]:
    """(the conversation, created now); one made before with this external id is returned.
    `new.messages` are not written: `append` them (under `lock`), or `create_with_messages`."""
    row = await conn.fetchrow(
        f"""INSERT INTO conversations (project_id, title, model, source, external_id,
                                       metrics_session_id, request_id)
            VALUES ($1, coalesce($2, '{DEFAULT_TITLE}'), $3, $4, $5, $6, $7)
            ON CONFLICT (project_id, source, external_id) WHERE external_id IS NOT NULL
            DO NOTHING
            RETURNING {_CONV_COLUMNS}""",
        project_id,
        new.title,
        new.model,
        new.source,
        new.external_id,
        new.session_id,
        new.request_id,
    )
    if row is not None:
        return _conversation(row), True
    found = await find_by_external(conn, project_id, new.source, new.external_id)
    assert found is not None
    return found, False


async def find(conn: Conn, conversation_id: int) -> Conversation | None:
    row = await conn.fetchrow(
        f"SELECT {_CONV_COLUMNS} FROM conversations WHERE id = $1", conversation_id
    )
    return None if row is None else _conversation(row)


async def find_by_external(
    conn: Conn, project_id: int, source: str | None, external_id: str
) -> Conversation | None:
    """The conversation (project, source, external id) names; `source` None: any source."""
    row = await conn.fetchrow(
        f"""SELECT {_CONV_COLUMNS} FROM conversations
            WHERE project_id = $1 AND ($2::text IS NULL OR source = $2) AND external_id = $3
            ORDER BY id LIMIT 1""",
        project_id,
        source,
        external_id,
    )
    return None if row is None else _conversation(row)


async def find_by_remote(conn: Conn, remote_id: str) -> int | None:
    """The conversation synced to OpenAI as `remote_id` (the first, if several were)."""
    found: int | None = await conn.fetchval(
        "SELECT id FROM conversations WHERE remote_id = $1 ORDER BY id LIMIT 1", remote_id
    )
    return found


async def lock(conn: Conn, conversation_id: int) -> Conversation | None:
    """The conversation, locked for this transaction so that appends stay in order (and marked
    updated: the caller appends to it); None when it does not exist."""
    row = await conn.fetchrow(
        f"""UPDATE conversations SET updated_at = now() WHERE id = $1
            RETURNING {_CONV_COLUMNS}""",
        conversation_id,
    )
    return None if row is None else _conversation(row)


async def set_session(conn: Conn, conversation_id: int, session_id: uuid.UUID) -> None:
    await conn.execute(
        """UPDATE conversations SET metrics_session_id = $2
           WHERE id = $1 AND metrics_session_id IS NULL""",
        conversation_id,
        session_id,
    )


# --- messages --------------------------------------------------------------------------------


def _json(value: Any) -> str | None:
    return None if value is None else orjson.dumps(value).decode()


_UNNEST = """unnest($2::text[], $3::text[], $4::text[], $5::int[], $6::int[], $7::int[],
                  $8::text[], $9::text[], $10::int[], $11::int[], $12::text[], $13::text[],
                  $14::text[], $15::text[], $16::numeric[], $17::timestamptz[])
             WITH ORDINALITY
             AS u(role, content, model, pt, ct, lat, ext, rid, cached, reasoning, calls,
                  call_id, parts, meta, cost, created, ord)"""
_MESSAGE_COLUMNS = """conversation_id, position, role, content, model, prompt_tokens,
                      completion_tokens, latency_ms, external_id, request_id, cached_tokens,
                      reasoning_tokens, tool_calls, tool_call_id, parts, metadata, cost_usd,
                      created_at"""
_MESSAGE_VALUES = """u.role, u.content, u.model, u.pt, u.ct, u.lat, u.ext, u.rid, u.cached,
                     u.reasoning, u.calls::jsonb, u.call_id, u.parts::jsonb, u.meta::jsonb,
                     u.cost, coalesce(u.created, now())"""


def _message_arrays(messages: Sequence[NewMessage]) -> list[list[Any]]:
    """$2…$17 of the unnest: one array per column."""
    return [
        [m.role for m in messages],
        [m.content for m in messages],
        [m.model for m in messages],
        [m.prompt_tokens for m in messages],
        [m.completion_tokens for m in messages],
        [m.latency_ms for m in messages],
        [m.external_id for m in messages],
        [m.request_id for m in messages],
        [m.cached_tokens for m in messages],
        [m.reasoning_tokens for m in messages],
        # jsonb travels as text: asyncpg reads nested lists as multidimensional arrays.
        [_json(m.tool_calls) for m in messages],
        [m.tool_call_id for m in messages],
        [_json(m.parts) for m in messages],
        [_json(m.metadata) for m in messages],
        [m.cost_usd for m in messages],
        [m.created_at for m in messages],
    ]


def _once(messages: Sequence[NewMessage]) -> list[NewMessage]:
    """A sender's id repeated within one batch counts once (the first)."""
    seen: set[str] = set()
    unique = []
    for m in messages:
        if m.external_id is None or m.external_id not in seen:
            unique.append(m)
            if m.external_id is not None:
                seen.add(m.external_id)
    return unique


async def append(conn: Conn, conversation_id: int, messages: Sequence[NewMessage]) -> int:
    """Append in order after the last position (the caller holds `lock`); messages whose
    external id is already stored are skipped. Returns how many were written."""
    messages = _once(messages)
    if not messages:
        return 0
    status = await conn.execute(
        f"""WITH base AS (
                SELECT coalesce(max(position), -1) AS last FROM messages
                WHERE conversation_id = $1
            ), fresh AS (
                SELECT u.* FROM {_UNNEST}
                WHERE u.ext IS NULL OR NOT EXISTS (
                    SELECT 1 FROM messages m
                    WHERE m.conversation_id = $1 AND m.external_id = u.ext)
            )
            INSERT INTO messages ({_MESSAGE_COLUMNS})
            SELECT $1, base.last + row_number() OVER (ORDER BY u.ord), {_MESSAGE_VALUES}
            FROM fresh AS u, base""",
        conversation_id,
        *_message_arrays(messages),
    )
    return int(status.rsplit(" ", 1)[-1])


_CREATE_SQL = f"""WITH conv AS (
        INSERT INTO conversations (project_id, title, model, source, external_id,
                                   metrics_session_id, request_id)
        VALUES ($1, coalesce($18, '{DEFAULT_TITLE}'), $19, $20, $21, $22, $23)
        ON CONFLICT (project_id, source, external_id) WHERE external_id IS NOT NULL
        DO NOTHING
        RETURNING {_CONV_COLUMNS}),
    added AS (
        INSERT INTO messages ({_MESSAGE_COLUMNS})
        SELECT conv.id, u.ord - 1, {_MESSAGE_VALUES}
        FROM conv, {_UNNEST}
        RETURNING 1),
    {spend.ledger_sql(24, "conv")}
    SELECT conv.* FROM (VALUES (1)) AS one LEFT JOIN conv ON true"""


def _create_args(project_id: int, new: NewConversation, charge: spend.Entry | None) -> list[Any]:
    return [
        project_id,
        *_message_arrays(_once(new.messages)),
        new.title,
        new.model,
        new.source,
        new.external_id,
        new.session_id,
        new.request_id,
        *spend.ledger_args(charge),
    ]


def _created(row: asyncpg.Record) -> Conversation | None:
    return None if row["id"] is None else _conversation(row)


async def create_with_messages(
    conn: Conn, project_id: int, new: NewConversation, charge: spend.Entry | None = None
) -> Conversation | None:
    """A new conversation, its messages and the call's spend (`charge`, its ledger row and key
    windows) in one statement: one round trip, atomic by itself (the hot path of every stored
    `/v1` call). None if the conversation exists already — then nothing was written (`create`
    finds it, `append` adds what is missing, `spend.record` the charge if it is new)."""
    row = await conn.fetchrow(_CREATE_SQL, *_create_args(project_id, new, charge))
    assert row is not None  # one row always: NULLs when the conversation existed
    return _created(row)


async def create_many_with_messages(
    conn: Conn, items: Sequence[tuple[int, NewConversation, spend.Entry | None]]
) -> list[Conversation | None]:
    """`create_with_messages` for each (project id, conversation, charge), pipelined: one round
    trip for all, atomic (all or none: any failure writes nothing and raises)."""
    rows = await conn.fetchmany(_CREATE_SQL, [_create_args(*item) for item in items])
    return [_created(row) for row in rows]


async def history(conn: Conn, conversation_id: int) -> list[ChatMessage]:
    rows = await conn.fetch(
        "SELECT role, content FROM messages WHERE conversation_id = $1 ORDER BY position",
        conversation_id,
    )
    return [ChatMessage(role=r["role"], content=r["content"]) for r in rows]


async def stored_message(
    conn: Conn, conversation_id: int, external_id: str
) -> asyncpg.Record | None:
    """A message stored before under this external id (e.g. the answer a previous delivery of
    the same request stored)."""
    return await conn.fetchrow(
        """SELECT content, model, prompt_tokens, completion_tokens, latency_ms, cached_tokens,
                  reasoning_tokens, tool_calls, metadata FROM messages
           WHERE conversation_id = $1 AND external_id = $2""",
        conversation_id,
        external_id,
    )


# --- reads of the API (`GET /api/v1/openai/conversations…`) ---------------------------------

# A conversation as the API shows it, and its messages' columns.
SHOWN_COLUMNS = (
    "id, project_id, title, model, source, remote_id, created_at, updated_at, request_id"
)
SHOWN_MESSAGE_COLUMNS = """role, content, model, prompt_tokens, completion_tokens, latency_ms,
                           created_at, cached_tokens, reasoning_tokens, tool_calls, tool_call_id,
                           parts, metadata, request_id, cost_usd"""


async def project_of(conn: Conn, conversation_id: int) -> int | None:
    value: int | None = await conn.fetchval(
        "SELECT project_id FROM conversations WHERE id = $1", conversation_id
    )
    return value


async def get_shown(
    conn: Conn, conversation_id: int
) -> tuple[asyncpg.Record, list[asyncpg.Record]] | None:
    """The conversation and its messages in order (`SHOWN_COLUMNS`, `SHOWN_MESSAGE_COLUMNS`)."""
    row = await conn.fetchrow(
        f"SELECT {SHOWN_COLUMNS} FROM conversations WHERE id = $1", conversation_id
    )
    if row is None:
        return None
    messages = await conn.fetch(
        f"""SELECT {SHOWN_MESSAGE_COLUMNS}
            FROM messages WHERE conversation_id = $1 ORDER BY position""",
        conversation_id,
    )
    return row, list(messages)


async def list_shown(
    conn: Conn,
    *,
    project_id: int | None,
    limit: int,
    after: tuple[datetime, int] | None,
    request_id: str | None = None,
) -> list[asyncpg.Record]:
    """Newest first, up to `limit` rows after the keyset (created_at, id) `after`; with
    `request_id`, only the conversation that request stored."""
    return list(
        await conn.fetch(
            f"""SELECT {SHOWN_COLUMNS} FROM conversations
                WHERE ($1::bigint IS NULL OR project_id = $1)
                  AND ($2::timestamptz IS NULL OR (created_at, id) < ($2, $3))
                  AND ($5::text IS NULL OR request_id = $5)
                ORDER BY created_at DESC, id DESC
                LIMIT $4""",
            project_id,
            after[0] if after else None,
            after[1] if after else 0,
            limit,
            request_id,
        )
    )


# --- sync to OpenAI --------------------------------------------------------------------------


async def count_unsynced(conn: Conn, project_id: int | None) -> int:
    count: int = await conn.fetchval(
        """SELECT count(*)::int FROM conversations
           WHERE remote_id IS NULL AND ($1::bigint IS NULL OR project_id = $1)""",
        project_id,
    )
    return count


async def unsynced_ids(conn: Conn, project_id: int | None) -> list[int]:
    rows = await conn.fetch(
        """SELECT id FROM conversations
           WHERE remote_id IS NULL AND ($1::bigint IS NULL OR project_id = $1) ORDER BY id""",
        project_id,
    )
    return [r["id"] for r in rows]


async def claim_unsynced(conn: Conn, conversation_id: int) -> asyncpg.Record | None:
    """Lock one conversation still without a remote id (another sync may hold it: skip)."""
    return await conn.fetchrow(
        """SELECT id, project_id, title FROM conversations
           WHERE id = $1 AND remote_id IS NULL FOR UPDATE SKIP LOCKED""",
        conversation_id,
    )


async def set_remote_id(conn: Conn, conversation_id: int, remote_id: str) -> None:
    await conn.execute(
        "UPDATE conversations SET remote_id = $2, updated_at = now() WHERE id = $1",
        conversation_id,
        remote_id,
    )


# --- bulk import (ChatGPT exports) -----------------------------------------------------------

# Serialises imports into one project, so the "what is missing" read stays true until commit.
IMPORT_LOCK_CLASS = 0x1A7C
_COPY_COLUMNS = (
    "conversation_id",
    "position",
    "role",
    "content",
    "model",
    "external_id",
    "metadata",
    "created_at",
)


@dataclass(frozen=True)
class Imported:
    """What one conversation contributed: new conversation? how many new messages?"""

    created: bool
    new_messages: int
    # Imported before but no longer on the branch the user sees (they edited an earlier prompt
    # or regenerated an answer since): removed, so the conversation mirrors ChatGPT again.
    removed_messages: int = 0


async def import_batch(
    conn: Conn, project_id: int, batch: Sequence[ImportedConversation]
) -> list[Imported]:
    """Store whole conversations (source `import`); call inside a transaction. One result per
    conversation. Idempotency rests on ids from the export: a conversation is its export id, a
    message its node id; only what is missing is written, so a re-import adds nothing and a
    grown export adds only new conversations and the messages appended to them.

    `conn` is a plain connection (no JSON codec): metadata goes to COPY as JSON text. Export
    ids must be unique within `batch`.
    """
    await conn.execute("SELECT pg_advisory_xact_lock($1, $2)", IMPORT_LOCK_CLASS, project_id)
    ids = [c.external_id for c in batch]
    # The no-op update locks each known conversation (as `lock` does) and makes RETURNING give
    # their ids too, through the unique index (a plain lookup here would depend on planner
    # statistics, stale after a bulk load).
    rows = await conn.fetch(
        """INSERT INTO conversations
               (project_id, source, external_id, title, model, gizmo_id, metadata,
                created_at, updated_at)
           SELECT $1, $2, x, t, m, g, md::jsonb, c, u
           FROM unnest($3::text[], $4::text[], $5::text[], $6::text[], $7::text[],
                       $8::timestamptz[], $9::timestamptz[]) AS v(x, t, m, g, md, c, u)
           ON CONFLICT (project_id, source, external_id) WHERE external_id IS NOT NULL
           DO UPDATE SET external_id = EXCLUDED.external_id
           RETURNING id, external_id, xmax = 0 AS inserted""",
        project_id,
        IMPORT,
        ids,
        [c.title for c in batch],
        [c.model for c in batch],
        [c.gizmo_id for c in batch],
        [orjson.dumps(c.metadata).decode() for c in batch],
        [c.created_at for c in batch],
        [c.updated_at for c in batch],
    )
    pk = {r["external_id"]: r["id"] for r in rows}
    fresh = {r["id"] for r in rows if r["inserted"]}
    # Conversations imported before: what they already hold, to append only what is new.
    known: dict[int, tuple[int, set[str]]] = {}
    old = [r["id"] for r in rows if not r["inserted"]]
    if old:
        found = await conn.fetch(
            """SELECT conversation_id, max(position) AS last,
                      array_agg(external_id) FILTER (WHERE external_id IS NOT NULL) AS seen
               FROM messages WHERE conversation_id = ANY($1::bigint[])
               GROUP BY conversation_id""",
            old,
        )
        for r in found:
            known[r["conversation_id"]] = (r["last"], set(r["seen"] or ()))
    records: list[tuple[object, ...]] = []
    results: list[Imported] = []
    grown: list[tuple[int, ImportedConversation]] = []
    stale: list[tuple[int, str]] = []
    for conv in batch:
        cid = pk[conv.external_id]
        last, seen = known.get(cid, (-1, set()))
        if seen:
            gone = seen - {m.external_id for m in conv.messages if m.external_id is not None}
            stale.extend((cid, x) for x in gone)
        else:
            gone = set()
        count = 0
        for message in conv.messages:
            if message.external_id in seen:
                continue
            last += 1
            count += 1
            records.append(
                (
                    cid,
                    last,
                    message.role,
                    message.content,
                    message.model,
                    message.external_id,
                    orjson.dumps(message.metadata).decode(),
                    message.created_at or conv.created_at,
                )
            )
        results.append(Imported(cid in fresh, count, len(gone)))
        if (count or gone) and cid not in fresh:
            grown.append((cid, conv))
    if stale:
        await conn.execute(
            """DELETE FROM messages m USING unnest($1::bigint[], $2::text[]) AS v(c, x)
               WHERE m.conversation_id = v.c AND m.external_id = v.x""",
            [c for c, _ in stale],
            [x for _, x in stale],
        )
    if records:
        await conn.copy_records_to_table("messages", records=records, columns=_COPY_COLUMNS)
    if grown:
        await conn.execute(
            """UPDATE conversations c SET title = v.t, updated_at = greatest(c.updated_at, v.u)
               FROM unnest($1::bigint[], $2::text[], $3::timestamptz[]) AS v(id, t, u)
               WHERE c.id = v.id""",
            [cid for cid, _ in grown],
            [c.title for _, c in grown],
            [c.updated_at for _, c in grown],
        )
    return results
