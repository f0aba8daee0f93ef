"""One ChatGPT export conversation → the conversation and messages chatbeto stores.

A conversation is a tree in `mapping` (regenerated answers and edited prompts are sibling
branches); what the user saw is the path from the root to `current_node`, so that path — and
only that path — is imported, in order. Content parts are reduced to readable text.

What is stored must fit Postgres (`chatbeto.storable`): NUL characters are stripped from every
stored string (text, titles, ids, metadata; lone surrogates become "?") rather than refusing the
message — an export is the
user's own history, a NUL in it carries no meaning, and refusing would cut a conversation
short; times outside years 1-9999 count as absent.
"""

from __future__ import annotations

import re
from collections.abc import Callable
from datetime import UTC, datetime
from typing import Any

from pydantic import TypeAdapter, ValidationError

from chatbeto.storable import Timestamp
from chatbeto.store.conversations import ImportedConversation, NewMessage

ROLES = frozenset({"user", "assistant", "tool", "system"})
# Context ChatGPT injects but never shows: custom instructions and memory.
HIDDEN_CONTENT_TYPES = frozenset({"user_editable_context", "model_editable_context"})
TITLE_WORDS = 8
TITLE_MAX_CHARS = 80
DEFAULT_TITLE = "Imported conversation"
PLACEHOLDER_RE = re.compile(r"\[(?:image|audio): [^\]]*\]")
_STORABLE_TIME: TypeAdapter[datetime] = TypeAdapter(Timestamp)


class MalformedConversation(ValueError):
    """This conversation can't be imported; the others still can."""


def label(raw: Any, index: int) -> tuple[str, str]:
    """(title, id) to name a conversation in a report, whatever shape it has."""
    if not isinstance(raw, dict):
        return "", f"#{index}"
    title = raw.get("title")
    cid = raw.get("conversation_id") or raw.get("id")
    return (title if isinstance(title, str) else ""), (
        cid if isinstance(cid, str) and cid else f"#{index}"
    )


def timestamp(value: Any) -> datetime | None:
    if isinstance(value, bool) or not isinstance(value, int | float):
        return None
    try:
        moment = datetime.fromtimestamp(value, UTC)
    except (OverflowError, OSError, ValueError):
        return None
    try:
        return _STORABLE_TIME.validate_python(moment)
    except ValidationError:
        return None  # asyncpg would store the far edges as ±infinity


def clean(text: str) -> str:
    # Postgres text can't hold NUL; UTF-8 can't hold a lone surrogate (JSON's "\ud800").
    if "\x00" in text:
        text = text.replace("\x00", "")
    try:
        text.encode()
    except UnicodeEncodeError:
        text = text.encode(errors="replace").decode()
    return text


def _optional(value: Any) -> str | None:
    return clean(value) if isinstance(value, str) and value else None


def clean_json(value: Any) -> Any:
    """A JSON value with NUL stripped from every string (keys too): jsonb refuses NUL."""
    if isinstance(value, str):
        return clean(value)
    if isinstance(value, dict):
        return {clean(str(k)): clean_json(v) for k, v in value.items()}
    if isinstance(value, list):
        return [clean_json(v) for v in value]
    return value


def branch(mapping: dict[str, Any], current: Any) -> list[dict[str, Any]]:
    """The nodes from the root to `current`, in order."""
    if not isinstance(current, str) or current not in mapping:
        current = _last_leaf(mapping)
    path: list[dict[str, Any]] = []
    node_id: Any = current
    while node_id is not None:
        node = mapping.get(node_id)
        if not isinstance(node, dict):
            raise MalformedConversation(f"node {node_id!r} is missing from mapping")
        path.append(node)
        if len(path) > len(mapping):
            raise MalformedConversation("mapping has a cycle")
        node_id = node.get("parent")
    path.reverse()
    return path


def _last_leaf(mapping: dict[str, Any]) -> str:
    """Old exports without `current_node`: follow the newest child from the root."""
    roots = [k for k, n in mapping.items() if isinstance(n, dict) and n.get("parent") is None]
    if not roots:
        raise MalformedConversation("mapping has no root node")
    node_id, seen = roots[0], 0
    while True:
        children = mapping[node_id].get("children") or []
        children = [c for c in children if c in mapping]
        seen += 1
        if not children or seen > len(mapping):
            return node_id
        node_id = children[-1]


def _part_text(part: Any) -> str:
    if isinstance(part, str):
        return part
    if not isinstance(part, dict):
        return ""
    kind = part.get("content_type", "")
    if kind == "image_asset_pointer":
        return f"[image: {_asset_name(part.get('asset_pointer'))}]"
    if kind == "audio_asset_pointer":
        return f"[audio: {_asset_name(part.get('asset_pointer'))}]"
    if kind == "audio_transcription":
        return str(part.get("text") or "")
    if isinstance(part.get("text"), str):
        return str(part["text"])
    return f"[{kind or 'attachment'}]"


def _asset_name(pointer: Any) -> str:
    # "file-service://file-abc123" / "sediment://file_…" → the asset's own id.
    if not isinstance(pointer, str) or not pointer:
        return "unknown"
    return pointer.rsplit("://", 1)[-1]


def _join(parts: Any) -> str:
    if not isinstance(parts, list):
        raise MalformedConversation("content parts is not a list")
    return "\n".join(t for t in (_part_text(p) for p in parts) if t)


def _code(content: dict[str, Any]) -> str:
    text = str(content.get("text") or "")
    language = content.get("language")
    if language and language != "unknown" and text:
        return f"```{language}\n{text}\n```"
    return text


def _quote(content: dict[str, Any]) -> str:
    title, url = content.get("title") or "", content.get("url") or ""
    head = " — ".join(x for x in (title, url) if x)
    text = str(content.get("text") or "")
    return f"{head}\n{text}" if head else text


def _thoughts(content: dict[str, Any]) -> str:
    out = []
    for thought in content.get("thoughts") or []:
        if isinstance(thought, dict):
            summary, body = thought.get("summary") or "", thought.get("content") or ""
            out.append(f"{summary}\n{body}".strip())
    return "\n\n".join(o for o in out if o)


def _error(content: dict[str, Any]) -> str:
    return f"[{content.get('name') or 'error'}] {content.get('text') or ''}".strip()


RENDERERS: dict[str, Callable[[dict[str, Any]], str]] = {
    "text": lambda c: _join(c.get("parts", [])),
    "multimodal_text": lambda c: _join(c.get("parts", [])),
    "code": _code,
    "execution_output": lambda c: str(c.get("text") or ""),
    "tether_browsing_display": lambda c: str(c.get("result") or c.get("summary") or ""),
    "tether_quote": _quote,
    "thoughts": _thoughts,
    "reasoning_recap": lambda c: str(c.get("content") or ""),
    "system_error": _error,
}


def render(content: Any) -> str:
    """A message's content as readable text."""
    if not isinstance(content, dict):
        raise MalformedConversation("message content is not an object")
    kind = content.get("content_type")
    renderer = RENDERERS.get(kind) if isinstance(kind, str) else None
    if renderer is not None:
        return renderer(content)
    # Newer or rarer types: whatever text they carry.
    if isinstance(content.get("parts"), list):
        return _join(content["parts"])
    for key in ("text", "result"):
        if isinstance(content.get(key), str):
            return str(content[key])
    return f"[{kind or 'unknown content'}]"


def _message(node: dict[str, Any]) -> NewMessage | None:
    raw = node.get("message")
    if raw is None:
        return None  # the empty root
    if not isinstance(raw, dict):
        raise MalformedConversation("message is not an object")
    meta = raw.get("metadata") or {}
    if not isinstance(meta, dict):
        meta = {}
    author = raw.get("author") or {}
    role = author.get("role") if isinstance(author, dict) else None
    if role not in ROLES:
        raise MalformedConversation(f"unknown author role {role!r}")
    content = raw.get("content")
    kind = content.get("content_type") if isinstance(content, dict) else None
    if meta.get("is_visually_hidden_from_conversation") or kind in HIDDEN_CONTENT_TYPES:
        return None
    text = clean(render(content)).strip()
    if not text:
        return None  # empty system prompts, tool-call placeholders: nothing was shown
    extra: dict[str, Any] = {"contentType": kind}
    name = author.get("name")
    if name:
        extra["author"] = name
    recipient = raw.get("recipient")
    if recipient and recipient != "all":
        extra["recipient"] = recipient
    return NewMessage(
        external_id=clean(str(raw.get("id") or node.get("id"))),
        role=role,
        content=text,
        model=_optional(meta.get("model_slug")),
        created_at=timestamp(raw.get("create_time")),
        metadata=clean_json(extra),
    )


def default_title(messages: list[NewMessage]) -> str:
    for m in messages:
        if m.role == "user":
            words = " ".join(PLACEHOLDER_RE.sub(" ", m.content).split()[:TITLE_WORDS])
            if words:
                return words[:TITLE_MAX_CHARS]
    return DEFAULT_TITLE


def convert(raw: Any) -> ImportedConversation:
    """The branch the user saw, or `MalformedConversation` saying why not."""
    if not isinstance(raw, dict):
        raise MalformedConversation("not a JSON object")
    external_id = raw.get("conversation_id") or raw.get("id")
    if not isinstance(external_id, str) or not clean(external_id):
        raise MalformedConversation("no conversation id")
    external_id = clean(external_id)
    mapping = raw.get("mapping")
    if not isinstance(mapping, dict) or not mapping:
        raise MalformedConversation("mapping is missing or empty")
    messages: list[NewMessage] = []
    seen: set[str] = set()
    for node in branch(mapping, raw.get("current_node")):
        message = _message(node)
        # (`_message` always names its message: the node's id)
        if message is not None and message.external_id and message.external_id not in seen:
            seen.add(message.external_id)
            messages.append(message)
    created = timestamp(raw.get("create_time"))
    updated = timestamp(raw.get("update_time"))
    if created is None:
        created = next((m.created_at for m in messages if m.created_at), None) or datetime.now(UTC)
    title = raw.get("title")
    title = clean(title).strip() if isinstance(title, str) else ""
    model = _optional(raw.get("default_model_slug"))
    if model is None:
        model = next((m.model for m in reversed(messages) if m.model), None)
    gizmo = _optional(raw.get("gizmo_id"))
    metadata: dict[str, Any] = {"importedFrom": "chatgpt-export"}
    for key, name in (("is_archived", "isArchived"), ("conversation_template_id", "templateId")):
        if raw.get(key):
            metadata[name] = raw[key]
    return ImportedConversation(
        external_id=external_id,
        title=title or default_title(messages),
        created_at=created,
        updated_at=updated or created,
        model=model,
        gizmo_id=gizmo,
        metadata=clean_json(metadata),
        messages=messages,
    )
