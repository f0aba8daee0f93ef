"""What each event type does, as plain async functions over one connection (in a transaction).

A delivery that cannot be acted on (unknown project or conversation, a body that doesn't fit)
raises `EventFailed`: it is recorded as failed and acknowledged — no retry can fix it, and a
crash loop would hold up the deliveries behind it.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from chatbeto.db import Conn
from chatbeto.messages import WebhookDelivery
from chatbeto.store import conversations, projects
from chatbeto.store.conversations import NewConversation, NewMessage
from pydantic import ValidationError

from chatbeto_webhook.events import (
    ConversationCreated,
    MessageCreated,
    MessageIn,
    OpenAIEvent,
    describe,
    event_data,
)
from chatbeto_webhook.openai_fetch import FetchedResponse

CONVERSATION_CREATED = "conversation.created"
MESSAGE_CREATED = "message.created"
RESPONSE_COMPLETED = "response.completed"


class EventFailed(Exception):
    """This delivery can't be acted on; the message says why (no body content in it)."""


@dataclass(frozen=True)
class Result:
    outcome: str  # processed | recorded
    project_id: int | None = None
    conversation_id: int | None = None


def validate(model: type[Any], data: Any) -> Any:
    try:
        return model.model_validate(data)
    except ValidationError as exc:
        raise EventFailed(describe(exc)) from exc


def needs_fetch(delivery: WebhookDelivery) -> str | None:
    """The OpenAI response id to fetch before acting, if this delivery needs one."""
    if delivery.source == "openai" and delivery.event_type == RESPONSE_COMPLETED:
        event: OpenAIEvent = validate(OpenAIEvent, delivery.payload)
        return event.data.id
    return None


def _new(message: MessageIn, request_id: str | None) -> NewMessage:
    return NewMessage(
        role=message.role,
        content=message.content,
        external_id=message.id,
        model=message.model,
        created_at=message.createdAt,
        request_id=request_id,
    )


async def conversation_created(
    conn: Conn, delivery: WebhookDelivery, request_id: str | None
) -> Result:
    body: ConversationCreated = validate(ConversationCreated, event_data(delivery.payload))
    if not await projects.exists(conn, body.projectId):
        raise EventFailed(f"project {body.projectId} not found")
    # Without a sender id the delivery itself names the conversation (a resend is deduplicated
    # by its delivery key anyway).
    external = str(body.id) if body.id is not None else delivery.delivery_key
    new = NewConversation(
        external_id=external, source=conversations.WEBHOOK, title=body.title, model=body.model
    )
    conv, created = await conversations.create(conn, body.projectId, new)
    if created:
        await conversations.lock(conn, conv.id)
        await conversations.append(conn, conv.id, [_new(m, request_id) for m in body.messages])
    return Result("processed", body.projectId, conv.id)


async def message_created(conn: Conn, delivery: WebhookDelivery, request_id: str | None) -> Result:
    body: MessageCreated = validate(MessageCreated, event_data(delivery.payload))
    conversation_id: int | None
    if isinstance(body.conversationId, str):
        assert body.projectId is not None  # the model requires it with a string id
        named = await conversations.find_by_external(
            conn, body.projectId, conversations.WEBHOOK, body.conversationId
        )
        conversation_id = None if named is None else named.id
    else:
        conversation_id = body.conversationId
    locked = (
        await conversations.lock(conn, conversation_id) if conversation_id is not None else None
    )
    project_id = None if locked is None else locked.project_id
    if (
        conversation_id is None
        or project_id is None
        or (body.projectId is not None and body.projectId != project_id)
    ):
        raise EventFailed(f"conversation {body.conversationId!s} not found")
    await conversations.append(conn, conversation_id, [_new(body.message, request_id)])
    return Result("processed", project_id, conversation_id)


async def response_completed(
    conn: Conn, fetched: FetchedResponse, request_id: str | None
) -> Result:
    conversation_id = fetched.conversation_id
    if conversation_id is None and fetched.remote_conversation_id is not None:
        conversation_id = await conversations.find_by_remote(conn, fetched.remote_conversation_id)
    locked = (
        await conversations.lock(conn, conversation_id) if conversation_id is not None else None
    )
    project_id = None if locked is None else locked.project_id
    if conversation_id is None or project_id is None:
        raise EventFailed(f"no stored conversation for response {fetched.id}")
    answer = NewMessage(
        role="assistant",
        content=fetched.text,
        external_id=fetched.id,
        model=fetched.model,
        prompt_tokens=fetched.input_tokens,
        completion_tokens=fetched.output_tokens,
        request_id=request_id,
    )
    await conversations.append(conn, conversation_id, [answer])
    return Result("processed", project_id, conversation_id)


async def act(
    conn: Conn,
    delivery: WebhookDelivery,
    fetched: FetchedResponse | None,
    request_id: str | None,
) -> Result:
    if delivery.source == "chatgpt" and delivery.event_type == CONVERSATION_CREATED:
        return await conversation_created(conn, delivery, request_id)
    if delivery.source == "chatgpt" and delivery.event_type == MESSAGE_CREATED:
        return await message_created(conn, delivery, request_id)
    if fetched is not None:
        return await response_completed(conn, fetched, request_id)
    return Result("recorded")
