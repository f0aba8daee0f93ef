"""Every message on the broker, in one place: frozen pydantic models with `extra="forbid"`.

The envelope carries `type`, `version`, `message_id`, `occurred_at` and `request_id`; the same
values are set as AMQP properties. A breaking change is a new version; consumers keep accepting
the versions still in flight.
"""

from __future__ import annotations

import functools
import os
import uuid
from collections.abc import Iterator
from datetime import UTC, datetime
from decimal import Decimal
from typing import (
    Annotated,
    Any,
    ClassVar,
    Generic,
    Literal,
    NamedTuple,
    NoReturn,
    Self,
    TypeVar,
    cast,
)

import aio_pika
import orjson
from pamqp.commands import Basic
from pydantic import BaseModel, ConfigDict, Field, TypeAdapter

from chatbeto.logging import REQUEST_ID
from chatbeto.storable import BigInt, NonNegInt32, Text, Timestamp

# Random (version 4) UUIDs from the OS's CSPRNG, read 256 at a time and built without
# `UUID.__init__`'s checks: `uuid.uuid4()` and `str()` of one were 4 % of the ingest hot path.
_UUIDS_PER_READ = 256
_VERSION_4_MASK = ~((0xF000 << 64) | (0xC000 << 48))
_VERSION_4_BITS = (0x4000 << 64) | (0x8000 << 48)


def _uuid4s() -> Iterator[uuid.UUID]:
    new, set_ = object.__new__, object.__setattr__
    unknown = uuid.SafeUUID.unknown
    while True:
        block = os.urandom(16 * _UUIDS_PER_READ)
        for start in range(0, len(block), 16):
            value = new(uuid.UUID)
            set_(
                value,
                "int",
                int.from_bytes(block[start : start + 16]) & _VERSION_4_MASK | _VERSION_4_BITS,
            )
            set_(value, "is_safe", unknown)
            yield value


_uuids = _uuid4s()


def _reseed() -> None:
    global _uuids
    _uuids = _uuid4s()  # a forked child must not hand out its parent's ids


os.register_at_fork(after_in_child=_reseed)


def new_uuid4() -> uuid.UUID:
    """What `uuid.uuid4()` returns, at a fifth of its cost."""
    return next(_uuids)


class Frozen(BaseModel):
    model_config = ConfigDict(frozen=True, extra="forbid")

    @classmethod
    def trusted(cls, **values: Any) -> Self:
        """An instance of values validated already, by field name (as `model_construct`, at a
        third of its cost: 9 us a record on the ingest hot path). A field with a plain default
        may be left out; every other must be given."""
        shape = _shapes.get(cls) or _shape_of(cls)
        if len(values) == shape.size:
            fields_set = set(values)
            if fields_set != shape.names:
                _unknown(cls, values)
        else:
            fields_set = set(values)
            for name, default in shape.defaults.items():
                if name not in values:
                    values[name] = default
            if values.keys() != shape.names:
                _unknown(cls, values)
        model = cls.__new__(cls)
        _set(model, "__dict__", values)
        _set(model, "__pydantic_fields_set__", fields_set)
        _set(model, "__pydantic_extra__", None)
        _set(model, "__pydantic_private__", None)
        return model


_set = object.__setattr__
_new = object.__new__


class _Shape(NamedTuple):
    names: frozenset[str]
    size: int
    # The plain defaults of the optional fields (a field with a default factory must be given).
    defaults: dict[str, Any]


# Per model class, read once: `cls.model_fields` alone cost 0.4 us a call.
_shapes: dict[type[Frozen], _Shape] = {}


def _shape_of(cls: type[Frozen]) -> _Shape:
    fields = cls.model_fields
    defaults = {
        name: field.default
        for name, field in fields.items()
        if not field.is_required() and field.default_factory is None
    }
    shape = _shapes[cls] = _Shape(frozenset(fields), len(fields), defaults)
    return shape


def _unknown(cls: type[Frozen], values: dict[str, Any]) -> NoReturn:
    unknown = values.keys() ^ _shape_of(cls).names
    raise TypeError(f"{cls.__name__}.trusted: missing or unknown {sorted(unknown)}")


class SessionRecord(Frozen):
    id: uuid.UUID
    gpt_pk: BigInt
    usuario_id: Text
    timestamp_inicio: Timestamp
    # Set for sessions of the built-in `chatbeto` GPT: whose project's traffic it is.
    project_id: BigInt | None = None
    request_id: Text | None = None


class EventRecord(Frozen):
    id: uuid.UUID
    sesion_id: uuid.UUID
    tipo: Text
    contenido: Text
    latency_ms: NonNegInt32
    tokens_entrada: NonNegInt32
    tokens_salida: NonNegInt32
    timestamp: Timestamp
    request_id: Text | None = None
    # What the model call cost, priced from its usage; None when unknown (or not a model call).
    # Exact (Decimal, as chatbeto.spend prices it); travels as a JSON string.
    cost_usd: Decimal | None = Field(default=None, ge=0, allow_inf_nan=False)

    @classmethod
    def of(
        cls,
        id: uuid.UUID,
        sesion_id: uuid.UUID,
        tipo: str,
        contenido: str,
        latency_ms: int,
        tokens_entrada: int,
        tokens_salida: int,
        timestamp: datetime,
        request_id: str | None,
    ) -> EventRecord:
        """`trusted` for the ingest hot path, with the fields spelled out (so typed): values
        validated already (`EventIn`), no cost. Half of `trusted`'s 2.6 us, which builds and
        checks a keyword dict per record."""
        model = _new(cls)
        _set(
            model,
            "__dict__",
            {
                "id": id,
                "sesion_id": sesion_id,
                "tipo": tipo,
                "contenido": contenido,
                "latency_ms": latency_ms,
                "tokens_entrada": tokens_entrada,
                "tokens_salida": tokens_salida,
                "timestamp": timestamp,
                "request_id": request_id,
                "cost_usd": None,
            },
        )
        _set(model, "__pydantic_fields_set__", _EVENT_FIELDS_SET.copy())
        _set(model, "__pydantic_extra__", None)
        _set(model, "__pydantic_private__", None)
        return model


# What `EventRecord.of` marks as set: every field but the cost, as `trusted` would.
_EVENT_FIELDS_SET = set(EventRecord.model_fields) - {"cost_usd"}


class MetricsBatch(Frozen):
    """Sessions and events that arrived together at one gateway, published as one message.

    Sessions come first: a consumer stores them before the events of the same batch.
    """

    TYPE: ClassVar[str] = "metrics.batch"
    VERSION: ClassVar[int] = 1
    sessions: tuple[SessionRecord, ...] = ()
    events: tuple[EventRecord, ...] = ()


class LiveEvent(Frozen):
    """A stored event as the live dashboards see it (no `contenido`: it stays in the database)."""

    id: uuid.UUID
    sesion_id: uuid.UUID
    gpt_pk: int
    project_id: int | None = None
    usuario_id: str
    tipo: str
    latency_ms: int
    tokens_entrada: int
    tokens_salida: int
    timestamp: datetime


class LiveEvents(Frozen):
    """What metrics-ingest just committed, fanned out to every gateway; transient."""

    TYPE: ClassVar[str] = "live.events"
    VERSION: ClassVar[int] = 1
    events: tuple[LiveEvent, ...] = ()


class WebhookDelivery(Frozen):
    """A webhook whose signature the gateway verified; the webhook service acts on it once.

    `delivery_key` names the delivery across redeliveries (`std:<webhook-id>`, or for the legacy
    scheme `legacy:<timestamp>:<signature>`); a unique constraint on it makes processing
    exactly-once.
    """

    TYPE: ClassVar[str] = "webhook.delivery"
    VERSION: ClassVar[int] = 1
    source: str = Field(description="endpoint it arrived on", examples=["chatgpt", "openai"])
    delivery_key: str
    webhook_id: str | None = None
    event_type: str = Field(examples=["conversation.created", "response.completed"])
    received_at: datetime
    payload: dict[str, Any] = Field(description="the verified JSON body")


class ChatMessage(Frozen):
    """One message of a seed-route conversation (`/api/v1/openai/...`): role and text."""

    role: Literal["system", "user", "assistant", "tool"]
    content: Text


class Caller(Frozen):
    """Who asked: the API key (its id for budgets, its public prefix as the metrics user)."""

    key_id: int | None = None
    key_prefix: str = "chatbeto"
    # The key's own project (None for an admin key); where the exchange is stored is the call's.
    project_id: int | None = None

    @property
    def user(self) -> str:
        """The metrics event's `usuario_id`: the key's public prefix, never the key."""
        return f"key:{self.key_prefix}" if self.key_id is not None else self.key_prefix


class ConversationCreate(Frozen):
    action: Literal["conversation.create"] = "conversation.create"
    project_id: int
    title: Text | None = None
    model: str | None = None
    message: ChatMessage | None = None


class ConversationMessage(Frozen):
    action: Literal["conversation.message"] = "conversation.message"
    conversation_id: int
    message: ChatMessage


class ChatCall(Frozen):
    """The seed route `POST /api/v1/openai/chat/completions`: text in, text out."""

    action: Literal["chat"] = "chat"
    project_id: int | None = None
    messages: tuple[ChatMessage, ...]
    model: str | None = None
    temperature: float | None = None
    max_tokens: int | None = None
    stream: bool = False


ProxyEndpoint = Literal["chat.completions", "responses", "embeddings"]


class ProxyCall(Frozen):
    """A `/v1/*` call forwarded as the client sent it: `body` reaches OpenAI unchanged (but for
    a defaulted `model`); the answer comes back as OpenAI's own bytes."""

    action: Literal["proxy"] = "proxy"
    endpoint: ProxyEndpoint
    project_id: int | None = None
    body: dict[str, Any]
    stream: bool = False


RequestCall = Annotated[
    ConversationCreate | ConversationMessage | ChatCall | ProxyCall, Field(discriminator="action")
]


class OpenAIRequest(Frozen):
    """A request the gateway hands to an openai-worker and waits for (request/reply).

    The AMQP `correlation_id` and `reply_to` say where the answer goes; `deadline` is when the
    gateway stops waiting, after which a worker skips the request rather than answer nobody.
    """

    TYPE: ClassVar[str] = "openai.request"
    VERSION: ClassVar[int] = 2
    call: RequestCall
    caller: Caller = Caller()
    deadline: datetime

    @property
    def routing_key(self) -> str:
        return f"{self.TYPE}.{self.call.action}"


class Usage(Frozen):
    prompt_tokens: int = 0
    completion_tokens: int = 0
    total_tokens: int = 0
    # Details where OpenAI gives them (prices differ for cached input; reasoning is output).
    cached_tokens: int = 0
    reasoning_tokens: int = 0


class Answer(Frozen):
    """What the model answered, as the seed routes show it."""

    content: str
    model: str
    usage: Usage
    latency_ms: int


class StoredConversation(Frozen):
    id: int
    project_id: int
    title: str
    created_at: datetime


class ReplyChunk(Frozen):
    """Streamed output: seed routes, a text delta; `/v1`, OpenAI's own SSE bytes (one or more
    whole events, coalesced as they arrived)."""

    kind: Literal["chunk"] = "chunk"
    attempt: str
    data: str


class ReplyResult(Frozen):
    """The end of a successful call, sent once its exchange is committed."""

    kind: Literal["result"] = "result"
    attempt: str
    answer: Answer | None = None
    conversation: StoredConversation | None = None
    # `/v1`: OpenAI's body (plain) or the SSE bytes held back until the commit (streamed: the
    # `[DONE]` line, or the Responses API's final event).
    status: int = 200
    body: str | None = None
    # The answer was stored by an earlier delivery of this request and is sent again.
    replayed: bool = False


class ReplyError(Frozen):
    """A failed call: the HTTP status and code the gateway answers with; `body` is OpenAI's own
    error body when it is forwarded as it came (an OpenAI 4xx)."""

    kind: Literal["error"] = "error"
    attempt: str
    status: int
    code: str
    message: str
    body: str | None = None


ReplyPart = Annotated[ReplyChunk | ReplyResult | ReplyError, Field(discriminator="kind")]


class OpenAIReply(Frozen):
    """One answer message: streamed chunks, then one result or error."""

    TYPE: ClassVar[str] = "openai.reply"
    VERSION: ClassVar[int] = 2
    part: ReplyPart


class SyncJob(Frozen):
    """Copy stored conversations without a remote id to OpenAI's Conversations API."""

    TYPE: ClassVar[str] = "openai.job.sync"
    VERSION: ClassVar[int] = 1
    job_id: uuid.UUID
    project_id: int | None = None


class ImportJob(Frozen):
    """Import the ChatGPT export uploaded as `job_id` (chunks in `import_chunks`)."""

    TYPE: ClassVar[str] = "import.job"
    VERSION: ClassVar[int] = 1
    job_id: uuid.UUID
    project_id: int


P = TypeVar("P", bound=Frozen)


class Envelope(Frozen, Generic[P]):
    type: str
    version: int
    message_id: uuid.UUID = Field(default_factory=uuid.uuid4)
    occurred_at: datetime = Field(default_factory=lambda: datetime.now(UTC))
    request_id: str | None = None
    data: P


@functools.cache
def _envelope_of(payload_type: type[Frozen]) -> Any:
    # Parametrising a generic model builds a class; once per payload type is enough (it was
    # 6 % of the gateway's CPU on the ingest hot path when done per message).
    return cast(Any, Envelope)[payload_type]


def envelope(payload: P, request_id: str | None = None) -> Envelope[P]:
    # Parametrised with the payload's own class so it serialises with all its fields.
    model = _envelope_of(type(payload))
    # Not validated again: every value is typed here (validating cost 10 us a message). The cast
    # is a string: `Envelope[P]` evaluated would parametrise the generic model on every call.
    return cast(
        "Envelope[P]",
        model.trusted(
            type=payload.TYPE,  # type: ignore[attr-defined]
            version=payload.VERSION,  # type: ignore[attr-defined]
            message_id=new_uuid4(),
            occurred_at=datetime.now(UTC),
            request_id=request_id if request_id is not None else REQUEST_ID.get(),
            data=payload,
        ),
    )


def _properties(env: Envelope[Any], persistent: bool, properties: dict[str, Any]) -> dict[str, Any]:
    headers = dict(properties.pop("headers", {}) or {})
    if env.request_id:
        headers["x-request-id"] = env.request_id
    return {
        "content_type": "application/json",
        "delivery_mode": aio_pika.DeliveryMode.PERSISTENT
        if persistent
        else aio_pika.DeliveryMode.NOT_PERSISTENT,
        "message_id": str(env.message_id),
        "type": f"{env.type}.v{env.version}",
        "timestamp": env.occurred_at,
        "headers": headers,
        **properties,
    }


def to_amqp(env: Envelope[Any], *, persistent: bool = True, **properties: Any) -> aio_pika.Message:
    """The AMQP message of an envelope (the only place one is built): properties mirror the
    envelope; persistent unless it is worth nothing after a broker restart (replies)."""
    return aio_pika.Message(
        body=env.model_dump_json().encode(), **_properties(env, persistent, properties)
    )


class Outgoing(NamedTuple):
    """What `to_amqp` builds, as `broker.Publisher.publish` sends it: the body and the AMQP
    properties, the same bytes on the wire."""

    body: bytes
    properties: Basic.Properties


def to_outgoing(env: Envelope[Any], *, persistent: bool = True, **properties: Any) -> Outgoing:
    """`to_amqp` without an `aio_pika.Message`, whose attribute checks cost 8 us a message:
    for the gateway's request/reply call, one per request on its critical path."""
    values = _properties(env, persistent, properties)
    values["message_type"] = values.pop("type")
    # As aio_pika.Message sets it (the same property flags, so the same header frame).
    values.setdefault("priority", 0)
    return Outgoing(dump_json(env), Basic.Properties(**values))


def _fields(value: Any) -> Any:
    if isinstance(value, BaseModel):
        return value.__dict__
    raise TypeError


def dump_json(env: Envelope[Any]) -> bytes:
    """`env.model_dump_json()`, the same JSON value, by orjson from the models' fields: pydantic
    serialising a discriminated union (a request's `call`) was the costliest step of building
    the request. A value orjson does not encode as pydantic does (a Decimal) goes to pydantic."""
    try:
        return orjson.dumps(env, default=_fields, option=orjson.OPT_UTC_Z)
    except TypeError:
        return env.model_dump_json().encode()


class InvalidMessage(Exception):
    """A payload no version of its schema accepts: dead-letter it at once."""


def parse(body: bytes, model: type[P], type_: str, versions: frozenset[int]) -> Envelope[P]:
    raw = raw_envelope(body, type_, versions)
    try:
        return cast("Envelope[P]", _envelope_of(model).model_validate(raw))
    except ValueError as exc:
        raise InvalidMessage(str(exc)) from exc


def raw_envelope(body: bytes, type_: str, versions: frozenset[int]) -> dict[str, Any]:
    """A message's envelope as plain JSON, its type and version checked (`InvalidMessage` if
    not): for readers that validate the data themselves, part by part."""
    try:
        raw = orjson.loads(body)
    except orjson.JSONDecodeError as exc:
        raise InvalidMessage(f"not JSON: {exc}") from exc
    if not isinstance(raw, dict) or raw.get("type") != type_:
        raise InvalidMessage(f"expected type {type_}")
    if raw.get("version") not in versions:
        raise InvalidMessage(f"unsupported version {raw.get('version')!r}")
    return raw


_REPLY_PART: TypeAdapter[ReplyChunk | ReplyResult | ReplyError] = TypeAdapter(ReplyPart)


def parse_reply(body: bytes, versions: frozenset[int]) -> ReplyChunk | ReplyResult | ReplyError:
    """An `OpenAIReply`'s part, validated as `parse` validates it; of the envelope around it
    only the type and version are checked, as the gateway reads nothing else of it (the ids
    and timestamps' validation was half of `parse`'s cost, on every reply's critical path)."""
    data = raw_envelope(body, OpenAIReply.TYPE, versions).get("data")
    if not isinstance(data, dict) or data.keys() != {"part"}:
        raise InvalidMessage("data: expected exactly a `part`")
    try:
        return _REPLY_PART.validate_python(data["part"])
    except ValueError as exc:
        raise InvalidMessage(str(exc)) from exc
