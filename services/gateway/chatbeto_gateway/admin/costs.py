"""`GET /api/v1/costs` (admin): what model calls cost over a period, per project and per key.

Read from the spend ledger the openai-worker writes with each stored exchange (`chatbeto.spend`);
calls of a model without a price are counted (`unpricedCalls`) and add nothing to `usd`.
"""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Annotated, Any

import asyncpg
from aiohttp import web
from chatbeto import spend
from pydantic import BaseModel, ConfigDict, Field, PlainValidator

from chatbeto_gateway.http import responses
from chatbeto_gateway.http.errors import ValidationFailed
from chatbeto_gateway.http.openapi import doc
from chatbeto_gateway.http.parse import POSITIVE_ID, parse_query, query_choice, query_time
from chatbeto_gateway.state import REPORT_POOL

routes = web.RouteTableDef()
BUCKETS = ("day", "week", "month")


class CostsQuery(BaseModel):
    model_config = ConfigDict(extra="ignore", frozen=True)
    start: Annotated[datetime | None, PlainValidator(query_time)] = Field(None, alias="from")
    end: Annotated[datetime | None, PlainValidator(query_time)] = Field(None, alias="to")
    projectId: Annotated[int | None, PlainValidator(POSITIVE_ID)] = None
    bucket: Annotated[str, PlainValidator(query_choice("one of day, week, month", BUCKETS))] = "day"


def _totals(row: asyncpg.Record) -> dict[str, Any]:
    return {
        "usd": float(row["usd"]),
        "calls": row["calls"],
        "unpricedCalls": row["unpriced_calls"],
        "inputTokens": row["input_tokens"],
        "cachedInputTokens": row["cached_input_tokens"],
        "outputTokens": row["output_tokens"],
    }


@routes.get("/api/v1/costs")
@doc(
    summary="Cost of model calls over a period (default: this calendar month, UTC): in total, "
    "per project, per key and per bucket",
    auth="admin",
    tags=("costs",),
    query=CostsQuery,
    responses={200: "", 401: "", 404: "", 422: ""},
)
async def costs(request: web.Request) -> web.Response:
    query = parse_query(request, CostsQuery)
    bucket = query.bucket
    end = query.end or datetime.now(UTC)
    start = query.start or spend.DEFAULT_PERIOD.window(end)[0]
    if start >= end:
        raise ValidationFailed.of("from", "must be before to")
    rows = await spend.report(request.app[REPORT_POOL], start, end, query.projectId, bucket)
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
