"""Errors a handler raises; one middleware shapes them per surface."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any, TypedDict

from chatbeto.db import (
    DATABASE_RETRY_AFTER_SECONDS,
    DATABASE_UNAVAILABLE,
    DATABASE_UNAVAILABLE_MESSAGE,
)
from pydantic import ValidationError


class ApiError(Exception):
    def __init__(
        self,
        status: int,
        code: str,
        message: str,
        details: Any = None,
        headers: dict[str, str] | None = None,
    ) -> None:
        super().__init__(message)
        self.status = status
        self.code = code
        self.message = message
        self.details = details
        self.headers = headers or {}


def not_found(code: str = "not_found", message: str = "not found") -> ApiError:
    return ApiError(404, code, message)


def unauthorized(message: str = "missing or invalid API key") -> ApiError:
    return ApiError(401, "unauthorized", message)


class FieldError(TypedDict):
    field: str
    message: str


class ValidationFailed(ApiError):
    """A 422 naming each offending field: the one error every schema check raises (bodies,
    query strings, form fields); the middleware shapes it for the route's surface."""

    def __init__(self, fields: Sequence[FieldError], message: str | None = None) -> None:
        names = ", ".join(dict.fromkeys(f["field"] for f in fields))
        super().__init__(
            422, "validation_error", message or f"invalid fields: {names}", list(fields) or None
        )
        self.fields = list(fields)

    @classmethod
    def of(cls, field: str, message: str) -> ValidationFailed:
        """One offending field."""
        return cls([{"field": field, "message": message}])

    @classmethod
    def from_pydantic(cls, exc: ValidationError, prefix: str = "") -> ValidationFailed:
        fields = field_errors(exc, prefix)
        names = ", ".join(sorted({f["field"] for f in fields}))
        return cls(fields, f"invalid fields: {names}")


def field_errors(exc: ValidationError, prefix: str = "") -> list[FieldError]:
    """One entry per offending field, named by its dotted path."""
    out: list[FieldError] = []
    for err in exc.errors(include_url=False, include_input=False):
        path = ".".join(str(p) for p in err["loc"])
        out.append(
            {
                "field": f"{prefix}{path}" if path else prefix.rstrip(".") or "body",
                "message": err["msg"],
            }
        )
    return out


def unstorable() -> ValidationFailed:
    """Input a check let through that Postgres cannot hold (a NUL byte, a number past bigint)."""
    return ValidationFailed(
        [], "a value is out of range or contains characters that cannot be stored"
    )


def is_json_error(exc: ValidationError) -> bool:
    return any(err["type"] == "json_invalid" for err in exc.errors())


def broker_unavailable() -> ApiError:
    """What `BrokerUnavailable` (a publish the broker did not confirm) answers, on any route."""
    return ApiError(503, "broker_unavailable", "the message broker is unavailable; retry later")


def database_unavailable() -> ApiError:
    """Postgres unreachable (`chatbeto.db.is_database_outage`), met here or by the worker."""
    return ApiError(
        503,
        DATABASE_UNAVAILABLE,
        DATABASE_UNAVAILABLE_MESSAGE,
        headers={"Retry-After": str(DATABASE_RETRY_AFTER_SECONDS)},
    )
