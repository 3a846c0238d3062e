"""What an input holds, told by its first bytes: the one place every command asks.

Paths and streams alike (a stream need not be seekable: stdin, a pipe, a download), so a
command can pick a reader before reading. Formats with a fixed signature are listed in
`_SIGNATURES`; a new one (an age-encrypted envelope, say) is one entry there and one name in
`InputFormat`. A Kindling JSON export has no signature: it is an object, `{` after an optional
byte order mark and whitespace, and is tried last.
"""

from __future__ import annotations

import io
import os
from typing import Any, BinaryIO, Literal

from kindling_bundle.db.connection import SQLITE_MAGIC
from kindling_bundle.errors import BundleError
from kindling_bundle.format.zstd_frames import ZSTD_MAGIC
from kindling_bundle.kindling_json.scanner import CHUNK_BYTES, UTF8_BOM

InputFormat = Literal["bundle", "kindling-json", "database"]

_SIGNATURES: tuple[tuple[bytes, InputFormat], ...] = (
    (ZSTD_MAGIC, "bundle"),
    (SQLITE_MAGIC, "database"),
)
_LONGEST_SIGNATURE = max(len(signature) for signature, _ in _SIGNATURES)
_HEAD_BYTES = 65536  # as far as a stream is read looking for the first byte of a JSON document
_JSON_SPACE = b" \t\r\n"


def detect_format(head: bytes) -> InputFormat | None:
    """The format whose signature `head` starts with, or a Kindling JSON export (first
    non-space byte `{`), or None."""
    for signature, kind in _SIGNATURES:
        if head.startswith(signature):
            return kind
    if head.removeprefix(UTF8_BOM).lstrip(_JSON_SPACE)[:1] == b"{":
        return "kindling-json"
    return None


def sniff_path(path: str | os.PathLike[str]) -> InputFormat:
    """What a file holds; BundleError when it cannot be opened or is none of the formats."""
    name = os.fspath(path)
    try:
        with open(path, "rb") as handle:
            head = handle.read(_HEAD_BYTES)
    except OSError as exc:
        raise BundleError(f"{name}: cannot open: {exc.strerror}") from None
    kind = detect_format(head)
    if kind is None:
        raise BundleError(
            f"{name}: not a bundle, a Kindling JSON export or a Kindling database "
            "(by its first bytes)"
        )
    return kind


def peek_format(stream: BinaryIO) -> tuple[InputFormat | None, BinaryIO]:
    """The format of a stream, and the stream to read instead: the same one rewound if it can
    seek, else one that gives back the bytes looked at first (under the same name)."""
    seekable = stream.seekable()
    start = stream.tell() if seekable else 0
    head = b""
    while len(head) < _HEAD_BYTES:
        data = stream.read(4096)
        if not data:
            break
        head += data
        if len(head) >= _LONGEST_SIGNATURE and head.removeprefix(UTF8_BOM).strip(_JSON_SPACE):
            break
    if seekable:
        stream.seek(start)
        return detect_format(head), stream
    prefixed = _PrefixedReader(head, stream)
    return detect_format(head), io.BufferedReader(prefixed, CHUNK_BYTES)


class _PrefixedReader(io.RawIOBase):
    """A stream that gives back bytes already read from it, then the rest of it."""

    def __init__(self, head: bytes, rest: BinaryIO):
        self._head = head
        self._rest = rest
        self.name = getattr(rest, "name", "<stream>")

    def readable(self) -> bool:
        return True

    def readinto(self, buffer: Any) -> int:
        view = memoryview(buffer).cast("B")
        if self._head:
            n = min(len(view), len(self._head))
            view[:n] = self._head[:n]
            self._head = self._head[n:]
            return n
        data = self._rest.read(len(view))
        view[: len(data)] = data
        return len(data)
