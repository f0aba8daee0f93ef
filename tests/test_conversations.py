"""Contract 3.1 conversations through the real gateway, broker, openai-worker and the stub."""

from __future__ import annotations

from typing import Any

from tests.conftest import Factory

H = dict[str, str]


def auth(key: str) -> H:
    return {"X-API-Key": key}


async def test_create_with_initial_message_then_follow_up_sees_history(
    chat_gateway: Any, openai_worker: Any, factory: Factory
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
