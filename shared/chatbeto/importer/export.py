"""Reading an export: `conversations.json` or the `.zip` ChatGPT ships, streamed with ijson.

Nothing is loaded whole: ijson yields one conversation at a time, so memory stays flat however
big the export is. A zip is read through its member stream, never extracted.
"""

from __future__ import annotations

import io
import os
import zipfile
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import IO, Any, cast

import ijson  # type: ignore[import-untyped]

EXPORT_MEMBER = "conversations.json"
READ_BUFFER_BYTES = 1024 * 1024
ZIP_MAGIC = (b"PK\x03\x04", b"PK\x05\x06")
TAIL_PROBE_BYTES = 4096
UTF8_BOM = b"\xef\xbb\xbf"


class ExportError(Exception):
    """The file as a whole can't be imported (not an export, truncated, unreadable)."""


class CountingReader(io.RawIOBase):
    """A file whose bytes read so far are known: progress for the bar and the job."""

    def __init__(self, raw: IO[bytes]) -> None:
        self._raw = raw
        self.position = 0

    def readable(self) -> bool:
        return True

    def seekable(self) -> bool:
        return self._raw.seekable()

    def seek(self, offset: int, whence: int = os.SEEK_SET) -> int:
        self.position = self._raw.seek(offset, whence)
        return self.position

    def tell(self) -> int:
        return self.position

    def readinto(self, buffer: Any) -> int:
        data = self._raw.read(len(buffer))
        n = len(data)
        buffer[:n] = data
        self.position += n
        return n


class Source:
    """An open export: `stream` yields the bytes of conversations.json."""

    def __init__(self, stream: IO[bytes], counter: CountingReader, size: int) -> None:
        self.stream = stream
        self._counter = counter
        self.size = size

    @property
    def fraction(self) -> float:
        return min(1.0, self._counter.position / self.size) if self.size else 1.0


@contextmanager
def open_export(path: str | Path) -> Iterator[Source]:
    path = Path(path)
    try:
        raw = path.open("rb")
    except OSError as exc:
        raise ExportError(f"cannot open {path}: {exc.strerror or exc}") from exc
    with raw:
        size = os.fstat(raw.fileno()).st_size
        if size == 0:
            raise ExportError("the file is empty: not a ChatGPT export")
        counter = CountingReader(raw)
        head = raw.read(4)
        raw.seek(0)
        if head in ZIP_MAGIC:
            with _zip_member(counter) as member:
                yield Source(member, counter, size)
            return
        _check_tail(raw, size)
        yield Source(io.BufferedReader(counter, READ_BUFFER_BYTES), counter, size)


@contextmanager
def _zip_member(counter: CountingReader) -> Iterator[IO[bytes]]:
    try:
        archive = zipfile.ZipFile(io.BufferedReader(counter, READ_BUFFER_BYTES))
    except (zipfile.BadZipFile, OSError) as exc:
        raise ExportError(f"the zip is damaged or truncated: {exc}") from exc
    with archive:
        names = [n for n in archive.namelist() if n.rsplit("/", 1)[-1] == EXPORT_MEMBER]
        if not names:
            raise ExportError(f"the zip has no {EXPORT_MEMBER}: not a ChatGPT export")
        # The export keeps it at the top; a re-zipped folder nests it one level down.
        name = min(names, key=lambda n: (n.count("/"), n))
        try:
            with archive.open(name) as member:
                yield io.BufferedReader(cast(io.RawIOBase, member), READ_BUFFER_BYTES)
        except (zipfile.BadZipFile, EOFError) as exc:
            raise ExportError(f"the zip is damaged or truncated: {exc}") from exc


def _check_tail(raw: IO[bytes], size: int) -> None:
    """Refuse a non-export or a cut-off download before importing any of it."""
    end = size
    tail = b""
    while end > 0 and not tail:  # skip trailing whitespace, however long
        start = max(0, end - TAIL_PROBE_BYTES)
        raw.seek(start)
        tail = raw.read(end - start).rstrip()
        end = start
    raw.seek(0)
    head = raw.read(TAIL_PROBE_BYTES).removeprefix(UTF8_BOM).lstrip()
    while len(head) < 2:  # leading whitespace, however long
        more = raw.read(TAIL_PROBE_BYTES)
        if not more:
            break
        head = (head + more).lstrip()
    raw.seek(0)
    # An export starts with an array of objects: `[{` (or `[]`).
    if not head.startswith(b"[") or head[1:].lstrip()[:1] not in (b"{", b"]"):
        if head.startswith(b"{"):
            raise ExportError("not a ChatGPT export: a JSON object, expected an array")
        raise ExportError("not a ChatGPT export: expected a JSON array of conversations")
    if not tail.endswith(b"]"):
        raise ExportError("the file is truncated: it does not end with ']'")


def conversations(stream: IO[bytes]) -> Iterator[Any]:
    """Each raw conversation object, parsed incrementally."""
    _expect_array(stream)
    first = True
    try:
        for item in ijson.items(stream, "item", use_float=True, buf_size=READ_BUFFER_BYTES):
            if first:
                first = False
                if not (isinstance(item, dict) and "mapping" in item):
                    raise ExportError(
                        "not a ChatGPT export: its items are not conversations (no 'mapping')"
                    )
            yield item
    except ijson.IncompleteJSONError as exc:
        raise ExportError(f"the file is truncated or corrupt ({_short(exc)})") from exc
    except ijson.JSONError as exc:
        raise ExportError(f"the file is not valid JSON ({_short(exc)})") from exc
    except (zipfile.BadZipFile, EOFError) as exc:
        raise ExportError(f"the zip is damaged or truncated: {exc}") from exc


def _expect_array(stream: IO[bytes]) -> None:
    """Look at the first byte without consuming it (ijson would accept any JSON value)."""
    peek = getattr(stream, "peek", None)
    head = peek(64) if peek is not None else b"["
    if head.startswith(UTF8_BOM):
        stream.read(len(UTF8_BOM))
        head = head[len(UTF8_BOM) :]
    while head and not head.lstrip() and peek is not None:
        stream.read(len(head))  # only whitespace so far: JSON lets us drop it
        head = peek(64)
    start = head.lstrip()[:1]
    if start == b"[":
        return
    if start == b"{":
        raise ExportError("not a ChatGPT export: a JSON object, expected an array of conversations")
    raise ExportError("not a ChatGPT export: not a JSON file")


def _short(exc: Exception) -> str:
    return str(exc).splitlines()[0][:200] if str(exc) else type(exc).__name__
