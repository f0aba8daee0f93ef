"""SQL of the importer: whole conversations in one transaction, batched with unnest and COPY.

Idempotency rests on ids from the export: a conversation is (project, 'import', its export id),
a message is (conversation, its node id). Only what is missing is written, so a re-import adds
nothing and a grown export adds only new conversations and the messages appended to them.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import orjson

from chatbeto.db import Conn
from chatbeto.importer.convert import Conversation

SOURCE = "import"
# Serialises imports into one project, so the "what is missing" read stays true until commit.
LOCK_CLASS = 0x1A7C
MESSAGE_COLUMNS = (
    "conversation_id",
    "position",
    "role",
    "content",
    "model",
    "external_id",
    "metadata",
    "created_at",
)


@dataclass(frozen=True)
class Stored:
    """What one conversation contributed: new conversation? how many new messages?"""

    created: bool
    new_messages: int
    # Imported before but no longer on the branch the user sees (they edited an earlier prompt
    # or regenerated an answer since): removed, so the conversation mirrors ChatGPT again.
    removed_messages: int = 0


async def store(conn: Conn, project_id: int, batch: Sequence[Conversation]) -> list[Stored]:
    """Store whole conversations; call inside a transaction. One result per conversation.

    `conn` is a plain connection (no JSON codec): metadata goes to COPY as JSON text. Export
    ids must be unique within `batch`.
    """
    await conn.execute("SELECT pg_advisory_xact_lock($1, $2)", LOCK_CLASS, project_id)
    ids = [c.external_id for c in batch]
    # The no-op update makes RETURNING give the ids of known conversations too, through the
    # unique index (a plain lookup here would depend on planner statistics, stale after a
    # bulk load).
    rows = await conn.fetch(
        """INSERT INTO conversations
               (project_id, source, external_id, title, model, gizmo_id, metadata,
                created_at, updated_at)
           SELECT $1, $2, x, t, m, g, md::jsonb, c, u
           FROM unnest($3::text[], $4::text[], $5::text[], $6::text[], $7::text[],
                       $8::timestamptz[], $9::timestamptz[]) AS v(x, t, m, g, md, c, u)
           ON CONFLICT (project_id, source, external_id) WHERE external_id IS NOT NULL
           DO UPDATE SET external_id = EXCLUDED.external_id
           RETURNING id, external_id, xmax = 0 AS inserted""",
        project_id,
        SOURCE,
        ids,
        [c.title for c in batch],
        [c.model for c in batch],
        [c.gizmo_id for c in batch],
        [orjson.dumps(c.metadata).decode() for c in batch],
        [c.created_at for c in batch],
        [c.updated_at for c in batch],
    )
    pk = {r["external_id"]: r["id"] for r in rows}
    fresh = {r["id"] for r in rows if r["inserted"]}
    # Conversations imported before: what they already hold, to append only what is new.
    known: dict[int, tuple[int, set[str]]] = {}
    old = [r["id"] for r in rows if not r["inserted"]]
    if old:
        found = await conn.fetch(
            """SELECT conversation_id, max(position) AS last,
                      array_agg(external_id) FILTER (WHERE external_id IS NOT NULL) AS seen
               FROM messages WHERE conversation_id = ANY($1::bigint[])
               GROUP BY conversation_id""",
            old,
        )
        for r in found:
            known[r["conversation_id"]] = (r["last"], set(r["seen"] or ()))
    records: list[tuple[object, ...]] = []
    results: list[Stored] = []
    grown: list[tuple[int, Conversation]] = []
    stale: list[tuple[int, str]] = []
    for conv in batch:
        cid = pk[conv.external_id]
        last, seen = known.get(cid, (-1, set()))
        if seen:
            gone = seen - {m.external_id for m in conv.messages}
            stale.extend((cid, x) for x in gone)
        else:
            gone = set()
        count = 0
        for message in conv.messages:
            if message.external_id in seen:
                continue
            last += 1
            count += 1
            records.append(
                (
                    cid,
                    last,
                    message.role,
                    message.content,
                    message.model,
                    message.external_id,
                    orjson.dumps(message.metadata).decode(),
                    message.created_at or conv.created_at,
                )
            )
        results.append(Stored(cid in fresh, count, len(gone)))
        if (count or gone) and cid not in fresh:
            grown.append((cid, conv))
    if stale:
        await conn.execute(
            """DELETE FROM messages m USING unnest($1::bigint[], $2::text[]) AS v(c, x)
               WHERE m.conversation_id = v.c AND m.external_id = v.x""",
            [c for c, _ in stale],
            [x for _, x in stale],
        )
    if records:
        await conn.copy_records_to_table("messages", records=records, columns=MESSAGE_COLUMNS)
    if grown:
        await conn.execute(
            """UPDATE conversations c SET title = v.t, updated_at = greatest(c.updated_at, v.u)
               FROM unnest($1::bigint[], $2::text[], $3::timestamptz[]) AS v(id, t, u)
               WHERE c.id = v.id""",
            [cid for cid, _ in grown],
            [c.title for _, c in grown],
            [c.updated_at for _, c in grown],
        )
    return results
