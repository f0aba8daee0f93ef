"""`/openapi.json`, generated from the routes the app really has.

Handlers carry their documentation (`@doc(...)`); the document walks the router, so a route
can't exist undocumented (a test checks it) and request schemas are the pydantic models the
handlers validate with.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, Literal, TypeVar

from aiohttp import web
from pydantic import BaseModel

Auth = Literal["none", "key", "optional", "admin", "signature"]
F = TypeVar("F", bound=Callable[..., Any])


@dataclass(frozen=True)
class RouteDoc:
    summary: str
    auth: Auth = "key"
    body: type[BaseModel] | None = None
    body_content_type: str = "application/json"
    responses: dict[int, str] = field(default_factory=dict)
    response_model: type[BaseModel] | None = None
    tags: tuple[str, ...] = ()
    # The query string's model (what `parse_query` validates with); its names are documented.
    query: type[BaseModel] | None = None
    content_type: str = "application/json"


def doc(**kwargs: Any) -> Callable[[F], F]:
    def wrap(handler: F) -> F:
        handler.__openapi__ = RouteDoc(**kwargs)  # type: ignore[attr-defined]
        return handler

    return wrap


def route_doc(route: web.AbstractRoute) -> RouteDoc | None:
    return getattr(route.handler, "__openapi__", None)


STATUS_TEXT = {
    200: "OK",
    201: "Created",
    202: "Accepted",
    204: "No Content",
    207: "Multi-Status",
    400: "Invalid JSON",
    401: "Missing or invalid key",
    404: "Not found",
    409: "Conflict",
    413: "Body over 1 MiB",
    422: "Schema violation, naming each field",
    429: "Rate limited",
    502: "Upstream error",
    503: "Broker or database unavailable",
    504: "Upstream timeout",
}


def build(
    app: web.Application, title: str = "chatbeto gateway", version: str = "0.1.0"
) -> dict[str, Any]:
    paths: dict[str, dict[str, Any]] = {}
    schemas: dict[str, Any] = {}
    for route in app.router.routes():
        info = route.get_info()
        path = info.get("path") or info.get("formatter")
        if path is None or route.method == "HEAD":
            continue
        rdoc = route_doc(route)
        if rdoc is None:
            continue
        op: dict[str, Any] = {
            "summary": rdoc.summary,
            "tags": list(rdoc.tags) or ["misc"],
            "operationId": f"{route.method.lower()}_{path}",
        }
        params = [
            {"name": name, "in": "path", "required": True, "schema": {"type": "string"}}
            for name in _path_params(path)
        ]
        params += [
            {"name": q, "in": "query", "required": False, "schema": {"type": "string"}}
            for q in _query_names(rdoc.query)
        ]
        if params:
            op["parameters"] = params
        if rdoc.auth in ("key", "admin"):
            op["security"] = [{"apiKey": []}, {"bearer": []}]
        elif rdoc.auth == "optional":
            op["security"] = [{"apiKey": []}, {"bearer": []}, {}]
        else:
            op["security"] = []
        if rdoc.body is not None:
            schema = rdoc.body.model_json_schema(ref_template="#/components/schemas/{model}")
            schemas.update(schema.pop("$defs", {}))
            schemas[rdoc.body.__name__] = schema
            op["requestBody"] = {
                "required": True,
                "content": {
                    rdoc.body_content_type: {
                        "schema": {"$ref": f"#/components/schemas/{rdoc.body.__name__}"}
                    }
                },
            }
        responses: dict[str, Any] = {}
        for status, text in (rdoc.responses or {200: "OK"}).items():
            entry: dict[str, Any] = {"description": text or STATUS_TEXT.get(status, "")}
            if 200 <= status < 300:
                content: dict[str, Any] = {"schema": {}}
                if rdoc.response_model is not None:
                    schema = rdoc.response_model.model_json_schema(
                        ref_template="#/components/schemas/{model}"
                    )
                    schemas.update(schema.pop("$defs", {}))
                    schemas[rdoc.response_model.__name__] = schema
                    content = {
                        "schema": {"$ref": f"#/components/schemas/{rdoc.response_model.__name__}"}
                    }
                entry["content"] = {rdoc.content_type: content}
            responses[str(status)] = entry
        op["responses"] = responses
        paths.setdefault(path, {})[route.method.lower()] = op
    return {
        "openapi": "3.1.0",
        "info": {"title": title, "version": version},
        "paths": dict(sorted(paths.items())),
        "components": {
            "schemas": schemas,
            "securitySchemes": {
                "apiKey": {"type": "apiKey", "in": "header", "name": "X-API-Key"},
                "bearer": {"type": "http", "scheme": "bearer"},
            },
        },
    }


def _query_names(model: type[BaseModel] | None) -> list[str]:
    if model is None:
        return []
    return [info.alias or name for name, info in model.model_fields.items()]


def _path_params(path: str) -> list[str]:
    import re

    return re.findall(r"{([^}:]+)", path)
