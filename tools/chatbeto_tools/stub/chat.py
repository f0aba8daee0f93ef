"""`POST /v1/chat/completions` as OpenAI answers it: every choice (`n`), tool calls (and their
streamed deltas), JSON mode, logprobs, refusals, usage with details, the usage chunk.

The assistant echoes the last user message, prefixed with how many messages it was sent, so a
caller can tell the whole history arrived. With `tools` (and `tool_choice` not `none`) it calls
the first tool (or the one `tool_choice` names) with `{"query": <last user text>}`; after a
`tool` message it echoes the tool's answer; `[[refuse]]` makes it refuse.
"""

from __future__ import annotations

import asyncio
import time
import uuid
from typing import Any

import orjson
from aiohttp import web

from chatbeto_tools.stub.common import (
    CUT_AFTER_CHUNKS,
    CUT_MAGIC,
    authorized,
    check_model,
    check_temperature,
    count_tokens,
    drip_seconds,
    error,
    json_response,
    provoke,
    read_json,
    text_of,
    unauthorized,
    usage_details,
)

REFUSE_MAGIC = "[[refuse]]"
REFUSAL = "I'm sorry, I can't help with that."
FINGERPRINT = "fp_stub"


def answer_for(messages: list[dict[str, Any]]) -> tuple[str, int]:
    """(answer, prompt tokens) for a chat history."""
    last_user = next(
        (text_of(m.get("content")) for m in reversed(messages) if m.get("role") == "user"), ""
    )
    prompt_tokens = sum(count_tokens(text_of(m.get("content"))) for m in messages)
    if messages and messages[-1].get("role") == "tool":
        return f"echo[{len(messages)}]: tool:{text_of(messages[-1].get('content'))}", prompt_tokens
    return f"echo[{len(messages)}]: {last_user}", prompt_tokens


def _tool_to_call(body: dict[str, Any], messages: list[dict[str, Any]]) -> str | None:
    tools = [t for t in body.get("tools") or () if isinstance(t, dict)]
    choice = body.get("tool_choice", "auto")
    if not tools or choice == "none" or messages[-1].get("role") != "user":
        return None
    if isinstance(choice, dict):
        return str((choice.get("function") or {}).get("name") or "")
    return str((tools[0].get("function") or {}).get("name") or "")


def _logprobs(words: list[str], top: int) -> dict[str, Any]:
    def entry(token: str) -> dict[str, Any]:
        return {"token": token, "logprob": -0.25, "bytes": list(token.encode())}

    return {
        "content": [{**entry(w), "top_logprobs": [entry(w)] * top} for w in words if w],
        "refusal": None,
    }


def _choices(
    body: dict[str, Any], messages: list[dict[str, Any]]
) -> tuple[list[dict[str, Any]], int]:
    """Every choice's message and finish reason; prompt tokens."""
    content, prompt_tokens = answer_for(messages)
    last = text_of(messages[-1].get("content"))
    tool = _tool_to_call(body, messages)
    fmt = body.get("response_format")
    if isinstance(fmt, dict) and fmt.get("type") in ("json_object", "json_schema"):
        content = orjson.dumps({"echo": content}).decode()
    max_tokens = body.get("max_completion_tokens") or body.get("max_tokens")
    if isinstance(max_tokens, int) and max_tokens > 0 and tool is None:
        content = " ".join(content.split(" ")[:max_tokens])
    raw_n = body.get("n")
    n = raw_n if isinstance(raw_n, int) and raw_n > 0 else 1
    out = []
    for index in range(n):
        text = content if index == 0 else f"{content} [{index}]"
        message: dict[str, Any] = {
            "role": "assistant",
            "content": text,
            "refusal": None,
            "annotations": [],
        }
        finish = "stop"
        if REFUSE_MAGIC in last:
            message["content"], message["refusal"] = None, REFUSAL
        elif tool is not None:
            message["content"] = None
            message["tool_calls"] = [
                {
                    "id": f"call_{uuid.uuid4().hex[:24]}",
                    "type": "function",
                    "function": {"name": tool, "arguments": orjson.dumps({"query": last}).decode()},
                }
            ]
            finish = "tool_calls"
        elif isinstance(max_tokens, int) and count_tokens(content) >= max_tokens > 0:
            finish = "length"
        choice: dict[str, Any] = {
            "index": index,
            "message": message,
            "logprobs": None,
            "finish_reason": finish,
        }
        if body.get("logprobs") and message["content"]:
            choice["logprobs"] = _logprobs(
                message["content"].split(" "), body.get("top_logprobs") or 0
            )
        out.append(choice)
    return out, prompt_tokens


def _completion_tokens(choices: list[dict[str, Any]]) -> int:
    total = 0
    for c in choices:
        m = c["message"]
        total += count_tokens(m.get("content") or m.get("refusal") or "")
        for call in m.get("tool_calls") or ():
            total += count_tokens(call["function"]["arguments"])
    return total


async def chat_completions(request: web.Request) -> web.StreamResponse:
    if not authorized(request):
        return unauthorized()
    body = await read_json(request)
    if isinstance(body, web.Response):
        return body
    messages = body.get("messages")
    if (
        not isinstance(messages, list)
        or not messages
        or not all(isinstance(m, dict) for m in messages)
    ):
        return error(
            400,
            "Invalid 'messages': empty array. Expected an array with minimum length 1.",
            "invalid_request_error",
            "empty_array",
            "messages",
        )
    last = text_of(messages[-1].get("content"))
    failed = await provoke(request, last) or check_model(body) or check_temperature(body)
    if failed is not None:
        return failed
    model = str(body["model"])
    choices, prompt_tokens = _choices(body, messages)
    usage = usage_details(model, prompt_tokens, _completion_tokens(choices), body)
    ident = f"chatcmpl-{uuid.uuid4().hex[:24]}"
    created = int(time.time())
    head = {"id": ident, "created": created, "model": model, "system_fingerprint": FINGERPRINT}
    if not body.get("stream"):
        return json_response(
            {
                **head,
                "object": "chat.completion",
                "choices": choices,
                "usage": usage,
                "service_tier": "default",
            }
        )
    include_usage = bool((body.get("stream_options") or {}).get("include_usage"))
    response = web.StreamResponse(headers={"Content-Type": "text/event-stream"})
    await response.prepare(request)
    parts = [*_chunks(choices), {"choices": [], **({"usage": usage} if include_usage else {})}]
    if not include_usage:
        parts.pop()
    drip = drip_seconds(request, last)
    for n, part in enumerate(parts):
        if drip and n:
            await asyncio.sleep(drip)
        chunk = {**head, "object": "chat.completion.chunk", **part}
        if include_usage:
            chunk.setdefault("usage", None)
        await response.write(b"data: " + orjson.dumps(chunk) + b"\n\n")
        if n == CUT_AFTER_CHUNKS and CUT_MAGIC in last and request.transport is not None:
            request.transport.abort()  # the connection drops mid-answer
            return response
    await response.write(b"data: [DONE]\n\n")
    await response.write_eof()
    return response


def _chunks(choices: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """The choices as OpenAI streams them: role first, then content word by word (or tool-call
    deltas: id and name, then the arguments in pieces), then the finish reason."""
    out: list[dict[str, Any]] = []

    def delta(index: int, d: dict[str, Any], finish: str | None = None, lp: Any = None) -> None:
        out.append(
            {"choices": [{"index": index, "delta": d, "logprobs": lp, "finish_reason": finish}]}
        )

    for choice in choices:
        i, message = choice["index"], choice["message"]
        delta(i, {"role": "assistant", "content": "", "refusal": None})
        if message.get("refusal"):
            delta(i, {"refusal": message["refusal"]})
        words = (message.get("content") or "").split(" ") if message.get("content") else []
        entries = (choice.get("logprobs") or {}).get("content") or []
        for n, word in enumerate(words):
            lp = {"content": [entries[n]], "refusal": None} if n < len(entries) else None
            delta(i, {"content": word if n == 0 else " " + word}, lp=lp)
        for t, call in enumerate(message.get("tool_calls") or ()):
            delta(
                i,
                {
                    "tool_calls": [
                        {
                            "index": t,
                            "id": call["id"],
                            "type": "function",
                            "function": {"name": call["function"]["name"], "arguments": ""},
                        }
                    ]
                },
            )
            args = call["function"]["arguments"]
            for start in range(0, len(args), 8):
                delta(
                    i,
                    {
                        "tool_calls": [
                            {"index": t, "function": {"arguments": args[start : start + 8]}}
                        ]
                    },
                )
        delta(i, {}, choice["finish_reason"])
    return out
