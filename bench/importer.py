"""Import of a big ChatGPT export: messages/s into Postgres and the importer's peak memory.

The export is generated here in the real format (a `mapping` tree per conversation, a hidden
system message, an abandoned regeneration on every third conversation), then imported by
`chatbeto import` as a separate process so its peak RSS is its own.
"""

from __future__ import annotations

import asyncio
import subprocess
import sys
import tempfile
import uuid
from pathlib import Path

import asyncpg
import orjson

from bench.common import CHATBETO, Row, scratch

FULL_BYTES = 200 * 1024 * 1024
QUICK_BYTES = 40 * 1024 * 1024
TURNS = 10  # user/assistant pairs per conversation
TARGET_RATE = 20_000
TARGET_RSS_MB = 300
# Runs the import as its only child and prints its wall time and peak RSS (KiB): this process's
# own RUSAGE_CHILDREN would be the largest of every child the bench started before (LiteLLM's
# workers, gateways), not the importer's.
MEASURED = (
    "import resource, subprocess, sys, time\n"
    "started = time.perf_counter()\n"
    "code = subprocess.call(sys.argv[1:], stdout=subprocess.DEVNULL)\n"
    "print(time.perf_counter() - started, resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss)\n"
    "sys.exit(code)\n"
)


def _node(node_id: str, parent: str | None, role: str, text: str, t: float) -> dict[str, object]:
    return {
        "id": node_id,
        "message": {
            "id": node_id,
            "author": {"role": role, "name": None, "metadata": {}},
            "create_time": t,
            "update_time": None,
            "content": {"content_type": "text", "parts": [text]},
            "status": "finished_successfully",
            "end_turn": True if role == "assistant" else None,
            "weight": 1.0,
            "metadata": {"model_slug": "gpt-4o", "finish_details": {"type": "stop"}}
            if role == "assistant"
            else {"request_id": "8f0c2d4e1b7a9f00-AMS", "message_type": None},
            "recipient": "all",
            "channel": None,
        },
        "parent": parent,
        "children": [],
    }


def conversation(n: int) -> bytes:
    t = 1_700_000_000.0 + n * 60
    root = str(uuid.uuid4())
    mapping: dict[str, dict[str, object]] = {
        root: {"id": root, "message": None, "parent": None, "children": []}
    }
    parent = root
    for k in range(TURNS * 2):
        role = "user" if k % 2 == 0 else "assistant"
        node_id = str(uuid.uuid4())
        body = f"{role} message {k} of conversation {n}: " + "lorem ipsum dolor sit amet " * 6
        mapping[node_id] = _node(node_id, parent, role, body, t + k)
        mapping[parent]["children"].append(node_id)  # type: ignore[attr-defined]
        if role == "assistant" and n % 3 == 0 and k == 1:
            # An abandoned regeneration: a sibling that is not on the current branch.
            alt = str(uuid.uuid4())
            mapping[alt] = _node(alt, parent, role, "regenerated away", t + k)
            mapping[parent]["children"].append(alt)  # type: ignore[attr-defined]
        parent = node_id
    cid = str(uuid.uuid4())
    return orjson.dumps(
        {
            "title": f"Conversation {n}",
            "create_time": t,
            "update_time": t + TURNS * 2,
            "mapping": mapping,
            "moderation_results": [],
            "current_node": parent,
            "plugin_ids": None,
            "conversation_id": cid,
            "conversation_template_id": None,
            "gizmo_id": None,
            "is_archived": False,
            "safe_urls": [],
            "default_model_slug": "gpt-4o",
            "id": cid,
        }
    )


def generate(path: Path, size_bytes: int) -> int:
    """Write an export of about `size_bytes`; returns its number of imported messages."""
    written, n = 0, 0
    with path.open("wb") as out:
        out.write(b"[")
        while written < size_bytes:
            chunk = conversation(n)
            out.write(chunk if n == 0 else b"," + chunk)
            written += len(chunk) + 1
            n += 1
        out.write(b"]")
    return n * TURNS * 2


async def run(quick: bool) -> list[Row]:
    size = QUICK_BYTES if quick else FULL_BYTES
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "conversations.json"
        expected = await asyncio.to_thread(generate, path, size)
        mb = path.stat().st_size / 1024 / 1024
        async with scratch() as s:
            conn = await asyncpg.connect(s.dsn)
            project = await conn.fetchval(
                "INSERT INTO projects (name) VALUES ('bench') RETURNING id"
            )
            proc = await asyncio.create_subprocess_exec(
                sys.executable,
                "-c",
                MEASURED,
                CHATBETO,
                "import",
                str(path),
                "--project",
                str(project),
                env=s.env(),
                stdout=subprocess.PIPE,
            )
            out, _ = await proc.communicate()
            code = proc.returncode
            seconds_text, rss_kib = out.split()
            seconds = float(seconds_text)
            peak_mb = int(rss_kib) / 1024
            stored = await conn.fetchval("SELECT count(*) FROM messages")
            await conn.close()
    rate = stored / seconds
    rss = f"{peak_mb:.0f} MB"
    return [
        Row("importer", f"export size ({expected} messages)", f"{mb:.0f} MB"),
        Row("importer", "exit code", str(code), "0"),
        Row("importer", "messages stored", str(stored), str(expected)),
        Row("importer", "import time", f"{seconds:.1f} s"),
        Row("importer", "messages/s (parse + store)", f"{rate:,.0f}", f"≥ {TARGET_RATE:,}"),
        Row("importer", "importer peak RSS", rss, f"< {TARGET_RSS_MB} MB"),
    ]
