"""A local OpenAI-compatible server: `python -m chatbeto_openai_worker.stub --port N`.

Used by the tests and by `make dev` when OPENAI_API_KEY is unset. It speaks OpenAI's real wire
format (so the official SDK talks to it unchanged) and answers deterministically: the assistant
echoes the last user message, prefixed with how many messages it was sent, so a caller can tell
the whole history arrived. Tokens are counted as whitespace-separated words.

Failures are provoked by magic text in the last message (or the `X-Stub` header):
- `[[fail:401]]`, `[[fail:403]]`, `[[fail:429]]`, `[[fail:500]]`: that status, every time;
- `[[fail:500x2]]`: that status for the first 2 requests with this exact text, then success;
- `[[slow:1.5]]`: answer after 1.5 s (streamed answers wait before the first chunk);
- `[[cut]]`: a streamed answer's connection drops after a few chunks.
"""

from __future__ import annotations

import argparse
import asyncio
import re
import time
import uuid
from collections import Counter
from typing import Any

import orjson
from aiohttp import web

MAGIC_RE = re.compile(r"\[\[(fail|slow):([0-9.]+)(?:x(\d+))?\]\]")
MODELS = ("gpt-4", "gpt-4o", "gpt-4o-mini", "gpt-3.5-turbo")
FAILURES = web.AppKey("failures", Counter[str])
RESPONSES = web.AppKey("responses", dict[str, dict[str, Any]])
CONVERSATIONS = web.AppKey("conversations", dict[str, dict[str, Any]])
# How many `[[slow:…]]` requests are being held right now (tests poll it).
SLOW_IN_FLIGHT = web.AppKey("slow_in_flight", list[int])
MAX_SLOW_SECONDS = 120.0
CUT_MAGIC = "[[cut]]"
CUT_AFTER_CHUNKS = 2


def count_tokens(text: str) -> int:
    return len(text.split())


def text_of(content: Any) -> str:
    """Chat content may be a string or a list of parts."""
    if isinstance(content, str):
        return content
    if isinstance(content, list):
        return " ".join(
            str(part.get("text", "")) for part in content if isinstance(part, dict)
        ).strip()
    return ""


def _error(status: int, message: str, type_: str, code: str | None = None) -> web.Response:
    body = {"error": {"message": message, "type": type_, "param": None, "code": code}}
    return web.json_response(body, status=status, dumps=lambda v: orjson.dumps(v).decode())


async def provoke(request: web.Request, text: str) -> web.Response | None:
    """Apply the magic in `text` (or the X-Stub header): an error response, a delay, or nothing."""
    match = MAGIC_RE.search(request.headers.get("X-Stub", "") + " " + text)
    if match is None:
        return None
    kind, value, times = match.groups()
    if kind == "slow":
        request.app[SLOW_IN_FLIGHT][0] += 1
        try:
            await asyncio.sleep(min(float(value), MAX_SLOW_SECONDS))
        finally:
            request.app[SLOW_IN_FLIGHT][0] -= 1
        return None
    status = int(float(value))
    if times is not None:
        seen = request.app[FAILURES]
        seen[match.group(0) + text] += 1
        if seen[match.group(0) + text] > int(times):
            return None
    if status == 401:
        return _error(
            401, "Incorrect API key provided.", "invalid_request_error", "invalid_api_key"
        )
    if status == 403:
        return _error(403, "Not allowed.", "invalid_request_error", "forbidden")
    if status == 429:
        return _error(429, "Rate limit reached.", "requests", "rate_limit_exceeded")
    return _error(status, "The server had an error.", "server_error")


def _authorized(request: web.Request) -> bool:
    auth = request.headers.get("Authorization", "")
    return auth.startswith("Bearer ") and len(auth) > len("Bearer ")


def answer_for(messages: list[dict[str, Any]]) -> tuple[str, int]:
    """(answer, prompt tokens) for a chat history."""
    last_user = next(
        (text_of(m.get("content")) for m in reversed(messages) if m.get("role") == "user"), ""
    )
    prompt_tokens = sum(count_tokens(text_of(m.get("content"))) for m in messages)
    return f"echo[{len(messages)}]: {last_user}", prompt_tokens


async def chat_completions(request: web.Request) -> web.StreamResponse:
    if not _authorized(request):
        return _error(401, "No API key provided.", "invalid_request_error", "invalid_api_key")
    body = await request.json()
    messages = body.get("messages") or []
    if not isinstance(messages, list) or not messages:
        return _error(400, "messages is required", "invalid_request_error")
    last = text_of(messages[-1].get("content")) if isinstance(messages[-1], dict) else ""
    failed = await provoke(request, last)
    if failed is not None:
        return failed
    model = str(body.get("model") or "gpt-4")
    content, prompt_tokens = answer_for(messages)
    max_tokens = body.get("max_tokens") or body.get("max_completion_tokens")
    words = content.split(" ")
    if isinstance(max_tokens, int) and max_tokens > 0:
        words = words[:max_tokens]
        content = " ".join(words)
    usage = {
        "prompt_tokens": prompt_tokens,
        "completion_tokens": count_tokens(content),
        "total_tokens": prompt_tokens + count_tokens(content),
    }
    ident = f"chatcmpl-{uuid.uuid4().hex[:24]}"
    created = int(time.time())
    if not body.get("stream"):
        return web.json_response(
            {
                "id": ident,
                "object": "chat.completion",
                "created": created,
                "model": model,
                "choices": [
                    {
                        "index": 0,
                        "message": {"role": "assistant", "content": content, "refusal": None},
                        "logprobs": None,
                        "finish_reason": "stop",
                    }
                ],
                "usage": usage,
                "system_fingerprint": "fp_stub",
            }
        )
    include_usage = bool((body.get("stream_options") or {}).get("include_usage"))
    response = web.StreamResponse(headers={"Content-Type": "text/event-stream"})
    await response.prepare(request)

    def chunk(delta: dict[str, Any], finish: str | None) -> dict[str, Any]:
        return {
            "id": ident,
            "object": "chat.completion.chunk",
            "created": created,
            "model": model,
            "choices": [{"index": 0, "delta": delta, "logprobs": None, "finish_reason": finish}],
        }

    parts = [chunk({"role": "assistant", "content": ""}, None)]
    parts += [chunk({"content": w if i == 0 else " " + w}, None) for i, w in enumerate(words)]
    parts.append(chunk({}, "stop"))
    if include_usage:
        parts.append({**chunk({}, None), "choices": [], "usage": usage})
    for n, part in enumerate(parts):
        await response.write(b"data: " + orjson.dumps(part) + b"\n\n")
        if n == CUT_AFTER_CHUNKS and CUT_MAGIC in last and request.transport is not None:
            request.transport.abort()  # the connection drops mid-answer
            return response
    await response.write(b"data: [DONE]\n\n")
    await response.write_eof()
    return response


async def models(request: web.Request) -> web.Response:
    return web.json_response(
        {
            "object": "list",
            "data": [
                {"id": m, "object": "model", "created": 1_700_000_000, "owned_by": "stub"}
                for m in MODELS
            ],
        }
    )


def _item(item: dict[str, Any]) -> dict[str, Any]:
    """A conversation item as OpenAI stores it (a message with typed content parts)."""
    role = item.get("role", "user")
    kind = "output_text" if role == "assistant" else "input_text"
    return {
        "type": "message",
        "id": f"msg_{uuid.uuid4().hex[:24]}",
        "status": "completed",
        "role": role,
        "content": [{"type": kind, "text": text_of(item.get("content"))}],
    }


async def create_conversation(request: web.Request) -> web.Response:
    body = await request.json() if request.can_read_body else {}
    items = body.get("items") or []
    if len(items) > 20:
        return _error(400, "You may add up to 20 items at a time.", "invalid_request_error")
    failed = await provoke(request, " ".join(text_of(i.get("content")) for i in items))
    if failed is not None:
        return failed
    conv: dict[str, Any] = {
        "id": f"conv_{uuid.uuid4().hex}",
        "object": "conversation",
        "created_at": int(time.time()),
        "metadata": body.get("metadata") or {},
    }
    request.app[CONVERSATIONS][conv["id"]] = {**conv, "items": [_item(i) for i in items]}
    return web.json_response(conv)


async def add_items(request: web.Request) -> web.Response:
    conv = request.app[CONVERSATIONS].get(request.match_info["id"])
    if conv is None:
        return _error(404, "Conversation not found", "invalid_request_error")
    body = await request.json()
    items = [_item(i) for i in body.get("items") or []]
    if len(items) > 20:
        return _error(400, "You may add up to 20 items at a time.", "invalid_request_error")
    conv["items"].extend(items)
    return web.json_response(
        {
            "object": "list",
            "data": items,
            "first_id": items[0]["id"] if items else None,
            "last_id": items[-1]["id"] if items else None,
            "has_more": False,
        }
    )


async def list_items(request: web.Request) -> web.Response:
    conv = request.app[CONVERSATIONS].get(request.match_info["id"])
    if conv is None:
        return _error(404, "Conversation not found", "invalid_request_error")
    items = conv["items"]
    return web.json_response(
        {
            "object": "list",
            "data": items,
            "first_id": items[0]["id"] if items else None,
            "last_id": items[-1]["id"] if items else None,
            "has_more": False,
        }
    )


async def get_conversation(request: web.Request) -> web.Response:
    conv = request.app[CONVERSATIONS].get(request.match_info["id"])
    if conv is None:
        return _error(404, "Conversation not found", "invalid_request_error")
    return web.json_response({k: v for k, v in conv.items() if k != "items"})


async def create_response(request: web.Request) -> web.Response:
    body = await request.json()
    raw = body.get("input")
    messages = [{"role": "user", "content": raw}] if isinstance(raw, str) else list(raw or [])
    failed = await provoke(request, text_of(messages[-1].get("content")) if messages else "")
    if failed is not None:
        return failed
    content, prompt_tokens = answer_for(messages)
    model = str(body.get("model") or "gpt-4")
    conversation = body.get("conversation")
    conv_id = conversation.get("id") if isinstance(conversation, dict) else conversation
    resp_id = f"resp_{uuid.uuid4().hex}"
    out_tokens = count_tokens(content)
    response: dict[str, Any] = {
        "id": resp_id,
        "object": "response",
        "created_at": int(time.time()),
        "status": "completed",
        "model": model,
        "output": [
            {
                "type": "message",
                "id": f"msg_{uuid.uuid4().hex[:24]}",
                "status": "completed",
                "role": "assistant",
                "content": [{"type": "output_text", "text": content, "annotations": []}],
            }
        ],
        "output_text": content,
        "conversation": {"id": conv_id} if conv_id else None,
        "metadata": body.get("metadata") or {},
        "parallel_tool_calls": True,
        "tool_choice": "auto",
        "tools": [],
        "usage": {
            "input_tokens": prompt_tokens,
            "input_tokens_details": {"cached_tokens": 0},
            "output_tokens": out_tokens,
            "output_tokens_details": {"reasoning_tokens": 0},
            "total_tokens": prompt_tokens + out_tokens,
        },
    }
    request.app[RESPONSES][resp_id] = response
    if conv_id and conv_id in request.app[CONVERSATIONS]:
        items = request.app[CONVERSATIONS][conv_id]["items"]
        items.extend(_item(m) for m in messages)
        items.extend(response["output"])
    return web.json_response(response)


async def get_response(request: web.Request) -> web.Response:
    found = request.app[RESPONSES].get(request.match_info["id"])
    if found is None:
        return _error(
            404, f"No response found with id '{request.match_info['id']}'.", "invalid_request_error"
        )
    return web.json_response(found)


def create_stub_app() -> web.Application:
    app = web.Application(client_max_size=32 * 1024 * 1024)
    app[FAILURES] = Counter()
    app[RESPONSES] = {}
    app[CONVERSATIONS] = {}
    app[SLOW_IN_FLIGHT] = [0]
    app.router.add_post("/v1/chat/completions", chat_completions)
    app.router.add_get("/v1/models", models)
    app.router.add_post("/v1/conversations", create_conversation)
    app.router.add_get("/v1/conversations/{id}", get_conversation)
    app.router.add_post("/v1/conversations/{id}/items", add_items)
    app.router.add_get("/v1/conversations/{id}/items", list_items)
    app.router.add_post("/v1/responses", create_response)
    app.router.add_get("/v1/responses/{id}", get_response)
    return app


def main() -> None:
    parser = argparse.ArgumentParser(prog="chatbeto_openai_worker.stub")
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=8099)
    args = parser.parse_args()
    web.run_app(
        create_stub_app(),
        host=args.host,
        port=args.port,
        access_log=None,
        print=None,
        shutdown_timeout=1,
    )


if __name__ == "__main__":
    main()
