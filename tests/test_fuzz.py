"""Hostile input over every route of `/openapi.json`: never a 500, and never a 2xx for input that
is wrong.

Schema-driven: each route's request schema gives a valid-looking body, then every field is
swapped for hostile values (wrong types, NUL bytes, huge numbers, deep nesting, ids that are not
ids); whole bodies are replaced by invalid UTF-8, non-objects and deep nesting; path parameters
and query values get non-ids. Hypothesis adds random JSON bodies per route.
"""

from __future__ import annotations

import json
import re
import uuid
from typing import Any

import pytest
from chatbeto.settings import GatewaySettings
from chatbeto_openai_worker.worker import OpenAIWorker
from hypothesis import HealthCheck, Phase, given, settings
from hypothesis import strategies as st
from pytest_aiohttp import AiohttpClient

from tests.conftest import Client, Factory
from tests.test_isolation import fill, resolve, sample

RANDOM_BODIES_PER_ROUTE = 25
HUGE = 10**30
DEEP = 100_000

# One value of each JSON type: a field gets every one its schema does not allow (must be 4xx).
BY_TYPE: dict[str, Any] = {
    "string": "x",
    "integer": 12345,
    "number": 1.5,
    "boolean": True,
    "array": [1, 2, 3],
    "object": {"$gt": ""},
    "null": None,
}
# Types that pydantic's JSON mode accepts for another (an int is a fine number, true a fine int).
ALSO_ACCEPTED = {"number": {"integer", "boolean"}, "integer": {"boolean"}}
# Values that must never reach a 500 and never be taken: numbers past any column.
OUT_OF_RANGE = [HUGE, -HUGE]
# Strings Postgres can't store or UTF-8 can't encode: never a 500 (a 2xx may be fine where
# nothing is stored, e.g. a model name passed upstream).
UNSTORABLE = ["\x00", "a\x00b", "\ud800"]
# Found by this test in routes owned elsewhere, reported to their owners; listed so the suite
# stays green for everything else. Remove an entry when its route is fixed.
KNOWN_ISSUES: set[str] = set()


def unexpected(problems: list[str]) -> list[str]:
    return [p for p in problems if not any(known in p for known in KNOWN_ISSUES)]


HOSTILE_BODIES: list[bytes] = [
    b"\xff\xfe\xfd",
    b'{"a": "\xc3\x28"}',
    b"[" * DEEP + b"]" * DEEP,
    b'{"a":' * 5000 + b"1" + b"}" * 5000,
    b"null",
    b"[]",
    b"42",
    b'"text"',
    b"{",
    b"",
    b'{"a": 1e999999}',
    b'{"a": NaN}',
]
HOSTILE_IDS = [
    "..%2F..%2Fetc%2Fpasswd",
    "%00",
    "'%20OR%201=1--",
    "-1",
    "0",
    "9" * 40,
    "x" * 3000,
    "%F0%9F%92%A9",
    "%FF%FE",
    str(uuid.UUID(int=0)),
]
HOSTILE_QUERY = ["-1", "9" * 40, "\x00", "abc", "2026-13-45T99:99:99Z", "x" * 3000, "%", ""]


@pytest.fixture
async def fuzz_gateway(
    aiohttp_client: AiohttpClient,
    openai_gateway_settings: GatewaySettings,
    openai_worker: OpenAIWorker,
    factory: Factory,
) -> tuple[Any, str, dict[str, Any]]:
    """The gateway with an openai-worker and the local OpenAI stub behind it, so a request that
    passes validation goes all the way; the limiter kept out of the way of the volume."""
    from chatbeto_gateway.app import create_app

    settings_ = openai_gateway_settings.model_copy(
        update={
            "rate_limit": "10000000/1m",
            "ingest_rate_limit": "10000000/1m",
            "openai_timeout": 3.0,
        }
    )
    client = await aiohttp_client(create_app(settings_))
    admin = await factory.key(admin=True)
    spec = await (await client.get("/openapi.json")).json()
    return client, admin, spec


def json_types(schema: dict[str, Any], components: dict[str, Any]) -> set[str]:
    """The JSON types a schema allows; empty when it says nothing (anything goes)."""
    schema = resolve(schema, components)
    if "type" in schema:
        kinds = schema["type"]
        return set(kinds) if isinstance(kinds, list) else {kinds}
    if "const" in schema or "enum" in schema:
        values = schema.get("enum", [schema.get("const")])
        return {type_name(v) for v in values}
    out: set[str] = set()
    for union in ("anyOf", "oneOf", "allOf"):
        for option in schema.get(union, []):
            inner = json_types(option, components)
            if not inner:
                return set()
            out |= inner
    return out


def type_name(value: Any) -> str:
    for name, kind in (("boolean", bool), ("integer", int), ("number", float), ("string", str)):
        if isinstance(value, kind):
            return name
    return "array" if isinstance(value, list) else "object" if isinstance(value, dict) else "null"


def hostile_values(schema: dict[str, Any], components: dict[str, Any]) -> list[tuple[Any, bool]]:
    """(value, must be refused) for one field."""
    allowed = json_types(schema, components)
    if not allowed:
        return []
    accepted_types = allowed | {t for a in allowed for t in ALSO_ACCEPTED.get(a, ())}
    out = [(value, True) for kind, value in BY_TYPE.items() if kind not in accepted_types]
    if allowed & {"integer", "number"}:
        out += [(value, True) for value in OUT_OF_RANGE]
    if "string" in allowed:
        out += [(value, False) for value in UNSTORABLE]
    return out


def accepted(status: int, text: str) -> bool:
    """A 2xx that took the input; a 207 whose every item was refused took nothing."""
    if status == 207:
        return any(r.get("status", 0) < 300 for r in json.loads(text).get("results", []))
    return 200 <= status < 300


def operations(spec: dict[str, Any]) -> list[tuple[str, str, dict[str, Any]]]:
    return [
        (path, method, op)
        for path, ops in spec["paths"].items()
        for method, op in ops.items()
        if op.get("security")  # keyed routes; public/signed ones are fuzzed without a key too
        or op.get("requestBody")
        or "{" in path
    ]


def sample_path(path: str) -> str:
    return fill(path, {p: "probe" for p in re.findall(r"{([^}:]+)", path)})


async def send(
    client: Client, method: str, path: str, key: str, body: bytes | None, query: Any = None
) -> tuple[int, str]:
    headers = {"X-API-Key": key, "Content-Type": "application/json"}
    resp = await client.request(method, path, data=body, headers=headers, params=query)
    if resp.headers.get("Content-Type", "").startswith("text/event-stream"):
        resp.close()
        return resp.status, ""
    return resp.status, await resp.text()


def json_body(op: dict[str, Any], components: dict[str, Any]) -> tuple[dict[str, Any], Any]:
    content = op.get("requestBody", {}).get("content", {})
    spec: dict[str, Any] = content.get("application/json") or next(iter(content.values()), {})
    schema = resolve(spec.get("schema", {}), components)
    return schema, sample(schema, components)


async def test_hostile_fields_never_500_and_never_2xx(
    fuzz_gateway: tuple[Any, str, dict[str, Any]],
) -> None:
    client, admin, spec = fuzz_gateway
    components = spec.get("components", {}).get("schemas", {})
    problems: list[str] = []
    tried = 0
    for path, method, op in operations(spec):
        if "requestBody" not in op:
            continue
        schema, body = json_body(op, components)
        if not isinstance(body, dict):
            continue
        target = sample_path(path)
        for field, sub in schema.get("properties", {}).items():
            for value, must_refuse in hostile_values(sub, components):
                raw = json.dumps({**body, field: value}).encode("utf-8", "surrogatepass")
                status, text = await send(client, method, target, admin, raw)
                tried += 1
                if status == 500 or (must_refuse and (status > 500 or accepted(status, text))):
                    problems.append(
                        f"{method.upper()} {path} {field}={value!r:.40}: {status} {text:.200}"
                    )
    assert tried > 50
    assert not unexpected(problems), "\n".join(unexpected(problems))


async def test_hostile_bodies_never_500_and_never_2xx(
    fuzz_gateway: tuple[Any, str, dict[str, Any]],
) -> None:
    client, admin, spec = fuzz_gateway
    components = spec.get("components", {}).get("schemas", {})
    problems: list[str] = []
    for path, method, op in operations(spec):
        if "requestBody" not in op:
            continue
        schema, _ = json_body(op, components)
        for raw in HOSTILE_BODIES:
            if raw == b"" and not schema.get("required"):
                continue  # an empty body is a valid one where every field is optional
            status, text = await send(client, method, sample_path(path), admin, raw)
            if status >= 500 or accepted(status, text):
                problems.append(f"{method.upper()} {path} body={raw[:30]!r}: {status} {text:.200}")
            if status == 400 and path.startswith("/api/") and not path.startswith("/api/v1/"):
                assert json.loads(text)["error"]["code"]
    assert not unexpected(problems), "\n".join(unexpected(problems))


async def test_ids_that_are_not_ids(fuzz_gateway: tuple[Any, str, dict[str, Any]]) -> None:
    client, admin, spec = fuzz_gateway
    components = spec.get("components", {}).get("schemas", {})
    problems: list[str] = []
    for path, method, op in operations(spec):
        params = re.findall(r"{([^}:]+)", path)
        if not params:
            continue
        raw = None
        if "requestBody" in op:
            raw = json.dumps(json_body(op, components)[1]).encode()
        for bad in HOSTILE_IDS:
            target = fill(path, dict.fromkeys(params, bad))
            status, text = await send(client, method, target, admin, raw)
            if status >= 500 or 200 <= status < 300:
                problems.append(f"{method.upper()} {target[:80]}: {status} {text:.200}")
    assert not unexpected(problems), "\n".join(unexpected(problems))


async def test_hostile_query_values(fuzz_gateway: tuple[Any, str, dict[str, Any]]) -> None:
    client, admin, spec = fuzz_gateway
    problems: list[str] = []
    for path, ops in spec["paths"].items():
        for method, op in ops.items():
            names = [p["name"] for p in op.get("parameters", []) if p["in"] == "query"]
            for name in names:
                for bad in HOSTILE_QUERY:
                    status, _ = await send(
                        client, method, sample_path(path), admin, None, {name: bad}
                    )
                    if status >= 500:
                        problems.append(f"{method.upper()} {path}?{name}={bad[:20]!r}: {status}")
    assert not unexpected(problems), "\n".join(unexpected(problems))


JSON_VALUES = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats(allow_nan=False) | st.text(),
    lambda inner: (
        st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=12), inner, max_size=4)
    ),
    max_leaves=12,
)


def random_bodies(field_names: list[str], count: int) -> list[Any]:
    """Random JSON, half of it shaped like the route's body (its own field names, random
    values). Collected from Hypothesis up front, then sent from the test's event loop."""
    shaped = st.fixed_dictionaries({}, optional=dict.fromkeys(field_names, JSON_VALUES))
    out: list[Any] = []

    @settings(
        max_examples=count,
        database=None,
        phases=[Phase.generate],
        suppress_health_check=list(HealthCheck),
        deadline=None,
    )
    @given(JSON_VALUES | shaped)
    def collect(value: Any) -> None:
        out.append(value)

    collect()
    return out


async def test_random_json_never_500(fuzz_gateway: tuple[Any, str, dict[str, Any]]) -> None:
    client, admin, spec = fuzz_gateway
    components = spec.get("components", {}).get("schemas", {})
    problems: list[str] = []
    for path, method, op in operations(spec):
        if "requestBody" not in op:
            continue
        schema, _ = json_body(op, components)
        for body in random_bodies(list(schema.get("properties", {})), RANDOM_BODIES_PER_ROUTE):
            raw = json.dumps(body).encode("utf-8", "surrogatepass")
            for key in (admin, ""):
                status, text = await send(client, method, sample_path(path), key, raw)
                # 502-504 are the upstream's (no model answers here); 500 is ours.
                if status == 500:
                    problems.append(f"{method.upper()} {path} {body!r:.80}: {text:.200}")
    assert not unexpected(problems), "\n".join(unexpected(problems))


@pytest.mark.parametrize(
    "body",
    [
        {"id": "nul-name", "name": "a\u0000b"},
        {"id": "huge-project", "name": "x", "projectId": HUGE},
    ],
)
async def test_values_postgres_cannot_hold_are_422(
    gateway: Client, factory: Factory, body: Any
) -> None:
    """The error middleware's last line of defence: a value a handler let through that
    Postgres refuses is the caller's 422, not our 500."""
    admin = await factory.key(admin=True)
    resp = await gateway.post("/api/gpts", json=body, headers={"X-API-Key": admin})
    assert resp.status == 422
    assert (await resp.json())["error"]["code"] == "validation_error"
