"""`/api/v1/projects` and `/api/v1/openai/status`."""

from __future__ import annotations

from chatbeto.settings import GatewaySettings
from pytest_aiohttp import AiohttpClient

from tests.conftest import Client, Factory


async def test_admin_creates_projects_and_keys_see_theirs(
    chat_gateway: Client, factory: Factory
) -> None:
    admin = await factory.key(admin=True)
    resp = await chat_gateway.post(
        "/api/v1/projects", json={"name": "support"}, headers={"X-API-Key": admin}
    )
    assert resp.status == 201
    project = (await resp.json())["data"]["project"]
    assert project["name"] == "support"
    assert isinstance(project["id"], int)
    other = await factory.project("other")
    key = await factory.key(project["id"])

    resp = await chat_gateway.get("/api/v1/projects", headers={"Authorization": f"Bearer {key}"})
    assert [p["id"] for p in (await resp.json())["data"]["projects"]] == [project["id"]]
    resp = await chat_gateway.get("/api/v1/projects", headers={"X-API-Key": admin})
    assert {p["id"] for p in (await resp.json())["data"]["projects"]} >= {project["id"], other}

    # A project key can't create projects (admin routes don't exist for it).
    resp = await chat_gateway.post(
        "/api/v1/projects", json={"name": "x"}, headers={"X-API-Key": key}
    )
    assert resp.status == 404
    resp = await chat_gateway.post(
        "/api/v1/projects", json={"name": ""}, headers={"X-API-Key": admin}
    )
    assert resp.status == 422
    resp = await chat_gateway.get("/api/v1/projects")
    assert resp.status == 401


async def test_status_reports_openai_database_and_broker(
    chat_gateway: Client, factory: Factory
) -> None:
    key = await factory.key(admin=True)
    resp = await chat_gateway.get("/api/v1/openai/status", headers={"X-API-Key": key})
    assert resp.status == 200
    data = (await resp.json())["data"]
    assert data["openai"]["status"] == "healthy"
    assert data["initialized"] is True
    assert data["database"]["status"] == "healthy"
    assert data["broker"]["status"] == "healthy"


async def test_status_without_openai_key_is_unconfigured(gateway: Client, factory: Factory) -> None:
    key = await factory.key(admin=True)
    resp = await gateway.get("/api/v1/openai/status", headers={"X-API-Key": key})
    assert (await resp.json())["data"]["openai"]["status"] == "unconfigured"


async def test_status_with_unreachable_openai_is_unhealthy(
    aiohttp_client: AiohttpClient, openai_gateway_settings: GatewaySettings, factory: Factory
) -> None:
    from chatbeto_gateway.app import create_app

    settings = openai_gateway_settings.model_copy(
        update={"openai_base_url": "http://127.0.0.1:9/v1"}
    )
    client = await aiohttp_client(create_app(settings))
    key = await factory.key(admin=True)
    resp = await client.get("/api/v1/openai/status", headers={"X-API-Key": key})
    assert (await resp.json())["data"]["openai"]["status"] == "unhealthy"
