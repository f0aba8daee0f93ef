"""What a webhook event's body must hold, per type (the contract names the fields, not more).

Bodies are validated here, in the worker: a verified delivery whose body doesn't fit is recorded
as failed (naming the fields), never retried and never dead-lettered — retrying can't fix it.
Unknown extra fields are ignored, as senders add fields over time.
"""

from __future__ import annotations

from datetime import datetime
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError, model_validator

Role = Literal["system", "user", "assistant", "tool"]
MAX_CONTENT_CHARS = 1_000_000


class Lenient(BaseModel):
    model_config = ConfigDict(extra="ignore", frozen=True)


class MessageIn(Lenient):
    id: str | None = Field(default=None, max_length=256, description="the sender's message id")
    role: Role = "user"
    content: str = Field(max_length=MAX_CONTENT_CHARS)
    model: str | None = Field(default=None, max_length=128)
    createdAt: datetime | None = None


class ConversationCreated(Lenient):
    id: str | int | None = Field(default=None, description="the sender's conversation id")
    projectId: int
    title: str | None = Field(default=None, max_length=500)
    model: str | None = Field(default=None, max_length=128)
    messages: tuple[MessageIn, ...] = Field(default=(), max_length=10_000)


class MessageCreated(Lenient):
    """`conversationId` is chatbeto's id (an integer), or the sender's own id (a string, as
    given in its `conversation.created`) together with `projectId`."""

    conversationId: int | str
    projectId: int | None = None
    message: MessageIn

    @model_validator(mode="before")
    @classmethod
    def _flat(cls, value: Any) -> Any:
        # Accept the message's fields at the top level as well as under `message`.
        if isinstance(value, dict) and "message" not in value and "content" in value:
            inner = {k: value[k] for k in ("id", "role", "content", "model") if k in value}
            return {**value, "message": inner}
        return value

    @model_validator(mode="after")
    def _external_needs_project(self) -> MessageCreated:
        if isinstance(self.conversationId, str) and self.projectId is None:
            raise ValueError("projectId is required with a string conversationId")
        return self


class OpenAIEventData(Lenient):
    id: str = Field(min_length=1, max_length=256)


class OpenAIEvent(Lenient):
    id: str | None = None
    type: str
    data: OpenAIEventData


def event_data(payload: dict[str, Any]) -> Any:
    """The event's object: `{"type", "data": {...}}` envelopes are unwrapped, bare bodies kept."""
    data = payload.get("data")
    if "type" in payload and isinstance(data, dict):
        return data
    return payload


def describe(exc: ValidationError) -> str:
    """`field: message; …` without input values (bodies may hold private text)."""
    parts = []
    for err in exc.errors(include_url=False, include_input=False):
        path = ".".join(str(p) for p in err["loc"]) or "body"
        parts.append(f"{path}: {err['msg']}")
    return "invalid body: " + "; ".join(parts)[:900]
