"""Operations routes: liveness, readiness, Prometheus, OpenAPI."""

from __future__ import annotations

import os

from aiohttp import web
from chatbeto import health
from chatbeto.observability import REQUEST_STATS
from prometheus_client import (
    CONTENT_TYPE_LATEST,
    REGISTRY,
    CollectorRegistry,
    generate_latest,
    multiprocess,
)

from chatbeto_gateway.http import openapi, responses
from chatbeto_gateway.http.openapi import doc
from chatbeto_gateway.state import BROKER, POOL

routes = web.RouteTableDef()


def _registry() -> CollectorRegistry:
    """This process's metrics; with GATEWAY_WORKERS > 1, the sum over every worker (the
    supervisor sets prometheus_client's multiprocess directory), so a scrape that reaches any
    worker sees the whole gateway."""
    if os.environ.get("PROMETHEUS_MULTIPROC_DIR"):
        registry = CollectorRegistry()
        multiprocess.MultiProcessCollector(registry)  # type: ignore[no-untyped-call]
        return registry
    return REGISTRY


def checks(app: web.Application) -> dict[str, health.Check]:
    return {
        "database": health.postgres_check(lambda: app.get(POOL)),
        "broker": health.broker_check(lambda: app.get(BROKER)),
    }


@routes.get("/healthz")
@doc(summary="Liveness: 200 while the process runs", auth="none", tags=("operations",))
async def healthz(_: web.Request) -> web.Response:
    return responses.json({"status": "ok"})


@routes.get("/readyz")
@doc(
    summary="Readiness: Postgres and the broker answer",
    auth="none",
    tags=("operations",),
    responses={200: "", 503: ""},
)
async def readyz(request: web.Request) -> web.Response:
    ok, status = await health.readiness(checks(request.app))
    if ok:
        return responses.json({"status": "ready", "checks": status})
    failing = [name for name, value in status.items() if value != "ok"]
    return responses.json(
        {
            "status": "unavailable",
            "checks": status,
            "failing": failing,
            "error": {"code": "not_ready", "message": f"unavailable: {', '.join(failing)}"},
        },
        status=503,
    )


@routes.get("/metrics")
@doc(summary="Prometheus metrics", auth="none", tags=("operations",), content_type="text/plain")
async def metrics(_: web.Request) -> web.Response:
    REQUEST_STATS.flush()  # this process's counts up to now (other workers flush every second)
    resp = web.Response(body=generate_latest(_registry()))
    resp.content_type = CONTENT_TYPE_LATEST.split(";")[0]
    return resp


@routes.get("/openapi.json")
@doc(summary="This document", auth="none", tags=("operations",))
async def openapi_json(request: web.Request) -> web.Response:
    return responses.json(openapi.build(request.app))
