"""JSON responses, encoded with orjson (the hot path answers thousands per second)."""

from __future__ import annotations

from typing import Any

import orjson
from aiohttp import web
from pydantic import BaseModel


def _default(value: Any) -> Any:
    if isinstance(value, BaseModel):
        return value.model_dump(mode="json")
    raise TypeError


def json(data: Any, status: int = 200, headers: dict[str, str] | None = None) -> web.Response:
    return web.Response(
        body=orjson.dumps(data, default=_default),
        status=status,
        content_type="application/json",
        headers=headers,
    )


def envelope(data: Any, status: int = 200) -> web.Response:
    """The ChatBETO envelope of `/api/v1/*`."""
    return json({"status": "success", "data": data}, status)
