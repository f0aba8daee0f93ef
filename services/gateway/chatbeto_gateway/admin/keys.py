"""Key management for admins (contract 3.1): `POST/GET/DELETE /api/v1/keys`, as the CLI does it.

The plain key appears only in the 201 of its creation; lists show the prefix, never the key.
Project keys get 404 here: admin routes do not exist for them.
"""

from __future__ import annotations

import re
from typing import Annotated, Any

from aiohttp import web
from chatbeto import api_keys, spend
from chatbeto.api_keys import KeyRecord
from chatbeto.settings import RateLimit
from chatbeto.store import projects
from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    PlainValidator,
    StringConstraints,
    field_validator,
    model_validator,
)

from chatbeto_gateway.http import responses
from chatbeto_gateway.http.errors import not_found
from chatbeto_gateway.http.openapi import doc
from chatbeto_gateway.http.parse import POSITIVE_ID, parse_body, parse_query
from chatbeto_gateway.metrics.schemas import Input
from chatbeto_gateway.state import POOL

routes = web.RouteTableDef()
PREFIX_RE = re.compile(r"^[0-9a-f]{8}$")


class KeyIn(Input):
    admin: bool = Field(default=False, description="An admin key sees every project")
    projectId: int | None = Field(
        default=None, gt=0, le=2**63 - 1, description="The project a non-admin key is bound to"
    )
    name: Annotated[str, StringConstraints(min_length=1, max_length=200)] | None = None
    rateLimit: str | None = Field(
        default=None, description="This key's own limit, replacing the default", examples=["50/15m"]
    )
    budget: str | None = Field(
        default=None,
        description="USD per window (s, m, h, d, or mo: calendar months, UTC); once spent, "
        "model routes answer 429 budget_exceeded until the window resets",
        examples=["20/1mo"],
    )
    tpm: int | None = Field(
        default=None,
        gt=0,
        le=2**63 - 1,
        description="Tokens (input + output) per minute; over it, model routes answer 429 "
        "token_limit",
    )

    @field_validator("rateLimit")
    @classmethod
    def _rate(cls, value: str | None) -> str | None:
        return None if value is None else str(RateLimit.parse(value))

    @field_validator("budget")
    @classmethod
    def _budget(cls, value: str | None) -> str | None:
        return None if value is None else str(spend.Budget.parse(value))

    @field_validator("name")
    @classmethod
    def _no_nul(cls, value: str | None) -> str | None:
        if value is not None and "\x00" in value:
            raise ValueError("must not contain NUL characters")
        return value

    @model_validator(mode="after")
    def _one_owner(self) -> KeyIn:
        if self.admin == (self.projectId is not None):
            raise ValueError("give either admin: true or a projectId")
        return self


class KeysQuery(BaseModel):
    model_config = ConfigDict(extra="ignore", frozen=True)
    projectId: Annotated[int | None, PlainValidator(POSITIVE_ID)] = None


def spend_out(window: spend.Window) -> dict[str, Any]:
    return {
        "usd": float(window.usd),
        "calls": window.calls,
        "tokens": window.tokens,
        "windowStart": window.start.isoformat(),
        "windowEnd": window.end.isoformat(),
    }


def key_out(key: KeyRecord, window: spend.Window | None = None) -> dict[str, Any]:
    """`spend` is the key's spend in its budget window (the calendar month without a budget)."""
    return {
        "prefix": key.prefix,
        "name": key.name,
        "admin": key.is_admin,
        "projectId": key.project_id,
        "rateLimit": key.rate_limit,
        "budget": key.budget,
        "tpm": key.tpm,
        "spend": None if window is None else spend_out(window),
        "createdAt": key.created_at.isoformat() if key.created_at else None,
        "lastUsedAt": key.last_used_at.isoformat() if key.last_used_at else None,
        "revokedAt": key.revoked_at.isoformat() if key.revoked_at else None,
    }


@routes.post("/api/v1/keys")
@doc(
    summary="Create an API key (the plain key is shown only in this answer)",
    auth="admin",
    body=KeyIn,
    tags=("keys",),
    responses={201: "", 400: "", 401: "", 404: "", 422: ""},
)
async def create_key(request: web.Request) -> web.Response:
    body = await parse_body(request, KeyIn)
    pool = request.app[POOL]
    if body.projectId is not None and not await projects.exists(pool, body.projectId):
        raise not_found("project_not_found", "project not found")
    plain, record = await api_keys.create(
        pool,
        is_admin=body.admin,
        project_id=body.projectId,
        name=body.name,
        rate_limit=body.rateLimit,
        budget=body.budget,
        tpm=body.tpm,
    )
    windows = await spend.budget_windows(pool, [(record.id, record.budget)])
    return responses.envelope(
        {"key": plain, "apiKey": key_out(record, windows[record.id])}, status=201
    )


@routes.get("/api/v1/keys")
@doc(
    summary="API keys: prefix, name, project, limits, budget and spend in its window, last use "
    "(never a key)",
    auth="admin",
    tags=("keys",),
    query=KeysQuery,
    responses={200: "", 401: "", 404: "", 422: ""},
)
async def list_keys(request: web.Request) -> web.Response:
    query = parse_query(request, KeysQuery)
    pool = request.app[POOL]
    keys = await api_keys.list_keys(pool, query.projectId)
    windows = await spend.budget_windows(pool, [(k.id, k.budget) for k in keys])
    return responses.envelope({"keys": [key_out(k, windows[k.id]) for k in keys]})


@routes.delete("/api/v1/keys/{prefix}")
@doc(
    summary="Revoke a key (refused by every gateway within 5 s)",
    auth="admin",
    tags=("keys",),
    responses={200: "", 401: "", 404: ""},
)
async def revoke_key(request: web.Request) -> web.Response:
    # Only the public prefix: a whole key in a URL would end up in proxies' access logs.
    prefix = request.match_info["prefix"]
    if not PREFIX_RE.match(prefix) or not await api_keys.revoke(request.app[POOL], prefix):
        raise not_found("key_not_found", "key not found")
    return responses.envelope({"revoked": prefix})
