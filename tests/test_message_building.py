"""The hot paths' shortcuts in `chatbeto.messages`: ids from a buffered CSPRNG and records built
without a second validation must be what the slow, checked ways would have made."""

from __future__ import annotations

import os
import uuid
from datetime import UTC, datetime
from decimal import Decimal
from typing import Any

import orjson
import pydantic
import pytest
from chatbeto.messages import (
    Answer,
    Caller,
    ChatCall,
    ChatMessage,
    ConversationCreate,
    Envelope,
    EventRecord,
    InvalidMessage,
    LiveEvents,
    MetricsBatch,
    OpenAIReply,
    OpenAIRequest,
    ProxyCall,
    ReplyChunk,
    ReplyError,
    ReplyResult,
    StoredConversation,
    Usage,
    envelope,
    new_uuid4,
    parse,
    parse_reply,
    to_amqp,
    to_outgoing,
)
from pamqp.header import ContentHeader


def test_new_uuid4_gives_distinct_rfc_version_4_ids() -> None:
    ids = [new_uuid4() for _ in range(2000)]  # several reads of the buffer
    assert len(set(ids)) == len(ids)
    for value in ids:
        assert value.version == 4 and value.variant == uuid.RFC_4122
        assert uuid.UUID(str(value)) == value and uuid.UUID(bytes=value.bytes) == value


def test_a_forked_child_never_hands_out_its_parents_next_ids() -> None:
    read, write = os.pipe()
    pid = os.fork()
    if pid == 0:  # the child: its next id, then out without the test runner's cleanup
        os.write(write, new_uuid4().bytes)
        os._exit(0)
    os.close(write)
    child = uuid.UUID(bytes=os.read(read, 16))
    os.close(read)
    os.waitpid(pid, 0)
    assert child != new_uuid4()


def record_values() -> dict[str, object]:
    return {
        "id": uuid.uuid4(),
        "sesion_id": uuid.uuid4(),
        "tipo": "question",
        "contenido": "hola",
        "latency_ms": 12,
        "tokens_entrada": 3,
        "tokens_salida": 4,
        "timestamp": datetime(2026, 12, 1, 12, tzinfo=UTC),
    }


def test_a_trusted_record_equals_the_validated_one() -> None:
    values = record_values()
    trusted, checked = EventRecord.trusted(**values), EventRecord(**values)
    assert trusted == checked
    assert trusted.model_dump() == checked.model_dump()
    assert trusted.model_fields_set == checked.model_fields_set
    assert trusted.request_id is None and trusted.cost_usd is None  # plain defaults filled
    with pytest.raises(pydantic.ValidationError):
        trusted.tipo = "other"  # type: ignore[misc]  # frozen like the validated one


def test_an_event_record_of_equals_the_validated_one() -> None:
    values = {**record_values(), "request_id": "req-1"}
    fast = EventRecord.of(**values)  # type: ignore[arg-type]
    checked = EventRecord(**values)
    assert fast == checked
    assert fast.model_dump() == checked.model_dump()
    assert fast.model_dump_json() == checked.model_dump_json()
    assert fast.model_fields_set == checked.model_fields_set
    assert fast.model_fields_set is not EventRecord.of(**values).model_fields_set  # type: ignore[arg-type]
    with pytest.raises(pydantic.ValidationError):
        fast.tipo = "other"  # type: ignore[misc]


def test_a_trusted_record_refuses_missing_and_unknown_fields() -> None:
    values = record_values()
    del values["tipo"]
    with pytest.raises(TypeError, match="tipo"):
        EventRecord.trusted(**values)
    with pytest.raises(TypeError, match="extra"):
        EventRecord.trusted(**record_values(), extra=1)


def test_an_envelope_built_trusted_round_trips_through_parse() -> None:
    payload = LiveEvents(events=())
    message = envelope(payload, request_id="req-1")
    again = parse(message.model_dump_json().encode(), LiveEvents, LiveEvents.TYPE, frozenset({1}))
    assert again.data == payload and again.request_id == "req-1"
    assert again.message_id == message.message_id and again.message_id.version == 4


def request_envelopes() -> list[Envelope[Any]]:
    deadline = datetime.now(UTC)
    caller = Caller(key_id=7, key_prefix="cb_abc", project_id=3)
    body = orjson.loads(
        '{"model": "gpt-4", "messages": [{"role": "user", "content": "h\\u00e9 \\ud83d\\ude00"}],'
        ' "n": 18446744073709551615, "temperature": 0.7, "stop": null, "logprobs": true}'
    )
    calls: list[Any] = [
        ProxyCall.trusted(endpoint="chat.completions", project_id=3, body=body, stream=True),
        ChatCall(messages=(ChatMessage(role="user", content="hi"),), temperature=0.5),
        ConversationCreate(project_id=3, title="t", message=ChatMessage(role="user", content="x")),
    ]
    return [
        envelope(OpenAIRequest.trusted(call=call, caller=caller, deadline=deadline), "req-9")
        for call in calls
    ]


def test_to_outgoing_sends_what_to_amqp_sends() -> None:
    """The gateway's request message, built without aio_pika.Message and pydantic's serialiser:
    the same JSON value and the same AMQP header frame, and the worker's `parse` reads it."""
    batch = MetricsBatch(
        events=(EventRecord.model_validate({**record_values(), "cost_usd": Decimal("0.000125")}),)
    )
    for env in [*request_envelopes(), envelope(batch)]:
        for persistent in (True, False):
            extra = {} if persistent else {"correlation_id": "c1", "reply_to": "q"}
            slow = to_amqp(env, persistent=persistent, **extra)
            fast = to_outgoing(env, persistent=persistent, **extra)
            assert orjson.loads(fast.body) == orjson.loads(slow.body)
            assert (
                ContentHeader(1, len(fast.body), fast.properties).marshal()
                == ContentHeader(1, len(slow.body), slow.properties).marshal()
            )
        model = type(env.data)
        assert parse(fast.body, model, env.type, frozenset({env.version})) == env


def test_parse_reply_reads_what_parse_reads_and_refuses_what_it_refuses() -> None:
    answer = Answer(content="c", model="m", usage=Usage(prompt_tokens=1), latency_ms=3)
    stored = StoredConversation(id=1, project_id=2, title="t", created_at=datetime.now(UTC))
    parts: list[Any] = [
        ReplyChunk(attempt="a", data='data: {"x": 1}\n\n'),
        ReplyResult(attempt="a", body='{"id": "chatcmpl-1"}'),
        ReplyResult(attempt="a", answer=answer, conversation=stored, replayed=True),
        ReplyError(attempt="b", status=400, code="invalid_request", message="m", body="{}"),
    ]
    versions = frozenset({OpenAIReply.VERSION})
    for part in parts:
        body = envelope(OpenAIReply(part=part), "req-1").model_dump_json().encode()
        assert parse_reply(body, versions) == part
        assert (
            parse_reply(body, versions)
            == parse(body, OpenAIReply, OpenAIReply.TYPE, versions).data.part
        )
    good = orjson.loads(envelope(OpenAIReply(part=parts[0])).model_dump_json())
    bad = [
        b"not json",
        orjson.dumps({**good, "type": "openai.request"}),
        orjson.dumps({**good, "version": 1}),
        orjson.dumps({**good, "data": {"part": good["data"]["part"], "more": 1}}),
        orjson.dumps({**good, "data": {"part": {**good["data"]["part"], "kind": "other"}}}),
        orjson.dumps({**good, "data": {"part": {**good["data"]["part"], "data": 5}}}),
    ]
    for body in bad:
        with pytest.raises(InvalidMessage):
            parse_reply(body, versions)
        with pytest.raises(InvalidMessage):
            parse(body, OpenAIReply, OpenAIReply.TYPE, versions)
