"""How the openai-worker writes one exchange, on the store (`chatbeto.store.conversations`).

Writes are idempotent per request: each stored row carries an `external_id` derived from the
broker message id, so a redelivered request stores nothing twice.
"""

from __future__ import annotations

import uuid
from collections.abc import Sequence
from dataclasses import dataclass, replace

from chatbeto import spend
from chatbeto.db import Conn
from chatbeto.store import conversations
from chatbeto.store.conversations import Conversation, NewConversation, NewMessage


@dataclass(frozen=True)
class Exchange:
    """One request's rows: a new conversation (`conversation_id` None) or an existing one, and
    its messages in order. Ids derive from the request's message id (idempotent)."""

    external_id: str
    messages: Sequence[NewMessage]
    request_id: str | None
    conversation_id: int | None = None
    # A new conversation:
    project_id: int | None = None
    title: str | None = None
    model: str | None = None
    source: str = conversations.API
    session_id: uuid.UUID | None = None
    # The model call's spend, written in the same transaction (docs/COSTS.md).
    charge: spend.Charge | None = None

    def new_conversation(self) -> NewConversation:
        return NewConversation(
            external_id=self.external_id,
            source=self.source,
            title=self.title,
            model=self.model,
            session_id=self.session_id,
            request_id=self.request_id,
            messages=self.messages,
        )


class ConversationGone(Exception):
    """The conversation to append to no longer exists."""


async def store_exchange(conn: Conn, exchange: Exchange) -> Conversation:
    """The one place an exchange is written (the caller holds a transaction if the exchange
    takes more than one statement): its conversation (created, or locked to append in order),
    its messages and its spend, each once."""
    if exchange.conversation_id is None:
        if exchange.project_id is None:
            raise ValueError("a new conversation needs a project")
        new = exchange.new_conversation()
        created = await conversations.create_with_messages(conn, exchange.project_id, new)
        if created is None:  # a redelivery: it exists; add what is missing
            created, _ = await conversations.create(conn, exchange.project_id, new)
            await conversations.append(conn, created.id, exchange.messages)
        conv = created
    else:
        found = await conversations.lock(conn, exchange.conversation_id)
        if found is None:
            raise ConversationGone
        conv = found
        await conversations.append(conn, conv.id, exchange.messages)
    if exchange.charge is not None:
        await spend.record(conn, replace(exchange.charge, project_id=conv.project_id))
    return conv
