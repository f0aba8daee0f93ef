"""Key management: `/api/v1/keys` for admins, the CLI, hashing at rest, revocation on every
gateway within 5 s."""

from __future__ import annotations

import hashlib
import subprocess
import sys
from pathlib import Path
from typing import Any

import asyncpg
import pytest
from chatbeto.settings import GatewaySettings
from pytest_aiohttp import AiohttpClient

from tests.conftest import Client, Factory, wait_for

CHATBETO = str(Path(sys.executable).with_name("chatbeto"))


def h(key: str) -> dict[str, str]:
    return {"X-API-Key": key}


@pytest.fixture
async def admin(factory: Factory) -> str:
    return await factory.key(admin=True)


async def create_key(gateway: Client, admin_key: str, /, **body: Any) -> dict[str, Any]:
    resp = await gateway.post("/api/v1/keys", json=body, headers=h(admin_key))
    assert resp.status == 201, await resp.text()
    payload = await resp.json()
    assert payload["status"] == "success"
    data: dict[str, Any] = payload["data"]
    return data


async def test_admin_creates_lists_and_revokes(
    gateway: Client, factory: Factory, admin: str, db: asyncpg.Connection
) -> None:
    project = await factory.project()
    data = await create_key(gateway, admin, projectId=project, name="ci", rateLimit="100/1h")
    plain, info = data["key"], data["apiKey"]
    assert plain.startswith(f"cbk_{info['prefix']}_")
    assert info == info | {
        "projectId": project,
        "admin": False,
        "name": "ci",
        "rateLimit": "100/1h",
    }

    resp = await gateway.get("/api/gpts", headers={"Authorization": f"Bearer {plain}"})
    assert resp.status == 200

    resp = await gateway.get("/api/v1/keys", headers=h(admin))
    assert resp.status == 200
    text = await resp.text()
    assert plain not in text and plain.split("_", 2)[2] not in text and "hash" not in text
    listed = {k["prefix"]: k for k in (await resp.json())["data"]["keys"]}
    assert listed[info["prefix"]]["projectId"] == project

    resp = await gateway.get(f"/api/v1/keys?projectId={project}", headers=h(admin))
    assert [k["prefix"] for k in (await resp.json())["data"]["keys"]] == [info["prefix"]]

    # At rest: the SHA-256 of the key, nothing else derived from it.
    row = await db.fetchrow("SELECT * FROM api_keys WHERE prefix = $1", info["prefix"])
    assert row is not None
    assert bytes(row["key_hash"]) == hashlib.sha256(plain.encode()).digest()
    assert plain not in repr(dict(row))

    resp = await gateway.delete(f"/api/v1/keys/{info['prefix']}", headers=h(admin))
    assert resp.status == 200
    assert (await resp.json())["data"] == {"revoked": info["prefix"]}
    await wait_for(lambda: _status(gateway, plain), timeout=5)
    resp = await gateway.delete(f"/api/v1/keys/{info['prefix']}", headers=h(admin))
    assert resp.status == 404


async def _status(gateway: Client, key: str, expect: int = 401) -> bool:
    resp = await gateway.get("/api/gpts", headers=h(key))
    return resp.status == expect


async def test_admin_key_creation(gateway: Client, admin: str) -> None:
    data = await create_key(gateway, admin, admin=True)
    assert data["apiKey"]["admin"] is True and data["apiKey"]["projectId"] is None
    resp = await gateway.get("/api/v1/keys", headers=h(data["key"]))
    assert resp.status == 200


async def test_project_keys_do_not_see_admin_routes(gateway: Client, factory: Factory) -> None:
    project = await factory.project()
    key = await factory.key(project)
    for method, path, body in (
        ("POST", "/api/v1/keys", {"projectId": project}),
        ("GET", "/api/v1/keys", None),
        ("DELETE", "/api/v1/keys/00000000", None),
    ):
        resp = await gateway.request(method, path, json=body, headers=h(key))
        assert resp.status == 404, (method, path)
        assert (await resp.json())["status"] == "error"


@pytest.mark.parametrize("headers", [{}, {"X-API-Key": "cbk_00000000_nope"}])
async def test_no_or_bad_key_is_401(gateway: Client, headers: dict[str, str]) -> None:
    for method in ("GET", "POST"):
        resp = await gateway.request(method, "/api/v1/keys", json={}, headers=headers)
        assert resp.status == 401
        body = await resp.json()
        assert body["status"] == "error" and body["error"]["code"] == "unauthorized"


@pytest.mark.parametrize(
    ("body", "field"),
    [
        ({}, "body"),
        ({"admin": True, "projectId": 1}, "body"),
        ({"projectId": "one"}, "projectId"),
        ({"projectId": 0}, "projectId"),
        ({"admin": True, "rateLimit": "lots"}, "rateLimit"),
        ({"admin": True, "name": "a\u0000b"}, "name"),
        ({"admin": True, "extra": 1}, "extra"),
    ],
)
async def test_invalid_bodies_are_422(gateway: Client, admin: str, body: Any, field: str) -> None:
    resp = await gateway.post("/api/v1/keys", json=body, headers=h(admin))
    assert resp.status == 422, await resp.text()
    err = (await resp.json())["error"]
    assert err["code"] == "validation_error"
    assert field in {d["field"] for d in err["details"]}


async def test_unknown_project_bad_json_and_bad_prefix(gateway: Client, admin: str) -> None:
    resp = await gateway.post("/api/v1/keys", json={"projectId": 999999}, headers=h(admin))
    assert resp.status == 404
    assert (await resp.json())["error"]["code"] == "project_not_found"
    resp = await gateway.post("/api/v1/keys", data=b"{nope", headers=h(admin))
    assert resp.status == 400
    for prefix in ("zzzz", "0123456789abcdef", "%00", "cbk_abc_def"):
        resp = await gateway.delete(f"/api/v1/keys/{prefix}", headers=h(admin))
        assert resp.status == 404, prefix
    resp = await gateway.get("/api/v1/keys?projectId=-1", headers=h(admin))
    assert resp.status == 422


async def test_revoked_key_refused_by_another_gateway_within_5s(
    gateway: Client,
    aiohttp_client: AiohttpClient,
    gateway_settings: GatewaySettings,
    factory: Factory,
    admin: str,
) -> None:
    from chatbeto_gateway.app import create_app

    other = await aiohttp_client(create_app(gateway_settings))
    project = await factory.project()
    data = await create_key(gateway, admin, projectId=project)
    plain = data["key"]
    # The second gateway has the key cached as valid before the revocation.
    assert await _status(other, plain, 200)
    resp = await gateway.delete(f"/api/v1/keys/{data['apiKey']['prefix']}", headers=h(admin))
    assert resp.status == 200
    await wait_for(lambda: _status(other, plain), timeout=5)


def test_cli_keys_create_list_revoke(env: dict[str, str], database: str) -> None:
    def run(*args: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            [CHATBETO, *args], env=env, capture_output=True, text=True, timeout=60, check=False
        )

    created = run("projects", "create", "cli")
    assert created.returncode == 0, created.stderr
    project = created.stdout.strip().splitlines()[-1]
    made = run("keys", "create", "--project", project, "--name", "cli", "--rate-limit", "10/1m")
    assert made.returncode == 0, made.stderr
    plain = made.stdout.strip().splitlines()[-1]
    assert plain.startswith("cbk_")
    listed = run("keys", "list")
    assert plain.split("_")[1] in listed.stdout and plain not in listed.stdout + listed.stderr
    assert "10/1m" in listed.stdout
    revoked = run("keys", "revoke", plain.split("_")[1])
    assert revoked.returncode == 0, revoked.stderr
    assert plain not in revoked.stdout + revoked.stderr
    assert run("keys", "revoke", plain.split("_")[1]).returncode == 1
