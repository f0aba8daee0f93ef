"""Contract 3.1 as the gateway shows it: cursors, the JSON of conversations and messages,
over the store's reads and sync jobs (`chatbeto.store`). Writes of conversations and messages
are the openai-worker's (through the broker)."""

from __future__ import annotations

import base64
import uuid
from datetime import UTC, datetime
from typing import Any

import asyncpg
import orjson
from chatbeto.db import Conn
from chatbeto.storable import BIGINT_MAX
from chatbeto.store import conversations, jobs


class BadCursor(ValueError):
    pass


def encode_cursor(created_at: datetime, conversation_id: int) -> str:
    raw = orjson.dumps([created_at.isoformat(), conversation_id])
    return base64.urlsafe_b64encode(raw).decode().rstrip("=")


def decode_cursor(cursor: str) -> tuple[datetime, int]:
    """The (created_at, id) a cursor of `encode_cursor` holds; anything else is `BadCursor`."""
    try:
        raw = orjson.loads(base64.urlsafe_b64decode(cursor + "=" * (-len(cursor) % 4)))
    except (ValueError, orjson.JSONDecodeError) as exc:  # binascii.Error is a ValueError
        raise BadCursor("cursor is not one this API gave out") from exc
    if not (
        isinstance(raw, list)
        and len(raw) == 2
        and isinstance(raw[0], str)
        and isinstance(raw[1], int)
        and not isinstance(raw[1], bool)
        and 0 < raw[1] <= BIGINT_MAX
    ):
        raise BadCursor("cursor is not one this API gave out")
    try:
        created_at = datetime.fromisoformat(raw[0])
        if created_at.tzinfo is None:
            raise ValueError("naive")
        created_at = created_at.astimezone(UTC)  # past years 1-9999 in UTC: not one of ours
    except (ValueError, OverflowError) as exc:
        raise BadCursor("cursor is not one this API gave out") from exc
    if created_at.year in (1, 9999):
        raise BadCursor("cursor is not one this API gave out")
    return created_at, raw[1]


def conversation_out(row: asyncpg.Record) -> dict[str, Any]:
    out: dict[str, Any] = {
        "id": row["id"],
        "projectId": row["project_id"],
        "title": row["title"],
        "model": row["model"],
        "source": row["source"],
        "createdAt": row["created_at"].isoformat(),
        "updatedAt": row["updated_at"].isoformat(),
    }
    if row["remote_id"] is not None:
        out["remoteId"] = row["remote_id"]
    if row["request_id"] is not None:
        out["requestId"] = row["request_id"]
    return out


# Metadata a stored message may carry that the API shows (the rest stays internal).
SHOWN_METADATA = ("name", "finishReason", "refusal", "otherChoices", "responseId", "status")


def message_out(row: asyncpg.Record) -> dict[str, Any]:
    out: dict[str, Any] = {
        "role": row["role"],
        "content": row["content"],
        "createdAt": row["created_at"].isoformat(),
    }
    if row["model"] is not None:
        out["model"] = row["model"]
    if row["prompt_tokens"] is not None or row["completion_tokens"] is not None:
        prompt, completion = row["prompt_tokens"] or 0, row["completion_tokens"] or 0
        out["usage"] = {
            "prompt_tokens": prompt,
            "completion_tokens": completion,
            "total_tokens": prompt + completion,
            "prompt_tokens_details": {"cached_tokens": row["cached_tokens"] or 0},
            "completion_tokens_details": {"reasoning_tokens": row["reasoning_tokens"] or 0},
        }
    if row["latency_ms"] is not None:
        out["latencyMs"] = row["latency_ms"]
    if row["role"] == "assistant" and row["prompt_tokens"] is not None:
        # A model's answer: its price, null for a model without one (docs/COSTS.md).
        out["costUsd"] = None if row["cost_usd"] is None else float(row["cost_usd"])
    if row["tool_calls"] is not None:
        out["toolCalls"] = row["tool_calls"]
    if row["tool_call_id"] is not None:
        out["toolCallId"] = row["tool_call_id"]
    if row["parts"] is not None:
        out["parts"] = row["parts"]
    metadata = row["metadata"] or {}
    out.update({key: metadata[key] for key in SHOWN_METADATA if key in metadata})
    if row["request_id"] is not None:
        out["requestId"] = row["request_id"]
    return out


# --- conversations (the store's reads, paged with this module's cursors) -------------------


async def list_conversations(
    conn: Conn,
    *,
    project_id: int | None,
    limit: int,
    after: tuple[datetime, int] | None,
    request_id: str | None = None,
) -> tuple[list[asyncpg.Record], str | None]:
    """Newest first; keyset pagination on (created_at, id), stable under inserts. With
    `request_id`: the conversation that request stored (how a client that got a 504 learns
    whether its exchange was stored after all)."""
    rows = await conversations.list_shown(
        conn, project_id=project_id, limit=limit + 1, after=after, request_id=request_id
    )
    page = rows[:limit]
    next_cursor = (
        encode_cursor(page[-1]["created_at"], page[-1]["id"]) if len(rows) > limit else None
    )
    return page, next_cursor


# --- sync jobs (the store's `jobs`) --------------------------------------------------------


async def create_sync_job(
    conn: Conn, project_id: int | None, request_id: str | None
) -> tuple[uuid.UUID, int]:
    """A queued job, and how many conversations it has to copy right now."""
    job_id = uuid.uuid4()
    async with conn.transaction():
        queued = await conversations.count_unsynced(conn, project_id)
        await jobs.create(conn, job_id, jobs.SYNC, project_id, request_id, total=queued)
    return job_id, queued
