"""SQL of the webhook service. Everything runs in the caller's transaction."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime

from chatbeto.db import Conn
from chatbeto.messages import WebhookDelivery

SOURCE = "webhook"


@dataclass(frozen=True)
class NewMessage:
    role: str
    content: str
    external_id: str | None = None
    model: str | None = None
    prompt_tokens: int | None = None
    completion_tokens: int | None = None
    created_at: datetime | None = None


async def claim(conn: Conn, delivery: WebhookDelivery, request_id: str | None) -> int | None:
    """Take the delivery for processing: its row id, or None when it was already handled.

    The unique key makes a racing twin wait on our uncommitted row and then find it taken. A
    delivery that failed before may be taken again (the sender retried after fixing its cause).
    """
    row_id: int | None = await conn.fetchval(
        """INSERT INTO webhook_deliveries (source, delivery_key, webhook_id, event_type,
                                           received_at, outcome, request_id)
           VALUES ($1, $2, $3, $4, $5, 'processed', $6)
           ON CONFLICT (source, delivery_key) DO UPDATE
               SET attempts = webhook_deliveries.attempts + 1, error = NULL,
                   received_at = EXCLUDED.received_at, request_id = EXCLUDED.request_id
               WHERE webhook_deliveries.outcome = 'failed'
           RETURNING id""",
        delivery.source,
        delivery.delivery_key,
        delivery.webhook_id,
        delivery.event_type,
        delivery.received_at,
        request_id,
    )
    return row_id


async def is_handled(conn: Conn, delivery: WebhookDelivery) -> bool:
    outcome = await conn.fetchval(
        "SELECT outcome FROM webhook_deliveries WHERE source = $1 AND delivery_key = $2",
        delivery.source,
        delivery.delivery_key,
    )
    return outcome is not None and outcome != "failed"


async def finish(
    conn: Conn,
    row_id: int,
    outcome: str,
    *,
    error: str | None = None,
    project_id: int | None = None,
    conversation_id: int | None = None,
) -> None:
    await conn.execute(
        """UPDATE webhook_deliveries
           SET outcome = $2, error = $3, project_id = $4, conversation_id = $5,
               processed_at = now()
           WHERE id = $1""",
        row_id,
        outcome,
        error,
        project_id,
        conversation_id,
    )


async def project_exists(conn: Conn, project_id: int) -> bool:
    return bool(await conn.fetchval("SELECT 1 FROM projects WHERE id = $1", project_id))


async def create_conversation(
    conn: Conn, project_id: int, external_id: str, title: str | None, model: str | None
) -> tuple[int, bool]:
    """(conversation id, created now); an existing one with this external id is returned."""
    row_id: int | None = await conn.fetchval(
        """INSERT INTO conversations (project_id, title, model, source, external_id)
           VALUES ($1, coalesce($2, 'New conversation'), $3, $4, $5)
           ON CONFLICT (project_id, source, external_id) WHERE external_id IS NOT NULL
           DO NOTHING
           RETURNING id""",
        project_id,
        title,
        model,
        SOURCE,
        external_id,
    )
    if row_id is not None:
        return row_id, True
    existing: int = await conn.fetchval(
        """SELECT id FROM conversations
           WHERE project_id = $1 AND source = $2 AND external_id = $3""",
        project_id,
        SOURCE,
        external_id,
    )
    return existing, False


async def lock_conversation(conn: Conn, conversation_id: int) -> int | None:
    """Lock it against concurrent appends; its project id, or None when it doesn't exist."""
    project: int | None = await conn.fetchval(
        "SELECT project_id FROM conversations WHERE id = $1 FOR UPDATE", conversation_id
    )
    return project


async def conversation_by_external(conn: Conn, project_id: int, external_id: str) -> int | None:
    found: int | None = await conn.fetchval(
        """SELECT id FROM conversations
           WHERE project_id = $1 AND source = $2 AND external_id = $3""",
        project_id,
        SOURCE,
        external_id,
    )
    return found


async def conversation_by_remote(conn: Conn, remote_id: str) -> int | None:
    found: int | None = await conn.fetchval(
        "SELECT id FROM conversations WHERE remote_id = $1 ORDER BY id LIMIT 1", remote_id
    )
    return found


async def append_messages(
    conn: Conn, conversation_id: int, messages: Sequence[NewMessage], request_id: str | None
) -> int:
    """Append after the last position (caller holds the conversation's lock); skips messages
    whose external id is already stored. Returns how many were inserted."""
    seen: set[str] = set()
    unique = []
    for m in messages:  # a sender's id repeated within one event counts once
        if m.external_id is None or m.external_id not in seen:
            unique.append(m)
            if m.external_id is not None:
                seen.add(m.external_id)
    messages = unique
    if not messages:
        return 0
    status = await conn.execute(
        """WITH base AS (
               SELECT coalesce(max(position), -1) AS last FROM messages
               WHERE conversation_id = $1
           ), fresh AS (
               SELECT u.* FROM unnest($2::text[], $3::text[], $4::text[], $5::text[],
                                      $6::int[], $7::int[], $8::timestamptz[])
                    WITH ORDINALITY
                    AS u(role, content, external_id, model, prompt_tokens,
                         completion_tokens, created_at, n)
               WHERE u.external_id IS NULL OR NOT EXISTS (
                   SELECT 1 FROM messages m
                   WHERE m.conversation_id = $1 AND m.external_id = u.external_id)
           )
           INSERT INTO messages (conversation_id, position, role, content, external_id, model,
                                 prompt_tokens, completion_tokens, request_id, created_at)
           SELECT $1, base.last + row_number() OVER (ORDER BY fresh.n), fresh.role,
                  fresh.content, fresh.external_id, fresh.model, fresh.prompt_tokens,
                  fresh.completion_tokens, $9, coalesce(fresh.created_at, now())
           FROM fresh, base""",
        conversation_id,
        [m.role for m in messages],
        [m.content for m in messages],
        [m.external_id for m in messages],
        [m.model for m in messages],
        [m.prompt_tokens for m in messages],
        [m.completion_tokens for m in messages],
        [m.created_at for m in messages],
        request_id,
    )
    await conn.execute("UPDATE conversations SET updated_at = now() WHERE id = $1", conversation_id)
    return int(status.rsplit(" ", 1)[-1])
