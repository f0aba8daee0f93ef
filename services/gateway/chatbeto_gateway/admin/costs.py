"""`GET /api/v1/costs` (admin): what model calls cost over a period, per project and per key.

Read from the spend ledger the openai-worker writes with each stored exchange (`chatbeto.spend`);
calls of a model without a price are counted (`unpricedCalls`) and add nothing to `usd`.
"""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any

import asyncpg
from aiohttp import web
from chatbeto import spend

from chatbeto_gateway.access.auth import require_admin, require_principal
from chatbeto_gateway.http import responses
from chatbeto_gateway.http.errors import ApiError
from chatbeto_gateway.http.openapi import doc
from chatbeto_gateway.metrics.routes import _query_time
from chatbeto_gateway.state import KEYS, POOL

routes = web.RouteTableDef()
BUCKETS = ("day", "week", "month")


def _invalid(field: str, message: str) -> ApiError:
    return ApiError(
        422, "validation_error", f"invalid fields: {field}", [{"field": field, "message": message}]
    )


def _totals(row: asyncpg.Record) -> dict[str, Any]:
    return {
        "usd": float(row["usd"]),
        "calls": row["calls"],
        "unpricedCalls": row["unpriced_calls"],
        "inputTokens": row["input_tokens"],
        "cachedInputTokens": row["cached_input_tokens"],
        "outputTokens": row["output_tokens"],
    }


def _project_id(request: web.Request) -> int | None:
    raw = request.query.get("projectId")
    if not raw:
        return None
    if not raw.isdigit() or not 0 < int(raw) < 2**63:
        raise _invalid("projectId", "must be a positive integer")
    return int(raw)


@routes.get("/api/v1/costs")
@doc(
    summary="Cost of model calls over a period (default: this calendar month, UTC): in total, "
    "per project, per key and per bucket",
    auth="admin",
    tags=("costs",),
    query=("from", "to", "projectId", "bucket"),
    responses={200: "", 401: "", 404: "", 422: ""},
)
async def costs(request: web.Request) -> web.Response:
    require_admin(await require_principal(request, request.app[KEYS]))
    bucket = request.query.get("bucket", "day")
    if bucket not in BUCKETS:
        raise _invalid("bucket", "one of day, week, month")
    end = _query_time(request, "to") or datetime.now(UTC)
    start = _query_time(request, "from") or spend.DEFAULT_PERIOD.window(end)[0]
    if start >= end:
        raise _invalid("from", "must be before to")
    project_id = _project_id(request)
    rows = await spend.report(request.app[POOL], start, end, project_id, bucket)
    return responses.envelope(
        {
            "from": start.isoformat(),
            "to": end.isoformat(),
            "currency": "USD",
            "bucket": bucket,
            "total": _totals(rows["total"][0]),
            "projects": [
                {"projectId": r["project_id"], "name": r["name"], **_totals(r)}
                for r in rows["projects"]
            ],
            "keys": [
                {
                    "prefix": r["prefix"],
                    "name": r["name"],
                    "admin": r["is_admin"],
                    "projectId": r["project_id"],
                    **_totals(r),
                }
                for r in rows["keys"]
            ],
            "buckets": [{"bucket": r["bucket"].isoformat(), **_totals(r)} for r in rows["buckets"]],
        }
    )
