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


async def store_exchanges(
    conn: Conn, exchanges: Sequence[Exchange], keys: spend.KeyLimits
) -> list[Conversation]:
    """The one place exchanges are written (outside any transaction), each once. New
    conversations — the hot path — are one statement each with their messages and spend,
    pipelined in one round trip for all and atomic together (a failure writes none of them and
    raises); the others (a redelivery finds its conversation, an append to an existing one)
    each take a transaction of their own."""
    out: list[Conversation | None] = [None] * len(exchanges)
    # In key order: a group locks its keys' window rows in the order every group does, so two
    # groups sharing keys never wait for each other in a cycle (a deadlock, and its 1 s).
    fresh = sorted(
        (
            n
            for n, e in enumerate(exchanges)
            if e.conversation_id is None and e.project_id is not None
        ),
        key=lambda n: _key_order(exchanges[n]),
    )
    if fresh:
        items = []
        for n in fresh:
            e = exchanges[n]
            assert e.project_id is not None
            charge = None
            if e.charge is not None:
                charge = await spend.entry(conn, replace(e.charge, project_id=e.project_id), keys)
            items.append((e.project_id, e.new_conversation(), charge))
        if len(items) == 1:
            created = [await conversations.create_with_messages(conn, *items[0])]
        else:
            created = await conversations.create_many_with_messages(conn, items)
        for n, conv in zip(fresh, created, strict=True):
            out[n] = conv
    stored = []
    for exchange, conv in zip(exchanges, out, strict=True):
        if conv is None:
            async with conn.transaction():
                conv = await store_exchange(conn, exchange, keys)
        stored.append(conv)
    return stored


def _key_order(exchange: Exchange) -> int:
    charge = exchange.charge
    return -1 if charge is None or charge.key_id is None else charge.key_id


async def store_exchange(
    conn: Conn, exchange: Exchange, keys: spend.KeyLimits | None = None
) -> Conversation:
    """One exchange, in the caller's transaction: its conversation (created, or locked to
    append in order), its messages and its spend, each once."""
    if exchange.conversation_id is None:
        if exchange.project_id is None:
            raise ValueError("a new conversation needs a project")
        new = exchange.new_conversation()
        created, _ = await conversations.create(conn, exchange.project_id, new)
        conv = created
    else:
        found = await conversations.lock(conn, exchange.conversation_id)
        if found is None:
            raise ConversationGone
        conv = found
    await conversations.append(conn, conv.id, exchange.messages)
    if exchange.charge is not None:
        await spend.record(conn, replace(exchange.charge, project_id=conv.project_id), keys=keys)
    return conv
