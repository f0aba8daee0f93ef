"""The answer to a redelivered `/v1` request whose exchange an earlier delivery stored (it died
between its commit and its reply): rebuilt in OpenAI's wire format from the stored answer, so
the waiting client gets what was stored instead of a second, different answer.

The only place a body is rebuilt rather than forwarded; it is rare by construction.
"""

from __future__ import annotations

import time
from typing import Any

import asyncpg
import orjson
from chatbeto.messages import ProxyCall


def _usage(row: asyncpg.Record) -> dict[str, Any]:
    prompt, completion = row["prompt_tokens"] or 0, row["completion_tokens"] or 0
    return {
        "prompt_tokens": prompt,
        "completion_tokens": completion,
        "total_tokens": prompt + completion,
        "prompt_tokens_details": {"cached_tokens": row["cached_tokens"] or 0},
        "completion_tokens_details": {"reasoning_tokens": row["reasoning_tokens"] or 0},
    }


def body(job: ProxyCall, row: asyncpg.Record, default_model: str) -> str:
    meta = row["metadata"] or {}
    model = row["model"] or default_model
    calls = row["tool_calls"]
    created = int(time.time())
    if job.endpoint == "responses":
        usage = _usage(row)
        output: list[dict[str, Any]] = [
            {
                "type": "message",
                "id": f"msg_{meta.get('responseId', 'replayed')}",
                "status": "completed",
                "role": "assistant",
                "content": [{"type": "output_text", "text": row["content"], "annotations": []}],
            }
        ]
        output += [
            {
                "type": "function_call",
                "id": f"fc_{c.get('id')}",
                "call_id": c.get("id"),
                "name": c.get("function", {}).get("name"),
                "arguments": c.get("function", {}).get("arguments"),
                "status": "completed",
            }
            for c in calls or ()
        ]
        response = {
            "id": meta.get("responseId", "resp_replayed"),
            "object": "response",
            "created_at": created,
            "status": meta.get("status", "completed"),
            "model": model,
            "output": output,
            "usage": {
                "input_tokens": usage["prompt_tokens"],
                "input_tokens_details": usage["prompt_tokens_details"],
                "output_tokens": usage["completion_tokens"],
                "output_tokens_details": usage["completion_tokens_details"],
                "total_tokens": usage["total_tokens"],
            },
        }
        if not job.stream:
            return orjson.dumps(response).decode()
        event = {"type": "response.completed", "sequence_number": 0, "response": response}
        return f"event: response.completed\ndata: {orjson.dumps(event).decode()}\n\n"
    message: dict[str, Any] = {"role": "assistant", "content": row["content"], "refusal": None}
    if calls:
        message["tool_calls"] = calls
    finish = meta.get("finishReason", "tool_calls" if calls else "stop")
    ident = "chatcmpl-replayed"
    if not job.stream:
        return orjson.dumps(
            {
                "id": ident,
                "object": "chat.completion",
                "created": created,
                "model": model,
                "choices": [
                    {"index": 0, "message": message, "logprobs": None, "finish_reason": finish}
                ],
                "usage": _usage(row),
            }
        ).decode()

    def chunk(choices: list[dict[str, Any]], **extra: Any) -> str:
        data = {
            "id": ident,
            "object": "chat.completion.chunk",
            "created": created,
            "model": model,
            "choices": choices,
            **extra,
        }
        return f"data: {orjson.dumps(data).decode()}\n\n"

    delta = dict(message)
    if calls:
        delta["tool_calls"] = [{"index": n, **c} for n, c in enumerate(calls)]
    parts = [
        chunk([{"index": 0, "delta": delta, "logprobs": None, "finish_reason": None}]),
        chunk([{"index": 0, "delta": {}, "logprobs": None, "finish_reason": finish}]),
        chunk([], usage=_usage(row)),
        "data: [DONE]\n\n",
    ]
    return "".join(parts)
