"""metrics-ingest's live feed works only while a dashboard watches: with no stream open nothing
is built per stored event; once one opens, its events arrive."""

from __future__ import annotations

from typing import Any

import pytest
from chatbeto_metrics_ingest import live as ingest_live
from chatbeto_metrics_ingest.consumer import MetricsIngest

from tests.conftest import Client, make_event, wait_for
from tests.test_live import h, new_session, next_sse, open_stream, tenant  # noqa: F401 (fixture)


async def test_no_live_rows_are_built_while_nobody_watches(
    gateway: Client,
    tenant: dict[str, Any],  # noqa: F811
    ingest: MetricsIngest,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    built: list[int] = []
    real = ingest_live.live_rows

    def counting(events: Any, sessions: Any) -> Any:
        built.append(len(events))
        return real(events, sessions)

    monkeypatch.setattr(ingest_live, "live_rows", counting)
    session = await new_session(gateway, tenant["gpt"], tenant["key"])
    # One request, one message, one storing transaction.
    batch = {"events": [make_event(session) for _ in range(3)]}
    resp = await gateway.post("/api/events/batch", json=batch, headers=h(tenant["key"]))
    assert resp.status == 207

    async def unwatched() -> bool:
        return ingest.live.unwatched_batches >= 1 and ingest.live.failures == 0

    await wait_for(unwatched)
    assert built == [] and not ingest.live.watched
    # A stream opens (its gateway binds its queue): the next batch is built and arrives.
    stream = await open_stream(gateway, tenant["gpt"], tenant["key"])
    resp = await gateway.post(
        "/api/events", json=make_event(session, tipo="live.check"), headers=h(tenant["key"])
    )
    event_id = (await resp.json())["id"]
    event, data = await next_sse(stream, timeout=10.0)
    assert event == "events" and [e["id"] for e in data["events"]] == [event_id]
    assert built == [1] and ingest.live.watched
    stream.close()
