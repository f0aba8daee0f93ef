"""Durability of `/v1` under a kill -9 of the openai-worker (contract 3.1, issue 11 item 3):
a 200 means stored exactly once, a cut stream never splices a second answer into the first (the
client gets OpenAI's error event and the SDK raises), and what is stored is what the client saw
or nothing."""

from __future__ import annotations

import asyncio
import signal
import sys
from pathlib import Path
from typing import IO, Any

import asyncpg
import openai
import pytest
from openai import AsyncOpenAI

from tests.conftest import Client, Factory, wait_for
from tests.conftest_openai import StartWorker

STREAMS = 8
PLAIN = 8


async def spawn_worker(
    env: dict[str, str], openai_stub: str, log: IO[bytes]
) -> asyncio.subprocess.Process:
    exe = str(Path(sys.executable).with_name("chatbeto"))
    return await asyncio.create_subprocess_exec(
        exe,
        "run",
        "openai-worker",
        env={**env, "OPENAI_API_KEY": "sk-test", "OPENAI_BASE_URL": openai_stub},
        stdout=log,
        stderr=log,
    )


def streamed_content(n: int) -> str:
    return f"[[drip:0.3]] s{n} uno dos tres cuatro cinco seis"


async def streamed(sdk: AsyncOpenAI, endpoint: str, n: int, seen: asyncio.Event) -> tuple[str, str]:
    """("done", text) for a whole answer; ("raised", text seen) for a cut one."""
    text = ""
    try:
        if endpoint == "chat":
            stream: Any = await sdk.chat.completions.create(
                model="gpt-4",
                messages=[{"role": "user", "content": streamed_content(n)}],
                stream=True,
            )
            async for chunk in stream:
                seen.set()
                text += "".join(c.delta.content or "" for c in chunk.choices)
        else:
            stream = await sdk.responses.create(
                model="gpt-4", input=streamed_content(n), stream=True
            )
            async for event in stream:
                seen.set()
                if event.type == "response.output_text.delta":
                    text += event.delta
    except openai.APIError:
        seen.set()
        return "raised", text
    return "done", text


async def plain(sdk: AsyncOpenAI, endpoint: str, n: int) -> str:
    content = f"[[slow:1]] p{n}"
    if endpoint == "chat":
        out = await sdk.chat.completions.create(
            model="gpt-4", messages=[{"role": "user", "content": content}]
        )
        return out.choices[0].message.content or ""
    return (await sdk.responses.create(model="gpt-4", input=content)).output_text


async def warm_up(sdk: AsyncOpenAI, timeout: float = 120.0) -> None:
    """Until the spawned worker answers: on a loaded machine its start can outlast one call's
    deadline (the request then expires unanswered, 504), so ask again."""
    deadline = asyncio.get_running_loop().time() + timeout
    while True:
        try:
            await sdk.chat.completions.create(
                model="gpt-4", messages=[{"role": "user", "content": "warm up"}]
            )
            return
        except (openai.APITimeoutError, openai.InternalServerError):
            if asyncio.get_running_loop().time() > deadline:
                raise


@pytest.mark.timeout(300)  # a worker process to start on a loaded machine, then the calls
@pytest.mark.parametrize("endpoint", ["chat", "responses"])
async def test_kill_9_mid_stream_and_mid_call_under_load(
    chat_gateway: Client,
    env: dict[str, str],
    openai_stub: str,
    start_openai_worker: StartWorker,
    factory: Factory,
    db: asyncpg.Connection,
    tmp_path: Path,
    endpoint: str,
) -> None:
    key = await factory.key(await factory.project())
    base_url = str(chat_gateway.make_url("/v1"))
    log = (tmp_path / "worker.log").open("wb")
    proc = await spawn_worker(env, openai_stub, log)
    first_chunk = {n: asyncio.Event() for n in range(STREAMS)}
    async with AsyncOpenAI(api_key=key, base_url=base_url, max_retries=0, timeout=60) as sdk:
        try:
            await warm_up(sdk)
            async with asyncio.TaskGroup() as group:
                streams = [
                    group.create_task(streamed(sdk, endpoint, n, first_chunk[n]))
                    for n in range(STREAMS)
                ]
                plains = [group.create_task(plain(sdk, endpoint, n)) for n in range(PLAIN)]
                await asyncio.wait_for(
                    asyncio.gather(*(e.wait() for e in first_chunk.values())), 30
                )
                proc.send_signal(signal.SIGKILL)  # mid-stream and mid-call, under load
                await proc.wait()
                await start_openai_worker()  # the redeliveries land here
        finally:
            if proc.returncode is None:
                proc.kill()
                await proc.wait()
            log.close()

    outcomes = [s.result() for s in streams]
    answers = [p.result() for p in plains]
    # Every plain call was answered (the survivor redid the killed ones), once, as stored.
    for n, answer in enumerate(answers):
        assert answer == f"echo[1]: [[slow:1]] p{n}"
    for n, (kind, text) in enumerate(outcomes):
        whole = f"echo[1]: {streamed_content(n)}"
        assert text.count("echo[") <= 1, f"two answers spliced: {text!r}"
        if kind == "done":
            assert text == whole
        else:
            assert whole.startswith(text)  # a prefix of one answer, then the error
    assert any(kind == "raised" for kind, _ in outcomes), outcomes

    rows = await db.fetch(
        """SELECT c.id, u.content AS question, a.content AS answer
           FROM conversations c
           JOIN messages u ON u.conversation_id = c.id AND u.role = 'user'
           LEFT JOIN messages a ON a.conversation_id = c.id AND a.role = 'assistant'"""
    )
    by_question: dict[str, list[str | None]] = {}
    for row in rows:
        by_question.setdefault(row["question"], []).append(row["answer"])
    for n, answer in enumerate(answers):
        assert by_question.pop(f"[[slow:1]] p{n}") == [answer]  # exactly once
    for n, (kind, text) in enumerate(outcomes):
        stored = by_question.pop(streamed_content(n), [])
        # Stored exactly once if the client saw the whole answer; never a different one.
        assert stored == ([text] if kind == "done" else []), (kind, text, stored)
    assert set(by_question) == {"warm up"}

    async def settled() -> bool:  # nothing left over: every request acked or dead-lettered
        return await db.fetchval("SELECT count(*) FROM conversations") == len(rows)

    await wait_for(settled)
    # Spend is written with the exchange: one row per stored answer, none without one, and a
    # redelivery (the killed calls) counted once (cost's, docs/COSTS.md).
    answers_stored = await db.fetchval("SELECT count(*) FROM messages WHERE role = 'assistant'")
    assert await db.fetchval("SELECT count(*) FROM spend") == answers_stored
    assert await db.fetchval("SELECT sum(calls) FROM key_spend_windows") == answers_stored
    assert not await db.fetchval(
        """SELECT count(*) FROM messages m WHERE m.role = 'assistant' AND NOT EXISTS
               (SELECT 1 FROM spend s WHERE s.external_id || ':answer' = m.external_id)"""
    )
