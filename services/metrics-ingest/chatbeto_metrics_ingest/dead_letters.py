"""One dead letter per record that cannot be stored, carrying the reason.

The record goes to the work queue's dead-letter queue as a `metrics.batch` message of its own,
so `chatbeto dlq peek` shows it with the `x-error` header and `chatbeto dlq replay` puts exactly
it back. Its message id is derived from the original message's and the record's position, so a
redelivered original dead-letters the same id again rather than something new-looking.
"""

from __future__ import annotations

import uuid
from datetime import UTC, datetime
from typing import Any

import aio_pika
import orjson
from aio_pika.abc import AbstractIncomingMessage
from chatbeto.messages import MetricsBatch

ERROR_HEADER = "x-error"
ORIGINAL_HEADER = "x-original-message-id"
MAX_REASON_CHARS = 500


def dead_letter(
    original: AbstractIncomingMessage,
    position: str,
    kind: str,
    record: Any,
    reason: str,
    request_id: str | None,
) -> aio_pika.Message:
    base = original.message_id or "unknown"
    message_id = uuid.uuid5(uuid.NAMESPACE_URL, f"chatbeto:dead-letter:{base}:{position}")
    body = {
        "type": MetricsBatch.TYPE,
        "version": MetricsBatch.VERSION,
        "message_id": str(message_id),
        "occurred_at": datetime.now(UTC).isoformat(),
        "request_id": request_id,
        "data": {"sessions": [record]} if kind == "session" else {"events": [record]},
    }
    headers: dict[str, Any] = {
        ERROR_HEADER: reason[:MAX_REASON_CHARS],
        ORIGINAL_HEADER: base,
    }
    if request_id:
        headers["x-request-id"] = request_id
    return aio_pika.Message(
        body=orjson.dumps(body),
        content_type="application/json",
        delivery_mode=aio_pika.DeliveryMode.PERSISTENT,
        message_id=str(message_id),
        type=f"{MetricsBatch.TYPE}.v{MetricsBatch.VERSION}",
        headers=headers,
    )
