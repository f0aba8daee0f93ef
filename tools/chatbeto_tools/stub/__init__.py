"""A local OpenAI-compatible server: `python -m chatbeto_tools.stub --port N`.

Used by the tests, the benchmark and `make dev` when OPENAI_API_KEY is unset. It speaks
OpenAI's real wire format (so the official SDK talks to it unchanged) and answers
deterministically: chat completions (tools, `n`, JSON mode, logprobs, refusals, streaming with
tool-call deltas and the usage chunk), the Responses API (plain and its typed SSE events),
embeddings, models, conversations and their items; errors in OpenAI's own body with `code` and
`param` (an unknown model is `model_not_found`, a temperature above 2 `decimal_above_max_value`).

Failures are provoked by magic text in the last message (or the `X-Stub` header):
- `[[fail:400]]`, `[[fail:401]]`, `[[fail:403]]`, `[[fail:429]]`, `[[fail:500]]`: that status;
- `[[fail:500x2]]`: that status for the first 2 requests with this exact text, then success;
- `[[slow:1.5]]`: answer after 1.5 s (streamed answers wait before the first chunk);
- `[[cut]]`: a streamed answer's connection drops after a few chunks;
- `[[drip:0.2]]`: a streamed answer pauses 0.2 s between events;
- `[[refuse]]`: the model refuses (`refusal` instead of content).
"""

from __future__ import annotations

from collections import Counter

from aiohttp import web

from chatbeto_tools.stub import chat, conversations, embeddings, responses
from chatbeto_tools.stub.common import (
    CALLS,
    FAILURES,
    MODELS,
    SLOW_IN_FLIGHT,
    json_response,
)
from chatbeto_tools.stub.conversations import CONVERSATIONS
from chatbeto_tools.stub.responses import RESPONSES

__all__ = ["CALLS", "CONVERSATIONS", "RESPONSES", "SLOW_IN_FLIGHT", "create_stub_app"]


async def models(request: web.Request) -> web.Response:
    return json_response(
        {
            "object": "list",
            "data": [
                {"id": m, "object": "model", "created": 1_700_000_000, "owned_by": "stub"}
                for m in MODELS
            ],
        }
    )


def create_stub_app() -> web.Application:
    app = web.Application(client_max_size=32 * 1024 * 1024)
    app[FAILURES] = Counter()
    app[CALLS] = Counter()
    app[RESPONSES] = {}
    app[CONVERSATIONS] = {}
    app[SLOW_IN_FLIGHT] = [0]
    app.router.add_post("/v1/chat/completions", chat.chat_completions)
    app.router.add_get("/v1/models", models)
    app.router.add_post("/v1/embeddings", embeddings.create_embeddings)
    app.router.add_post("/v1/conversations", conversations.create_conversation)
    app.router.add_get("/v1/conversations/{id}", conversations.get_conversation)
    app.router.add_post("/v1/conversations/{id}/items", conversations.add_items)
    app.router.add_get("/v1/conversations/{id}/items", conversations.list_items)
    app.router.add_post("/v1/responses", responses.create_response)
    app.router.add_get("/v1/responses/{id}", responses.get_response)
    return app
