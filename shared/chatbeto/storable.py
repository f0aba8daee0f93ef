"""Field types for values that must fit what PostgreSQL stores.

A value Postgres cannot hold (a NUL byte in text or jsonb, a timestamp outside years 1-9999 UTC
or at the edge asyncpg maps to ±infinity, an integer past a bigint) is a schema violation at the
door — a 422 naming the field — never a worker's `DataError` after the client was answered.
Every input model (HTTP bodies, queued messages) builds its text, time and integer fields from
these.
"""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Annotated, Any

from pydantic import AfterValidator, BeforeValidator, Field, StrictBool

BIGINT_MAX = 2**63 - 1
INT_MAX = 2**31 - 1

# asyncpg encodes datetime.min / datetime.max as -infinity / infinity: keep clear of both ends.
_EARLIEST = datetime(1, 1, 1, 0, 0, 1, tzinfo=UTC)
_LATEST = datetime(9999, 12, 31, 23, 59, 59, tzinfo=UTC)


def no_nul(value: str) -> str:
    """`Text`'s check, for a field that folds it into a validator of its own."""
    if "\x00" in value:
        raise ValueError("must not contain NUL characters")
    return value


def no_nul_anywhere(value: Any) -> Any:
    """NUL in any string of a JSON value (keys too): Postgres text and jsonb refuse it."""
    if isinstance(value, str):
        no_nul(value)
    elif isinstance(value, dict):
        for key, item in value.items():
            no_nul(key)
            no_nul_anywhere(item)
    elif isinstance(value, list):
        for item in value:
            no_nul_anywhere(item)
    return value


def _timestamp_string(value: Any) -> Any:
    # A bare number (or a string of one, "1.7e9" included) would be read as epoch seconds: the
    # contract asks for ISO 8601 text. Every aware ISO 8601 time has a colon (hh:mm), which no
    # number has. (Plain type checks: `isinstance(v, str | datetime)` was a quarter of
    # metrics-ingest's CPU.)
    kind = type(value)
    if kind is str:
        if ":" not in value:
            raise ValueError("must be an ISO 8601 string with Z or an offset")
        return value
    if kind is datetime or isinstance(value, (str, datetime)):
        return value
    raise ValueError("must be an ISO 8601 string with Z or an offset")


def _in_range(value: datetime) -> datetime:
    if value.tzinfo is None:
        raise ValueError("must carry Z or an offset")
    if 1 < value.year < 9999:
        # An offset is under a day, so only the first and last years can leave the range; the
        # conversion below (pydantic's TzInfo through Python) was 16 % of metrics-ingest's CPU.
        return value
    try:
        utc = value.astimezone(UTC)
    except OverflowError:
        raise ValueError("must lie within years 1-9999 UTC") from None
    if not _EARLIEST <= utc <= _LATEST:
        raise ValueError("must lie within years 1-9999 UTC")
    return value


Text = Annotated[str, AfterValidator(no_nul)]
"""Any text that is stored: no NUL byte."""

Timestamp = Annotated[datetime, BeforeValidator(_timestamp_string), AfterValidator(_in_range)]
"""An aware ISO 8601 timestamp that Postgres stores as given (not as ±infinity)."""

Int32 = Annotated[int, Field(ge=-(2**31), le=INT_MAX, strict=True)]
NonNegInt32 = Annotated[int, Field(ge=0, le=INT_MAX, strict=True)]
BigInt = Annotated[int, Field(ge=-(2**63), le=BIGINT_MAX, strict=True)]
PositiveBigInt = Annotated[int, Field(gt=0, le=BIGINT_MAX, strict=True)]
Json = Annotated[Any, AfterValidator(no_nul_anywhere)]
"""A JSON value stored as jsonb: no NUL in any string."""
Bool = StrictBool
"""true or false, never 0/1 or "yes"."""
