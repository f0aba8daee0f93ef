"""OpenAI's Responses API: `POST /v1/responses` (plain, and streamed as its typed SSE events
ending in `response.completed`) and `GET /v1/responses/{id}`. With function `tools` the model
calls the first one; after a `function_call_output` it echoes the tool's output."""

from __future__ import annotations

import asyncio
import time
import uuid
from typing import Any

import orjson
from aiohttp import web

from chatbeto_tools.stub.chat import answer_for
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
from chatbeto_tools.stub.conversations import CONVERSATIONS, item

RESPONSES = web.AppKey("responses", dict[str, dict[str, Any]])


def _messages(body: dict[str, Any]) -> list[dict[str, Any]]:
    """The input as chat messages (what the echo is computed from)."""
    raw = body.get("input")
    items = [{"role": "user", "content": raw}] if isinstance(raw, str) else list(raw or [])
    out = []
    if isinstance(body.get("instructions"), str):
        out.append({"role": "developer", "content": body["instructions"]})
    for entry in items:
        if not isinstance(entry, dict):
            continue
        if entry.get("type") == "function_call_output":
            out.append({"role": "tool", "content": str(entry.get("output", ""))})
        elif entry.get("type") == "function_call":
            out.append({"role": "assistant", "content": ""})
        else:
            out.append({"role": entry.get("role", "user"), "content": entry.get("content")})
    return out


def _output(
    body: dict[str, Any], messages: list[dict[str, Any]]
) -> tuple[list[dict[str, Any]], int, int]:
    content, prompt_tokens = answer_for(messages)
    tools = [
        t for t in body.get("tools") or () if isinstance(t, dict) and t.get("type") == "function"
    ]
    last = messages[-1] if messages else {}
    if tools and body.get("tool_choice", "auto") != "none" and last.get("role") == "user":
        arguments = orjson.dumps({"query": text_of(last.get("content"))}).decode()
        call = {
            "type": "function_call",
            "id": f"fc_{uuid.uuid4().hex[:24]}",
            "call_id": f"call_{uuid.uuid4().hex[:24]}",
            "name": tools[0].get("name", ""),
            "arguments": arguments,
            "status": "completed",
        }
        return [call], prompt_tokens, count_tokens(arguments)
    message = {
        "type": "message",
        "id": f"msg_{uuid.uuid4().hex[:24]}",
        "status": "completed",
        "role": "assistant",
        "content": [{"type": "output_text", "text": content, "annotations": [], "logprobs": []}],
    }
    return [message], prompt_tokens, count_tokens(content)


async def create_response(request: web.Request) -> web.StreamResponse:
    if not authorized(request):
        return unauthorized()
    body = await read_json(request)
    if isinstance(body, web.Response):
        return body
    if not isinstance(body.get("input"), str | list | None):
        return error(
            400,
            "Invalid type for 'input': expected one of a string or array of input items.",
            "invalid_request_error",
            "invalid_type",
            "input",
        )
    messages = _messages(body)
    last = text_of(messages[-1].get("content")) if messages else ""
    failed = await provoke(request, last) or check_model(body) or check_temperature(body)
    if failed is not None:
        return failed
    if not messages:
        return error(
            400,
            "Missing required parameter: 'input'.",
            "invalid_request_error",
            "missing_required_parameter",
            "input",
        )
    model = str(body["model"])
    output, prompt_tokens, out_tokens = _output(body, messages)
    chat_usage = usage_details(model, prompt_tokens, out_tokens, body)
    conversation = body.get("conversation")
    conv_id = conversation.get("id") if isinstance(conversation, dict) else conversation
    response: dict[str, Any] = {
        "id": f"resp_{uuid.uuid4().hex}",
        "object": "response",
        "created_at": int(time.time()),
        "status": "completed",
        "model": model,
        "output": output,
        "instructions": body.get("instructions"),
        "conversation": {"id": conv_id} if conv_id else None,
        "metadata": body.get("metadata") or {},
        "parallel_tool_calls": True,
        "tool_choice": body.get("tool_choice", "auto"),
        "tools": body.get("tools") or [],
        "usage": {
            "input_tokens": chat_usage["prompt_tokens"],
            "input_tokens_details": {
                "cached_tokens": chat_usage["prompt_tokens_details"]["cached_tokens"]
            },
            "output_tokens": chat_usage["completion_tokens"],
            "output_tokens_details": {
                "reasoning_tokens": chat_usage["completion_tokens_details"]["reasoning_tokens"]
            },
            "total_tokens": chat_usage["total_tokens"],
        },
    }
    if body.get("store", True):
        request.app[RESPONSES][response["id"]] = response
    if conv_id and conv_id in request.app[CONVERSATIONS]:
        items = request.app[CONVERSATIONS][conv_id]["items"]
        items.extend(item(m) for m in messages)
        items.extend(o for o in output if o["type"] == "message")
    if not body.get("stream"):
        return json_response(response)
    return await _stream(request, response, CUT_MAGIC in last, drip_seconds(request, last))


def _events(response: dict[str, Any]) -> list[dict[str, Any]]:
    """The typed events OpenAI streams for this response, in order."""
    started = {**response, "status": "in_progress", "output": [], "usage": None}
    events: list[dict[str, Any]] = [
        {"type": "response.created", "response": started},
        {"type": "response.in_progress", "response": started},
    ]
    for index, out in enumerate(response["output"]):
        at = {"output_index": index, "item_id": out["id"]}
        if out["type"] == "function_call":
            events.append(
                {
                    "type": "response.output_item.added",
                    "output_index": index,
                    "item": {**out, "arguments": "", "status": "in_progress"},
                }
            )
            args = out["arguments"]
            events += [
                {"type": "response.function_call_arguments.delta", **at, "delta": args[i : i + 8]}
                for i in range(0, len(args), 8)
            ]
            events.append(
                {
                    "type": "response.function_call_arguments.done",
                    **at,
                    "arguments": args,
                    "name": out["name"],
                }
            )
        else:
            part = out["content"][0]
            events.append(
                {
                    "type": "response.output_item.added",
                    "output_index": index,
                    "item": {**out, "status": "in_progress", "content": []},
                }
            )
            at = {**at, "content_index": 0}
            events.append(
                {"type": "response.content_part.added", **at, "part": {**part, "text": ""}}
            )
            words = part["text"].split(" ")
            events += [
                {
                    "type": "response.output_text.delta",
                    **at,
                    "logprobs": [],
                    "delta": w if n == 0 else " " + w,
                }
                for n, w in enumerate(words)
            ]
            events.append(
                {"type": "response.output_text.done", **at, "text": part["text"], "logprobs": []}
            )
            events.append({"type": "response.content_part.done", **at, "part": part})
        events.append({"type": "response.output_item.done", "output_index": index, "item": out})
    events.append({"type": "response.completed", "response": response})
    return events


async def _stream(
    request: web.Request, response: dict[str, Any], cut: bool, drip: float
) -> web.StreamResponse:
    stream = web.StreamResponse(headers={"Content-Type": "text/event-stream"})
    await stream.prepare(request)
    for n, event in enumerate(_events(response)):
        if drip and n:
            await asyncio.sleep(drip)
        event = {**event, "sequence_number": n}
        await stream.write(
            f"event: {event['type']}\ndata: ".encode() + orjson.dumps(event) + b"\n\n"
        )
        if cut and n == CUT_AFTER_CHUNKS + 2 and request.transport is not None:
            request.transport.abort()
            return stream
    await stream.write_eof()
    return stream


async def get_response(request: web.Request) -> web.Response:
    found = request.app[RESPONSES].get(request.match_info["id"])
    if found is None:
        return error(
            404, f"No response found with id '{request.match_info['id']}'.", "invalid_request_error"
        )
    return json_response(found)
