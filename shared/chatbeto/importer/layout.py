"""Which files of an export hold its conversations, in the order they are imported.

Two layouts exist. The older one has a single `conversations.json`; since 2026 ChatGPT splits
it into `conversations-000.json`, `conversations-001.json`, … beside `export_manifest.json`.
Both arrive as a `.zip` or unpacked into a folder, sometimes one level down (a re-zipped
folder). The manifest, when present and readable, names the parts; otherwise the parts are
found by name. A manifest is read leniently, since its shape is not documented and varies:

    {"version": 2, "export_id": "…", "created_at": "2026-02-01T09:00:00Z",
     "files": [{"path": "conversations-000.json", "type": "conversations",
                "conversation_count": 100, "size_bytes": 812345, "sha256": "…"},
               {"path": "user.json", "type": "user"}, …]}

is the shape we write in tests; a list under `files`, `parts`, `entries` or `conversations`
(or `conversations.files`), of paths or of objects naming one under `path`, `file`,
`filename` or `name`, or an object keyed by file name, all work. An entry counts as a
conversations file when its name looks like one, or its `type`/`kind` says `conversations`.
"""

from __future__ import annotations

import posixpath
import re
from collections.abc import Callable, Iterable, Sequence
from typing import Any

import orjson

SINGLE = "conversations.json"
MANIFEST = "export_manifest.json"
PART_RE = re.compile(r"^conversations-(\d+)\.json$")
MAX_MANIFEST_BYTES = 16 * 1024 * 1024
LIST_KEYS = ("files", "parts", "entries", "contents", "items", "conversations")
PATH_KEYS = ("path", "file", "filename", "file_name", "name")
TYPE_KEYS = ("type", "kind", "category")


class NoConversations(Exception):
    """Nothing in these names is a conversations file."""


class MissingParts(Exception):
    """The manifest names conversation files that are not there (an incomplete download)."""


def is_export_file(name: str) -> bool:
    base = posixpath.basename(name)
    return base in (SINGLE, MANIFEST) or PART_RE.match(base) is not None


def _home(names: Iterable[str]) -> str:
    """The shallowest folder holding export files (the export's own top level)."""
    folders = {posixpath.dirname(n) for n in names if is_export_file(n)}
    if not folders:
        raise NoConversations
    return min(folders, key=lambda d: (d.count("/") + (d != ""), d))


def choose(names: Sequence[str], read: Callable[[str], bytes | None]) -> list[str]:
    """The conversation files among `names` (posix paths), in import order.

    `read(name)` gives a small file's bytes (the manifest), or None if it can't be read.
    """
    home = _home(names)
    present = {n for n in names if posixpath.dirname(n) == home}

    def at(base: str) -> str:
        return posixpath.join(home, base) if home else base

    manifest = at(MANIFEST)
    if manifest in present:
        listed = [at(p) for p in manifest_parts(read(manifest))]
        if listed:
            missing = [p for p in listed if p not in names]
            if missing:
                shown = ", ".join(posixpath.basename(m) for m in missing[:3])
                raise MissingParts(f"{MANIFEST} names {shown}, which the export lacks")
            return listed
    parts = sorted(
        (int(m.group(1)), n)
        for n in present
        if (m := PART_RE.match(posixpath.basename(n))) is not None
    )
    if parts:
        return [n for _, n in parts]
    if at(SINGLE) in present:
        return [at(SINGLE)]
    raise NoConversations


def manifest_parts(data: bytes | None) -> list[str]:
    """Conversation file paths named by a manifest, relative to it; [] when it names none."""
    if not data:
        return []
    try:
        doc = orjson.loads(data)
    except orjson.JSONDecodeError:
        return []  # an unreadable manifest: the parts are found by name instead
    found: list[str] = []
    _visit(doc, False, found)
    return list(dict.fromkeys(found))


def _visit(value: Any, hinted: bool, found: list[str]) -> None:
    if isinstance(value, list):
        for item in value:
            _entry(item, None, hinted, found)
    elif isinstance(value, dict):
        keys = [k for k in LIST_KEYS if k in value]
        if keys:
            for key in keys:
                _visit(value[key], hinted or key == "conversations", found)
        else:  # {"conversations-000.json": {...}, …}
            for name, meta in value.items():
                if isinstance(name, str) and name.endswith(".json"):
                    _entry(name, meta if isinstance(meta, dict) else None, hinted, found)


def _entry(item: Any, meta: dict[str, Any] | None, hinted: bool, found: list[str]) -> None:
    if isinstance(item, dict):
        meta = item
        item = next((item[k] for k in PATH_KEYS if isinstance(item.get(k), str)), None)
    if not isinstance(item, str) or not item.strip():
        return
    path = posixpath.normpath(item.strip().replace("\\", "/")).lstrip("/")
    if path.startswith(".."):
        return  # outside the export: never followed
    base = posixpath.basename(path)
    kind = next((str(meta[k]).lower() for k in TYPE_KEYS if meta and k in meta), None)
    if (
        PART_RE.match(base)
        or base == SINGLE
        or (base.endswith(".json") and (hinted or kind in ("conversations", "conversation")))
    ):
        found.append(path)
