"""Request and response bodies of the HTTP API, in one place (also the OpenAPI source)."""

from __future__ import annotations

import uuid
from datetime import datetime
from typing import Annotated, Literal

from chatbeto.storable import Bool, NonNegInt32, PositiveBigInt, Text, Timestamp, no_nul
from chatbeto.store.gpts import GPT_ID_PATTERN
from pydantic import (
    AfterValidator,
    BaseModel,
    ConfigDict,
    Field,
    StringConstraints,
)

MAX_CONTENIDO_BYTES = 32 * 1024
MAX_BATCH_EVENTS = 1000

# Every field is built from the storable types (chatbeto.storable): a value Postgres cannot
# hold is a 422 naming the field here, never a worker's error after the 2xx.
# The pattern admits no NUL, so a plain str is storable here. (Built on `Text`, whose Python
# validator comes first, pydantic checked the pattern in Python too: 0.5 us an event.)
Tipo = Annotated[str, StringConstraints(pattern=r"^[a-z0-9_.-]{1,64}$")]
GptId = Annotated[Text, StringConstraints(pattern=GPT_ID_PATTERN)]
UserId = Annotated[Text, StringConstraints(min_length=1, max_length=256)]


class Input(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class GptIn(Input):
    id: GptId = Field(
        description="The GPT's id, as its clients send it", examples=["devops-expert"]
    )
    name: Annotated[Text, StringConstraints(min_length=1, max_length=200)]
    projectId: PositiveBigInt | None = None
    keylessIngest: Bool = False


class GptOut(BaseModel):
    id: str
    name: str
    projectId: int | None
    keylessIngest: bool
    builtin: bool
    createdAt: datetime | None = None
    lastEventAt: datetime | None = Field(
        default=None, description="The newest event this key may see (GET /api/gpts only)"
    )


class SessionIn(Input):
    gpt_id: GptId
    usuario_id: UserId
    timestamp_inicio: Timestamp | None = Field(
        default=None, description="ISO 8601 with Z or an offset; defaults to now"
    )


class SessionOut(BaseModel):
    id: uuid.UUID
    gpt_id: str
    usuario_id: str
    timestamp_inicio: datetime


def _storable_contenido(value: str) -> str:
    # `Text`'s NUL check and the byte limit in one Python call, after the native length check.
    no_nul(value)
    if (
        len(value) * 4 > MAX_CONTENIDO_BYTES
        and len(value.encode("utf-8", "surrogatepass")) > MAX_CONTENIDO_BYTES
    ):
        raise ValueError("at most 32 KiB of UTF-8")
    return value


Contenido = Annotated[
    str,
    StringConstraints(max_length=MAX_CONTENIDO_BYTES),
    AfterValidator(_storable_contenido),
]


class EventIn(Input):
    sesion_id: uuid.UUID
    tipo: Tipo
    contenido: Contenido
    latency_ms: NonNegInt32
    tokens_entrada: NonNegInt32
    tokens_salida: NonNegInt32
    timestamp: Timestamp | None = Field(
        default=None, description="ISO 8601 with Z or an offset; defaults to when it arrived"
    )
    id: uuid.UUID | None = Field(default=None, description="Makes retries idempotent")


class EventAccepted(BaseModel):
    id: uuid.UUID


class BatchIn(BaseModel):
    events: list[dict[str, object]] = Field(max_length=MAX_BATCH_EVENTS)


class ValidBatch(BaseModel):
    """A batch whose every event is valid: the fast path's whole-body check (`BatchIn` is the
    documented shape; a batch that fails this is judged item by item)."""

    events: list[EventIn] = Field(max_length=MAX_BATCH_EVENTS)


class BatchResult(BaseModel):
    index: int
    status: Literal[202, 401, 404, 422]
    id: uuid.UUID | None = None
    error: dict[str, object] | None = None


class BatchOut(BaseModel):
    results: list[BatchResult]


class ErrorBody(BaseModel):
    code: str
    message: str
    details: object | None = None


class ErrorOut(BaseModel):
    error: ErrorBody
