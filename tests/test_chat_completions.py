"""`POST /api/v1/openai/chat/completions`: with and without projectId, streamed, and every model
call landing as a metrics event of the built-in GPT `chatbeto`."""

from __future__ import annotations

from typing import Any

import asyncpg
import orjson
from chatbeto_metrics_ingest.consumer import MetricsIngest
from chatbeto_openai_worker.worker import OpenAIWorker

from tests.conftest import Client, Factory, wait_for

MESSAGES = [
    {"role": "system", "content": "Eres un asistente."},
    {"role": "user", "content": "¿Cómo despliego?"},
]


def auth(key: str) -> dict[str, str]:
    return {"X-API-Key": key}


async def sse_events(resp: Any) -> list[Any]:
    events = []
    async for raw in resp.content:
        line = raw.decode().strip()
        if not line.startswith("data: "):
            continue
        payload = line[len("data: ") :]
        events.append(payload if payload == "[DONE]" else orjson.loads(payload))
    return events


async def test_without_project_answers_and_stores_nothing(
    chat_gateway: Client, openai_worker: OpenAIWorker, factory: Factory, db: asyncpg.Connection
) -> None:
    key = await factory.key(await factory.project())
    resp = await chat_gateway.post(
        "/api/v1/openai/chat/completions", json={"messages": MESSAGES}, headers=auth(key)
    )
    assert resp.status == 200, await resp.text()
    body = await resp.json()
    assert body["status"] == "success"
    data = body["data"]
    assert data["response"] == {"role": "assistant", "content": "echo[2]: ¿Cómo despliego?"}
    assert data["model"] == "gpt-4"
    assert data["usage"]["prompt_tokens"] == 5
    assert "conversationId" not in data
    assert await db.fetchval("SELECT count(*) FROM conversations") == 0


async def test_with_project_stores_the_exchange(
    chat_gateway: Client, openai_worker: OpenAIWorker, factory: Factory, db: asyncpg.Connection
) -> None:
    project = await factory.project()
    key = await factory.key(project)
    resp = await chat_gateway.post(
        "/api/v1/openai/chat/completions",
        json={"messages": MESSAGES, "projectId": project, "model": "gpt-4o", "max_tokens": 50},
        headers=auth(key),
    )
    assert resp.status == 200
    data = (await resp.json())["data"]
    conv_id = data["conversationId"]
    assert data["model"] == "gpt-4o"
    rows = await db.fetch(
        "SELECT role, content, model FROM messages WHERE conversation_id = $1 ORDER BY position",
        conv_id,
    )
    assert [(r["role"], r["model"]) for r in rows] == [
        ("system", None),
        ("user", None),
        ("assistant", "gpt-4o"),
    ]
    source = await db.fetchval("SELECT source FROM conversations WHERE id = $1", conv_id)
    assert source == "chat"


async def test_stream_relays_chunks_and_stores_the_full_text(
    chat_gateway: Client, openai_worker: OpenAIWorker, factory: Factory, db: asyncpg.Connection
) -> None:
    project = await factory.project()
    key = await factory.key(project)
    resp = await chat_gateway.post(
        "/api/v1/openai/chat/completions",
        json={
            "messages": [{"role": "user", "content": "uno dos tres"}],
            "projectId": project,
            "stream": True,
        },
        headers=auth(key),
    )
    assert resp.status == 200
    assert resp.headers["Content-Type"].startswith("text/event-stream")
    assert resp.headers["X-Request-Id"]
    events = await sse_events(resp)
    assert events[-1] == "[DONE]"
    deltas = [e["delta"] for e in events[:-2]]
    assert len(deltas) > 1
    assert "".join(deltas) == "echo[1]: uno dos tres"
    final = events[-2]
    assert final["done"] is True
    assert final["response"]["content"] == "echo[1]: uno dos tres"
    assert final["usage"] == {"prompt_tokens": 3, "completion_tokens": 4, "total_tokens": 7}
    row = await db.fetchrow(
        """SELECT content, prompt_tokens, completion_tokens FROM messages
           WHERE conversation_id = $1 AND role = 'assistant'""",
        final["conversationId"],
    )
    assert row is not None
    assert tuple(row) == ("echo[1]: uno dos tres", 3, 4)


async def test_every_model_call_is_a_metrics_event_of_builtin_gpt(
    chat_gateway: Client,
    openai_worker: OpenAIWorker,
    ingest: MetricsIngest,
    factory: Factory,
    db: asyncpg.Connection,
) -> None:
    project = await factory.project()
    key = await factory.key(project)
    resp = await chat_gateway.post(
        "/api/v1/openai/conversations",
        json={"projectId": project, "initialMessage": "hola"},
        headers=auth(key),
    )
    conv_id = (await resp.json())["data"]["conversation"]["id"]
    resp = await chat_gateway.post(
        f"/api/v1/openai/conversations/{conv_id}/messages",
        json={"message": "otra vez"},
        headers=auth(key),
    )
    assert resp.status == 200
    resp = await chat_gateway.post(
        "/api/v1/openai/chat/completions", json={"messages": MESSAGES}, headers=auth(key)
    )
    assert resp.status == 200

    async def stored() -> list[Any]:
        rows = await db.fetch(
            """SELECT e.session_id, e.project_id, e.tipo, e.latency_ms, e.tokens_entrada,
                      e.tokens_salida, g.gpt_id, s.usuario_id
               FROM events e JOIN gpts g ON g.pk = e.gpt_pk JOIN sessions s ON s.id = e.session_id
               ORDER BY e.ts"""
        )
        return list(rows) if len(rows) == 3 else []

    rows = await wait_for(stored)
    assert {r["gpt_id"] for r in rows} == {"chatbeto"}
    assert {r["tipo"] for r in rows} == {"completion"}
    # One session per conversation: both calls of the conversation share it.
    session = await db.fetchval(
        "SELECT metrics_session_id FROM conversations WHERE id = $1", conv_id
    )
    assert [r["session_id"] for r in rows].count(session) == 2
    assert rows[0]["project_id"] == project
    assert rows[0]["tokens_entrada"] == 1
    assert rows[0]["tokens_salida"] == 2
    assert rows[0]["usuario_id"].startswith("key:")
    assert key not in rows[0]["usuario_id"]

    # The stats of the built-in GPT, filtered to the reader's project.
    resp = await chat_gateway.get("/api/gpts/chatbeto/stats", headers=auth(key))
    assert resp.status == 200, await resp.text()
    stats = await resp.json()
    assert {t["tipo"]: t["count"] for t in stats["eventTypes"]} == {"completion": 2}


async def test_validation(chat_gateway: Client, factory: Factory) -> None:
    key = await factory.key(await factory.project())
    resp = await chat_gateway.post(
        "/api/v1/openai/chat/completions",
        json={"messages": [], "temperature": 3},
        headers=auth(key),
    )
    assert resp.status == 422
    fields = {d["field"] for d in (await resp.json())["error"]["details"]}
    assert fields == {"messages", "temperature"}
