"""What is stored of a `/v1` exchange, read from OpenAI's own JSON: the request's messages (tool
calls, tool results, non-text parts as a placeholder plus what the part was, never its bytes)
and the whole answer (every choice, tool calls, finish reason, usage with its details).

Only what storage and metrics need is read; the bytes the client gets are OpenAI's, untouched.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import orjson
from chatbeto.messages import Usage

ROLES = frozenset({"system", "developer", "user", "assistant", "tool"})
TEXT_PART_TYPES = frozenset({"text", "input_text", "output_text", "refusal"})


@dataclass
class Turn:
    """One message to store."""

    role: str
    content: str
    tool_calls: list[dict[str, Any]] | None = None
    tool_call_id: str | None = None
    parts: list[dict[str, Any]] | None = None
    metadata: dict[str, Any] = field(default_factory=dict)


@dataclass
class Outcome:
    """The model's side of an exchange."""

    turns: list[Turn]
    model: str
    usage: Usage

    @property
    def content(self) -> str:
        return self.turns[0].content if self.turns else ""


def _describe(part: dict[str, Any]) -> dict[str, Any]:
    """What a non-text part was, without its payload."""
    kind = str(part.get("type", "unknown"))
    out: dict[str, Any] = {"type": kind}
    inner = part.get(kind)
    if kind in ("image_url", "input_image"):
        url = inner.get("url") if isinstance(inner, dict) else part.get("image_url")
        if isinstance(url, str):
            if url.startswith("data:"):
                out["url"] = f"{url.split(',', 1)[0]},… ({len(url)} chars inline)"
            else:
                out["url"] = url[:2000]
        detail = inner.get("detail") if isinstance(inner, dict) else part.get("detail")
        if detail:
            out["detail"] = detail
        if part.get("file_id"):
            out["file_id"] = part["file_id"]
    elif isinstance(inner, dict):  # input_audio {format}, file {filename, file_id}, …
        for key in ("format", "filename", "file_id"):
            if isinstance(inner.get(key), str):
                out[key] = inner[key]
    for key in ("filename", "file_id", "format"):
        if isinstance(part.get(key), str) and key not in out:
            out[key] = part[key]
    return out


def flatten(content: Any) -> tuple[str, list[dict[str, Any]] | None]:
    """Text of a content value (string or list of parts) and the non-text parts described."""
    if isinstance(content, str):
        return content, None
    if not isinstance(content, list):
        return "", None
    texts: list[str] = []
    parts: list[dict[str, Any]] = []
    for part in content:
        if not isinstance(part, dict):
            continue
        kind = part.get("type")
        if kind in TEXT_PART_TYPES:
            texts.append(str(part.get("text", part.get("refusal", ""))))
        else:
            described = _describe(part)
            parts.append(described)
            texts.append(f"[{described['type']}]")
    return "\n".join(texts), parts or None


def _role(value: Any) -> str:
    return value if isinstance(value, str) and value in ROLES else "user"


def _tool_calls(value: Any) -> list[dict[str, Any]] | None:
    return [c for c in value if isinstance(c, dict)] or None if isinstance(value, list) else None


def chat_request(body: dict[str, Any]) -> list[Turn]:
    turns = []
    for message in body.get("messages") or ():
        if not isinstance(message, dict):
            continue
        text, parts = flatten(message.get("content"))
        turn = Turn(
            role=_role(message.get("role")),
            content=text,
            tool_calls=_tool_calls(message.get("tool_calls")),
            tool_call_id=message.get("tool_call_id")
            if isinstance(message.get("tool_call_id"), str)
            else None,
            parts=parts,
        )
        if isinstance(message.get("name"), str):
            turn.metadata["name"] = message["name"]
        turns.append(turn)
    return turns


def usage_of(raw: Any) -> Usage:
    """Chat (`prompt_tokens`…) or Responses (`input_tokens`…) usage, with details."""
    if not isinstance(raw, dict):
        return Usage()

    def num(value: Any) -> int:
        return value if isinstance(value, int) and not isinstance(value, bool) else 0

    def detail(key: str, name: str) -> int:
        inner = raw.get(key)
        return num(inner.get(name)) if isinstance(inner, dict) else 0

    if "input_tokens" in raw or "output_tokens" in raw:
        prompt, completion = num(raw.get("input_tokens")), num(raw.get("output_tokens"))
        cached = detail("input_tokens_details", "cached_tokens")
        reasoning = detail("output_tokens_details", "reasoning_tokens")
    else:
        prompt, completion = num(raw.get("prompt_tokens")), num(raw.get("completion_tokens"))
        cached = detail("prompt_tokens_details", "cached_tokens")
        reasoning = detail("completion_tokens_details", "reasoning_tokens")
    return Usage(
        prompt_tokens=prompt,
        completion_tokens=completion,
        total_tokens=num(raw.get("total_tokens")) or prompt + completion,
        cached_tokens=cached,
        reasoning_tokens=reasoning,
    )


def _answer_turn(message: dict[str, Any], choice: dict[str, Any]) -> Turn:
    text, parts = flatten(message.get("content"))
    turn = Turn(
        role="assistant",
        content=text,
        tool_calls=_tool_calls(message.get("tool_calls")),
        parts=parts,
    )
    if choice.get("finish_reason") is not None:
        turn.metadata["finishReason"] = choice["finish_reason"]
    if message.get("refusal"):
        turn.metadata["refusal"] = message["refusal"]
    return turn


def _with_other_choices(turns: list[Turn]) -> list[Turn]:
    """`n` > 1: the first choice is the assistant message, the others ride in its metadata."""
    if len(turns) <= 1:
        return turns
    first = turns[0]
    first.metadata["otherChoices"] = [
        {"index": n, "content": t.content, "toolCalls": t.tool_calls, **t.metadata}
        for n, t in enumerate(turns[1:], start=1)
    ]
    return [first]


def chat_answer(payload: dict[str, Any], default_model: str) -> Outcome:
    choices = sorted(
        (c for c in payload.get("choices") or () if isinstance(c, dict)),
        key=lambda c: c.get("index", 0) if isinstance(c.get("index"), int) else 0,
    )
    turns = [
        _answer_turn(c["message"] if isinstance(c.get("message"), dict) else {}, c) for c in choices
    ]
    return Outcome(
        _with_other_choices(turns),
        str(payload.get("model") or default_model),
        usage_of(payload.get("usage")),
    )


class ChatStream:
    """Accumulates a streamed chat answer from its chunks (content, tool-call deltas, finish
    reasons, usage) into what a plain answer would have been."""

    def __init__(self, default_model: str) -> None:
        self.model = default_model
        self.usage = Usage()
        self._choices: dict[int, dict[str, Any]] = {}

    def feed(self, chunk: dict[str, Any]) -> None:
        if isinstance(chunk.get("model"), str) and chunk["model"]:
            self.model = chunk["model"]
        if isinstance(chunk.get("usage"), dict):
            self.usage = usage_of(chunk["usage"])
        for choice in chunk.get("choices") or ():
            if not isinstance(choice, dict):
                continue
            index = choice.get("index", 0) if isinstance(choice.get("index"), int) else 0
            acc = self._choices.setdefault(index, {"content": [], "refusal": [], "tools": {}})
            delta = choice.get("delta") or {}
            if isinstance(delta.get("content"), str):
                acc["content"].append(delta["content"])
            if isinstance(delta.get("refusal"), str):
                acc["refusal"].append(delta["refusal"])
            for call in delta.get("tool_calls") or ():
                if isinstance(call, dict):
                    self._tool_delta(acc["tools"], call)
            if choice.get("finish_reason") is not None:
                acc["finish"] = choice["finish_reason"]

    @staticmethod
    def _tool_delta(tools: dict[int, dict[str, Any]], call: dict[str, Any]) -> None:
        index = call.get("index", 0) if isinstance(call.get("index"), int) else 0
        tool = tools.setdefault(
            index, {"id": None, "type": "function", "function": {"name": "", "arguments": ""}}
        )
        if call.get("id"):
            tool["id"] = call["id"]
        if call.get("type"):
            tool["type"] = call["type"]
        function = call.get("function") or {}
        if isinstance(function.get("name"), str):
            tool["function"]["name"] += function["name"]
        if isinstance(function.get("arguments"), str):
            tool["function"]["arguments"] += function["arguments"]

    def outcome(self) -> Outcome:
        turns = []
        for index in sorted(self._choices):
            acc = self._choices[index]
            message: dict[str, Any] = {"content": "".join(acc["content"])}
            if acc["tools"]:
                message["tool_calls"] = [acc["tools"][i] for i in sorted(acc["tools"])]
            if acc["refusal"]:
                message["refusal"] = "".join(acc["refusal"])
            turns.append(_answer_turn(message, {"finish_reason": acc.get("finish")}))
        return Outcome(_with_other_choices(turns), self.model, self.usage)


# --- the Responses API ---------------------------------------------------------------------


def responses_request(body: dict[str, Any]) -> list[Turn]:
    turns: list[Turn] = []
    if isinstance(body.get("instructions"), str):
        turns.append(Turn(role="developer", content=body["instructions"]))
    raw = body.get("input")
    if isinstance(raw, str):
        return [*turns, Turn(role="user", content=raw)]
    for item in raw if isinstance(raw, list) else ():
        if not isinstance(item, dict):
            continue
        kind = item.get("type", "message")
        if kind == "message" or (kind is None and "role" in item):
            text, parts = flatten(item.get("content"))
            turns.append(Turn(role=_role(item.get("role")), content=text, parts=parts))
        elif kind == "function_call":
            turns.append(Turn(role="assistant", content="", tool_calls=[_function_call(item)]))
        elif kind == "function_call_output":
            output = item.get("output")
            text = output if isinstance(output, str) else orjson.dumps(output).decode()
            turns.append(Turn(role="tool", content=text, tool_call_id=item.get("call_id")))
        else:  # item_reference, reasoning, …: what it was, not its payload
            turns.append(
                Turn(
                    role="user",
                    content=f"[{kind}]",
                    parts=[{"type": str(kind), "id": item.get("id")}],
                )
            )
    return turns


def _function_call(item: dict[str, Any]) -> dict[str, Any]:
    return {
        "id": item.get("call_id") or item.get("id"),
        "type": "function",
        "function": {"name": item.get("name", ""), "arguments": item.get("arguments", "")},
    }


def responses_answer(payload: dict[str, Any], default_model: str) -> Outcome:
    texts: list[str] = []
    calls: list[dict[str, Any]] = []
    parts: list[dict[str, Any]] = []
    for item in payload.get("output") or ():
        if not isinstance(item, dict):
            continue
        kind = item.get("type")
        if kind == "message":
            text, other = flatten(item.get("content"))
            texts.append(text)
            parts.extend(other or ())
        elif kind == "function_call":
            calls.append(_function_call(item))
        elif kind not in ("reasoning",):
            parts.append({"type": str(kind), "id": item.get("id")})
    turn = Turn(
        role="assistant", content="".join(texts), tool_calls=calls or None, parts=parts or None
    )
    if payload.get("status"):
        turn.metadata["status"] = payload["status"]
    if payload.get("id"):
        turn.metadata["responseId"] = payload["id"]
    return Outcome(
        [turn], str(payload.get("model") or default_model), usage_of(payload.get("usage"))
    )


@dataclass(frozen=True)
class SseEvent:
    name: str | None
    data: bytes
    raw: bytes  # the event as it came, with its blank line


def sse_events(buffer: bytes) -> tuple[list[SseEvent], bytes]:
    """The complete SSE events in `buffer`, and the incomplete rest."""
    events: list[SseEvent] = []
    if b"\r" in buffer:
        buffer = buffer.replace(b"\r\n", b"\n")
    *complete, rest = buffer.split(b"\n\n")
    for raw in complete:
        name: str | None = None
        data: list[bytes] = []
        for line in raw.split(b"\n"):
            if line.startswith(b"data:"):
                data.append(line[5:].lstrip(b" "))
            elif line.startswith(b"event:"):
                name = line[6:].strip().decode()
        if data or name:
            events.append(SseEvent(name, b"\n".join(data), raw + b"\n\n"))
    return events, rest
