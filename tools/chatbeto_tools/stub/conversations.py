"""OpenAI's Conversations API (what `chatbeto`'s sync job copies conversations to)."""

from __future__ import annotations

import time
import uuid
from typing import Any

from aiohttp import web

from chatbeto_tools.stub.common import error, json_response, provoke, text_of

CONVERSATIONS = web.AppKey("conversations", dict[str, dict[str, Any]])
MAX_ITEMS_PER_CALL = 20


def item(raw: dict[str, Any]) -> dict[str, Any]:
    """A conversation item as OpenAI stores it (a message with typed content parts)."""
    role = raw.get("role", "user")
    kind = "output_text" if role == "assistant" else "input_text"
    return {
        "type": "message",
        "id": f"msg_{uuid.uuid4().hex[:24]}",
        "status": "completed",
        "role": role,
        "content": [{"type": kind, "text": text_of(raw.get("content"))}],
    }


def _too_many() -> web.Response:
    return error(400, "You may add up to 20 items at a time.", "invalid_request_error")


def _not_found() -> web.Response:
    return error(404, "Conversation not found", "invalid_request_error")


def _page(items: list[dict[str, Any]]) -> web.Response:
    return json_response(
        {
            "object": "list",
            "data": items,
            "first_id": items[0]["id"] if items else None,
            "last_id": items[-1]["id"] if items else None,
            "has_more": False,
        }
    )


async def create_conversation(request: web.Request) -> web.Response:
    body = await request.json() if request.can_read_body else {}
    items = body.get("items") or []
    if len(items) > MAX_ITEMS_PER_CALL:
        return _too_many()
    failed = await provoke(request, " ".join(text_of(i.get("content")) for i in items))
    if failed is not None:
        return failed
    conv: dict[str, Any] = {
        "id": f"conv_{uuid.uuid4().hex}",
        "object": "conversation",
        "created_at": int(time.time()),
        "metadata": body.get("metadata") or {},
    }
    request.app[CONVERSATIONS][conv["id"]] = {**conv, "items": [item(i) for i in items]}
    return json_response(conv)


async def add_items(request: web.Request) -> web.Response:
    conv = request.app[CONVERSATIONS].get(request.match_info["id"])
    if conv is None:
        return _not_found()
    body = await request.json()
    items = [item(i) for i in body.get("items") or []]
    if len(items) > MAX_ITEMS_PER_CALL:
        return _too_many()
    conv["items"].extend(items)
    return _page(items)


async def list_items(request: web.Request) -> web.Response:
    conv = request.app[CONVERSATIONS].get(request.match_info["id"])
    if conv is None:
        return _not_found()
    return _page(conv["items"])


async def get_conversation(request: web.Request) -> web.Response:
    conv = request.app[CONVERSATIONS].get(request.match_info["id"])
    if conv is None:
        return _not_found()
    return json_response({k: v for k, v in conv.items() if k != "items"})
