"""Contract section 3.2 through the real gateway, broker and metrics-ingest: every status code."""

from __future__ import annotations

import io
import uuid
from datetime import UTC, datetime
from typing import Any

import asyncpg
import pytest

from tests.conftest import Client, Factory, make_event, wait_for

pytestmark = pytest.mark.usefixtures("ingest")


@pytest.fixture
async def tenant(factory: Factory) -> dict[str, Any]:
    """A project with a key and a keyed GPT, and a second project with its own key."""
    project = await factory.project("alpha")
    other = await factory.project("beta")
    return {
        "project": project,
        "key": await factory.key(project),
        "gpt": await factory.gpt(project_id=project),
        "other_project": other,
        "other_key": await factory.key(other),
        "admin": await factory.key(admin=True),
    }


def h(key: str) -> dict[str, str]:
    return {"X-API-Key": key}


async def new_session(gateway: Client, gpt: str, key: str | None = None, user: str = "u1") -> str:
    resp = await gateway.post(
        "/api/sessions", json={"gpt_id": gpt, "usuario_id": user}, headers=h(key) if key else {}
    )
    assert resp.status == 201, await resp.text()
    body = await resp.json()
    return str(body["id"])


async def stored_events(db: asyncpg.Connection, session_id: str) -> int:
    return int(
        await db.fetchval("SELECT count(*) FROM events WHERE session_id = $1::uuid", session_id)
    )


# --- GPT registration -----------------------------------------------------------------------


async def test_register_gpt_with_project_key(gateway: Client, tenant: dict[str, Any]) -> None:
    resp = await gateway.post(
        "/api/gpts", json={"id": "devops-expert", "name": "DevOps"}, headers=h(tenant["key"])
    )
    assert resp.status == 201
    body = await resp.json()
    assert body["id"] == "devops-expert" and body["projectId"] == tenant["project"]
    listing = await (await gateway.get("/api/gpts", headers=h(tenant["key"]))).json()
    assert {g["id"] for g in listing} >= {"devops-expert", tenant["gpt"], "chatbeto"}
    # The other project does not see it.
    other = await (await gateway.get("/api/gpts", headers=h(tenant["other_key"]))).json()
    assert "devops-expert" not in {g["id"] for g in other}


async def test_register_gpt_errors(gateway: Client, tenant: dict[str, Any]) -> None:
    assert (await gateway.post("/api/gpts", json={"id": "x", "name": "X"})).status == 401
    resp = await gateway.post(
        "/api/gpts", json={"id": tenant["gpt"], "name": "dup"}, headers=h(tenant["key"])
    )
    assert resp.status == 409
    resp = await gateway.post(
        "/api/gpts", json={"id": "bad id!", "name": ""}, headers=h(tenant["key"])
    )
    assert resp.status == 422
    fields = {d["field"] for d in (await resp.json())["error"]["details"]}
    assert fields == {"id", "name"}
    resp = await gateway.post(
        "/api/gpts",
        json={"id": "ok", "name": "nul\u0000", "projectId": 2**63, "keylessIngest": 1},
        headers=h(tenant["admin"]),
    )
    assert resp.status == 422
    fields = {d["field"] for d in (await resp.json())["error"]["details"]}
    assert fields == {"name", "projectId", "keylessIngest"}
    resp = await gateway.post("/api/gpts", data=b"{not json", headers=h(tenant["key"]))
    assert resp.status == 400
    assert (await resp.json())["error"]["code"] == "invalid_json"
    # A project key cannot register into another project; that project "does not exist" for it.
    resp = await gateway.post(
        "/api/gpts",
        json={"id": "y", "name": "Y", "projectId": tenant["other_project"]},
        headers=h(tenant["key"]),
    )
    assert resp.status == 404
    resp = await gateway.post(
        "/api/gpts", json={"id": "z", "name": "Z", "projectId": 999999}, headers=h(tenant["admin"])
    )
    assert resp.status == 404
    assert (await gateway.get("/api/gpts")).status == 401


# --- sessions -------------------------------------------------------------------------------


async def test_session_created_and_read_back(
    gateway: Client, tenant: dict[str, Any], db: asyncpg.Connection
) -> None:
    resp = await gateway.post(
        "/api/sessions",
        json={
            "gpt_id": tenant["gpt"],
            "usuario_id": "ana",
            "timestamp_inicio": "2026-03-01T10:00:00+02:00",
        },
        headers=h(tenant["key"]),
    )
    assert resp.status == 201
    body = await resp.json()
    assert uuid.UUID(body["id"]) and body["gpt_id"] == tenant["gpt"] and body["usuario_id"] == "ana"
    assert datetime.fromisoformat(body["timestamp_inicio"]) == datetime(2026, 3, 1, 8, tzinfo=UTC)

    async def read() -> Any:
        r = await gateway.get(f"/api/sessions/{body['id']}", headers=h(tenant["key"]))
        return await r.json() if r.status == 200 else None

    session = await wait_for(read)
    assert session["usuario_id"] == "ana" and session["events"] == []


@pytest.mark.parametrize(
    ("payload", "field"),
    [
        ({"usuario_id": "u"}, "gpt_id"),
        ({"gpt_id": "GPT", "usuario_id": ""}, "usuario_id"),
        (
            {"gpt_id": "GPT", "usuario_id": "u", "timestamp_inicio": "2026-01-01T10:00:00"},
            "timestamp_inicio",
        ),
        ({"gpt_id": "GPT", "usuario_id": "u", "timestamp_inicio": "yesterday"}, "timestamp_inicio"),
        # What Postgres cannot hold is refused here, not by a worker after the 201.
        ({"gpt_id": "GPT", "usuario_id": "poison\u0000x"}, "usuario_id"),
        ({"gpt_id": "GPT\u0000", "usuario_id": "u"}, "gpt_id"),
        (
            {"gpt_id": "GPT", "usuario_id": "u", "timestamp_inicio": "9999-12-31T23:59:59-14:00"},
            "timestamp_inicio",
        ),
        (
            {"gpt_id": "GPT", "usuario_id": "u", "timestamp_inicio": "0001-01-01T00:00:00Z"},
            "timestamp_inicio",
        ),
        ({"gpt_id": "GPT", "usuario_id": "u", "timestamp_inicio": 1767225600}, "timestamp_inicio"),
        ({"gpt_id": "GPT", "usuario_id": "u", "extra": 1}, "extra"),
    ],
)
async def test_session_bad_data_is_422_naming_the_field(
    gateway: Client, tenant: dict[str, Any], payload: dict[str, Any], field: str
) -> None:
    payload = {k: (tenant["gpt"] if v == "GPT" else v) for k, v in payload.items()}
    resp = await gateway.post("/api/sessions", json=payload, headers=h(tenant["key"]))
    assert resp.status == 422
    body = await resp.json()
    assert body["error"]["code"] == "validation_error"
    assert field in {d["field"] for d in body["error"]["details"]}


async def test_session_unknown_gpt_and_auth(gateway: Client, tenant: dict[str, Any]) -> None:
    resp = await gateway.post(
        "/api/sessions", json={"gpt_id": "nope", "usuario_id": "u"}, headers=h(tenant["key"])
    )
    assert resp.status == 404
    assert (await resp.json())["error"]["code"] == "gpt_not_found"
    # Another project's GPT is "not found" too, never 403.
    resp = await gateway.post(
        "/api/sessions",
        json={"gpt_id": tenant["gpt"], "usuario_id": "u"},
        headers=h(tenant["other_key"]),
    )
    assert resp.status == 404
    # A keyed GPT without a key, and a wrong key.
    resp = await gateway.post("/api/sessions", json={"gpt_id": tenant["gpt"], "usuario_id": "u"})
    assert resp.status == 401
    resp = await gateway.post(
        "/api/sessions",
        json={"gpt_id": tenant["gpt"], "usuario_id": "u"},
        headers={"Authorization": "Bearer cbk_nope_nope"},
    )
    assert resp.status == 401


async def test_body_over_one_mib_is_413(gateway: Client, tenant: dict[str, Any]) -> None:
    big = b'{"gpt_id": "' + b"x" * (1024 * 1024 + 10) + b'"}'
    resp = await gateway.post("/api/sessions", data=io.BytesIO(big), headers=h(tenant["key"]))
    assert resp.status == 413
    assert (await resp.json())["error"]["code"] == "payload_too_large"


# --- events ---------------------------------------------------------------------------------


async def test_event_accepted_and_stored(
    gateway: Client, tenant: dict[str, Any], db: asyncpg.Connection
) -> None:
    session = await new_session(gateway, tenant["gpt"], tenant["key"])
    resp = await gateway.post(
        "/api/events",
        json=make_event(session, timestamp="2026-05-01T12:00:00Z"),
        headers={**h(tenant["key"]), "X-Request-Id": "req-abc-123"},
    )
    assert resp.status == 202
    assert resp.headers["X-Request-Id"] == "req-abc-123"
    event_id = (await resp.json())["id"]
    row = await wait_for(lambda: db.fetchrow("SELECT * FROM events WHERE id = $1::uuid", event_id))
    assert row["tipo"] == "query" and row["contenido"] == "¿Cómo despliego?"
    assert (row["latency_ms"], row["tokens_entrada"], row["tokens_salida"]) == (120, 10, 42)
    assert row["request_id"] == "req-abc-123"  # the request id travels with the message


@pytest.mark.parametrize(
    ("overrides", "field"),
    [
        ({"tipo": "Not Valid"}, "tipo"),
        ({"tipo": "x" * 65}, "tipo"),
        ({"tipo": ""}, "tipo"),
        ({"latency_ms": -1}, "latency_ms"),
        ({"latency_ms": "12"}, "latency_ms"),
        ({"latency_ms": 1.5}, "latency_ms"),
        ({"tokens_entrada": None}, "tokens_entrada"),
        ({"tokens_salida": 10**12}, "tokens_salida"),
        ({"contenido": "x" * (32 * 1024 + 1)}, "contenido"),
        ({"contenido": "ñ" * (16 * 1024 + 1)}, "contenido"),
        ({"contenido": "nul\u0000byte"}, "contenido"),
        ({"timestamp": "2026-01-01T00:00:00"}, "timestamp"),
        ({"timestamp": "not a time"}, "timestamp"),
        ({"timestamp": "9999-12-31T23:59:59-14:00"}, "timestamp"),
        ({"timestamp": "0001-01-01T00:00:00Z"}, "timestamp"),
        ({"timestamp": 1767225600}, "timestamp"),
        ({"timestamp": 1767225600.5}, "timestamp"),
        ({"tipo": "nul\u0000"}, "tipo"),
        ({"latency_ms": 2**31}, "latency_ms"),
        ({"latency_ms": True}, "latency_ms"),
        ({"sesion_id": "not-a-uuid"}, "sesion_id"),
        ({"id": "123"}, "id"),
    ],
)
async def test_event_bad_data_is_422_naming_the_field(
    gateway: Client, tenant: dict[str, Any], overrides: dict[str, Any], field: str
) -> None:
    session = await new_session(gateway, tenant["gpt"], tenant["key"])
    resp = await gateway.post(
        "/api/events", json=make_event(session, **overrides), headers=h(tenant["key"])
    )
    assert resp.status == 422, await resp.text()
    assert field in {d["field"] for d in (await resp.json())["error"]["details"]}


async def test_event_contenido_of_exactly_32_kib_is_accepted(
    gateway: Client, tenant: dict[str, Any]
) -> None:
    session = await new_session(gateway, tenant["gpt"], tenant["key"])
    resp = await gateway.post(
        "/api/events", json=make_event(session, contenido="x" * 32 * 1024), headers=h(tenant["key"])
    )
    assert resp.status == 202


async def test_event_for_unknown_or_foreign_session_is_404(
    gateway: Client, tenant: dict[str, Any]
) -> None:
    resp = await gateway.post(
        "/api/events", json=make_event(str(uuid.uuid4())), headers=h(tenant["key"])
    )
    assert resp.status == 404
    assert (await resp.json())["error"]["code"] == "session_not_found"
    session = await new_session(gateway, tenant["gpt"], tenant["key"])
    # A forged id: our layout, a wrong MAC.
    forged = uuid.UUID(int=uuid.UUID(session).int ^ 1)
    resp = await gateway.post("/api/events", json=make_event(str(forged)), headers=h(tenant["key"]))
    assert resp.status == 404
    resp = await gateway.post(
        "/api/events", json=make_event(session), headers=h(tenant["other_key"])
    )
    assert resp.status == 404
    assert (await gateway.post("/api/events", json=make_event(session))).status == 401


async def test_event_bad_json_is_400(gateway: Client, tenant: dict[str, Any]) -> None:
    for body in (b"{", b"\xff\xfe", b""):
        resp = await gateway.post("/api/events", data=body, headers=h(tenant["key"]))
        assert resp.status == 400, body


async def test_retried_event_id_is_stored_once(
    gateway: Client, tenant: dict[str, Any], db: asyncpg.Connection
) -> None:
    session = await new_session(gateway, tenant["gpt"], tenant["key"])
    event = make_event(session, id=str(uuid.uuid4()))
    for _ in range(3):
        resp = await gateway.post("/api/events", json=event, headers=h(tenant["key"]))
        assert resp.status == 202
        assert (await resp.json())["id"] == event["id"]
    marker = make_event(session)
    resp = await gateway.post("/api/events", json=marker, headers=h(tenant["key"]))
    marker_id = (await resp.json())["id"]
    # Once the later event is stored, the retries before it have been processed too.
    await wait_for(lambda: db.fetchval("SELECT 1 FROM events WHERE id = $1::uuid", marker_id))
    assert await db.fetchval("SELECT count(*) FROM events WHERE id = $1::uuid", event["id"]) == 1


async def test_event_right_after_its_session_is_never_refused(
    gateway: Client, tenant: dict[str, Any], db: asyncpg.Connection
) -> None:
    """The ordering promise, in a tight loop: the event follows the session's 201 at once."""
    accepted = []
    for n in range(150):
        session = await new_session(gateway, tenant["gpt"], tenant["key"], user=f"user{n % 7}")
        resp = await gateway.post("/api/events", json=make_event(session), headers=h(tenant["key"]))
        assert resp.status == 202, await resp.text()
        accepted.append((await resp.json())["id"])

    async def all_stored() -> bool:
        n = await db.fetchval("SELECT count(*) FROM events WHERE id = ANY($1::uuid[])", accepted)
        return bool(n == len(accepted))

    await wait_for(all_stored, timeout=30)


# --- batch ----------------------------------------------------------------------------------


async def test_batch_partial_success(
    gateway: Client, tenant: dict[str, Any], db: asyncpg.Connection
) -> None:
    session = await new_session(gateway, tenant["gpt"], tenant["key"])
    events = [
        make_event(session),
        make_event(session, tipo="BAD TYPE"),
        make_event(str(uuid.uuid4())),
        make_event(session, latency_ms=-5),
        "not an object",
        make_event(session, tipo="feedback"),
        make_event(session, timestamp="9999-12-31T23:59:59-14:00"),
        make_event(session, contenido="a\u0000b"),
    ]
    resp = await gateway.post(
        "/api/events/batch", json={"events": events}, headers=h(tenant["key"])
    )
    assert resp.status == 207
    results = (await resp.json())["results"]
    assert [r["index"] for r in results] == list(range(8))
    assert [r["status"] for r in results] == [202, 422, 404, 422, 422, 202, 422, 422]
    assert results[1]["error"]["details"][0]["field"] == "tipo"
    assert results[6]["error"]["details"][0]["field"] == "timestamp"
    assert results[7]["error"]["details"][0]["field"] == "contenido"
    ids = [r["id"] for r in results if r["status"] == 202]

    async def stored() -> bool:
        return bool(
            await db.fetchval("SELECT count(*) FROM events WHERE id = ANY($1::uuid[])", ids) == 2
        )

    await wait_for(stored)
    assert await stored_events(db, session) == 2


async def test_batch_of_valid_events_refuses_only_unknown_sessions(
    gateway: Client, tenant: dict[str, Any], factory: Factory, db: asyncpg.Connection
) -> None:
    # Every item valid: the whole-body path, where each session is checked once per batch.
    session = await new_session(gateway, tenant["gpt"], tenant["key"])
    other = await factory.project()
    foreign_gpt = await factory.gpt("foreign-gpt", other)
    foreign = await new_session(gateway, foreign_gpt, await factory.key(other))
    unknown = str(uuid.uuid4())
    events = [
        make_event(session),
        make_event(unknown),
        make_event(session, tipo="feedback"),
        make_event(foreign),
        make_event(unknown),
        make_event(session, id=str(uuid.uuid4())),
    ]
    resp = await gateway.post(
        "/api/events/batch", json={"events": events, "note": "ignored"}, headers=h(tenant["key"])
    )
    assert resp.status == 207
    results = (await resp.json())["results"]
    assert [r["status"] for r in results] == [202, 404, 202, 404, 404, 202]
    assert {r["error"]["code"] for r in results if r["status"] == 404} == {"session_not_found"}
    assert results[5]["id"] == events[5]["id"]
    ids = [r["id"] for r in results if r["status"] == 202]
    assert len(set(ids)) == 3 and all(uuid.UUID(i).version == 4 for i in ids)

    async def stored() -> bool:
        return await stored_events(db, session) == 3

    await wait_for(stored)
    assert await db.fetchval("SELECT count(*) FROM events WHERE id = ANY($1::uuid[])", ids) == 3
    assert await stored_events(db, foreign) == 0


async def test_batch_limits_and_shape(gateway: Client, tenant: dict[str, Any]) -> None:
    session = await new_session(gateway, tenant["gpt"], tenant["key"])
    too_many = {"events": [make_event(session, contenido="")] * 1001}
    resp = await gateway.post("/api/events/batch", json=too_many, headers=h(tenant["key"]))
    assert resp.status == 422
    body: object
    for body in ({"events": "nope"}, {}, []):
        resp = await gateway.post("/api/events/batch", json=body, headers=h(tenant["key"]))
        assert resp.status == 422
    resp = await gateway.post("/api/events/batch", data=b"[", headers=h(tenant["key"]))
    assert resp.status == 400
    resp = await gateway.post(
        "/api/events/batch", json={"events": [make_event(session)] * 1000}, headers=h(tenant["key"])
    )
    assert resp.status == 207


# --- keyless ingest, keyed reads ------------------------------------------------------------


async def test_keyless_gpt_ingests_without_key_but_reads_need_one(
    gateway: Client, tenant: dict[str, Any], factory: Factory, db: asyncpg.Connection
) -> None:
    gpt = await factory.gpt("open-gpt", tenant["project"], keyless=True)
    session = await new_session(gateway, gpt)  # no key, as the source document's clients send
    resp = await gateway.post("/api/events", json=make_event(session))
    assert resp.status == 202
    resp = await gateway.post("/api/events/batch", json={"events": [make_event(session)]})
    assert resp.status == 207
    assert (await resp.json())["results"][0]["status"] == 202
    await wait_for(lambda: stored_events(db, session))
    assert (await gateway.get(f"/api/sessions/{session}")).status == 401
    assert (await gateway.get(f"/api/gpts/{gpt}/stats")).status == 401
    assert (await gateway.get(f"/api/sessions/{session}", headers=h(tenant["key"]))).status == 200
    # A key that was sent must be valid, even for a keyless GPT.
    resp = await gateway.post("/api/events", json=make_event(session), headers=h("cbk_bad_bad"))
    assert resp.status == 401


async def test_batch_without_key_refuses_items_of_keyed_gpts(
    gateway: Client, tenant: dict[str, Any], factory: Factory
) -> None:
    keyed = await new_session(gateway, tenant["gpt"], tenant["key"])
    gpt = await factory.gpt("open-gpt-2", tenant["project"], keyless=True)
    open_session = await new_session(gateway, gpt)
    resp = await gateway.post(
        "/api/events/batch", json={"events": [make_event(keyed), make_event(open_session)]}
    )
    assert [r["status"] for r in (await resp.json())["results"]] == [401, 202]


# --- reads ----------------------------------------------------------------------------------


async def test_session_read_errors(gateway: Client, tenant: dict[str, Any]) -> None:
    session = await new_session(gateway, tenant["gpt"], tenant["key"])
    assert (await gateway.get("/api/sessions/not-a-uuid", headers=h(tenant["key"]))).status == 404
    assert (
        await gateway.get(f"/api/sessions/{uuid.uuid4()}", headers=h(tenant["key"]))
    ).status == 404
    await wait_for(lambda: gateway_ok(gateway, f"/api/sessions/{session}", tenant["key"]))
    assert (
        await gateway.get(f"/api/sessions/{session}", headers=h(tenant["other_key"]))
    ).status == 404
    assert (await gateway.get(f"/api/sessions/{session}", headers=h(tenant["admin"]))).status == 200


async def gateway_ok(gateway: Client, path: str, key: str) -> bool:
    return bool((await gateway.get(path, headers=h(key))).status == 200)


async def test_stats(gateway: Client, tenant: dict[str, Any], db: asyncpg.Connection) -> None:
    gpt, key = tenant["gpt"], tenant["key"]
    ids = []
    for user, when, latencies in (
        ("ana", "2026-03-02T10:00:00Z", [100, 200]),
        ("ana", "2026-03-09T10:00:00Z", [300]),
        ("bob", "2026-03-09T11:00:00Z", [400]),
    ):
        resp = await gateway.post(
            "/api/sessions",
            json={"gpt_id": gpt, "usuario_id": user, "timestamp_inicio": when},
            headers=h(key),
        )
        session = (await resp.json())["id"]
        for n, latency in enumerate(latencies):
            resp = await gateway.post(
                "/api/events",
                json=make_event(
                    session,
                    latency_ms=latency,
                    tipo="query" if n == 0 else "feedback",
                    tokens_entrada=1,
                    tokens_salida=2,
                    timestamp=when,
                ),
                headers=h(key),
            )
            ids.append((await resp.json())["id"])

    async def stored() -> bool:
        return bool(
            await db.fetchval("SELECT count(*) FROM events WHERE id = ANY($1::uuid[])", ids) == 4
        )

    await wait_for(stored)
    resp = await gateway.get(
        f"/api/gpts/{gpt}/stats?from=2026-03-01T00:00:00Z&to=2026-04-01T00:00:00Z&bucket=week",
        headers=h(key),
    )
    assert resp.status == 200
    stats = await resp.json()
    assert [s["count"] for s in stats["sessions"]] == [1, 2]
    assert stats["eventTypes"][0] == {"tipo": "query", "count": 3}
    assert stats["latency"]["avg"] == 250 and stats["latency"]["p50"] == 250
    assert stats["tokens"] == {"entrada": 4, "salida": 8}
    users = {u["usuario_id"]: u for u in stats["users"]}
    assert (users["ana"]["sessions"], users["ana"]["events"]) == (2, 3)
    assert (users["bob"]["sessions"], users["bob"]["events"]) == (1, 1)
    month = await (
        await gateway.get(
            f"/api/gpts/{gpt}/stats?from=2026-03-01T00:00:00Z&to=2026-04-01T00:00:00Z&bucket=month",
            headers=h(key),
        )
    ).json()
    assert [s["count"] for s in month["sessions"]] == [3]
    # Errors.
    assert (await gateway.get(f"/api/gpts/{gpt}/stats?bucket=year", headers=h(key))).status == 422
    assert (
        await gateway.get(f"/api/gpts/{gpt}/stats?from=2026-03-01T00:00:00", headers=h(key))
    ).status == 422
    for bad in ("0001-01-01T00:00:00Z", "9999-12-31T23:59:59-14:00", "1767225600"):
        resp = await gateway.get(f"/api/gpts/{gpt}/stats", params={"from": bad}, headers=h(key))
        assert resp.status == 422, bad
        assert (await resp.json())["error"]["details"][0]["field"] == "from"
    assert (
        await gateway.get(
            f"/api/gpts/{gpt}/stats?from=2026-04-01T00:00:00Z&to=2026-03-01T00:00:00Z",
            headers=h(key),
        )
    ).status == 422
    assert (
        await gateway.get(f"/api/gpts/{gpt}/stats", headers=h(tenant["other_key"]))
    ).status == 404
    assert (await gateway.get("/api/gpts/nope/stats", headers=h(key))).status == 404


# --- the general error surface --------------------------------------------------------------


async def test_unknown_route_and_wrong_method(gateway: Client, tenant: dict[str, Any]) -> None:
    resp = await gateway.get("/api/nothing-here")
    assert resp.status == 404
    assert (await resp.json())["error"]["code"] == "not_found"
    resp = await gateway.delete("/api/events")
    assert resp.status == 405
    assert (await resp.json())["error"]["code"] == "method_not_allowed"
    assert resp.headers["Allow"] == "POST"
    assert resp.headers["X-Request-Id"]
    resp = await gateway.put("/api/sessions/x", headers={"X-Request-Id": "mine"})
    assert resp.status == 405 and resp.headers["Allow"] == "GET,HEAD"
    assert resp.headers["X-Request-Id"] == "mine"
    assert (await gateway.get("/")).status == 404
    # A key sent to a path no route serves still counts against it, by the path's scope.
    for path in ("/api/nothing-here", "/api/v1/nothing-here"):
        resp = await gateway.get(path, headers=h(tenant["key"]))
        assert resp.status == 404 and "RateLimit-Remaining" in resp.headers
