"""Importing into Postgres: whole conversations, idempotent, grown exports, bad ones skipped."""

from __future__ import annotations

import asyncio
import secrets
import sys
from pathlib import Path
from typing import Any

import asyncpg
import pytest
from chatbeto.importer import run
from chatbeto.importer.export import ExportError
from chatbeto.importer.run import import_file

from tests.conftest import Factory
from tests.fixtures.chatgpt_builder import dumps, simple, split, write_folder, zip_files, zipped

FIXTURE = Path(__file__).parent / "fixtures" / "chatgpt_export_small.json"
CHATBETO = str(Path(sys.executable).with_name("chatbeto"))


async def branch(db: asyncpg.Connection, project: int, external_id: str) -> list[tuple[str, str]]:
    rows = await db.fetch(
        """SELECT m.role, m.content FROM messages m JOIN conversations c ON c.id = m.conversation_id
           WHERE c.project_id = $1 AND c.source = 'import' AND c.external_id = $2
           ORDER BY m.position""",
        project,
        external_id,
    )
    return [(r["role"], r["content"]) for r in rows]


async def counts(db: asyncpg.Connection) -> tuple[int, int]:
    return (
        await db.fetchval("SELECT count(*) FROM conversations"),
        await db.fetchval("SELECT count(*) FROM messages"),
    )


def write(tmp_path: Path, items: list[Any], name: str = "conversations.json") -> Path:
    path = tmp_path / name
    path.write_bytes(dumps(items))
    return path


async def test_fixture_lands_with_its_metadata(
    database: str, db: asyncpg.Connection, factory: Factory
) -> None:
    project = await factory.project()
    summary = await import_file(database, FIXTURE, project)
    assert (summary.imported, summary.skipped, summary.failed, summary.messages) == (3, 0, 0, 15)
    conv = await db.fetchrow(
        "SELECT * FROM conversations WHERE external_id = '67a1f0c2-2222-8000-9a3e-0d1c2b3a4f02'"
    )
    assert conv is not None
    assert conv["source"] == "import"
    assert conv["project_id"] == project
    assert conv["title"] == "Plot the numbers in this chart please"
    assert conv["gizmo_id"] == "g-p2mrD8kZq-data-analyst"
    assert conv["model"] == "gpt-4o"
    assert conv["created_at"].timestamp() == pytest.approx(1738700000.5)
    assert conv["updated_at"] > conv["created_at"]
    messages = await db.fetch(
        "SELECT * FROM messages WHERE conversation_id = $1 ORDER BY position", conv["id"]
    )
    assert [m["position"] for m in messages] == [0, 1, 2, 3]
    assert messages[0]["content"] == "[image: file-abc123]\nPlot the numbers in this chart please"
    assert messages[0]["external_id"] == "bbb2b2b2-0001-4000-8000-000000000001"
    assert messages[1]["model"] == "gpt-4o"
    assert messages[2]["role"] == "tool"
    assert messages[0]["created_at"] < messages[3]["created_at"]
    assert await branch(db, project, "67a1f0c2-1111-8000-9a3e-0d1c2b3a4f01") == [
        ("user", "How do I deploy an aiohttp app with Docker?"),
        ("assistant", "Use python:3.12-slim, copy the app, run gunicorn with aiohttp's worker."),
        ("user", "And how do I add Postgres with docker compose?"),
        (
            "assistant",
            "Add a `db` service using the postgres:16 image and point DATABASE_URL at it.",
        ),
    ]


async def test_reimport_adds_nothing(
    database: str, db: asyncpg.Connection, factory: Factory
) -> None:
    project = await factory.project()
    await import_file(database, FIXTURE, project)
    before = await counts(db)
    snapshot = await db.fetch("SELECT * FROM messages ORDER BY id")
    summary = await import_file(database, FIXTURE, project)
    assert (summary.imported, summary.updated, summary.skipped, summary.messages) == (0, 0, 3, 0)
    assert await counts(db) == before
    assert await db.fetch("SELECT * FROM messages ORDER BY id") == snapshot


async def test_same_export_into_another_project_is_a_separate_copy(
    database: str, db: asyncpg.Connection, factory: Factory
) -> None:
    one, two = await factory.project("one"), await factory.project("two")
    await import_file(database, FIXTURE, one)
    summary = await import_file(database, FIXTURE, two)
    assert summary.imported == 3
    assert await counts(db) == (6, 30)


async def test_grown_export_adds_only_what_is_new(
    tmp_path: Path, database: str, db: asyncpg.Connection, factory: Factory
) -> None:
    project = await factory.project()
    grows, stays = simple("grows", turns=1), simple("stays", turns=1)
    await import_file(database, write(tmp_path, [grows, stays]), project)
    # Later: one conversation continued (a regeneration, then a new turn), one new conversation.
    question = grows.add("user", "one more question")
    grows.add("assistant", "regenerated away")
    grows.add("assistant", "kept answer", parent=question)
    newcomer = simple("new one", turns=2)
    summary = await import_file(database, write(tmp_path, [newcomer, grows, stays]), project)
    assert (summary.imported, summary.updated, summary.skipped) == (1, 1, 1)
    assert summary.messages == 4 + 2
    assert await branch(db, project, grows.id) == [
        ("user", "question 0 of grows"),
        ("assistant", "answer 0 of grows"),
        ("user", "one more question"),
        ("assistant", "kept answer"),
    ]
    positions = await db.fetch(
        """SELECT position FROM messages m JOIN conversations c ON c.id = m.conversation_id
           WHERE c.external_id = $1 ORDER BY position""",
        grows.id,
    )
    assert [p["position"] for p in positions] == [0, 1, 2, 3]
    updated = await db.fetchval(
        "SELECT updated_at FROM conversations WHERE external_id = $1", grows.id
    )
    assert updated.timestamp() == pytest.approx(grows.clock)
    assert await counts(db) == (3, 4 + 4 + 2)


async def test_malformed_conversation_is_reported_and_the_rest_imported(
    tmp_path: Path, database: str, db: asyncpg.Connection, factory: Factory
) -> None:
    project = await factory.project()
    broken = simple("broken").to_dict()
    broken["mapping"][broken["current_node"]]["parent"] = "missing-node"
    items = [simple("before"), broken, "not even an object", simple("after")]
    summary = await import_file(database, write(tmp_path, items), project)
    assert (summary.imported, summary.failed) == (2, 2)
    assert [(f.title, f.id) for f in summary.failures] == [("broken", broken["id"]), ("", "#2")]
    assert "missing from mapping" in summary.failures[0].reason
    titles = {r["title"] for r in await db.fetch("SELECT title FROM conversations")}
    assert titles == {"before", "after"}


async def test_a_conversation_postgres_refuses_lands_not_at_all(
    tmp_path: Path, database: str, db: asyncpg.Connection, factory: Factory
) -> None:
    project = await factory.project()
    # An id past what a btree index holds (~2.7 kB, incompressible): the refused conversation must not leave a
    # partial row behind, and the others of its batch must still land.
    bad = simple("bad id", conversation_id=secrets.token_hex(5000))
    poisoned = simple("bad node")
    poisoned.add(
        "user", "a message whose node id Postgres refuses", node_id=secrets.token_hex(5000)
    )
    items = [simple("one"), bad, poisoned, simple("two")]
    summary = await import_file(database, write(tmp_path, items), project)
    assert (summary.imported, summary.failed) == (2, 2)
    assert {f.title for f in summary.failures} == {"bad id", "bad node"}
    assert all("database refused it" in f.reason for f in summary.failures)
    titles = {r["title"] for r in await db.fetch("SELECT title FROM conversations")}
    assert titles == {"one", "two"}
    assert await counts(db) == (2, 8)


async def test_nul_and_lone_surrogates_are_stripped_not_refused(
    tmp_path: Path, database: str, db: asyncpg.Connection, factory: Factory
) -> None:
    project = await factory.project()
    chat = simple("nul\u0000 title", conversation_id="conv-\u0000-nul")
    chat.add("user", "text with a NUL\u0000 and a lone surrogate", node_id="node-\u0000")
    path = tmp_path / "conversations.json"
    # orjson refuses lone surrogates; the JSON escape is what a real export could carry.
    path.write_bytes(dumps([chat]).replace(b"\\u0000 and a lone ", b"\\u0000 and a lone \\ud800"))
    summary = await import_file(database, path, project)
    assert (summary.imported, summary.failed) == (1, 0), summary.failures
    row = await db.fetchrow("SELECT title, external_id FROM conversations")
    assert row is not None
    assert (row["title"], row["external_id"]) == ("nul title", "conv--nul")
    content = await db.fetchval("SELECT content FROM messages WHERE external_id = 'node-'")
    assert content.startswith("text with a NUL and a lone ?")
    again = await import_file(database, path, project)
    assert (again.imported, again.skipped, again.messages) == (0, 1, 0)


async def test_duplicate_conversation_in_one_export_is_stored_once(
    tmp_path: Path, database: str, db: asyncpg.Connection, factory: Factory
) -> None:
    project = await factory.project()
    twice = simple("twice")
    summary = await import_file(database, write(tmp_path, [twice, twice]), project)
    assert (summary.imported, summary.skipped) == (1, 1)
    assert await counts(db) == (1, 4)


async def test_big_batches_are_split_and_all_stored(
    tmp_path: Path,
    database: str,
    db: asyncpg.Connection,
    factory: Factory,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setattr(run, "BATCH_MESSAGES", 10)
    project = await factory.project()
    items = [simple(f"c{n}", turns=3) for n in range(25)]
    seen: list[float] = []

    async def progress(summary: run.Summary, fraction: float) -> None:
        seen.append(fraction)

    summary = await import_file(database, write(tmp_path, items), project, progress)
    assert summary.imported == 25
    assert await counts(db) == (25, 150)
    assert len(seen) > 5 and seen == sorted(seen) and seen[-1] == 1.0


async def test_zip_export_imports(
    tmp_path: Path, database: str, db: asyncpg.Connection, factory: Factory
) -> None:
    project = await factory.project()
    path = tmp_path / "export.zip"
    path.write_bytes(zipped(FIXTURE.read_bytes()))
    summary = await import_file(database, path, project)
    assert (summary.imported, summary.messages) == (3, 15)


async def test_unknown_project_is_an_export_error(database: str) -> None:
    with pytest.raises(ExportError, match="project 999 does not exist"):
        await import_file(database, FIXTURE, 999)


async def chatbeto(env: dict[str, str], *args: str) -> tuple[int, str, str]:
    proc = await asyncio.create_subprocess_exec(
        CHATBETO, *args, env=env, stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE
    )
    out, err = await asyncio.wait_for(proc.communicate(), 60)
    assert proc.returncode is not None
    return proc.returncode, out.decode(), err.decode()


async def test_cli_imports_and_summarises(
    tmp_path: Path, env: dict[str, str], db: asyncpg.Connection, factory: Factory
) -> None:
    project = await factory.project()
    code, out, err = await chatbeto(env, "import", str(FIXTURE), "--project", str(project))
    assert code == 0, err
    assert "imported 3 conversations (15 new messages), updated 0, skipped 0, failed 0" in out
    code, out, _ = await chatbeto(env, "import", str(FIXTURE), "--project", str(project))
    assert code == 0
    assert "imported 0 conversations (0 new messages), updated 0, skipped 3, failed 0" in out
    assert "skipped: 'Deploying with Docker': already imported, nothing new" in out
    broken = simple("broken").to_dict()
    broken["mapping"] = "nope"
    path = write(tmp_path, [simple("fine"), broken])
    code, out, _ = await chatbeto(env, "import", str(path), "--project", str(project))
    assert code == 3
    assert f"failed: 'broken' ({broken['id']}): mapping is missing or empty" in out
    assert await counts(db) == (4, 19)


@pytest.mark.parametrize(
    ("payload", "message"),
    [
        (b'[{"title": "cut', "the file is truncated"),
        (b"<html>not an export</html>", "not a ChatGPT export"),
    ],
)
async def test_cli_refuses_bad_files_with_one_line(
    tmp_path: Path,
    env: dict[str, str],
    db: asyncpg.Connection,
    factory: Factory,
    payload: bytes,
    message: str,
) -> None:
    project = await factory.project()
    path = tmp_path / "conversations.json"
    path.write_bytes(payload)
    code, out, err = await chatbeto(env, "import", str(path), "--project", str(project))
    assert code == 1
    assert out == ""
    lines = err.strip().splitlines()
    assert len(lines) == 1 and message in lines[0] and str(path) in lines[0]
    assert await counts(db) == (0, 0)


async def test_cli_draws_a_progress_bar_on_a_terminal_only(
    tmp_path: Path, env: dict[str, str], factory: Factory
) -> None:
    import os
    import pty

    project = await factory.project()
    path = write(tmp_path, [simple(f"c{n}") for n in range(50)])
    master, slave = pty.openpty()
    try:
        proc = await asyncio.create_subprocess_exec(
            CHATBETO,
            "import",
            str(path),
            "--project",
            str(project),
            env=env,
            stdout=asyncio.subprocess.PIPE,
            stderr=slave,
        )
        os.close(slave)
        out, _ = await asyncio.wait_for(proc.communicate(), 60)
        terminal = b""
        while True:
            try:
                chunk = os.read(master, 65536)
            except OSError:  # EIO: the child closed its end
                break
            if not chunk:
                break
            terminal += chunk
    finally:
        os.close(master)
    assert proc.returncode == 0
    assert b"[##############################] 100% 50 conversations, 200 messages" in terminal
    assert b"imported 50 conversations" in out
    # stderr not a terminal (the other CLI tests): no bar at all.
    code, _, err = await chatbeto(env, "import", str(path), "--project", str(project))
    assert code == 0
    assert err == ""


async def test_branch_switched_since_the_last_import_is_mirrored(
    tmp_path: Path, database: str, db: asyncpg.Connection, factory: Factory
) -> None:
    project = await factory.project()
    chat = simple("switch", turns=2)
    await import_file(database, write(tmp_path, [chat]), project)
    # Back in ChatGPT the user edited the second prompt: a new branch from the first answer.
    first_answer = [k for k, n in chat.mapping.items() if n["message"] and n["parent"]][2]
    chat.add("user", "edited second question", parent=first_answer)
    chat.add("assistant", "answer to the edited question")
    summary = await import_file(database, write(tmp_path, [chat]), project)
    assert (summary.updated, summary.messages) == (1, 2)
    assert await branch(db, project, chat.id) == [
        ("user", "question 0 of switch"),
        ("assistant", "answer 0 of switch"),
        ("user", "edited second question"),
        ("assistant", "answer to the edited question"),
    ]
    again = await import_file(database, write(tmp_path, [chat]), project)
    assert (again.skipped, again.messages) == (1, 0)


async def test_split_export_imports_from_zip_and_folder_and_either_layout_adds_nothing_again(
    tmp_path: Path, env: dict[str, str], db: asyncpg.Connection, factory: Factory
) -> None:
    project = await factory.project()
    chats = [simple(f"chat {n}", turns=1) for n in range(7)]
    files = split(chats, 3)
    (tmp_path / "export.zip").write_bytes(zip_files(files))
    folder = write_folder(tmp_path / "unpacked", files)
    single = write(tmp_path, chats)

    seen: list[tuple[int, float]] = []

    async def progress(summary: run.Summary, fraction: float) -> None:
        seen.append((summary.seen, fraction))

    summary = await import_file(env["DATABASE_URL"], tmp_path / "export.zip", project, progress)
    assert (summary.imported, summary.failed, summary.messages) == (7, 0, 14)
    assert seen[-1] == (7, 1.0)  # every part counted, to the end
    assert await counts(db) == (7, 14)
    for again in (folder, single, tmp_path / "export.zip"):
        code, out, err = await chatbeto(env, "import", str(again), "--project", str(project))
        assert code == 0, err
        assert "imported 0 conversations (0 new messages), updated 0, skipped 7" in out
    assert await counts(db) == (7, 14)

    other = await factory.project("other")
    code, out, err = await chatbeto(env, "import", str(folder), "--project", str(other))
    assert code == 0, err
    assert "imported 7 conversations (14 new messages)" in out


async def test_progress_fraction_grows_across_the_parts_of_a_folder(
    tmp_path: Path, database: str, factory: Factory
) -> None:
    project = await factory.project()
    files = split([simple(f"c{n}", turns=3) for n in range(40)], 10)
    folder = write_folder(tmp_path / "x", files)
    fractions: list[float] = []

    async def progress(summary: run.Summary, fraction: float) -> None:
        fractions.append(fraction)

    old = run.BATCH_CONVERSATIONS
    run.BATCH_CONVERSATIONS = 5  # several batches per part, so progress is reported within parts
    try:
        summary = await import_file(database, folder, project, progress)
    finally:
        run.BATCH_CONVERSATIONS = old
    assert summary.imported == 40
    assert fractions == sorted(fractions)
    assert fractions[-1] == 1.0
    assert len({round(f, 2) for f in fractions}) >= 4
