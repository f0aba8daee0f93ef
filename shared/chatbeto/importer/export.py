"""Reading an export: a `.zip`, an unpacked folder or one JSON file, streamed with ijson.

Nothing is loaded whole: ijson yields one conversation at a time, so memory stays flat however
big the export is. A zip is read through its member streams, never extracted. Which files hold
the conversations (one `conversations.json`, or the split `conversations-NNN.json` parts that
`export_manifest.json` names) is `layout`'s business; here they are opened and read in turn.
"""

from __future__ import annotations

import io
import os
import zipfile
from collections.abc import Callable, Iterator
from contextlib import AbstractContextManager, contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import IO, Any, cast

import ijson  # type: ignore[import-untyped]

from chatbeto.importer import layout

EXPORT_MEMBER = layout.SINGLE
READ_BUFFER_BYTES = 1024 * 1024
ZIP_MAGIC = (b"PK\x03\x04", b"PK\x05\x06")
TAIL_PROBE_BYTES = 4096
UTF8_BOM = b"\xef\xbb\xbf"
# An unpacked export keeps its files at the top, or one folder down when it was re-zipped.
MAX_FOLDER_DEPTH = 2
NOT_AN_EXPORT = f"no {layout.SINGLE} (nor conversations-NNN.json parts): not a ChatGPT export"


class ExportError(Exception):
    """The file as a whole can't be imported (not an export, truncated, unreadable)."""


class Meter:
    """How far into the export reading has come, in bytes: progress for the bar and the job."""

    def __init__(self, total: int) -> None:
        self.total = total
        self.read = 0

    @property
    def fraction(self) -> float:
        return min(1.0, self.read / self.total) if self.total else 1.0


class CountingReader(io.RawIOBase):
    """A file whose position (after `base` bytes of earlier parts) is kept on a `Meter`."""

    def __init__(self, raw: IO[bytes], meter: Meter, base: int = 0) -> None:
        self._raw = raw
        self._meter = meter
        self._base = base

    def readable(self) -> bool:
        return True

    def seekable(self) -> bool:
        return self._raw.seekable()

    def seek(self, offset: int, whence: int = os.SEEK_SET) -> int:
        position = self._raw.seek(offset, whence)
        self._meter.read = self._base + position
        return position

    def tell(self) -> int:
        return self._raw.tell()

    def readinto(self, buffer: Any) -> int:
        data = self._raw.read(len(buffer))
        n = len(data)
        buffer[:n] = data
        self._meter.read = self._base + self._raw.tell()
        return n


@dataclass(frozen=True)
class Part:
    """One conversations file of the export; `open` gives its bytes as a stream."""

    name: str
    open: Callable[[], AbstractContextManager[IO[bytes]]]


class Source:
    """An open export: its conversation parts, read in order."""

    def __init__(self, parts: list[Part], meter: Meter) -> None:
        self.parts = parts
        self._meter = meter

    @property
    def fraction(self) -> float:
        return self._meter.fraction

    def conversations(self) -> Iterator[Any]:
        """Every raw conversation of every part; errors name the part when there are several."""
        for part in self.parts:
            try:
                with part.open() as stream:
                    yield from conversations(stream)
            except ExportError as exc:
                if len(self.parts) == 1:
                    raise
                raise ExportError(f"{part.name}: {exc}") from exc


@contextmanager
def open_export(path: str | Path) -> Iterator[Source]:
    path = Path(path)
    if path.is_dir():
        yield _folder(path)
        return
    if path.name == layout.MANIFEST:
        yield _folder(path.parent)
        return
    try:
        raw = path.open("rb")
    except OSError as exc:
        raise ExportError(f"cannot open {path}: {exc.strerror or exc}") from exc
    with raw:
        size = os.fstat(raw.fileno()).st_size
        if size == 0:
            raise ExportError("the file is empty: not a ChatGPT export")
        meter = Meter(size)
        head = raw.read(4)
        raw.seek(0)
        if head in ZIP_MAGIC:
            with _zip(CountingReader(raw, meter)) as parts:
                yield Source(parts, meter)
            return
        _check_tail(raw, size)
        counter = CountingReader(raw, meter)

        @contextmanager
        def whole() -> Iterator[IO[bytes]]:
            yield io.BufferedReader(counter, READ_BUFFER_BYTES)

        yield Source([Part(path.name, whole)], meter)


def _folder(root: Path) -> Source:
    names = []
    for dirpath, dirnames, filenames in os.walk(root):
        depth = len(Path(dirpath).relative_to(root).parts)
        if depth >= MAX_FOLDER_DEPTH:
            dirnames.clear()
        rel = Path(dirpath).relative_to(root).as_posix()
        names += filenames if rel == "." else [f"{rel}/{f}" for f in filenames]

    def read(name: str) -> bytes | None:
        try:
            with (root / name).open("rb") as f:
                return f.read(layout.MAX_MANIFEST_BYTES)
        except OSError:
            return None

    chosen = _choose(names, read, f"{root} has")
    files = [root / name for name in chosen]
    bases, total = [], 0
    for file in files:
        bases.append(total)
        total += _checked_size(file)
    meter = Meter(total)

    def opener(file: Path, base: int) -> Callable[[], AbstractContextManager[IO[bytes]]]:
        @contextmanager
        def open_part() -> Iterator[IO[bytes]]:
            with file.open("rb") as raw:
                yield io.BufferedReader(CountingReader(raw, meter, base), READ_BUFFER_BYTES)

        return open_part

    return Source([Part(f.name, opener(f, b)) for f, b in zip(files, bases, strict=True)], meter)


def _checked_size(file: Path) -> int:
    """A part's size, once it is known to look whole (checked before anything is imported)."""
    try:
        with file.open("rb") as raw:
            size = os.fstat(raw.fileno()).st_size
            if size == 0:
                raise ExportError(f"{file.name}: the file is empty")
            try:
                _check_tail(raw, size)
            except ExportError as exc:
                raise ExportError(f"{file.name}: {exc}") from exc
    except OSError as exc:
        raise ExportError(f"cannot open {file}: {exc.strerror or exc}") from exc
    return size


def _choose(names: list[str], read: Callable[[str], bytes | None], where: str) -> list[str]:
    try:
        return layout.choose(names, read)
    except layout.NoConversations:
        raise ExportError(f"{where} {NOT_AN_EXPORT}") from None
    except layout.MissingParts as exc:
        raise ExportError(f"the export is incomplete: {exc}") from None


@contextmanager
def _zip(counter: CountingReader) -> Iterator[list[Part]]:
    try:
        archive = zipfile.ZipFile(io.BufferedReader(counter, READ_BUFFER_BYTES))
    except (zipfile.BadZipFile, OSError) as exc:
        raise ExportError(f"the zip is damaged or truncated: {exc}") from exc
    with archive:
        names = [n for n in archive.namelist() if not n.endswith("/")]

        def read(name: str) -> bytes | None:
            try:
                with archive.open(name) as member:
                    return member.read(layout.MAX_MANIFEST_BYTES)
            except (zipfile.BadZipFile, EOFError, OSError):
                return None

        chosen = _choose(names, read, "the zip has")

        def opener(name: str) -> Callable[[], AbstractContextManager[IO[bytes]]]:
            @contextmanager
            def open_member() -> Iterator[IO[bytes]]:
                try:
                    with archive.open(name) as member:
                        yield io.BufferedReader(cast(io.RawIOBase, member), READ_BUFFER_BYTES)
                except (zipfile.BadZipFile, EOFError) as exc:
                    raise ExportError(f"the zip is damaged or truncated: {exc}") from exc

            return open_member

        yield [Part(name.rsplit("/", 1)[-1], opener(name)) for name in chosen]


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
