"""A `metrics.batch` message into the records it carries, each one judged on its own.

The gateway groups many clients' records into one message, so a record that fails validation
must not take the others with it: it is set aside (`Rejected`, dead-lettered with the reason)
and the rest are stored. Only a message that is not a metrics batch at all is invalid as a whole.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Literal

from aio_pika.abc import AbstractIncomingMessage
from chatbeto.messages import (
    Envelope,
    EventRecord,
    InvalidMessage,
    MetricsBatch,
    SessionRecord,
    raw_envelope,
)
from pydantic import ValidationError

ACCEPTED_VERSIONS = frozenset({1})
Kind = Literal["session", "event"]


@dataclass(frozen=True)
class Rejected:
    """One record that cannot be stored, as it arrived, and why."""

    kind: Kind
    raw: Any
    reason: str


@dataclass
class Decoded:
    message: AbstractIncomingMessage
    request_id: str | None
    sessions: list[SessionRecord] = field(default_factory=list)
    events: list[EventRecord] = field(default_factory=list)
    rejected: list[Rejected] = field(default_factory=list)


_ENVELOPE: Any = Envelope[MetricsBatch]


def decode(message: AbstractIncomingMessage) -> Decoded:
    """Raises `InvalidMessage` only when the message as a whole is not a metrics batch."""
    try:
        # The whole body in one pass of pydantic's JSON parser: the common case, and the fast one.
        env = _ENVELOPE.model_validate_json(message.body)
    except ValidationError:
        return _one_by_one(message)  # re-raises when the envelope itself is at fault
    if env.type != MetricsBatch.TYPE or env.version not in ACCEPTED_VERSIONS:
        return _one_by_one(message)
    return Decoded(message, env.request_id, list(env.data.sessions), list(env.data.events))


def _one_by_one(message: AbstractIncomingMessage) -> Decoded:
    raw = raw_envelope(message.body, MetricsBatch.TYPE, ACCEPTED_VERSIONS)
    data = raw.get("data")
    if not isinstance(data, dict) or set(data) - {"sessions", "events"}:
        raise InvalidMessage("data must hold only sessions and events")
    sessions, events = data.get("sessions", []), data.get("events", [])
    if not isinstance(sessions, list) or not isinstance(events, list):
        raise InvalidMessage("sessions and events must be lists")
    request_id = raw.get("request_id")
    out = Decoded(message, request_id if isinstance(request_id, str) else None)
    for item in sessions:
        try:
            out.sessions.append(SessionRecord.model_validate(item))
        except ValidationError as exc:
            out.rejected.append(Rejected("session", item, _reason(exc)))
    for item in events:
        try:
            out.events.append(EventRecord.model_validate(item))
        except ValidationError as exc:
            out.rejected.append(Rejected("event", item, _reason(exc)))
    return out


def _reason(exc: ValidationError) -> str:
    fields = exc.errors(include_url=False, include_input=False)
    return "invalid fields: " + "; ".join(
        f"{'.'.join(str(p) for p in e['loc']) or 'record'}: {e['msg']}" for e in fields
    )
