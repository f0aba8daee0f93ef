"""`/api/v1/projects` (contract 3.1): admins create projects; every key lists what it may see."""

from __future__ import annotations

from typing import Annotated, Any

import asyncpg
from aiohttp import web
from chatbeto.store import projects
from pydantic import AfterValidator, BaseModel, ConfigDict, Field

from chatbeto_gateway.access.auth import principal_of
from chatbeto_gateway.http import responses
from chatbeto_gateway.http.errors import ApiError
from chatbeto_gateway.http.openapi import doc
from chatbeto_gateway.http.parse import parse_body
from chatbeto_gateway.state import POOL

routes = web.RouteTableDef()


class ProjectIn(BaseModel):
    model_config = ConfigDict(extra="ignore")
    name: Annotated[str, AfterValidator(projects.clean_name)] = Field(
        min_length=1,
        max_length=projects.MAX_NAME_CHARS,
        description="Unique, ignoring case; surrounding blanks are dropped",
        examples=["support-bot"],
    )


def project_out(row: asyncpg.Record) -> dict[str, Any]:
    return {"id": row["id"], "name": row["name"], "createdAt": row["created_at"].isoformat()}


@routes.post("/api/v1/projects")
@doc(
    summary="Create a project",
    auth="admin",
    body=ProjectIn,
    tags=("projects",),
    responses={
        201: "",
        400: "",
        401: "",
        404: "Not an admin key",
        409: "A project with this name exists (code project_exists, details.id)",
        422: "",
    },
)
async def create_project(request: web.Request) -> web.Response:
    body = await parse_body(request, ProjectIn)
    async with request.app[POOL].acquire() as conn:
        try:
            row = await projects.create(conn, body.name)
        except projects.ProjectExists as exc:
            raise ApiError(
                409,
                "project_exists",
                f"a project named {body.name!r} already exists",
                {"id": exc.existing_id},
            ) from exc
    return responses.envelope({"project": project_out(row)}, status=201)


@routes.get("/api/v1/projects")
@doc(summary="Projects this key may see", tags=("projects",), responses={200: "", 401: ""})
async def list_projects(request: web.Request) -> web.Response:
    principal = principal_of(request)
    async with request.app[POOL].acquire() as conn:
        rows = await projects.list_all(conn, principal.project_id)
    return responses.envelope({"projects": [project_out(r) for r in rows]})
