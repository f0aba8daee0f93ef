"""Every model call as a metrics event of the built-in GPT `chatbeto` (contract end of 3.1),
published to metrics-ingest like any other event: one session per conversation."""

from __future__ import annotations

import uuid
from collections.abc import Sequence
from datetime import UTC, datetime
from decimal import Decimal
from typing import Any

import aio_pika
from chatbeto.broker import GroupPublisher, Publisher
from chatbeto.messages import EventRecord, MetricsBatch, SessionRecord, Usage, envelope, to_amqp

METRICS_ROUTING_KEY = "metrics.batch"
EVENT_TIPO = "completion"
# Event ids derive from the request's message id, so a redelivered request stores one event.
EVENT_ID_NAMESPACE = uuid.UUID("6c1f0b8e-3f0a-4c55-9c39-2b0c8e7b5a11")


def _build(items: Sequence[Any]) -> aio_pika.Message:
    sessions = tuple(i for i in items if isinstance(i, SessionRecord))
    events = tuple(i for i in items if isinstance(i, EventRecord))
    return to_amqp(envelope(MetricsBatch.model_construct(sessions=sessions, events=events)))


class UsageEvents:
    def __init__(self, publisher: Publisher, builtin_gpt_pk: int) -> None:
        self._group = GroupPublisher(publisher, METRICS_ROUTING_KEY, _build)
        self.gpt_pk = builtin_gpt_pk

    async def record(
        self,
        *,
        session_id: uuid.UUID,
        session_started: datetime,
        project_id: int | None,
        user: str,
        model: str,
        usage: Usage,
        latency_ms: int,
        request_message_id: str,
        request_id: str | None,
        cost_usd: Decimal | None = None,
    ) -> None:
        """Returns once the event is confirmed on the broker (raises BrokerUnavailable)."""
        session = SessionRecord(
            id=session_id,
            gpt_pk=self.gpt_pk,
            usuario_id=user,
            timestamp_inicio=session_started,
            project_id=project_id,
            request_id=request_id,
        )
        event = EventRecord(
            id=uuid.uuid5(EVENT_ID_NAMESPACE, request_message_id),
            sesion_id=session_id,
            tipo=EVENT_TIPO,
            contenido=model,
            latency_ms=latency_ms,
            tokens_entrada=usage.prompt_tokens,
            tokens_salida=usage.completion_tokens,
            timestamp=datetime.now(UTC),
            request_id=request_id,
            cost_usd=cost_usd,
        )
        # The session rides along every time (stored once): ingest needs it before the event.
        await self._group.submit([session, event])

    async def close(self) -> None:
        await self._group.close()
