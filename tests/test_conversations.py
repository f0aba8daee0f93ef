"""Contract 3.1 conversations through the real gateway, broker, openai-worker and the stub."""

from __future__ import annotations

import asyncpg
from chatbeto_openai_worker.worker import OpenAIWorker

from tests.conftest import Client, Factory

H = dict[str, str]


def auth(key: str) -> H:
    return {"X-API-Key": key}


async def test_create_with_initial_message_then_follow_up_sees_history(
    chat_gateway: Client, openai_worker: OpenAIWorker, factory: Factory
) -> None:
    project = await factory.project()
    key = await factory.key(project)
    resp = await chat_gateway.post(
        "/api/v1/openai/conversations",
        json={"projectId": project, "title": "Deploys", "initialMessage": "hola"},
        headers=auth(key),
    )
    assert resp.status == 201, await resp.text()
    data = (await resp.json())["data"]
    conv = data["conversation"]
    assert conv["projectId"] == project
    assert conv["title"] == "Deploys"
    assert data["response"]["role"] == "assistant"
    assert data["response"]["content"] == "echo[1]: hola"
    assert data["response"]["usage"] == {
        "prompt_tokens": 1,
        "completion_tokens": 2,
        "total_tokens": 3,
    }

    resp = await chat_gateway.post(
        f"/api/v1/openai/conversations/{conv['id']}/messages",
        json={"message": "y ahora"},
        headers=auth(key),
    )
    assert resp.status == 200, await resp.text()
    data = (await resp.json())["data"]
    assert data["conversationId"] == conv["id"]
    # The model saw all three messages so far: user, assistant, user.
    assert data["response"]["content"] == "echo[3]: y ahora"

    resp = await chat_gateway.get(f"/api/v1/openai/conversations/{conv['id']}", headers=auth(key))
    assert resp.status == 200
    data = (await resp.json())["data"]
    assert [(m["role"], m["content"]) for m in data["messages"]] == [
        ("user", "hola"),
        ("assistant", "echo[1]: hola"),
        ("user", "y ahora"),
        ("assistant", "echo[3]: y ahora"),
    ]
    answer = data["messages"][1]
    assert answer["usage"]["total_tokens"] == 3
    assert answer["latencyMs"] >= 0
    assert "remoteId" not in data["conversation"]


async def test_create_without_message_and_non_user_roles_are_stored_without_a_call(
    chat_gateway: Client, openai_worker: OpenAIWorker, factory: Factory
) -> None:
    project = await factory.project()
    key = await factory.key(project)
    resp = await chat_gateway.post(
        "/api/v1/openai/conversations", json={"projectId": project}, headers=auth(key)
    )
    assert resp.status == 201
    data = (await resp.json())["data"]
    assert "response" not in data
    conv_id = data["conversation"]["id"]
    assert data["conversation"]["title"] == "New conversation"
    for role in ("system", "assistant"):
        resp = await chat_gateway.post(
            f"/api/v1/openai/conversations/{conv_id}/messages",
            json={"message": f"as {role}", "role": role},
            headers=auth(key),
        )
        assert resp.status == 201, await resp.text()
        assert (await resp.json())["data"]["message"] == {"role": role, "content": f"as {role}"}
    resp = await chat_gateway.get(f"/api/v1/openai/conversations/{conv_id}", headers=auth(key))
    messages = (await resp.json())["data"]["messages"]
    assert [m["role"] for m in messages] == ["system", "assistant"]
    assert all("usage" not in m for m in messages)


async def test_list_is_newest_first_and_cursor_paginated(
    chat_gateway: Client, openai_worker: OpenAIWorker, factory: Factory, db: asyncpg.Connection
) -> None:
    project = await factory.project()
    other = await factory.project("other")
    key = await factory.key(project)
    ids = []
    for n in range(5):
        ids.append(
            await db.fetchval(
                "INSERT INTO conversations (project_id, title) VALUES ($1, $2) RETURNING id",
                project,
                f"c{n}",
            )
        )
    await db.execute("INSERT INTO conversations (project_id, title) VALUES ($1, 'x')", other)
    seen: list[int] = []
    cursor = None
    pages = 0
    while True:
        url = "/api/v1/openai/conversations?limit=2" + (f"&cursor={cursor}" if cursor else "")
        resp = await chat_gateway.get(url, headers=auth(key))
        assert resp.status == 200
        data = (await resp.json())["data"]
        seen += [c["id"] for c in data["conversations"]]
        pages += 1
        cursor = data["nextCursor"]
        if cursor is None:
            break
    assert seen == list(reversed(ids))
    assert pages == 3


async def test_list_rejects_bad_paging_and_other_projects(
    chat_gateway: Client, factory: Factory
) -> None:
    project = await factory.project()
    other = await factory.project("other")
    key = await factory.key(project)
    resp = await chat_gateway.get(
        "/api/v1/openai/conversations?limit=0&cursor=zzz", headers=auth(key)
    )
    assert resp.status == 422
    body = await resp.json()
    assert {d["field"] for d in body["error"]["details"]} == {"limit", "cursor"}
    resp = await chat_gateway.get(
        f"/api/v1/openai/conversations?projectId={other}", headers=auth(key)
    )
    assert resp.status == 404


async def test_another_projects_conversation_answers_404(
    chat_gateway: Client, factory: Factory, db: asyncpg.Connection
) -> None:
    project = await factory.project()
    other = await factory.project("other")
    key = await factory.key(project)
    foreign = await db.fetchval(
        "INSERT INTO conversations (project_id) VALUES ($1) RETURNING id", other
    )
    for method, url, body in [
        ("GET", f"/api/v1/openai/conversations/{foreign}", None),
        ("POST", f"/api/v1/openai/conversations/{foreign}/messages", {"message": "hi"}),
        ("GET", "/api/v1/openai/conversations/999999", None),
        ("GET", "/api/v1/openai/conversations/abc", None),
        ("POST", "/api/v1/openai/conversations", {"projectId": other, "initialMessage": "x"}),
    ]:
        resp = await chat_gateway.request(method, url, json=body, headers=auth(key))
        assert resp.status == 404, (method, url)
        assert (await resp.json())["status"] == "error"


async def test_bad_bodies_are_400_and_422_naming_fields(
    chat_gateway: Client, factory: Factory
) -> None:
    project = await factory.project()
    key = await factory.key(project)
    resp = await chat_gateway.post("/api/v1/openai/conversations", data=b"{nope", headers=auth(key))
    assert resp.status == 400
    resp = await chat_gateway.post(
        "/api/v1/openai/conversations",
        json={"projectId": "x", "initialMessage": ""},
        headers=auth(key),
    )
    assert resp.status == 422
    fields = {d["field"] for d in (await resp.json())["error"]["details"]}
    assert fields == {"projectId", "initialMessage"}
    resp = await chat_gateway.post("/api/v1/openai/conversations", json={"projectId": project})
    assert resp.status == 401


async def test_admin_key_sees_every_project_and_unknown_project_is_404(
    chat_gateway: Client, openai_worker: OpenAIWorker, factory: Factory
) -> None:
    admin = await factory.key(admin=True)
    p1 = await factory.project("a")
    p2 = await factory.project("b")
    for p in (p1, p2):
        resp = await chat_gateway.post(
            "/api/v1/openai/conversations", json={"projectId": p}, headers=auth(admin)
        )
        assert resp.status == 201
    resp = await chat_gateway.get("/api/v1/openai/conversations", headers=auth(admin))
    assert {c["projectId"] for c in (await resp.json())["data"]["conversations"]} == {p1, p2}
    resp = await chat_gateway.get(
        f"/api/v1/openai/conversations?projectId={p2}", headers=auth(admin)
    )
    assert {c["projectId"] for c in (await resp.json())["data"]["conversations"]} == {p2}
    resp = await chat_gateway.post(
        "/api/v1/openai/conversations", json={"projectId": 987654}, headers=auth(admin)
    )
    assert resp.status == 404
