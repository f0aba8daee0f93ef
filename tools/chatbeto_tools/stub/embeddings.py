"""`POST /v1/embeddings`: deterministic vectors (from a hash of each input), as floats or as
base64 float32 (`encoding_format`, which the official SDK sets to base64 by default)."""

from __future__ import annotations

import base64
import hashlib
import struct
from typing import Any

from aiohttp import web

from chatbeto_tools.stub.common import (
    authorized,
    check_model,
    count_tokens,
    error,
    json_response,
    provoke,
    read_json,
    unauthorized,
)

DIMENSIONS = 8


def vector(text: str, dimensions: int) -> list[float]:
    digest = hashlib.sha256(text.encode()).digest()
    return [round((digest[i % len(digest)] - 128) / 128, 6) for i in range(dimensions)]


async def create_embeddings(request: web.Request) -> web.Response:
    if not authorized(request):
        return unauthorized()
    body = await read_json(request)
    if isinstance(body, web.Response):
        return body
    raw = body.get("input")
    inputs: list[Any] = [raw] if isinstance(raw, str) else raw if isinstance(raw, list) else []
    if not inputs:
        return error(400, "'input' is a required property", "invalid_request_error", None, "input")
    texts = [i if isinstance(i, str) else " ".join(map(str, i)) for i in inputs]
    failed = await provoke(request, texts[-1]) or check_model(body)
    if failed is not None:
        return failed
    raw_dimensions = body.get("dimensions")
    dimensions = raw_dimensions if isinstance(raw_dimensions, int) else DIMENSIONS
    as_base64 = body.get("encoding_format") == "base64"
    data = []
    for index, text in enumerate(texts):
        values = vector(text, dimensions)
        embedding: Any = (
            base64.b64encode(struct.pack(f"<{len(values)}f", *values)).decode()
            if as_base64
            else values
        )
        data.append({"object": "embedding", "index": index, "embedding": embedding})
    tokens = sum(count_tokens(t) for t in texts)
    return json_response(
        {
            "object": "list",
            "data": data,
            "model": body["model"],
            "usage": {"prompt_tokens": tokens, "total_tokens": tokens},
        }
    )
