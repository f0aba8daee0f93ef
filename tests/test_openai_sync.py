"""Sync to OpenAI's Conversations API: remote ids recorded, reruns skip synced, progress."""

from __future__ import annotations

from typing import Any

import asyncpg
from aiohttp.test_utils import TestServer
from chatbeto_openai_worker.worker import OpenAIWorker
from chatbeto_tools.stub import CONVERSATIONS

from tests.conftest import Client, Factory, wait_for
from tests.conftest_openai import StartWorker


def auth(key: str) -> dict[str, str]:
    return {"X-API-Key": key}


async def seed(db: asyncpg.Connection, project: int, messages: int) -> int:
    conv: int = await db.fetchval(
        "INSERT INTO conversations (project_id, title) VALUES ($1, 'seeded') RETURNING id", project
    )
    await db.executemany(
        "INSERT INTO messages (conversation_id, position, role, content) VALUES ($1, $2, $3, $4)",
        [(conv, n, "user" if n % 2 == 0 else "assistant", f"m{n}") for n in range(messages)],
    )
    return conv


async def job_state(client: Client, key: str, job_id: str) -> dict[str, Any]:
    resp = await client.get(f"/api/v1/openai/sync/{job_id}", headers=auth(key))
    assert resp.status == 200
    data: dict[str, Any] = (await resp.json())["data"]
    return data


async def test_sync_copies_conversations_and_a_rerun_skips_them(
    chat_gateway: Client,
    openai_worker: OpenAIWorker,
    openai_stub_server: TestServer,
    factory: Factory,
    db: asyncpg.Connection,
) -> None:
    project = await factory.project()
    other = await factory.project("other")
    key = await factory.key(project)
    small = await seed(db, project, 3)
    big = await seed(db, project, 45)  # more than 20 items: create + items.create calls
    foreign = await seed(db, other, 2)

    resp = await chat_gateway.post("/api/v1/openai/sync", json={}, headers=auth(key))
    assert resp.status == 202, await resp.text()
    data = (await resp.json())["data"]
    assert data["queued"] == 2

    async def finished() -> dict[str, Any] | None:
        state = await job_state(chat_gateway, key, data["jobId"])
        return state if state["state"] == "done" else None

    state = await wait_for(finished)
    assert (state["total"], state["done"], state["failed"]) == (2, 2, 0)
    remote = {
        r["id"]: r["remote_id"] for r in await db.fetch("SELECT id, remote_id FROM conversations")
    }
    assert remote[foreign] is None
    stub = openai_stub_server.app[CONVERSATIONS]
    assert len(stub[remote[big]]["items"]) == 45
    assert [i["content"][0]["text"] for i in stub[remote[small]]["items"]] == ["m0", "m1", "m2"]
    assert stub[remote[small]]["metadata"]["chatbeto_conversation_id"] == str(small)

    resp = await chat_gateway.get(f"/api/v1/openai/conversations/{small}", headers=auth(key))
    assert (await resp.json())["data"]["conversation"]["remoteId"] == remote[small]

    resp = await chat_gateway.post("/api/v1/openai/sync", json={}, headers=auth(key))
    rerun = (await resp.json())["data"]
    assert rerun["queued"] == 0
    state = await wait_for(
        lambda: _done(chat_gateway, key, rerun["jobId"]),
    )
    assert (state["total"], state["done"]) == (0, 0)
    assert len(stub) == 2  # nothing copied twice


async def _done(client: Client, key: str, job_id: str) -> dict[str, Any] | None:
    state = await job_state(client, key, job_id)
    return state if state["state"] == "done" else None


async def test_failures_are_counted_and_auth_failure_fails_the_job(
    chat_gateway: Client, start_openai_worker: StartWorker, factory: Factory, db: asyncpg.Connection
) -> None:
    project = await factory.project()
    key = await factory.key(project)
    await seed(db, project, 2)
    bad = await seed(db, project, 0)
    await db.execute(
        "INSERT INTO messages (conversation_id, position, role, content) VALUES ($1, 0, 'user', $2)",
        bad,
        "[[fail:500]]",
    )
    await start_openai_worker()
    resp = await chat_gateway.post(
        "/api/v1/openai/sync", json={"projectId": project}, headers=auth(key)
    )
    job = (await resp.json())["data"]["jobId"]
    state = await wait_for(lambda: _done(chat_gateway, key, job))
    assert (state["total"], state["done"], state["failed"]) == (2, 1, 1)
    assert len(state["errors"]) == 1

    await db.execute("UPDATE conversations SET remote_id = NULL")
    await db.execute("UPDATE messages SET content = '[[fail:401]]'")
    resp = await chat_gateway.post("/api/v1/openai/sync", json={}, headers=auth(key))
    job = (await resp.json())["data"]["jobId"]

    async def failed() -> dict[str, Any] | None:
        state = await job_state(chat_gateway, key, job)
        return state if state["state"] == "failed" else None

    assert await wait_for(failed)


async def test_sync_jobs_are_private_to_their_project(
    chat_gateway: Client, factory: Factory
) -> None:
    project = await factory.project()
    other = await factory.project("other")
    key = await factory.key(project)
    other_key = await factory.key(other)
    resp = await chat_gateway.post("/api/v1/openai/sync", json={}, headers=auth(key))
    job = (await resp.json())["data"]["jobId"]
    resp = await chat_gateway.get(f"/api/v1/openai/sync/{job}", headers=auth(other_key))
    assert resp.status == 404
    resp = await chat_gateway.get("/api/v1/openai/sync/not-a-uuid", headers=auth(key))
    assert resp.status == 404
    resp = await chat_gateway.post(
        "/api/v1/openai/sync", json={"projectId": other}, headers=auth(key)
    )
    assert resp.status == 404
