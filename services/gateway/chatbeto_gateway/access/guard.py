"""Access, enforced once per request from what the route declares.

A route's `@doc(auth=...)` (the declaration /openapi.json is built from) says what it needs:
`"key"` a valid key, `"admin"` an admin key (404 for a project key: admin routes do not exist
for it), `"optional"` a valid key or none at all (keyless ingest, decided by the handler per
GPT), `"none"` and `"signature"` no key. The guard resolves the presented key once, counts the
request against the key's rate limit, budget and token cap, and stores the principal on the
request (`auth.principal_of`); handlers never look at the key again.
"""

from __future__ import annotations

from aiohttp import web
from chatbeto.api_keys import KeyRecord

from chatbeto_gateway.access import ratelimit
from chatbeto_gateway.access.auth import (
    MAX_KEY_CHARS,
    MISS,
    PRINCIPAL,
    Principal,
    presented_key,
    resolve_key,
)
from chatbeto_gateway.access.ratelimit import Decision, Scope
from chatbeto_gateway.http.errors import not_found, unauthorized
from chatbeto_gateway.http.openapi import Auth
from chatbeto_gateway.state import KEYS, LIMITER, SETTINGS

KEYED: frozenset[Auth] = frozenset({"key", "admin", "optional"})


async def admit(request: web.Request, need: Auth, scope: Scope | None) -> Decision | None:
    """Called by the one request wrapper (`http.middleware.observe`) before the handler, with
    what the route needs and whose limit counts it: a wrapper of its own cost two coroutine
    frames per request of the ingest hot path. Returns the key's rate-limit decision (also
    stored on the request), for the wrapper's headers."""
    plain = presented_key(request)
    record: KeyRecord | None = None
    app = request.app
    if plain is not None and (need in KEYED or scope is not None):
        # A fresh cache entry answers without a coroutine (the common case under load).
        keys = app[KEYS]
        cached = keys.cached(plain) if len(plain) <= MAX_KEY_CHARS else None
        record = await resolve_key(keys, plain) if cached is MISS else cached
        if record is None and need in KEYED:
            raise unauthorized()  # a key that was sent must be valid, keyless ingest too
    if record is None:
        if need in ("key", "admin"):
            raise unauthorized()
        return None
    decision = None
    limiter = app.get(LIMITER)
    if scope is not None and limiter is not None:
        # A keyed request counts against its key wherever it goes (a 429 before anything
        # else); a keyless ingest is counted per GPT by its handler. Leased tokens answer
        # without a coroutine.
        settings = app[SETTINGS]
        decision = ratelimit.charge_key_leased(request, limiter, record, scope, settings)
        if decision is None:
            decision = await ratelimit.charge_key(request, limiter, record, scope, settings)
    if need == "admin" and not record.is_admin:
        raise not_found()
    request[PRINCIPAL] = Principal(record)
    return decision
