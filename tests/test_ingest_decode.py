"""metrics-ingest's decoding: its all-pydantic-core first try keeps what the records' own models
(chatbeto.storable's checks) store and refuse, record by record, with the same reasons."""

from __future__ import annotations

import uuid
from datetime import UTC, datetime
from types import SimpleNamespace
from typing import Any, cast

import orjson
import pytest
from aio_pika.abc import AbstractIncomingMessage
from chatbeto.messages import EventRecord, SessionRecord
from chatbeto_metrics_ingest import decode as decoding
from pydantic import ValidationError

# Every timestamp the project's tests refuse or accept at an edge, and the forms around them:
# numbers and number-like strings (epoch seconds to pydantic), naive times, dates, the edges of
# years 1-9999 UTC under offsets, strings that are no time at all.
TIMESTAMPS: list[Any] = [
    "9999-12-31T23:59:59-14:00", "0001-01-01T00:00:00Z", 1700000000, 1700000000.5, "1700000000",
    "1700000000.5", " 1700000000", "+1700000000", "-1", "1.7e9", "1e9", "17000000e1",
    "1700000000Z", "2024-01-01T00:00:00", "2024-01-01T00:00:00.5", "2024-01-01", "2024-01-01Z",
    "2024-01-01T00Z", "20240101T000000Z", "9999-12-31T23:59:59Z", "0001-01-01T00:00:01Z",
    "0001-01-01T00:00:00+01:00", "0001-01-01T00:30:00-01:00", "9999-12-31T23:59:59.5Z",
    "9999-12-31T23:30:00-01:00", "9999-12-31T22:30:00-01:00", "2024-01-01T00:00:00+05:30",
    "2024-01-01 00:00:00Z", "2024-01-01T00:00Z", "2024-01-01T00:00:00.123456789Z",
    "2024-01-01T00:00:00z", "2024-02-30T00:00:00Z", "2024-01-01T24:00:00Z",
    "2024-01-01T00:00:00+24:00", "2024-01-01T00:00:00+23:59", "2024-01-01T00:00:00+0530",
    "2024-01-01T00:00:00+05", "2024-01-01T00:00:00ZZ", "12:00:00Z", "x:y", ":", "", "now",
    None, True, [], {}, datetime.now(UTC).isoformat(),
]  # fmt: skip
TEXTS: list[Any] = ["a\x00b", "\x00", "é\n\t", "", "x" * 5000, 5, None, "\\u0000", "\ud7ff"]


def message(
    sessions: list[dict[str, Any]], events: list[dict[str, Any]]
) -> AbstractIncomingMessage:
    body = {
        "type": "metrics.batch",
        "version": 1,
        "message_id": str(uuid.uuid4()),
        "request_id": "r-1",
        "data": {"sessions": sessions, "events": events},
    }
    # decode reads the body alone.
    return cast(AbstractIncomingMessage, SimpleNamespace(body=orjson.dumps(body)))


def session(**overrides: Any) -> dict[str, Any]:
    return {
        "id": str(uuid.uuid4()),
        "gpt_pk": 1,
        "usuario_id": "u",
        "timestamp_inicio": "2024-01-01T00:00:00Z",
        **overrides,
    }


def event(**overrides: Any) -> dict[str, Any]:
    return {
        "id": str(uuid.uuid4()),
        "sesion_id": str(uuid.uuid4()),
        "tipo": "query",
        "contenido": "hola",
        "latency_ms": 5,
        "tokens_entrada": 1,
        "tokens_salida": 2,
        "timestamp": "2024-01-01T00:00:00Z",
        "request_id": "req",
        **overrides,
    }


def reference(
    sessions: list[dict[str, Any]], events: list[dict[str, Any]]
) -> tuple[list[dict[str, Any]], list[dict[str, Any]], list[tuple[str, str]]]:
    """What the records' own models make of these records: stored, and refused with why."""
    stored_s: list[dict[str, Any]] = []
    stored_e: list[dict[str, Any]] = []
    refused: list[tuple[str, str]] = []
    for kind, model, raws, out in (
        ("session", SessionRecord, sessions, stored_s),
        ("event", EventRecord, events, stored_e),
    ):
        for raw in orjson.loads(orjson.dumps(raws)):
            try:
                out.append(model.model_validate(raw).model_dump())
            except ValidationError as exc:
                refused.append((kind, decoding._reason(exc)))
    return stored_s, stored_e, refused


def decoded(
    sessions: list[dict[str, Any]], events: list[dict[str, Any]]
) -> tuple[list[dict[str, Any]], list[dict[str, Any]], list[tuple[str, str]]]:
    d = decoding.decode(message(sessions, events))
    return (
        [s.model_dump() for s in d.sessions],
        [e.model_dump() for e in d.events],
        [(r.kind, r.reason) for r in d.rejected],
    )


def cases() -> list[tuple[list[dict[str, Any]], list[dict[str, Any]]]]:
    out = []
    for ts in TIMESTAMPS:
        out.append(([session(timestamp_inicio=ts)], [event(), event(timestamp=ts), event()]))
    for text in TEXTS:
        for field in ("tipo", "contenido", "request_id"):
            out.append(([], [event(), event(**{field: text})]))
        for field in ("usuario_id", "request_id"):
            out.append(([session(**{field: text})], [event()]))
    return out


@pytest.mark.parametrize(("sessions", "events"), cases())
def test_stores_and_refuses_what_the_records_models_do(
    sessions: list[dict[str, Any]], events: list[dict[str, Any]]
) -> None:
    assert decoded(sessions, events) == reference(sessions, events)


@pytest.mark.parametrize("ts", TIMESTAMPS)
def test_first_try_accepts_no_timestamp_storable_refuses(ts: Any) -> None:
    """The first try may refuse more (its body is then judged record by record), never less."""
    body = orjson.dumps(event(timestamp=ts))
    try:
        fast = decoding._FastEvent.model_validate_json(body)
    except ValidationError:
        return
    assert fast.model_dump() == EventRecord.model_validate_json(body).model_dump()


def test_a_clean_body_is_decoded_by_the_first_try_alone() -> None:
    d = decoding.decode(message([session()], [event(), event(request_id=None)]))
    assert [type(s) for s in d.sessions] == [decoding._FastSession]
    assert [type(e) for e in d.events] == [decoding._FastEvent, decoding._FastEvent]
    assert not d.rejected


def test_a_body_with_an_escaped_nul_is_checked_for_it() -> None:
    d = decoding.decode(message([], [event(contenido="a\x00b"), event()]))
    assert [r.reason for r in d.rejected] == [
        "invalid fields: contenido: Value error, must not contain NUL characters"
    ]
    assert len(d.events) == 1
