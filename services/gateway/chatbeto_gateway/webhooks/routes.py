"""Signed webhooks (contract 3.3): verify, then hand to the broker; and the admin delivery list.

The signature is checked on the raw bytes before anything is parsed, queued or stored. A
verified delivery is published (confirmed, persistent) before the 202; the webhook service acts
on it exactly once, guarded by a unique constraint on its delivery key. The lookup here only
spares the broker a redelivery that was already handled; it is not what guarantees "once".
"""

from __future__ import annotations

import re
from datetime import UTC, datetime
from typing import Annotated, Any

import asyncpg
import orjson
from aiohttp import web
from chatbeto import signatures
from chatbeto.logging import get_logger
from chatbeto.messages import WebhookDelivery, envelope, to_amqp
from pydantic import BaseModel, ConfigDict, PlainValidator, SecretStr

from chatbeto_gateway.http import responses
from chatbeto_gateway.http.errors import ApiError, ValidationFailed
from chatbeto_gateway.http.openapi import doc
from chatbeto_gateway.http.parse import parse_query, query_int
from chatbeto_gateway.state import POOL, PUBLISHER, SETTINGS

routes = web.RouteTableDef()
log = get_logger(__name__)
EVENT_TYPE_RE = re.compile(r"^[A-Za-z0-9_.:-]{1,64}$")
DEFAULT_LIST_LIMIT = 50
MAX_LIST_LIMIT = 500
DUPLICATE_CHECK_TIMEOUT_SECONDS = 1.0
WEBHOOK_RESPONSES = {
    200: "Already received: acknowledged, nothing done again",
    202: "Verified and queued",
    400: "",
    401: "Invalid signature or stale timestamp",
    413: "",
    422: "No event type",
    503: "",
}


def _secrets(value: SecretStr | None) -> list[str]:
    return signatures.parse_secrets(value.get_secret_value()) if value is not None else []


def _verify(verify: Any, secrets: list[str], request: web.Request, body: bytes) -> Any:
    if not secrets:
        # Nothing can be verified without a secret, so nothing is accepted.
        log.warning("webhook refused: no secret configured", path=request.path)
        raise ApiError(401, "invalid_signature", signatures.INVALID)
    try:
        return verify(secrets, request.headers, body)
    except signatures.SignatureError as exc:
        code = "stale" if exc.reason == signatures.STALE else "invalid_signature"
        log.info("webhook refused", path=request.path, reason=exc.reason)
        raise ApiError(401, code, exc.reason) from exc


def _payload(body: bytes) -> dict[str, Any]:
    try:
        value = orjson.loads(body)
    except orjson.JSONDecodeError as exc:
        raise ApiError(400, "invalid_json", "body is not valid JSON") from exc
    if not isinstance(value, dict):
        raise ValidationFailed(
            [{"field": "body", "message": "expected an object"}], "body must be a JSON object"
        )
    return value


def _event_type(header: str | None, payload: dict[str, Any]) -> str:
    # The body's `type` is covered by the signature, the legacy X-Event-Type header is not:
    # when both are given they must agree.
    signed = payload.get("type")
    if header and signed is not None and header != signed:
        raise ValidationFailed.of("type", "X-Event-Type differs from the body's type")
    value = signed if signed is not None else header
    if not isinstance(value, str) or not EVENT_TYPE_RE.match(value):
        raise ValidationFailed.of("type", "an event type (X-Event-Type or body `type`)")
    return value


async def _already_done(pool: asyncpg.Pool, source: str, key: str) -> bool:
    """True when this delivery was handled (failed ones may be tried again)."""
    try:
        outcome = await pool.fetchval(
            "SELECT outcome FROM webhook_deliveries WHERE source = $1 AND delivery_key = $2",
            source,
            key,
            timeout=DUPLICATE_CHECK_TIMEOUT_SECONDS,
        )
    except (OSError, TimeoutError, asyncpg.PostgresError):
        return False  # the worker's unique constraint still keeps it to once
    return outcome is not None and outcome != "failed"


async def accept(
    request: web.Request,
    source: str,
    verified: signatures.Verified,
    event_type: str,
    payload: dict[str, Any],
) -> web.Response:
    if await _already_done(request.app[POOL], source, verified.key):
        log.info("duplicate webhook acknowledged", source=source, event_type=event_type)
        return responses.json({"status": "duplicate", "type": event_type}, status=200)
    delivery = WebhookDelivery(
        source=source,
        delivery_key=verified.key,
        webhook_id=verified.webhook_id,
        event_type=event_type,
        received_at=datetime.now(UTC),
        payload=payload,
    )
    await request.app[PUBLISHER].publish(to_amqp(envelope(delivery)), f"webhook.{source}")
    log.info("webhook accepted", source=source, event_type=event_type, scheme=verified.scheme)
    return responses.json({"status": "accepted", "type": event_type}, status=202)


@routes.post("/webhook/chatgpt")
@doc(
    summary="ChatGPT-side webhook: legacy `X-Webhook-Signature` or Standard Webhooks",
    auth="signature",
    tags=("webhooks",),
    responses=WEBHOOK_RESPONSES,
)
async def chatgpt_webhook(request: web.Request) -> web.Response:
    body = await request.read()
    secrets = _secrets(request.app[SETTINGS].webhook_secret)
    verify = (
        signatures.verify_standard
        if signatures.is_standard(request.headers)
        else signatures.verify_legacy
    )
    verified = _verify(verify, secrets, request, body)
    payload = _payload(body)
    event_type = _event_type(request.headers.get("X-Event-Type"), payload)
    return await accept(request, "chatgpt", verified, event_type, payload)


@routes.post("/webhook/openai")
@doc(
    summary="OpenAI's webhooks (Standard Webhooks, OPENAI_WEBHOOK_SECRET)",
    auth="signature",
    tags=("webhooks",),
    responses=WEBHOOK_RESPONSES,
)
async def openai_webhook(request: web.Request) -> web.Response:
    body = await request.read()
    secrets = _secrets(request.app[SETTINGS].openai_webhook_secret)
    verified = _verify(signatures.verify_standard, secrets, request, body)
    payload = _payload(body)
    event_type = _event_type(None, payload)
    return await accept(request, "openai", verified, event_type, payload)


class DeliveriesQuery(BaseModel):
    model_config = ConfigDict(extra="ignore", frozen=True)
    limit: Annotated[
        int,
        PlainValidator(
            query_int(f"an integer from 1 to {MAX_LIST_LIMIT}", minimum=1, maximum=MAX_LIST_LIMIT)
        ),
    ] = DEFAULT_LIST_LIMIT
    source: str | None = None
    outcome: str | None = None


@routes.get("/api/v1/webhooks/deliveries")
@doc(
    summary="Recent webhook deliveries: id, type, received, outcome (admin)",
    auth="admin",
    tags=("webhooks",),
    query=DeliveriesQuery,
    responses={200: "", 401: "", 404: "", 422: ""},
)
async def list_deliveries(request: web.Request) -> web.Response:
    query = parse_query(request, DeliveriesQuery)
    rows = await request.app[POOL].fetch(
        """SELECT id, source, webhook_id, event_type, received_at, processed_at, outcome, error,
                  project_id, conversation_id, attempts, request_id
           FROM webhook_deliveries
           WHERE ($1::text IS NULL OR source = $1) AND ($2::text IS NULL OR outcome = $2)
           ORDER BY received_at DESC, id DESC
           LIMIT $3""",
        query.source,
        query.outcome,
        query.limit,
    )
    return responses.envelope({"deliveries": [_delivery_out(r) for r in rows]})


def _delivery_out(row: asyncpg.Record) -> dict[str, Any]:
    return {
        "id": row["id"],
        "webhookId": row["webhook_id"],
        "source": row["source"],
        "type": row["event_type"],
        "receivedAt": row["received_at"].isoformat(),
        "processedAt": row["processed_at"].isoformat(),
        "outcome": row["outcome"],
        "error": row["error"],
        "projectId": row["project_id"],
        "conversationId": row["conversation_id"],
        "attempts": row["attempts"],
        "requestId": row["request_id"],
    }
