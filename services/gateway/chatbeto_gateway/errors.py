"""Errors a handler raises; one middleware shapes them per surface."""

from __future__ import annotations

from typing import Any

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


def field_errors(exc: ValidationError, prefix: str = "") -> list[dict[str, str]]:
    """One entry per offending field, named by its dotted path."""
    out = []
    for err in exc.errors(include_url=False, include_input=False):
        path = ".".join(str(p) for p in err["loc"])
        out.append(
            {
                "field": f"{prefix}{path}" if path else prefix.rstrip(".") or "body",
                "message": err["msg"],
            }
        )
    return out


def validation_error(exc: ValidationError, prefix: str = "") -> ApiError:
    fields = field_errors(exc, prefix)
    names = ", ".join(sorted({f["field"] for f in fields}))
    return ApiError(422, "validation_error", f"invalid fields: {names}", fields)


def is_json_error(exc: ValidationError) -> bool:
    return any(err["type"] == "json_invalid" for err in exc.errors())
