"""Work moved off a request's critical path into the time it waits anyway.

At one request in flight the loop is idle while OpenAI answers and while Postgres commits; what
a request will need then but does not depend on that answer (its own rows, the reply around the
conversation still to come) is computed in a callback of the loop's next turn — which runs once
this task awaits that I/O — instead of after it. Asked for before the callback ran (a busy loop),
or if it raised, the value is computed then, in the caller, as it would have been without.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from typing import Generic, TypeVar

T = TypeVar("T")


class Soon(Generic[T]):
    def __init__(self, make: Callable[[], T]) -> None:
        self._make = make
        self._value: T | None = None
        self._done = False
        # The callback runs in a copy of this context (the request id of the logs and replies).
        self._handle = asyncio.get_running_loop().call_soon(self._run)

    def _run(self) -> None:
        if not self._done:
            self._value = self._make()
            self._done = True

    def value(self) -> T:
        """The value, computed now if the callback has not (its error raised here)."""
        if not self._done:
            self._handle.cancel()
            self._run()
        return self._value  # type: ignore[return-value]  # set by `_run`
