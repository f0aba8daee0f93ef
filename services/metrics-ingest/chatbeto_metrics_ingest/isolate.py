"""Store a batch of rows, setting aside the ones Postgres refuses.

A data error (a value the column cannot hold, a violated constraint) belongs to one row and no
retry changes it; a transient error (connection lost, serialization failure, deadlock) belongs to
the moment. So: try the whole batch under a savepoint; on a data error, split it in halves and try
each under its own savepoint, down to the single rows at fault. The good rows stay in the caller's
transaction; the bad ones come back with the error. With k bad rows among n this costs
O(k log n) statements. Any other error propagates: the caller retries the whole message.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable, Sequence
from contextlib import nullcontext
from typing import TypeVar

import asyncpg
from chatbeto.db import Conn

T = TypeVar("T")
R = TypeVar("R")

# Errors that a given row causes every time: classes 22 (data exception) and 23 (integrity).
# asyncpg raises DataError too for a value it cannot encode (an int past the column, a datetime
# it cannot convert).
DATA_ERRORS: tuple[type[Exception], ...] = (
    asyncpg.DataError,
    asyncpg.IntegrityConstraintViolationError,
)


async def store_isolating(
    conn: Conn,
    rows: Sequence[T],
    store: Callable[[Conn, Sequence[T]], Awaitable[list[R]]],
    *,
    savepoint: bool = True,
) -> tuple[list[R], list[tuple[T, Exception]]]:
    """(what `store` returned for the good rows, the bad rows with their error).

    `savepoint=False`: `store` runs under savepoints of its own, so a data error it raises left
    the transaction as it was (one savepoint a try instead of two nested).
    """
    if not rows:
        return [], []
    try:
        # A savepoint inside the caller's transaction, unless `store` makes its own.
        async with conn.transaction() if savepoint else nullcontext():
            return await store(conn, rows), []
    except DATA_ERRORS as exc:
        if len(rows) == 1:
            return [], [(rows[0], exc)]
    half = len(rows) // 2
    good_left, bad_left = await store_isolating(conn, rows[:half], store, savepoint=savepoint)
    good_right, bad_right = await store_isolating(conn, rows[half:], store, savepoint=savepoint)
    return good_left + good_right, bad_left + bad_right
