"""`/api/v1/projects` (contract 3.1): admins create projects; every key lists what it may see."""

from __future__ import annotations

from typing import Any

import asyncpg
from aiohttp import web
from pydantic import BaseModel, ConfigDict, Field

from chatbeto_gateway import conversations_repo, responses
from chatbeto_gateway.auth import require_admin, require_principal
from chatbeto_gateway.openai_calls import parse_body
from chatbeto_gateway.openapi import doc
from chatbeto_gateway.state import KEYS, POOL

routes = web.RouteTableDef()


class ProjectIn(BaseModel):
    model_config = ConfigDict(extra="ignore")
    name: str = Field(min_length=1, max_length=200, examples=["support-bot"])


def project_out(row: asyncpg.Record) -> dict[str, Any]:
    return {"id": row["id"], "name": row["name"], "createdAt": row["created_at"].isoformat()}


@routes.post("/api/v1/projects")
@doc(
    summary="Create a project",
    auth="admin",
    body=ProjectIn,
    tags=("projects",),
    responses={201: "", 400: "", 401: "", 404: "Not an admin key", 422: ""},
)
async def create_project(request: web.Request) -> web.Response:
    principal = await require_principal(request, request.app[KEYS])
    require_admin(principal)
    body = await parse_body(request, ProjectIn)
    async with request.app[POOL].acquire() as conn:
        row = await conversations_repo.create_project(conn, body.name.strip() or body.name)
    return responses.envelope({"project": project_out(row)}, status=201)


@routes.get("/api/v1/projects")
@doc(summary="Projects this key may see", tags=("projects",), responses={200: "", 401: ""})
async def list_projects(request: web.Request) -> web.Response:
    principal = await require_principal(request, request.app[KEYS])
    async with request.app[POOL].acquire() as conn:
        rows = await conversations_repo.list_projects(conn, principal.project_id)
    return responses.envelope({"projects": [project_out(r) for r in rows]})
