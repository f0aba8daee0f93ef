"""Reading ChatGPT exports: the branch the user saw, content reduced to text, bad files refused."""

from __future__ import annotations

from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import orjson
import pytest
from chatbeto.importer.convert import MalformedConversation, convert
from chatbeto.importer.export import ExportError, open_export

from tests.fixtures.chatgpt_builder import (
    Chat,
    dumps,
    simple,
    split,
    text,
    write_folder,
    zip_files,
    zipped,
)

FIXTURE = Path(__file__).parent / "fixtures" / "chatgpt_export_small.json"


def read(path: Path) -> list[Any]:
    with open_export(path) as source:
        return list(source.conversations())


def contents(chat: Chat) -> list[tuple[str, str]]:
    return [(m.role, m.content) for m in convert(chat.to_dict()).messages]


def test_fixture_is_read_as_the_user_saw_it() -> None:
    convs = [convert(raw) for raw in read(FIXTURE)]
    assert [c.title for c in convs] == [
        "Deploying with Docker",
        "Plot the numbers in this chart please",
        "Latest aiohttp release",
    ]
    docker = convs[0]
    assert [(m.role, m.content) for m in docker.messages] == [
        ("user", "How do I deploy an aiohttp app with Docker?"),
        ("assistant", "Use python:3.12-slim, copy the app, run gunicorn with aiohttp's worker."),
        ("user", "And how do I add Postgres with docker compose?"),
        (
            "assistant",
            "Add a `db` service using the postgres:16 image and point DATABASE_URL at it.",
        ),
    ]
    assert docker.external_id == "67a1f0c2-1111-8000-9a3e-0d1c2b3a4f01"
    assert docker.messages[0].external_id == "aaa1a1a1-0001-4000-8000-000000000001"
    assert docker.model == "gpt-4o"
    assert docker.created_at.timestamp() == pytest.approx(1738600000.123)
    assert docker.updated_at > docker.created_at
    assert convs[1].gizmo_id == "g-p2mrD8kZq-data-analyst"
    assert convs[2].model == "o3"


def test_regenerated_answer_and_edited_prompt_stay_out() -> None:
    chat = Chat("branches")
    question = chat.add("user", "q1")
    chat.add("assistant", "first answer, regenerated")
    chat.add("assistant", "second answer", parent=question)
    chat.add("user", "prompt before the edit")
    chat.add("assistant", "answer to the abandoned prompt")
    # The user edited the prompt, then switched back to the first answer's branch: current
    # is the leaf of that branch, not the newest node.
    edited = chat.add("user", "edited prompt", parent=chat.mapping[question]["children"][1])
    chat.add("assistant", "answer to the edited prompt")
    chat.add("user", "a follow-up on the old branch", parent=chat.mapping[question]["children"][0])
    chat.current = chat.mapping[edited]["children"][0]
    assert contents(chat) == [
        ("user", "q1"),
        ("assistant", "second answer"),
        ("user", "edited prompt"),
        ("assistant", "answer to the edited prompt"),
    ]


def test_hidden_and_empty_messages_are_skipped() -> None:
    chat = Chat("hidden", hidden_system=False)
    chat.add("system", text("You are ChatGPT, a large language model."), hidden=True)
    chat.add("system", text(""))
    chat.add(
        "user",
        {"content_type": "user_editable_context", "user_profile": "x", "user_instructions": "y"},
    )
    chat.add("user", "visible question")
    chat.add("assistant", "", recipient="python")
    chat.add("system", "a visible system note")
    chat.add("assistant", "visible answer")
    assert contents(chat) == [
        ("user", "visible question"),
        ("system", "a visible system note"),
        ("assistant", "visible answer"),
    ]


def test_every_content_type_becomes_readable_text() -> None:
    chat = Chat("content")
    image = {
        "content_type": "image_asset_pointer",
        "asset_pointer": "file-service://file-abc123",
        "width": 10,
        "height": 10,
    }
    chat.add("user", {"content_type": "multimodal_text", "parts": [image, "what is this?"]})
    chat.add(
        "assistant",
        {"content_type": "code", "language": "python", "text": "print(1)"},
        recipient="python",
    )
    chat.add("tool", {"content_type": "execution_output", "text": "1"}, name="python")
    chat.add(
        "tool",
        {"content_type": "tether_browsing_display", "result": "search results", "summary": ""},
        name="browser",
    )
    chat.add(
        "tool",
        {
            "content_type": "tether_quote",
            "url": "https://example.com/a",
            "domain": "example.com",
            "title": "Example",
            "text": "quoted text",
        },
        name="browser",
    )
    chat.add(
        "assistant",
        {
            "content_type": "thoughts",
            "thoughts": [{"summary": "Planning", "content": "think about it"}],
        },
    )
    chat.add("assistant", {"content_type": "reasoning_recap", "content": "Thought for 3 seconds"})
    chat.add(
        "user",
        {
            "content_type": "multimodal_text",
            "parts": [
                {"content_type": "audio_transcription", "text": "spoken words"},
                {"content_type": "audio_asset_pointer", "asset_pointer": "sediment://file_9"},
            ],
        },
    )
    chat.add("assistant", {"content_type": "system_error", "name": "tool_error", "text": "boom"})
    assert contents(chat) == [
        ("user", "[image: file-abc123]\nwhat is this?"),
        ("assistant", "```python\nprint(1)\n```"),
        ("tool", "1"),
        ("tool", "search results"),
        ("tool", "Example — https://example.com/a\nquoted text"),
        ("assistant", "Planning\nthink about it"),
        ("assistant", "Thought for 3 seconds"),
        ("user", "spoken words\n[audio: file_9]"),
        ("assistant", "[tool_error] boom"),
    ]
    messages = convert(chat.to_dict()).messages
    assert messages[1].metadata == {"contentType": "code", "recipient": "python"}
    assert messages[2].metadata == {"contentType": "execution_output", "author": "python"}
    assert messages[1].model == "gpt-4o"


def test_empty_title_becomes_the_first_user_words() -> None:
    chat = Chat("")
    chat.add(
        "user",
        {
            "content_type": "multimodal_text",
            "parts": [
                {"content_type": "image_asset_pointer", "asset_pointer": "file-service://f-1"},
                "please   describe this picture of my garden in spring in detail",
            ],
        },
    )
    assert convert(chat.to_dict()).title == "please describe this picture of my garden in"
    assert convert(Chat("").to_dict()).title == "Imported conversation"


def test_missing_current_node_follows_the_newest_branch() -> None:
    chat = simple("old export", turns=1)
    raw = chat.to_dict()
    raw["current_node"] = None
    assert [m.content for m in convert(raw).messages] == [
        "question 0 of old export",
        "answer 0 of old export",
    ]


@pytest.mark.parametrize(
    ("mutate", "reason"),
    [
        (lambda raw: raw.update(mapping=[]), "mapping is missing or empty"),
        (lambda raw: raw.pop("mapping"), "mapping is missing or empty"),
        (lambda raw: (raw.pop("conversation_id"), raw.pop("id")), "no conversation id"),
        (
            lambda raw: raw["mapping"][raw["current_node"]].update(parent="nowhere"),
            "missing from mapping",
        ),
        (
            lambda raw: raw["mapping"][raw["current_node"]]["message"].update(content="x"),
            "content is not an object",
        ),
        (
            lambda raw: raw["mapping"][raw["current_node"]]["message"]["author"].update(
                role="robot"
            ),
            "unknown author role",
        ),
    ],
)
def test_malformed_conversations_say_why(mutate: Any, reason: str) -> None:
    raw = simple("bad").to_dict()
    mutate(raw)
    with pytest.raises(MalformedConversation, match=reason):
        convert(raw)


def test_a_cycle_is_malformed() -> None:
    raw = simple("loop").to_dict()
    first = next(k for k, n in raw["mapping"].items() if n["parent"] is None)
    raw["mapping"][first]["parent"] = raw["current_node"]
    with pytest.raises(MalformedConversation, match="cycle"):
        convert(raw)


def test_zip_export_is_streamed(tmp_path: Path) -> None:
    path = tmp_path / "export.zip"
    path.write_bytes(zipped(FIXTURE.read_bytes()))
    assert [r["title"] for r in read(path)] == [r["title"] for r in read(FIXTURE)]


def test_zip_with_nested_folder(tmp_path: Path) -> None:
    path = tmp_path / "export.zip"
    path.write_bytes(zipped(dumps([simple("nested")]), member="export-2025/conversations.json"))
    assert [r["title"] for r in read(path)] == ["nested"]


def test_bom_and_whitespace_are_accepted(tmp_path: Path) -> None:
    path = tmp_path / "conversations.json"
    path.write_bytes(b"\xef\xbb\xbf \n" + dumps([simple("bom")]) + b"\n")
    assert [r["title"] for r in read(path)] == ["bom"]


@pytest.mark.parametrize(
    ("payload", "message"),
    [
        (b"", "empty"),
        (b'{"conversations": []}', "a JSON object"),
        (b"hello, not json at all", "expected a JSON array"),
        (b"[1, 2, 3]", "expected a JSON array"),
        (b'[{"name": "not a conversation"}]', "no 'mapping'"),
        (b"PK\x03\x04 this is not really a zip", "zip is damaged"),
    ],
)
def test_files_that_are_not_exports_are_refused(
    tmp_path: Path, payload: bytes, message: str
) -> None:
    path = tmp_path / "file"
    path.write_bytes(payload)
    with pytest.raises(ExportError, match=message):
        read(path)


def test_zip_without_conversations_is_refused(tmp_path: Path) -> None:
    path = tmp_path / "other.zip"
    path.write_bytes(zipped(b"[]", member="something-else.json"))
    with pytest.raises(ExportError, match=r"no conversations\.json"):
        read(path)


def test_truncated_file_is_refused_before_anything_is_read(tmp_path: Path) -> None:
    path = tmp_path / "conversations.json"
    path.write_bytes(FIXTURE.read_bytes()[:5000])
    with pytest.raises(ExportError, match="truncated"):
        read(path)


def test_truncation_that_ends_in_a_bracket_is_caught_while_streaming(tmp_path: Path) -> None:
    data = FIXTURE.read_bytes()
    cut = data.index(b"]", len(data) // 2) + 1  # ends with "]" but mid-conversation
    path = tmp_path / "conversations.json"
    path.write_bytes(data[:cut])
    with pytest.raises(ExportError, match="truncated or corrupt"):
        read(path)


def test_truncated_zip_is_refused(tmp_path: Path) -> None:
    data = zipped(FIXTURE.read_bytes())
    path = tmp_path / "export.zip"
    path.write_bytes(data[: len(data) // 2])
    with pytest.raises(ExportError, match="zip is damaged or truncated"):
        read(path)


def test_long_whitespace_around_the_array_is_accepted(tmp_path: Path) -> None:
    payload = b" \n" * 5000 + dumps([simple("spaced")]) + b"\n " * 5000
    path = tmp_path / "conversations.json"
    path.write_bytes(payload)
    assert [r["title"] for r in read(path)] == ["spaced"]
    path = tmp_path / "export.zip"
    path.write_bytes(zipped(payload))
    assert [r["title"] for r in read(path)] == ["spaced"]


# --- the split layout (2026): conversations-NNN.json beside export_manifest.json -------------


def titles(path: Path) -> list[str]:
    return [r["title"] for r in read(path)]


@pytest.mark.parametrize("manifest", ["files", "strings", "nested", "keyed", None])
def test_split_export_is_read_in_order_from_zip_folder_and_nested_zip(
    tmp_path: Path, manifest: str | None
) -> None:
    chats = [simple(f"chat {n}") for n in range(7)]
    files = split(chats, 3, manifest=manifest)
    want = [f"chat {n}" for n in range(7)]
    (tmp_path / "export.zip").write_bytes(zip_files(files))
    assert titles(tmp_path / "export.zip") == want
    (tmp_path / "nested.zip").write_bytes(zip_files(files, prefix="chatgpt-export/"))
    assert titles(tmp_path / "nested.zip") == want
    folder = write_folder(tmp_path / "unpacked", files)
    assert titles(folder) == want
    if manifest is not None:
        assert titles(folder / "export_manifest.json") == want  # the manifest names its folder
    assert titles(folder / "conversations-001.json") == want[3:6]  # one part alone


def test_manifest_order_wins_and_unlisted_parts_are_left_out(tmp_path: Path) -> None:
    files = split([simple(f"chat {n}") for n in range(4)], 2, manifest=None)
    files["conversations-099.json"] = dumps([simple("stray")])
    files["export_manifest.json"] = orjson.dumps(
        {"files": [{"path": "conversations-001.json"}, {"path": "conversations-000.json"}]}
    )
    folder = write_folder(tmp_path / "x", files)
    assert titles(folder) == ["chat 2", "chat 3", "chat 0", "chat 1"]


def test_parts_sort_by_number_without_a_manifest(tmp_path: Path) -> None:
    files = {f"conversations-{n}.json": dumps([simple(f"part {n}")]) for n in (10, 2, 1)}
    assert titles(write_folder(tmp_path / "x", files)) == ["part 1", "part 2", "part 10"]


def test_unreadable_manifest_falls_back_to_the_part_names(tmp_path: Path) -> None:
    files = split([simple("a"), simple("b")], 1, manifest=None)
    files["export_manifest.json"] = b"{not json"
    assert titles(write_folder(tmp_path / "x", files)) == ["a", "b"]


def test_a_part_the_manifest_names_but_the_export_lacks_is_refused(tmp_path: Path) -> None:
    files = split([simple("a"), simple("b")], 1)
    del files["conversations-001.json"]
    (tmp_path / "e.zip").write_bytes(zip_files(files))
    with pytest.raises(ExportError, match=r"incomplete.*conversations-001\.json"):
        read(tmp_path / "e.zip")
    with pytest.raises(ExportError, match=r"incomplete.*conversations-001\.json"):
        read(write_folder(tmp_path / "x", files))


def test_a_bad_part_is_named(tmp_path: Path) -> None:
    files = split([simple("a"), simple("b")], 1)
    files["conversations-001.json"] = files["conversations-001.json"][:-40]
    with pytest.raises(ExportError, match=r"conversations-001\.json: the file is truncated"):
        read(write_folder(tmp_path / "x", files))
    (tmp_path / "e.zip").write_bytes(zip_files(files))
    with pytest.raises(ExportError, match=r"conversations-001\.json: the file is truncated"):
        read(tmp_path / "e.zip")


def test_a_folder_without_conversations_is_refused(tmp_path: Path) -> None:
    folder = write_folder(tmp_path / "x", {"user.json": b"{}"})
    with pytest.raises(ExportError, match=r"no conversations\.json"):
        read(folder)


def test_nul_is_stripped_from_everything_stored() -> None:
    chat = Chat("ti\x00tle", conversation_id="conv\x00-1", model="gpt\x00-4o")
    chat.add("user", "hel\x00lo", name="to\x00ol")
    conv = convert(chat.to_dict())
    assert (conv.title, conv.external_id, conv.model) == ("title", "conv-1", "gpt-4o")
    assert conv.messages[0].content == "hello"
    assert "\x00" not in orjson.dumps(conv.messages[0].metadata).decode()


def test_times_outside_what_postgres_stores_count_as_absent() -> None:
    chat = simple("old", create_time=-62135596800.0)  # 0001-01-01T00:00:00Z: -infinity
    conv = convert(chat.to_dict())
    # Not datetime.min (which asyncpg stores as -infinity): the first storable message time.
    assert conv.created_at == conv.messages[0].created_at
    assert conv.created_at > datetime(1, 1, 1, 0, 0, 0, tzinfo=UTC)
