from __future__ import annotations

import asyncpg
from chatbeto_metrics_ingest.consumer import MetricsIngest

from tests.conftest import Client, Factory, make_event, wait_for


async def test_session_and_event_are_stored(
    gateway: Client, ingest: MetricsIngest, factory: Factory, db: asyncpg.Connection
) -> None:
    project = await factory.project()
    key = await factory.key(project)
    gpt = await factory.gpt(project_id=project)
    resp = await gateway.post(
        "/api/sessions", json={"gpt_id": gpt, "usuario_id": "u1"}, headers={"X-API-Key": key}
    )
    assert resp.status == 201, await resp.text()
    session = await resp.json()
    resp = await gateway.post(
        "/api/events", json=make_event(session["id"]), headers={"X-API-Key": key}
    )
    assert resp.status == 202, await resp.text()
    event_id = (await resp.json())["id"]
    row = await wait_for(lambda: db.fetchrow("SELECT * FROM events WHERE id = $1::uuid", event_id))
    assert row["usuario_id"] == "u1"
