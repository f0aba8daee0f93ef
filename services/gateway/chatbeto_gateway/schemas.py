"""Request and response bodies of the HTTP API, in one place (also the OpenAPI source)."""

from __future__ import annotations

import uuid
from datetime import datetime
from typing import Annotated, Literal

from chatbeto.gpts import GPT_ID_PATTERN
from pydantic import (
    AwareDatetime,
    BaseModel,
    ConfigDict,
    Field,
    StringConstraints,
    field_validator,
)

MAX_CONTENIDO_BYTES = 32 * 1024
MAX_BATCH_EVENTS = 1000

Tipo = Annotated[str, StringConstraints(pattern=r"^[a-z0-9_.-]{1,64}$")]
NonNegInt = Annotated[int, Field(ge=0, le=2_147_483_647, strict=True)]
GptId = Annotated[str, StringConstraints(pattern=GPT_ID_PATTERN)]
UserId = Annotated[str, StringConstraints(min_length=1, max_length=256)]


class Input(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class GptIn(Input):
    id: GptId = Field(
        description="The GPT's id, as its clients send it", examples=["devops-expert"]
    )
    name: Annotated[str, StringConstraints(min_length=1, max_length=200)]
    projectId: int | None = Field(default=None, gt=0)
    keylessIngest: bool = False


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
    timestamp_inicio: AwareDatetime | None = Field(
        default=None, description="ISO 8601 with Z or an offset; defaults to now"
    )


class SessionOut(BaseModel):
    id: uuid.UUID
    gpt_id: str
    usuario_id: str
    timestamp_inicio: datetime


class EventIn(Input):
    sesion_id: uuid.UUID
    tipo: Tipo
    contenido: Annotated[str, StringConstraints(max_length=MAX_CONTENIDO_BYTES)]
    latency_ms: NonNegInt
    tokens_entrada: NonNegInt
    tokens_salida: NonNegInt
    timestamp: AwareDatetime | None = None
    id: uuid.UUID | None = Field(default=None, description="Makes retries idempotent")

    @field_validator("contenido")
    @classmethod
    def _contenido_bytes(cls, value: str) -> str:
        if (
            len(value) * 4 > MAX_CONTENIDO_BYTES
            and len(value.encode("utf-8", "surrogatepass")) > MAX_CONTENIDO_BYTES
        ):
            raise ValueError("at most 32 KiB of UTF-8")
        if "\x00" in value:
            raise ValueError("must not contain NUL characters")
        return value


class EventAccepted(BaseModel):
    id: uuid.UUID


class BatchIn(BaseModel):
    events: list[dict[str, object]] = Field(max_length=MAX_BATCH_EVENTS)


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
