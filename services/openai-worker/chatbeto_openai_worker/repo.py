"""SQL of the openai-worker: conversations, their messages, sync jobs.

Writes are idempotent per request: each stored row carries an `external_id` derived from the
broker message id, so a redelivered request stores nothing twice.
"""

from __future__ import annotations

import uuid
from collections.abc import Sequence
from dataclasses import dataclass, field, replace
from datetime import UTC, datetime
from decimal import Decimal
from typing import Any

import asyncpg
import orjson
from chatbeto import spend
from chatbeto.db import Conn
from chatbeto.messages import ChatMessage, StoredConversation


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
    role: str
    content: str
    external_id: str
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


@dataclass(frozen=True)
class Exchange:
    """One request's rows: a new conversation (`conversation_id` None) or an existing one, and
    its messages in order. Ids derive from the request's message id (idempotent)."""

    external_id: str
    messages: Sequence[NewMessage]
    request_id: str | None
    conversation_id: int | None = None
    # A new conversation:
    project_id: int | None = None
    title: str | None = None
    model: str | None = None
    source: str = "api"
    session_id: uuid.UUID | None = None
    # The model call's spend, written in the same transaction (docs/COSTS.md).
    charge: spend.Charge | None = None


class ConversationGone(Exception):
    """The conversation to append to no longer exists."""


_CONV_COLUMNS = "id, project_id, title, model, created_at, metrics_session_id"


def _conversation(row: asyncpg.Record) -> Conversation:
    return Conversation(**{k: row[k] for k in _CONV_COLUMNS.split(", ")})


async def create_conversation(
    conn: Conn,
    *,
    project_id: int,
    title: str | None,
    model: str | None,
    source: str,
    external_id: str,
    session_id: uuid.UUID | None,
    request_id: str | None = None,
) -> Conversation:
    row = await conn.fetchrow(
        f"""INSERT INTO conversations (project_id, title, model, source, external_id,
                                       metrics_session_id, request_id)
            VALUES ($1, coalesce($2, 'New conversation'), $3, $4, $5, $6, $7)
            ON CONFLICT (project_id, source, external_id) WHERE external_id IS NOT NULL
            DO NOTHING
            RETURNING {_CONV_COLUMNS}""",
        project_id,
        title,
        model,
        source,
        external_id,
        session_id,
        request_id,
    )
    if row is None:  # a redelivered request: the conversation is already there
        row = await conn.fetchrow(
            f"""SELECT {_CONV_COLUMNS} FROM conversations
                WHERE project_id = $1 AND source = $2 AND external_id = $3""",
            project_id,
            source,
            external_id,
        )
    assert row is not None
    return _conversation(row)


async def find_conversation(conn: Conn, conversation_id: int) -> Conversation | None:
    row = await conn.fetchrow(
        f"SELECT {_CONV_COLUMNS} FROM conversations WHERE id = $1", conversation_id
    )
    return None if row is None else _conversation(row)


async def find_created_by(conn: Conn, project_id: int, external_id: str) -> int | None:
    """The conversation a request (by its message id) created, if a delivery of it did."""
    value: int | None = await conn.fetchval(
        "SELECT id FROM conversations WHERE project_id = $1 AND external_id = $2",
        project_id,
        external_id,
    )
    return value


async def lock_conversation(conn: Conn, conversation_id: int) -> Conversation | None:
    """The conversation, locked for this transaction so message positions stay in order (and
    marked updated: the caller appends to it)."""
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


def _json(value: Any) -> str | None:
    return None if value is None else orjson.dumps(value).decode()


_UNNEST = """unnest($2::text[], $3::text[], $4::text[], $5::int[], $6::int[], $7::int[],
                  $8::text[], $9::text[], $10::int[], $11::int[], $12::text[], $13::text[],
                  $14::text[], $15::text[], $16::numeric[]) WITH ORDINALITY
           AS u(role, content, model, pt, ct, lat, ext, rid, cached, reasoning, calls,
                call_id, parts, meta, cost, ord)"""
_MESSAGE_COLUMNS = """conversation_id, position, role, content, model, prompt_tokens,
                      completion_tokens, latency_ms, external_id, request_id, cached_tokens,
                      reasoning_tokens, tool_calls, tool_call_id, parts, metadata, cost_usd"""
_MESSAGE_VALUES = """u.role, u.content, u.model, u.pt, u.ct, u.lat, u.ext, u.rid, u.cached,
                     u.reasoning, u.calls::jsonb, u.call_id, u.parts::jsonb, u.meta::jsonb,
                     u.cost"""


def _message_arrays(messages: Sequence[NewMessage]) -> list[list[Any]]:
    """$2…$16 of the unnest: one array per column."""
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
    ]


async def add_messages(conn: Conn, conversation_id: int, messages: Sequence[NewMessage]) -> None:
    """Append in order (the caller holds the conversation's lock); already stored ones skip."""
    if not messages:
        return
    await conn.execute(
        f"""INSERT INTO messages ({_MESSAGE_COLUMNS})
            SELECT $1, base.n + u.ord, {_MESSAGE_VALUES}
            FROM (SELECT coalesce(max(position), -1) AS n FROM messages
                  WHERE conversation_id = $1) AS base,
                 {_UNNEST}
            WHERE NOT EXISTS (SELECT 1 FROM messages m
                              WHERE m.conversation_id = $1 AND m.external_id = u.ext)
            ORDER BY u.ord""",
        conversation_id,
        *_message_arrays(messages),
    )


class KeyLimits:
    """(budget, tpm) per key id, of one database. A key's budget and token cap never change
    after it is created (`keys create`): the worker reads them once per key, so the hot path's
    spend needs no lookup of its own."""

    MAX_KEYS = 10_000

    def __init__(self) -> None:
        self._known: dict[int, tuple[str | None, int | None] | None] = {}

    async def get(self, conn: Conn, key_id: int) -> tuple[str | None, int | None] | None:
        """None if there is no such key."""
        if key_id in self._known:
            return self._known[key_id]
        row = await conn.fetchrow("SELECT budget, tpm FROM api_keys WHERE id = $1", key_id)
        limits = None if row is None else (row["budget"], row["tpm"])
        if len(self._known) >= self.MAX_KEYS:
            self._known.clear()
        self._known[key_id] = limits
        return limits


def spend_windows(
    limits: tuple[str | None, int | None], at: datetime
) -> dict[str, tuple[datetime, datetime]]:
    """The windows a call at `at` counts in, as `chatbeto.spend.record` computes them."""
    budget, tpm = limits
    parsed = spend.budget_of(budget)
    period = spend.DEFAULT_PERIOD if parsed is None else parsed.period
    windows = {"budget": period.window(at)}
    if tpm is not None:
        windows["tpm"] = spend.TPM_PERIOD.window(at)
    return windows


async def create_with_messages(
    conn: Conn, exchange: Exchange, keys: KeyLimits | None = None
) -> Conversation | None:
    """A new conversation, its messages and its spend in one statement (one round trip, atomic
    by itself: the hot path of every stored `/v1` call); None if a delivery of this request
    created it already (then nothing was written)."""
    args: list[Any] = [
        exchange.project_id,
        *_message_arrays(exchange.messages),
        exchange.title,
        exchange.model,
        exchange.source,
        exchange.external_id,
        exchange.session_id,
        exchange.request_id,
    ]
    spent = ""
    charge = exchange.charge
    if charge is not None:
        at = datetime.now(UTC)
        limits = None
        if charge.key_id is not None:
            limits = await (keys or KeyLimits()).get(conn, charge.key_id)
        windows = spend_windows(limits, at) if limits is not None else {}
        # `chatbeto.spend.record` in SQL: the spend row once, then its windows only if new.
        spent = """,
            spent AS (
                INSERT INTO spend (external_id, key_id, project_id, model, input_tokens,
                                   cached_input_tokens, output_tokens, cost_usd, at)
                SELECT $23, $24, conv.project_id, $25, $26, $27, $28, $29, $30 FROM conv
                ON CONFLICT (external_id) DO NOTHING
                RETURNING true),
            windowed AS (
                INSERT INTO key_spend_windows AS w
                    (key_id, kind, window_start, window_end, usd, tokens, calls)
                SELECT $24, u.kind, u.ws, u.we, $31, $32, 1
                FROM unnest($33::text[], $34::timestamptz[], $35::timestamptz[])
                     AS u(kind, ws, we)
                WHERE EXISTS (SELECT 1 FROM spent)
                ON CONFLICT (key_id, kind, window_start) DO UPDATE
                    SET usd = w.usd + EXCLUDED.usd, tokens = w.tokens + EXCLUDED.tokens,
                        calls = w.calls + 1
                RETURNING 1)"""
        args += [
            charge.external_id,
            charge.key_id,
            charge.model,
            charge.input_tokens,
            charge.cached_input_tokens,
            charge.output_tokens,
            charge.cost_usd,
            at,
            charge.cost_usd or Decimal(0),
            charge.tokens,
            list(windows),
            [start for start, _ in windows.values()],
            [end for _, end in windows.values()],
        ]
    row = await conn.fetchrow(
        f"""WITH conv AS (
                INSERT INTO conversations (project_id, title, model, source, external_id,
                                           metrics_session_id, request_id)
                VALUES ($1, coalesce($17, 'New conversation'), $18, $19, $20, $21, $22)
                ON CONFLICT (project_id, source, external_id) WHERE external_id IS NOT NULL
                DO NOTHING
                RETURNING {_CONV_COLUMNS}),
            added AS (
                INSERT INTO messages ({_MESSAGE_COLUMNS})
                SELECT conv.id, u.ord - 1, {_MESSAGE_VALUES}
                FROM conv, {_UNNEST}
                RETURNING 1){spent}
            SELECT *, (SELECT count(*) FROM added) AS added FROM conv""",
        *args,
    )
    return None if row is None else _conversation(row)


async def store_exchange(
    conn: Conn, exchange: Exchange, keys: KeyLimits | None = None
) -> Conversation:
    """The one place an exchange is written: its conversation (created, or locked to append in
    order), its messages and its spend, each once, atomically. A new conversation is one
    statement (atomic by itself); everything else runs in a transaction of its own (a
    savepoint inside the caller's)."""
    if exchange.conversation_id is None:
        if exchange.project_id is None:
            raise ValueError("a new conversation needs a project")
        created = await create_with_messages(conn, exchange, keys)
        if created is not None:
            return created  # its spend with it
        async with conn.transaction():  # a redelivery: it exists; add what is missing
            conv = await create_conversation(
                conn,
                project_id=exchange.project_id,
                title=exchange.title,
                model=exchange.model,
                source=exchange.source,
                external_id=exchange.external_id,
                session_id=exchange.session_id,
                request_id=exchange.request_id,
            )
            await add_messages(conn, conv.id, exchange.messages)
            if exchange.charge is not None:
                await spend.record(conn, replace(exchange.charge, project_id=conv.project_id))
        return conv
    async with conn.transaction():
        found = await lock_conversation(conn, exchange.conversation_id)
        if found is None:
            raise ConversationGone
        await add_messages(conn, found.id, exchange.messages)
        if exchange.charge is not None:
            await spend.record(conn, replace(exchange.charge, project_id=found.project_id))
    return found


async def history(conn: Conn, conversation_id: int) -> list[ChatMessage]:
    rows = await conn.fetch(
        "SELECT role, content FROM messages WHERE conversation_id = $1 ORDER BY position",
        conversation_id,
    )
    return [ChatMessage(role=r["role"], content=r["content"]) for r in rows]


async def stored_answer(
    conn: Conn, conversation_id: int, external_id: str
) -> asyncpg.Record | None:
    """The assistant message a previous delivery of this request already stored."""
    return await conn.fetchrow(
        """SELECT content, model, prompt_tokens, completion_tokens, latency_ms, cached_tokens,
                  reasoning_tokens, tool_calls, metadata FROM messages
           WHERE conversation_id = $1 AND external_id = $2""",
        conversation_id,
        external_id,
    )


# --- sync jobs ---------------------------------------------------------------------------


async def start_job(conn: Conn, job_id: uuid.UUID, project_id: int | None) -> bool:
    """Mark the job running with its total; False if it is unknown or already finished."""
    status = await conn.execute(
        """UPDATE jobs SET state = 'running', updated_at = now(),
               total = (SELECT count(*) FROM conversations
                        WHERE remote_id IS NULL AND ($2::bigint IS NULL OR project_id = $2))
           WHERE id = $1 AND state IN ('queued', 'running')""",
        job_id,
        project_id,
    )
    return status != "UPDATE 0"


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


async def job_progress(
    conn: Conn, job_id: uuid.UUID, *, done: int = 0, failed: int = 0, error: str | None = None
) -> None:
    await conn.execute(
        """UPDATE jobs SET done = done + $2, failed = failed + $3, updated_at = now(),
               errors = CASE WHEN $4::text IS NULL THEN errors
                             ELSE errors || jsonb_build_array($4::text) END
           WHERE id = $1""",
        job_id,
        done,
        failed,
        error,
    )


async def finish_job(conn: Conn, job_id: uuid.UUID, state: str) -> None:
    await conn.execute(
        "UPDATE jobs SET state = $2, updated_at = now() WHERE id = $1", job_id, state
    )
