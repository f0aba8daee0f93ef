"""An import upload on its way into `import_chunks`, whatever the user sent.

One export `.zip` is stored as it came. JSON files — a single `conversations.json`, or an
unpacked split export sent as several `file` parts (`conversations-000.json`, …,
`export_manifest.json`, as a browser's folder picker or `curl -F file=@… -F file=@…` sends
them) — are bundled on the way into one uncompressed zip, so the worker always reads one file
in one of the layouts it knows. Parts that are not export files (`user.json`, `chat.html`,
images of a whole folder) are skipped. Nothing is held whole in memory: bytes go to Postgres in
chunks as they arrive.
"""

from __future__ import annotations

import io
import posixpath
import re
import uuid
import zipfile
from collections.abc import Callable
from enum import Enum
from typing import Any
from urllib.parse import unquote

import asyncpg
from aiohttp import BodyPartReader
from chatbeto.importer import jobs

ZIP_MAGIC = (b"PK\x03\x04", b"PK\x05\x06")
UTF8_BOM = b"\xef\xbb\xbf"
EXPORT_NAME = re.compile(r"^(?:conversations(?:-\d+)?|export_manifest)\.json$")
MANIFEST = "export_manifest.json"
# Zip members need a time; a fixed one keeps the bundle reproducible.
MEMBER_TIME = (1980, 1, 1, 0, 0, 0)
# Other files of a folder are usually small; only this much is read to tell what a part is.
MAX_HEAD_BYTES = 64 * 1024


class Kind(Enum):
    ZIP = "zip"
    CONVERSATIONS = "conversations"  # a JSON array
    MANIFEST = "manifest"
    OTHER = "other"
    EMPTY = "empty"


def base_name(filename: str) -> str:
    """The file's own name: folder pickers send `folder/file`, some clients `folder%2Ffile`."""
    return posixpath.basename(unquote(filename).replace("\\", "/"))


def kind_of(head: bytes, filename: str) -> Kind | None:
    """What a part is from its first bytes; None while only blanks (or a zip magic's prefix)."""
    if head.startswith(ZIP_MAGIC):
        return Kind.ZIP
    if len(head) < len(ZIP_MAGIC[0]) and any(m.startswith(head) for m in ZIP_MAGIC):
        return None
    rest = head.removeprefix(UTF8_BOM).lstrip()
    if not rest:
        return None
    if rest[:1] == b"[":
        return Kind.CONVERSATIONS
    if rest[:1] == b"{" and base_name(filename) == MANIFEST:
        return Kind.MANIFEST
    return Kind.OTHER


class ChunkWriter(io.RawIOBase):
    """A write-only file whose bytes become `import_chunks` rows of `chunk_bytes`.

    `write` only buffers (zipfile writes synchronously); `flush_chunks` stores what is due,
    borrowing a pooled connection per chunk, so a slow client never holds one for minutes.
    """

    def __init__(self, pool: asyncpg.Pool, upload_id: uuid.UUID, chunk_bytes: int) -> None:
        self._pool = pool
        self._upload_id = upload_id
        self._chunk_bytes = chunk_bytes
        self._buffer = bytearray()
        self._seq = 0
        self.size = 0

    def writable(self) -> bool:
        return True

    def write(self, data: Any) -> int:
        self._buffer += data
        self.size += len(data)
        return len(data)

    async def flush_chunks(self, final: bool = False) -> None:
        while len(self._buffer) >= self._chunk_bytes or (final and self._buffer):
            piece = bytes(self._buffer[: self._chunk_bytes])
            del self._buffer[: self._chunk_bytes]
            await jobs.add_chunk(self._pool, self._upload_id, self._seq, piece)
            self._seq += 1


class Bundle:
    """The upload being stored: raw (one zip) or a zip of the JSON files, made on the way."""

    def __init__(self, writer: ChunkWriter) -> None:
        self.writer = writer
        self.raw = False
        self.zip: zipfile.ZipFile | None = None
        self.names: set[str] = set()
        self.files = 0

    def member_name(self, filename: str, kind: Kind) -> str:
        base = base_name(filename)
        if kind is Kind.MANIFEST:
            name = MANIFEST
        elif EXPORT_NAME.match(base) and base != MANIFEST:
            name = base
        else:  # a conversations array under another name: a part after the named ones
            name = f"conversations-{1000 + len(self.names):04d}.json"
        if name in self.names:
            raise ValueError(f"two file parts are named {name}")
        self.names.add(name)
        return name

    async def finish(self) -> None:
        if self.zip is not None:
            self.zip.close()
        await self.writer.flush_chunks(final=True)


async def read_head(
    part: BodyPartReader, chunk_bytes: int, count: Callable[[int], None]
) -> tuple[Kind, bytes]:
    """Read until the part's kind is known; returns it and the bytes read so far."""
    head = bytearray()
    while True:
        data = await part.read_chunk(chunk_bytes)
        if not data:
            return (Kind.EMPTY if not head else Kind.OTHER), bytes(head)
        count(len(data))
        head += data
        kind = kind_of(bytes(head), part.filename or "")
        if kind is not None:
            return kind, bytes(head)
        if len(head) > MAX_HEAD_BYTES:
            return Kind.OTHER, bytes(head)


async def copy(
    part: BodyPartReader,
    write: Callable[[bytes], object],
    writer: ChunkWriter,
    chunk_bytes: int,
    count: Callable[[int], None],
) -> None:
    while data := await part.read_chunk(chunk_bytes):
        count(len(data))
        write(data)
        await writer.flush_chunks()


async def drain(part: BodyPartReader, chunk_bytes: int, count: Callable[[int], None]) -> None:
    """Read a skipped part to its end, still within the upload limit."""
    while data := await part.read_chunk(chunk_bytes):
        count(len(data))


async def add_member(
    bundle: Bundle,
    part: BodyPartReader,
    kind: Kind,
    head: bytes,
    chunk_bytes: int,
    count: Callable[[int], None],
) -> None:
    if bundle.zip is None:
        bundle.zip = zipfile.ZipFile(bundle.writer, "w", zipfile.ZIP_STORED)
    info = zipfile.ZipInfo(bundle.member_name(part.filename or "", kind), MEMBER_TIME)
    with bundle.zip.open(info, "w", force_zip64=True) as member:
        member.write(head)
        await copy(part, member.write, bundle.writer, chunk_bytes, count)
    await bundle.writer.flush_chunks()
    bundle.files += 1


async def add_raw(
    bundle: Bundle,
    part: BodyPartReader,
    head: bytes,
    chunk_bytes: int,
    count: Callable[[int], None],
) -> None:
    bundle.raw = True
    bundle.writer.write(head)
    await copy(part, bundle.writer.write, bundle.writer, chunk_bytes, count)
    await bundle.writer.flush_chunks()
    bundle.files += 1
