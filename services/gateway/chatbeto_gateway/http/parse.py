"""Request bodies and query strings into pydantic models: the one way every handler parses.

Bad JSON is a 400; anything else a model rejects is a `ValidationFailed` naming each field,
which the error middleware shapes for the route's surface. Query values arrive as text: the
`query_*` validators below turn them into values with the messages the API has always given.
"""

from __future__ import annotations

import re
from collections.abc import Callable
from datetime import datetime
from typing import Any, TypeVar

import orjson
from aiohttp import web
from chatbeto.storable import BIGINT_MAX, Timestamp
from pydantic import BaseModel, TypeAdapter, ValidationError
from pydantic_core import PydanticCustomError

from chatbeto_gateway.http.errors import ApiError, ValidationFailed, is_json_error

M = TypeVar("M", bound=BaseModel)
QUERY_TIME = TypeAdapter(Timestamp)


async def parse_body(request: web.Request, model: type[M]) -> M:
    """The JSON body as `model`: 400 when it is not JSON, 422 naming each bad field."""
    try:
        return model.model_validate_json(await request.read())
    except ValidationError as exc:
        if is_json_error(exc):
            raise ApiError(400, "invalid_json", "body is not valid JSON") from exc
        raise ValidationFailed.from_pydantic(exc) from exc


async def read_json(request: web.Request) -> Any:
    """The body as any JSON value, or a 400 naming the problem."""
    try:
        return orjson.loads(await request.read())
    except orjson.JSONDecodeError as exc:
        raise ApiError(400, "invalid_json", f"body is not valid JSON: {exc}") from exc


def parse_query(request: web.Request, model: type[M]) -> M:
    """The query string as `model` (the first value of a repeated name); 422 naming each bad
    parameter."""
    try:
        return model.model_validate(dict(request.query))
    except ValidationError as exc:
        raise ValidationFailed.from_pydantic(exc) from exc


def query_error(message: str) -> PydanticCustomError:
    """What a query validator raises: `message` is the error's whole text (pydantic would
    prefix a ValueError's)."""
    return PydanticCustomError("query_value", "{message}", {"message": message})


def query_int(
    message: str, *, minimum: int = 0, maximum: int | None = None, blank_is_none: bool = False
) -> Callable[[Any], int | None]:
    """Digits only, within [minimum, maximum]; `blank_is_none`: `?name=` means not given."""

    def check(raw: Any) -> int | None:
        text = str(raw)
        if blank_is_none and text == "":
            return None
        try:
            value = int(text) if text.isdigit() else None
        except ValueError:  # digits that are not decimal ("²")
            value = None
        if value is None or value < minimum or (maximum is not None and value > maximum):
            raise query_error(message)
        return value

    return check


def query_choice(message: str, choices: tuple[str, ...]) -> Callable[[Any], str]:
    def check(raw: Any) -> str:
        if raw not in choices:
            raise query_error(message)
        return str(raw)

    return check


def query_match(message: str, pattern: re.Pattern[str]) -> Callable[[Any], str | None]:
    """A value the pattern matches; `?name=` means not given."""

    def check(raw: Any) -> str | None:
        text = str(raw)
        if text == "":
            return None
        if not pattern.match(text):
            raise query_error(message)
        return text

    return check


def query_time(raw: Any) -> datetime | None:
    """An ISO 8601 time as `Timestamp` takes it; `?name=` means not given."""
    text = str(raw)
    if text == "":
        return None
    try:
        # A "+" offset arrives as a space when the caller did not percent-encode it.
        value: datetime = QUERY_TIME.validate_python(text.replace(" ", "+"))
    except ValidationError as exc:
        raise query_error(exc.errors(include_url=False)[0]["msg"]) from None
    return value


# A positive bigint id (`?projectId=`), "must be a positive integer"; `?projectId=` is not given.
POSITIVE_ID = query_int(
    "must be a positive integer", minimum=1, maximum=BIGINT_MAX, blank_is_none=True
)
