"""The `/v1` calls (`ProxyCall`): OpenAI gets the client's body as it is, the client gets
OpenAI's bytes as they are; only what storage and metrics need is read (with orjson).

Streamed answers go out as they arrive: each read from OpenAI's socket becomes one chunk reply
holding the whole SSE events it completed (coalescing without waiting). The stream's end —
chat's `data: [DONE]`, the Responses API's final `response.*` event — is held back until the
exchange is committed and travels in the result, so a client that saw the end saw it stored.
"""

from __future__ import annotations

import time
from typing import TYPE_CHECKING, Any

import orjson
from chatbeto.messages import ProxyCall, Usage
from chatbeto.store.conversations import NewMessage

from chatbeto_openai_worker import exchange, replay, repo, upstream
from chatbeto_openai_worker.exchange import Outcome, Turn
from chatbeto_openai_worker.upstream import UpstreamUnavailable

if TYPE_CHECKING:
    from chatbeto_openai_worker.handler import Call, RequestHandler

PATHS = {
    "chat.completions": "/chat/completions",
    "responses": "/responses",
    "embeddings": "/embeddings",
}
SOURCES = {"chat.completions": "v1", "responses": "responses"}
TERMINAL_EVENTS = frozenset({"response.completed", "response.failed", "response.incomplete"})
TITLE_CHARS = 80


class ProxyHandler:
    def __init__(self, handler: RequestHandler) -> None:
        self.handler = handler

    async def handle(self, call: Call, job: ProxyCall) -> None:
        model = str(job.body.get("model") or self.handler.settings.openai_model)
        if job.endpoint == "embeddings":
            await self._embeddings(call, job, model)
            return
        if call.replay and job.project_id is not None:
            row = await self.handler.stored_answer(call, job.project_id, None)
            if row is not None:
                await self.handler.store.barrier()  # its first delivery may not have flushed it
                await call.result(body=replay.body(job, row, model), replayed=True)
                return
        if call.replay and job.stream:
            # Its first delivery may have streamed part of an answer: never splice a second.
            from chatbeto_openai_worker.handler import StreamInterrupted

            raise StreamInterrupted("the answer was interrupted; retry the request")
        started = time.monotonic()
        if job.stream:
            outcome, tail = await self._stream(call, job, model)
            body = tail
        else:
            raw = await upstream.forward(
                self.handler.client, PATHS[job.endpoint], job.body, deadline=call.deadline
            )
            payload = orjson.loads(raw)
            if job.endpoint == "responses":
                outcome = exchange.responses_answer(payload, model)
            else:
                outcome = exchange.chat_answer(payload, model)
            body = raw.decode()
        latency_ms = round((time.monotonic() - started) * 1000)
        conv = None
        if job.project_id is not None:
            conv = await self.handler.store.store(self._exchange(call, job, outcome, latency_ms))
        else:
            await self.handler.charge_alone(call, outcome.model, outcome.usage)
        await call.result(conversation=conv.stored() if conv else None, body=body)
        await self.handler.record(call, outcome.model, outcome.usage, latency_ms, conv)

    async def _embeddings(self, call: Call, job: ProxyCall, model: str) -> None:
        started = time.monotonic()
        raw = await upstream.forward(
            self.handler.client, PATHS["embeddings"], job.body, deadline=call.deadline
        )
        payload = orjson.loads(raw)
        usage = exchange.usage_of(payload.get("usage"))
        latency_ms = round((time.monotonic() - started) * 1000)
        answered_by = str(payload.get("model") or model)
        await self.handler.charge_alone(call, answered_by, usage)
        await call.result(body=raw.decode())
        await self.handler.record(call, answered_by, usage, latency_ms, None)

    async def _stream(self, call: Call, job: ProxyCall, model: str) -> tuple[Outcome, str]:
        chat = exchange.ChatStream(model)
        state: dict[str, Any] = {"rest": b"", "tail": b"", "final": None}

        async def on_bytes(data: bytes) -> None:
            events, state["rest"] = exchange.sse_events(state["rest"] + data)
            out: list[bytes] = []
            chunks: list[bytes] = []  # chat chunks, read for storage once they are sent
            for event in events:
                if state["tail"]:  # after the end: held back with it
                    state["tail"] += event.raw
                elif job.endpoint == "chat.completions":
                    if event.data == b"[DONE]":
                        state["tail"] = event.raw
                        continue
                    chunks.append(event.data)
                    out.append(event.raw)
                else:
                    payload = _json(event.data)
                    name = event.name or (payload or {}).get("type")
                    if name in TERMINAL_EVENTS:
                        state["tail"] = event.raw
                        state["final"] = payload
                        continue
                    out.append(event.raw)
            if out:
                await call.chunk(b"".join(out).decode())
            # After the send: the first token waits for no JSON parsing.
            for raw in chunks:
                chunk = _json(raw)
                if chunk is not None:
                    chat.feed(chunk)

        await upstream.forward_stream(
            self.handler.client,
            PATHS[job.endpoint],
            job.body,
            deadline=call.deadline,
            on_bytes=on_bytes,
        )
        tail = (state["tail"] + state["rest"]).decode()
        if job.endpoint == "chat.completions":
            return chat.outcome(), tail
        final = state["final"]
        if not isinstance(final, dict) or not isinstance(final.get("response"), dict):
            raise UpstreamUnavailable("OpenAI's stream ended before its final event")
        return exchange.responses_answer(final["response"], model), tail

    def _exchange(
        self, call: Call, job: ProxyCall, outcome: Outcome, latency_ms: int
    ) -> repo.Exchange:
        if job.endpoint == "responses":
            turns = exchange.responses_request(job.body)
        else:
            turns = exchange.chat_request(job.body)
        rows = [_row(call, f"{call.message_id}:in:{n}", t) for n, t in enumerate(turns)]
        # Other choices (`n` > 1) ride in the answer's metadata: one assistant row.
        answer = outcome.turns[0] if outcome.turns else Turn(role="assistant", content="")
        rows.append(
            _row(
                call, f"{call.message_id}:answer", answer, outcome.model, outcome.usage, latency_ms
            )
        )
        first = next((t.content for t in turns if t.role == "user"), "")
        return self.handler.new_exchange(
            call,
            rows,
            None,
            job.project_id,
            first[:TITLE_CHARS] or None,
            outcome.model,
            SOURCES[job.endpoint],
        )


def _json(data: bytes) -> dict[str, Any] | None:
    try:
        value = orjson.loads(data)
    except orjson.JSONDecodeError:
        return None
    return value if isinstance(value, dict) else None


def _row(
    call: Call,
    external_id: str,
    turn: Turn,
    model: str | None = None,
    usage: Usage | None = None,
    latency_ms: int | None = None,
) -> NewMessage:
    return NewMessage(
        role=turn.role,
        content=turn.content,
        external_id=external_id,
        model=model,
        prompt_tokens=usage.prompt_tokens if usage else None,
        completion_tokens=usage.completion_tokens if usage else None,
        cached_tokens=usage.cached_tokens if usage else None,
        reasoning_tokens=usage.reasoning_tokens if usage else None,
        latency_ms=latency_ms,
        request_id=call.request_id,
        tool_calls=turn.tool_calls,
        tool_call_id=turn.tool_call_id,
        parts=turn.parts,
        metadata=turn.metadata,
    )
