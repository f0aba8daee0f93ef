"""SQL of the webhook service: its deliveries. Conversations and messages are the store's
(`chatbeto.store.conversations`). Everything runs in the caller's transaction."""

from __future__ import annotations

from chatbeto.db import Conn
from chatbeto.messages import WebhookDelivery


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
