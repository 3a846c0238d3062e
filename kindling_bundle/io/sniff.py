"""What an input holds, told by its first bytes: the one place every command asks.

Paths and streams alike (a stream need not be seekable: stdin, a pipe, a download), so a
command can pick a reader before reading. Formats with a fixed signature are listed in
`_SIGNATURES`. An age-encrypted input (io.age) starts with its own header, binary or armored
(after optional blank space); `open_input` opens it with the identities given and tells what
its plaintext holds in turn. A Kindling JSON export has no signature: it is an object, `{`
after an optional byte order mark and whitespace, and is tried last.
"""

from __future__ import annotations

import codecs
import io
import os
from dataclasses import dataclass
from typing import Any, BinaryIO, Literal

from kindling_bundle.db.connection import SQLITE_MAGIC
from kindling_bundle.errors import BundleError
from kindling_bundle.format.zstd_frames import ZSTD_MAGIC
from kindling_bundle.io.age.header import SNIFF_BYTES, AgeHeader, is_encrypted
from kindling_bundle.io.read_options import ReadOptions

InputFormat = Literal["bundle", "kindling-json", "database", "encrypted"]

_SIGNATURES: tuple[tuple[bytes, InputFormat], ...] = (
    (ZSTD_MAGIC, "bundle"),
    (SQLITE_MAGIC, "database"),
)
_DECIDING_BYTES = max(SNIFF_BYTES, *(len(signature) for signature, _ in _SIGNATURES))
"""Bytes after any leading blank space that tell every format apart."""
_HEAD_BYTES = 65536  # as far as a stream is read looking for the first byte of a JSON document
_JSON_SPACE = b" \t\r\n"
_UTF8_BOM = codecs.BOM_UTF8


def detect_format(head: bytes) -> InputFormat | None:
    """The format whose signature `head` starts with, an age-encrypted input, or a Kindling JSON
    export (first non-space byte `{`), or None."""
    for signature, kind in _SIGNATURES:
        if head.startswith(signature):
            return kind
    if is_encrypted(head):
        return "encrypted"
    if head.removeprefix(_UTF8_BOM).lstrip(_JSON_SPACE)[:1] == b"{":
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
    seek, else one that gives back the bytes looked at first (under the same name). A stream
    this returned is not read again: it knows its format."""
    if isinstance(stream, _Peeked):
        return stream.format, stream
    seekable = stream.seekable()
    start = stream.tell() if seekable else 0
    head = b""
    while len(head) < _HEAD_BYTES:
        data = stream.read(4096)
        if not data:
            break
        head += data
        if len(head.removeprefix(_UTF8_BOM).lstrip(_JSON_SPACE)) >= _DECIDING_BYTES:
            break
    kind = detect_format(head)
    if seekable:
        stream.seek(start)
        return kind, stream
    return kind, _Peeked(head, stream, kind)


@dataclass(frozen=True)
class Input:
    """An input opened for reading: what it holds, and the stream to read that from."""

    format: InputFormat | None
    """Of the plaintext, for an encrypted input (never "encrypted")."""
    stream: BinaryIO
    envelope: AgeHeader | None = None
    """What the age header showed, when the input was encrypted (the stream is then the
    plaintext: damage is found only when reading reaches it, see io.age.DecryptingReader)."""


def open_input(stream: BinaryIO, options: ReadOptions | None = None, *, label: str) -> Input:
    """What `stream` holds, and the stream to read: for an age-encrypted input, its plaintext,
    opened with `options.identities` (NoIdentityError without any, NoMatchingIdentityError if
    none opens it, CiphertextError if the header is damaged). `label` names it in errors."""
    kind, stream = peek_format(stream)
    if kind != "encrypted":
        return Input(kind, stream)
    from kindling_bundle.io.age.payload import open_decrypting_reader  # loads `cryptography`

    identities = options.identities if options is not None else ()
    reader = open_decrypting_reader(stream, identities, label=label)
    inner, plaintext = peek_format(reader)
    if inner == "encrypted":
        raise BundleError(f"{label}: an age file inside an age file: decrypt the outer one first")
    return Input(inner, plaintext, reader.header)


class _Peeked(io.BufferedReader):
    """A stream that gives back the bytes already sniffed from it, and knows their format. Its
    buffer is small: reads of at least that size go straight through (read_manifest reads no
    more of a stream than it needs)."""

    def __init__(self, head: bytes, rest: BinaryIO, kind: InputFormat | None):
        super().__init__(_PrefixedReader(head, rest))
        self.format = kind


class _PrefixedReader(io.RawIOBase):
    """A stream that gives back bytes already read from it, then the rest of it."""

    def __init__(self, head: bytes, rest: BinaryIO):
        self._head = head
        self._rest = rest
        self.name = getattr(rest, "name", "<stream>")

    def readable(self) -> bool:
        return True

    def readinto(self, buffer: Any) -> int:
        """As much as asked for (the head, then the rest), so that a buffered read of n bytes
        reads no more than n bytes of the stream."""
        view = memoryview(buffer).cast("B")
        n = min(len(view), len(self._head))
        if n:
            view[:n] = self._head[:n]
            self._head = self._head[n:]
            if n == len(view):
                return n
        data = self._rest.read(len(view) - n)
        view[n : n + len(data)] = data
        return n + len(data)
