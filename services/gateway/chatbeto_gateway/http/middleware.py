"""The one request wrapper: request id, timing, Prometheus counts, access (`access.guard`), and
the error shape per surface.

Every route's handler is wrapped when the app is assembled (`observed_routes`), and a last
catch-all route (`unmatched`) answers what no route serves, so aiohttp's own 404 / 405 pass
through it too. Not an aiohttp middleware: its chain (a cached lookup of the handler and the
app stack, and a wrapper coroutine that sets the current app around every request) cost 2-3 us
of every request.
"""

from __future__ import annotations

import asyncio
import itertools
import re
import secrets
import time
from functools import partial, update_wrapper
from typing import Any, NamedTuple

import asyncpg
from aiohttp import web
from aiohttp.typedefs import Handler
from chatbeto.broker import BrokerUnavailable
from chatbeto.db import is_database_outage
from chatbeto.logging import REQUEST_ID, get_logger
from chatbeto.observability import REQUEST_STATS

from chatbeto_gateway.access import ratelimit
from chatbeto_gateway.access.guard import admit
from chatbeto_gateway.access.ratelimit import Scope
from chatbeto_gateway.http import responses
from chatbeto_gateway.http.errors import (
    ApiError,
    broker_unavailable,
    database_unavailable,
    unstorable,
)
from chatbeto_gateway.http.openapi import Auth, route_doc
from chatbeto_gateway.state import SETTINGS

log = get_logger("chatbeto.gateway.access")
REQUEST_ID_RE = re.compile(r"^[A-Za-z0-9._:/+=-]{1,128}$")
# High-volume ingest routes log their access line at debug; Prometheus counts every request.
QUIET_ROUTES = frozenset({"/api/events", "/api/events/batch", "/healthz", "/metrics"})
# Request ids made here: a random per-process prefix and a counter (unique across processes and
# replicas, and a tenth of the cost of a uuid4 per request).
_ID_PREFIX = secrets.token_hex(6)
_ID_COUNTER = itertools.count()


def new_request_id() -> str:
    return f"{_ID_PREFIX}{next(_ID_COUNTER):012x}"


def error_body(path: str, status: int, code: str, message: str, details: Any = None) -> Any:
    error: dict[str, Any] = {"code": code, "message": message}
    if details is not None:
        error["details"] = details
    if path.startswith("/api/v1/"):
        return {"status": "error", "error": error}
    if path.startswith("/v1/"):
        # OpenAI's own error shape, so OpenAI SDKs raise the right exception (and see `param`).
        param = None
        if isinstance(details, list) and details and isinstance(details[0], dict):
            param = details[0].get("field")
        return {"error": {"message": message, "type": code, "code": code, "param": param}}
    return {"error": error}


def error_response(request: web.Request, exc: ApiError) -> web.Response:
    """The one place an error becomes a response, in the shape of the route's surface."""
    return responses.json(
        error_body(request.path, exc.status, exc.code, exc.message, exc.details),
        status=exc.status,
        headers=exc.headers,
    )


HTTP_CODES = {
    400: "bad_request",
    401: "unauthorized",
    404: "not_found",
    405: "method_not_allowed",
    413: "payload_too_large",
    415: "unsupported_media_type",
    429: "rate_limited",
    503: "unavailable",
}


class RouteFacts(NamedTuple):
    """What `observe` needs of a route, worked out once per route (a dozen attribute reads,
    calls and string tests per request otherwise)."""

    name: str  # its label in the metrics
    need: Auth  # what `access.guard` asks of the caller
    scope: Scope | None  # whose rate limit counts it
    # The level its access line is written at; None: not written (looked up on the logger per
    # line, which may be configured again meanwhile).
    log_level: str | None


# By route; not the catch-all's (the paths it answers differ in scope).
_routes: dict[web.AbstractRoute, RouteFacts] = {}
MAX_ROUTES = 10_000  # an app's routes; more only if many apps come and go (tests)


def route_facts(request: web.Request, route: web.AbstractRoute) -> RouteFacts:
    resource = route.resource
    if resource is not None and resource.name == UNMATCHED:
        resource = None  # the catch-all: each path its own scope, so never kept
    name = UNMATCHED if resource is None else resource.canonical
    rdoc = route_doc(route)
    # Every route is documented (a test checks it) but the two catch-alls (`/v1/...` and
    # `unmatched`): those answer without a key.
    need: Auth = rdoc.auth if rdoc is not None else "none"
    quiet = name in QUIET_ROUTES
    # Skipping the call for quiet routes saves the logger's own cost (2 us) per event.
    debug = request.app[SETTINGS].log_level == "debug"
    facts = RouteFacts(
        name,
        need,
        # By its own path: every path a route matches shares its prefix.
        ratelimit.scope_of(request.path if resource is None else name),
        ("debug" if debug else None) if quiet else "info",
    )
    if resource is not None:
        if len(_routes) >= MAX_ROUTES:
            _routes.clear()
        _routes[route] = facts
    return facts


def observed(handler: Handler) -> Handler:
    """`handler` inside `observe` (a partial: no frame of its own; its route doc comes along)."""
    return update_wrapper(partial(observe, handler=handler), handler)


def observed_routes(table: web.RouteTableDef) -> list[web.RouteDef]:
    routes = []
    for route in table:
        assert isinstance(route, web.RouteDef), "only handlers pass through observe"
        routes.append(web.RouteDef(route.method, route.path, observed(route.handler), route.kwargs))
    return routes


# The catch-all route's name: its requests are labelled and counted by their own path.
UNMATCHED = "unmatched"


async def unmatched(request: web.Request) -> web.StreamResponse:
    """What no route serves: 405 naming the methods when another route serves the path, else
    404 (as aiohttp answers without a catch-all)."""
    this = request.match_info.route.resource
    allowed: set[str] = set()
    for resource in request.app.router.resources():
        if resource is not this:
            allowed |= (await resource.resolve(request))[1]
    if allowed:
        raise web.HTTPMethodNotAllowed(request.method, allowed)
    raise web.HTTPNotFound()


async def observe(request: web.Request, handler: Handler) -> web.StreamResponse:
    incoming = request.headers.get("X-Request-Id")
    request_id = incoming if incoming and REQUEST_ID_RE.match(incoming) else new_request_id()
    token = REQUEST_ID.set(request_id)
    started = time.perf_counter()
    route = request.match_info.route
    facts = _routes.get(route) or route_facts(request, route)
    status = 500
    decision = None
    try:
        try:
            decision = await admit(request, facts.need, facts.scope)  # key, limits, auth
            response = await handler(request)
        except ApiError as exc:
            response = error_response(request, exc)
        except BrokerUnavailable:
            # A publish the broker did not confirm, on any route: 503, nothing was queued.
            log.warning("broker unavailable", path=request.path)
            response = error_response(request, broker_unavailable())
        except asyncpg.DataError as exc:
            # Input a handler let through that Postgres can't hold (a NUL byte, a number past
            # bigint): the caller's error, not ours. Logged so the missing check gets added.
            log.warning("input rejected by postgres", path=request.path, error=type(exc).__name__)
            response = error_response(request, unstorable())
        except web.HTTPException as exc:
            if exc.status < 400:
                raise
            code = HTTP_CODES.get(exc.status, "error")
            message = exc.reason if exc.status != 413 else "request body is larger than 1 MiB"
            headers = {k: v for k, v in exc.headers.items() if k.lower() == "allow"}
            response = error_response(request, ApiError(exc.status, code, message, headers=headers))
        except Exception as exc:
            # Postgres away, on any route: 503 with Retry-After, never a 500. So is a statement
            # Postgres rolled back for a conflict a retry resolves (class 40: a deadlock, a
            # serialization failure, a read replica's "conflict with recovery" as it replays a
            # retention's DROP of a partition that a report was reading).
            if is_database_outage(exc) or isinstance(exc, asyncpg.TransactionRollbackError):
                log.warning("database unavailable", path=request.path, error=type(exc).__name__)
                response = error_response(request, database_unavailable())
            elif isinstance(exc, ConnectionResetError):
                # The client went away mid-request: nothing to answer, not a server error.
                log.debug("client disconnected", path=request.path)
                response = web.Response(status=499)
            else:
                log.exception("unhandled error", path=request.path)
                response = error_response(
                    request, ApiError(500, "internal_error", "internal error")
                )
        status = response.status
        ratelimit.settle(request, status)  # a 5xx is not charged against the caller's limit
        if not response.prepared:  # a stream sent its headers already (with these)
            if decision is not None:  # the key's, as admitted (a keyless ingest's is later)
                decision.add_to(response.headers)
            else:
                ratelimit.add_headers(request, response)
            response.headers["X-Request-Id"] = request_id
        return response
    finally:
        elapsed = time.perf_counter() - started
        REQUEST_STATS.record(request.method, facts.name, status, elapsed)
        if facts.log_level is not None:
            # Written after the response (in the loop's next pass, with this request's context):
            # the line cost 8-15 us of every request's latency when written here.
            asyncio.get_running_loop().call_soon(
                partial(
                    getattr(log, facts.log_level),
                    "request",
                    method=request.method,
                    route=facts.name,
                    status=status,
                    duration_ms=round(elapsed * 1000, 2),
                )
            )
        REQUEST_ID.reset(token)
