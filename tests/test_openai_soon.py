"""`Soon`: a value made in the loop's next turn while its task awaits, or when asked first."""

from __future__ import annotations

import asyncio

import pytest
from chatbeto_openai_worker.soon import Soon


def maker(made: list[str], value: object) -> object:
    made.append("made")
    return value


async def test_made_while_the_task_awaits() -> None:
    made: list[str] = []
    soon = Soon(lambda: maker(made, 42))
    assert made == []  # not in the caller's step
    await asyncio.sleep(0)  # the task awaits: the callback runs
    assert made == ["made"]
    assert soon.value() == 42
    assert made == ["made"]  # once


async def test_made_when_asked_before_the_callback() -> None:
    made: list[str] = []
    soon = Soon(lambda: maker(made, "v"))
    assert soon.value() == "v"
    await asyncio.sleep(0)
    assert made == ["made"]  # the callback did not make it again


async def test_an_error_in_the_callback_is_raised_when_asked() -> None:
    calls: list[int] = []

    def make() -> int:
        calls.append(1)
        raise ValueError("boom")

    loop = asyncio.get_running_loop()
    seen: list[object] = []
    loop.set_exception_handler(lambda _loop, context: seen.append(context.get("exception")))
    try:
        soon = Soon(make)
        await asyncio.sleep(0)
        with pytest.raises(ValueError, match="boom"):
            soon.value()
    finally:
        loop.set_exception_handler(None)
    assert len(calls) == 2
    assert isinstance(seen[0], ValueError)
