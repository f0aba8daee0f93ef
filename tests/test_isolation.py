"""Tenant isolation: walk every route of `/openapi.json` with project B's key against project A's
resources and check that nothing leaks — A's ids answer 404 (exactly like ids that do not
exist), never 403, and no answer carries A's data.

The walk is generic: path parameters are filled with A's real ids by kind, bodies and queries
are built from the route's own schema with A's ids where a field names one. A route whose path
parameter is of no known kind fails the test, so routes added later are covered or noticed.
"""

from __future__ import annotations

import asyncio
import json
import re
import uuid
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

import aiohttp
import asyncpg
import pytest
from chatbeto import session_ids
from chatbeto.settings import GatewaySettings
from pytest_aiohttp import AiohttpClient

from tests.conftest import Client, Factory

MARK = "isolation-secret"
# Auth kinds whose routes serve tenant data; public and signed routes are checked for leaks only.
TENANT_AUTH = ("key", "admin", "optional")
REQUEST_TIMEOUT_SECONDS = 10


@dataclass
class Tenant:
    project: int
    project_name: str
    key: str
    prefix: str
    gpt: str
    session: str
    conversation: int
    sync_job: str
    import_job: str

    def secrets(self) -> list[str]:
        """Strings that must never appear in an answer to the other project."""
        return [
            self.project_name,
            self.key,
            self.prefix,
            self.gpt,
            self.session,
            self.sync_job,
            self.import_job,
            f"{MARK}-title",
            f"{MARK}-content",
        ]


async def make_tenant(db: asyncpg.Connection, factory: Factory, name: str) -> Tenant:
    project = await factory.project(f"{name} project")
    key = await factory.key(project)
    gpt = await factory.gpt(f"{name}-gpt", project_id=project)
    gpt_pk = await db.fetchval("SELECT pk FROM gpts WHERE gpt_id = $1", gpt)
    secret = await session_ids.load_key(db)
    session = session_ids.issue(secret, gpt_pk)
    now = datetime.now(UTC)
    await db.execute(
        "INSERT INTO sessions (id, gpt_pk, usuario_id, timestamp_inicio) VALUES ($1, $2, $3, $4)",
        session,
        gpt_pk,
        f"{name}-user",
        now,
    )
    await db.execute(
        """INSERT INTO events (id, session_id, gpt_pk, usuario_id, tipo, contenido, latency_ms,
               tokens_entrada, tokens_salida, ts) VALUES ($1, $2, $3, $4, 'q', $5, 1, 1, 1, $6)""",
        uuid.uuid4(),
        session,
        gpt_pk,
        f"{name}-user",
        f"{MARK}-content",
        now,
    )
    conversation = await db.fetchval(
        "INSERT INTO conversations (project_id, title) VALUES ($1, $2) RETURNING id",
        project,
        f"{MARK}-title",
    )
    await db.execute(
        "INSERT INTO messages (conversation_id, position, role, content) VALUES ($1, 0, 'user', $2)",
        conversation,
        f"{MARK}-content",
    )
    jobs = []
    for kind in ("sync", "import"):
        job = uuid.uuid4()
        await db.execute(
            "INSERT INTO jobs (id, kind, project_id) VALUES ($1, $2, $3)", job, kind, project
        )
        jobs.append(str(job))
    return Tenant(
        project=project,
        project_name=f"{name} project",
        key=key,
        prefix=key.split("_")[1],
        gpt=gpt,
        session=str(session),
        conversation=conversation,
        sync_job=jobs[0],
        import_job=jobs[1],
    )


def id_for(param: str, path: str, tenant: Tenant) -> str | None:
    """A's id for a path parameter, by the kind its name (or its place in the path) tells."""
    name = param.lower()
    if "session" in name:
        return tenant.session
    if "gpt" in name:
        return tenant.gpt
    if "prefix" in name or "key" in name:
        return tenant.prefix
    if "job" in name:
        return tenant.import_job if "/imports/" in path else tenant.sync_job
    if "conversation" in name or (name == "id" and "/conversations/" in path):
        return str(tenant.conversation)
    if "project" in name:
        return str(tenant.project)
    return None


def ghost_for(param: str, path: str) -> str:
    """An id of the same kind that belongs to nobody."""
    name = param.lower()
    if "session" in name or "job" in name:
        return str(uuid.uuid4())
    if "gpt" in name:
        return f"ghost-{uuid.uuid4().hex[:8]}"
    if "prefix" in name or "key" in name:
        return "0badc0de"
    return "987654321"


# Body and query fields that name a tenant's resource.
FIELD_VALUES = {
    "projectId": lambda t: t.project,
    "project_id": lambda t: t.project,
    "gpt_id": lambda t: t.gpt,
    "sesion_id": lambda t: t.session,
    "session_id": lambda t: t.session,
    "conversationId": lambda t: t.conversation,
    "conversation_id": lambda t: t.conversation,
    "jobId": lambda t: t.sync_job,
}


def resolve(schema: dict[str, Any], components: dict[str, Any]) -> dict[str, Any]:
    while "$ref" in schema:
        schema = components[schema["$ref"].rsplit("/", 1)[1]]
    return schema


SCALARS: dict[str, Any] = {"number": 0.5, "boolean": False, "null": None}


def sample(schema: dict[str, Any], components: dict[str, Any], name: str = "") -> Any:
    """A small value that satisfies `schema` (well enough for the handler to reach its check
    of the resource)."""
    schema = resolve(schema, components)
    for given in ("examples", "enum"):
        if given in schema:
            return schema[given][0]
    if schema.get("default") is not None:
        return schema["default"]
    for union in ("anyOf", "oneOf", "allOf"):
        if union in schema:
            options = [s for s in schema[union] if resolve(s, components).get("type") != "null"]
            return sample(options[0], components, name) if options else None
    return sample_typed(schema, components, name)


def sample_typed(schema: dict[str, Any], components: dict[str, Any], name: str) -> Any:
    kind = schema.get("type")
    if "const" in schema:
        return schema["const"]
    if kind == "object":
        return {
            field: sample(sub, components, field)
            for field, sub in schema.get("properties", {}).items()
            if field in schema.get("required", ())
        }
    if kind == "array":
        item = sample(schema.get("items", {}), components, name)
        return [item] * max(1, schema.get("minItems", 1))
    if kind == "integer":
        return max(1, schema.get("minimum", 1), schema.get("exclusiveMinimum", 0) + 1)
    if kind in SCALARS:
        return SCALARS[kind]
    if name == "role":
        return "user"
    return "x1" if "pattern" in schema else f"probe {name}".strip()


def body_for(op: dict[str, Any], components: dict[str, Any], tenant: Tenant) -> tuple[Any, bool]:
    """(body, names A's resource) from the route's request schema."""
    content = op.get("requestBody", {}).get("content", {})
    if not content:
        return None, False
    media, spec = next(iter(content.items()))
    schema = resolve(spec.get("schema", {}), components)
    body = sample(schema, components)
    refers = False
    if isinstance(body, dict):
        for field in schema.get("properties", {}):
            if field in FIELD_VALUES:
                body[field] = FIELD_VALUES[field](tenant)
                refers = True
        if schema.get("properties", {}).get("messages") is not None:
            body["messages"] = [{"role": "user", "content": "hello"}]
    if media.startswith("multipart/"):
        form = aiohttp.FormData()
        for field, value in (body or {}).items():
            if field != "file":
                form.add_field(field, str(value))
        form.add_field("file", b"[]", filename="conversations.json")
        form.add_field("projectId", str(tenant.project))
        return form, True
    return body, refers


def query_for(op: dict[str, Any], tenant: Tenant) -> tuple[dict[str, str], bool]:
    query = {}
    for param in op.get("parameters", []):
        if param["in"] == "query" and param["name"] in FIELD_VALUES:
            query[param["name"]] = str(FIELD_VALUES[param["name"]](tenant))
    return query, bool(query)


async def call(
    client: Client, method: str, path: str, key: str, body: Any, query: dict[str, str], project: int
) -> tuple[int, str, str]:
    headers = {"X-API-Key": key, "X-Project-Id": str(project)}
    kwargs: dict[str, Any] = {"headers": headers, "params": query}
    if isinstance(body, aiohttp.FormData):
        kwargs["data"] = body
    elif body is not None:
        kwargs["data"] = json.dumps(body)
        headers["Content-Type"] = "application/json"
    async with asyncio.timeout(REQUEST_TIMEOUT_SECONDS):
        resp = await client.request(method, path, **kwargs)
        ctype = resp.headers.get("Content-Type", "")
        if ctype.startswith("text/event-stream"):
            # A stream opened for the wrong tenant is a leak by itself; don't wait on it.
            resp.close()
            return resp.status, "<event-stream>", ctype
        return resp.status, await resp.text(), ctype


@pytest.fixture
def isolation_settings(gateway_settings: GatewaySettings) -> GatewaySettings:
    # Nothing answers model calls here; fail fast instead of waiting a minute.
    return gateway_settings.model_copy(
        update={"openai_timeout": 2.0, "rate_limit": "100000/1m", "ingest_rate_limit": "100000/1m"}
    )


@dataclass
class Walk:
    uncovered: list[str]
    problems: list[str]
    walked: int


async def walk(gateway: Client, a: Tenant, b: Tenant) -> Walk:
    """Every documented route, called with B's key against A's resources."""
    spec = await (await gateway.get("/openapi.json")).json()
    components = spec.get("components", {}).get("schemas", {})
    uncovered: list[str] = []
    problems: list[str] = []
    walked = 0
    for path, ops in spec["paths"].items():
        params = re.findall(r"{([^}]+)}", path)
        for method, op in ops.items():
            auth = op_auth(op)
            tenant_route = auth and path.startswith(("/api/", "/v1/"))
            ids = {p: id_for(p, path, a) for p in params}
            if tenant_route and any(v is None for v in ids.values()):
                uncovered.append(f"{method.upper()} {path}")
                continue
            filled = fill(path, {p: v or "probe" for p, v in ids.items()})
            body, body_refers = body_for(op, components, a)
            query, query_refers = query_for(op, a)
            status, text, _ = await call(gateway, method, filled, b.key, body, query, a.project)
            walked += 1
            where = f"{method.upper()} {filled} -> {status}"
            # A value the request itself sent may be echoed ("GPT 'x' is not registered").
            sent = f"{filled} {body if not isinstance(body, aiohttp.FormData) else ''} {query}"
            leaked = [s for s in a.secrets() if s in text and s not in sent]
            if leaked:
                problems.append(f"{where}: answer carries A's {leaked}")
            if status == 403:
                problems.append(f"{where}: 403 confirms the resource exists")
            if status == 500:
                problems.append(f"{where}: 500")
            if not tenant_route:
                continue
            if params:
                ghost = fill(path, {p: ghost_for(p, path) for p in params})
                g_body, _ = body_for(op, components, b) if body is not None else (None, False)
                g_status, _, _ = await call(gateway, method, ghost, b.key, g_body, {}, b.project)
                if status != 404 and status != g_status:
                    problems.append(f"{where}: a missing id answers {g_status}")
                if 200 <= status < 300:
                    problems.append(f"{where}: 2xx on A's resource")
            elif (body_refers or query_refers) and 200 <= status < 300:
                problems.append(f"{where}: 2xx for a request naming A's resource")

    return Walk(uncovered, problems, walked)


async def test_no_route_leaks_another_projects_resources(
    aiohttp_client: AiohttpClient,
    isolation_settings: GatewaySettings,
    db: asyncpg.Connection,
    factory: Factory,
) -> None:
    from chatbeto_gateway.app import create_app

    gateway = await aiohttp_client(create_app(isolation_settings))
    a = await make_tenant(db, factory, "alpha-tenant")
    b = await make_tenant(db, factory, "beta-tenant")
    before = await snapshot(db, a)
    result = await walk(gateway, a, b)
    assert not result.uncovered, f"routes with path params of no known kind: {result.uncovered}"
    assert not result.problems, "\n".join(result.problems)
    assert result.walked >= 10
    # Nothing of A's changed, and B's key is still only B's.
    assert await snapshot(db, a) == before
    resp = await gateway.get("/api/gpts", headers={"X-API-Key": a.key})
    assert resp.status == 200


def op_auth(op: dict[str, Any]) -> bool:
    """True for a route that takes an API key (key, admin or optional)."""
    security = op.get("security", [])
    return any(s for s in security)


def fill(path: str, values: dict[str, str]) -> str:
    for name, value in values.items():
        path = re.sub(r"{" + re.escape(name) + r"(:[^}]*)?}", value, path)
    return path


async def snapshot(db: asyncpg.Connection, tenant: Tenant) -> tuple[Any, ...]:
    return (
        await db.fetchval(
            "SELECT count(*) FROM conversations WHERE project_id = $1", tenant.project
        ),
        await db.fetchval(
            "SELECT count(*) FROM messages m JOIN conversations c ON c.id = m.conversation_id "
            "WHERE c.project_id = $1",
            tenant.project,
        ),
        await db.fetchval("SELECT count(*) FROM gpts WHERE project_id = $1", tenant.project),
        await db.fetchval(
            "SELECT count(*) FROM api_keys WHERE project_id = $1 AND revoked_at IS NULL",
            tenant.project,
        ),
        await db.fetch(
            "SELECT id, state FROM jobs WHERE project_id = $1 ORDER BY id", tenant.project
        ),
    )


async def test_explicit_cross_tenant_ingest(
    gateway: Client, db: asyncpg.Connection, factory: Factory
) -> None:
    """The metrics write routes name A's resources in the body, item by item in a batch."""
    a = await make_tenant(db, factory, "alpha-ingest")
    b = await make_tenant(db, factory, "beta-ingest")
    h = {"X-API-Key": b.key}
    event = {
        "sesion_id": a.session,
        "tipo": "q",
        "contenido": "x",
        "latency_ms": 1,
        "tokens_entrada": 1,
        "tokens_salida": 1,
    }
    resp = await gateway.post("/api/events", json=event, headers=h)
    assert resp.status == 404
    resp = await gateway.post("/api/events/batch", json={"events": [event]}, headers=h)
    assert resp.status == 207
    assert (await resp.json())["results"][0]["status"] == 404
    resp = await gateway.post("/api/sessions", json={"gpt_id": a.gpt, "usuario_id": "u"}, headers=h)
    assert resp.status == 404
    resp = await gateway.get("/api/gpts", headers=h)
    assert a.gpt not in await resp.text()
    for path in (f"/api/sessions/{a.session}", f"/api/gpts/{a.gpt}/stats"):
        resp = await gateway.get(path, headers=h)
        assert resp.status == 404, path
        assert (await resp.json())["error"]["code"].endswith("not_found")


async def test_the_walk_catches_a_leak(
    aiohttp_client: AiohttpClient,
    isolation_settings: GatewaySettings,
    db: asyncpg.Connection,
    factory: Factory,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """The walk itself works: with the project check broken, it reports the leaks."""
    from chatbeto_gateway.access.auth import Principal
    from chatbeto_gateway.app import create_app

    monkeypatch.setattr(Principal, "can_see_project", lambda self, project_id: True)
    gateway = await aiohttp_client(create_app(isolation_settings))
    a = await make_tenant(db, factory, "alpha-leaky")
    b = await make_tenant(db, factory, "beta-leaky")
    result = await walk(gateway, a, b)
    assert any("/api/sessions/" in p for p in result.problems), result.problems
    assert any("/stats" in p for p in result.problems), result.problems


def test_unknown_path_params_are_reported() -> None:
    tenant = Tenant(1, "p", "k", "pfx", "g", "s", 2, "j1", "j2")
    assert id_for("widgetId", "/api/v1/widgets/{widgetId}", tenant) is None
    assert id_for("id", "/api/v1/openai/conversations/{id}", tenant) == "2"
    assert id_for("jobId", "/api/v1/imports/{jobId}", tenant) == "j2"
