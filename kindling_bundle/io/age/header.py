"""The age header: detecting an age file, reading its armor, and parsing its stanzas.

The header is read a bounded line at a time through a small buffer, so nothing in it is
trusted for a size, and the payload is then read in whole chunks from where it ended.
"""

from __future__ import annotations

import base64
import binascii
from dataclasses import dataclass
from typing import BinaryIO, Protocol

from kindling_bundle.errors import CiphertextError, TruncatedCiphertextError
from kindling_bundle.io.age.encoding import MAX_LINE, Stanza, b64decode, damaged

INTRO = b"age-encryption.org/v1\n"
ARMOR_BEGIN = b"-----BEGIN AGE ENCRYPTED FILE-----"
ARMOR_END = b"-----END AGE ENCRYPTED FILE-----"
SNIFF_BYTES = len(ARMOR_BEGIN)
"""Bytes `is_encrypted` needs to decide (more if an armored file starts with blank lines)."""

MAX_HEADER_BYTES = 1 << 20
"""A header is refused past this size (about 7,000 X25519 or 1,400 RSA-4096 recipients)."""
_MAX_STANZAS = 10_000
_MAX_WHITESPACE = 1024  # around armor, as age allows


class Readable(Protocol):
    def read(self, size: int, /) -> bytes | None: ...


class _LineTooLong(Exception):
    pass


class Source:
    """A stream read through a small buffer, so the header can be taken a line at a time and the
    payload read in whole chunks from where the header ended."""

    _BLOCK = 8192

    def __init__(self, raw: Readable):
        self._raw = raw
        self._buffer = bytearray()

    def _fill(self) -> bool:
        data = self._raw.read(self._BLOCK)
        if not data:
            return False
        self._buffer += data
        return True

    def peek(self, size: int) -> bytes:
        while len(self._buffer) < size and self._fill():
            pass
        return bytes(self._buffer[:size])

    def readline(self, limit: int) -> bytes:
        """A line with its newline; at the end of the stream, what is left (no newline)."""
        searched = 0
        while True:
            end = self._buffer.find(b"\n", searched)
            if end >= 0:
                if end >= limit:
                    raise _LineTooLong
                line = bytes(self._buffer[: end + 1])
                del self._buffer[: end + 1]
                return line
            if len(self._buffer) >= limit:
                raise _LineTooLong
            searched = len(self._buffer)
            if not self._fill():
                line = bytes(self._buffer)
                self._buffer.clear()
                return line

    def read(self, size: int) -> bytes:
        """`size` bytes, fewer only at the end of the stream."""
        if self._buffer:
            data = bytes(self._buffer[:size])
            del self._buffer[:size]
            if len(data) == size:
                return data
            pieces = [data]
            missing = size - len(data)
        else:
            pieces = []
            missing = size
        while missing:
            piece = self._raw.read(missing)
            if not piece:
                break
            pieces.append(piece)
            missing -= len(piece)
        return pieces[0] if len(pieces) == 1 else b"".join(pieces)


class _Dearmor:
    """The binary age file inside the armored (PEM) form, decoded a line at a time."""

    def __init__(self, source: Source, label: str):
        self._source = source
        self._label = label
        self._pending = b""
        self._done = False
        self._started = False

    def _error(self, what: str) -> CiphertextError:
        return CiphertextError(f"{self._label}: damaged age armor: {what}")

    def _line(self) -> bytes:
        try:
            line = self._source.readline(_MAX_WHITESPACE + 1)
        except _LineTooLong:
            raise self._error("a line is too long") from None
        text = line.removesuffix(b"\n").removesuffix(b"\r")
        if not line.endswith(b"\n") and text != ARMOR_END:  # the stream ended inside the armor
            raise TruncatedCiphertextError(f"{self._label}: the armored file is cut short")
        return text

    def read(self, size: int, /) -> bytes:
        pieces = [self._pending]
        have = len(self._pending)
        while have < size and not self._done:
            piece = self._decode_line()
            pieces.append(piece)
            have += len(piece)
        data = b"".join(pieces)
        self._pending = data[size:]
        return data[:size]

    def _decode_line(self) -> bytes:
        if not self._started:
            skipped = 0
            line = self._line()
            while not line.strip():
                skipped += len(line) + 1
                if skipped > _MAX_WHITESPACE:
                    raise self._error("too much leading whitespace")
                line = self._line()
            if line != ARMOR_BEGIN:
                raise self._error("no BEGIN line")
            self._started = True
        line = self._line()
        if line == ARMOR_END:
            self._finish()
            return b""
        if not line or len(line) > 64:
            raise self._error("a line is not 1 to 64 columns")
        try:
            data = base64.b64decode(line, validate=True)
        except binascii.Error:
            raise self._error("a line is not base64") from None
        if base64.b64encode(data) != line:
            raise self._error("a line is not canonical base64")
        if len(data) < 48:
            if self._line() != ARMOR_END:
                raise self._error("a short line not followed by the END line")
            self._finish()
        return data

    def _finish(self) -> None:
        rest = self._source.read(_MAX_WHITESPACE + 1)
        if rest.strip() or len(rest) > _MAX_WHITESPACE:
            raise self._error("data after the END line")
        self._done = True


@dataclass(frozen=True)
class AgeHeader:
    """What an age header shows without a key: one stanza per recipient (X25519 ones are
    anonymous; ssh-* ones carry a 4-byte key tag), and whether the file is armored."""

    recipients: int
    stanza_types: tuple[str, ...]
    armored: bool


@dataclass(frozen=True)
class Header:
    info: AgeHeader
    stanzas: tuple[Stanza, ...]
    authenticated: bytes  # the bytes the MAC covers: intro up to and including "---"
    mac: bytes


def is_encrypted(first_bytes: bytes) -> bool:
    """Whether input starting with these bytes is an age file (binary, or armored after optional
    blank space). Give it at least SNIFF_BYTES bytes when the input has them."""
    if first_bytes.startswith(INTRO):
        return True
    return first_bytes.lstrip(b" \t\r\n").startswith(ARMOR_BEGIN)


def _armored(source: Source) -> bool:
    head = source.peek(_MAX_WHITESPACE + len(ARMOR_BEGIN))
    return not head.startswith(INTRO) and head.lstrip(b" \t\r\n").startswith(ARMOR_BEGIN)


def _parse_header(source: Source, label: str, armored: bool) -> Header:
    """The header, read a bounded line at a time: nothing in it is trusted for a size."""
    if not INTRO.startswith(source.peek(len(INTRO))) or not source.peek(1):
        raise CiphertextError(f"{label}: not an age-encryption.org/v1 file")
    taken = bytearray()

    def line(limit: int = MAX_LINE) -> bytes:
        try:
            text = source.readline(min(limit, MAX_HEADER_BYTES - len(taken)) + 1)
        except _LineTooLong:
            if len(taken) + limit >= MAX_HEADER_BYTES:
                raise CiphertextError(
                    f"{label}: the age header is longer than {MAX_HEADER_BYTES} bytes: refused"
                ) from None
            raise damaged(label, f"a line is longer than {limit} bytes") from None
        if not text.endswith(b"\n"):
            raise TruncatedCiphertextError(f"{label}: the age header is cut short")
        taken.extend(text)
        return text

    if line() != INTRO:
        raise CiphertextError(f"{label}: not an age-encryption.org/v1 file")
    stanzas: list[Stanza] = []
    while True:
        opening = line()
        if opening.startswith(b"---"):
            parts = opening[:-1].split(b" ")
            mac = b64decode(parts[1]) if len(parts) == 2 and parts[0] == b"---" else None
            if mac is None or len(mac) != 32:
                raise damaged(label, "malformed closing line")
            types = tuple(stanza.type for stanza in stanzas)
            info = AgeHeader(recipients=len(stanzas), stanza_types=types, armored=armored)
            authenticated = bytes(taken[: len(taken) - len(opening) + 3])
            return Header(info, tuple(stanzas), authenticated, mac)
        parts = opening[:-1].split(b" ")
        if parts[0] != b"->" or len(parts) < 2 or not all(_valid_arg(p) for p in parts[1:]):
            raise damaged(label, "malformed stanza line")
        if len(stanzas) == _MAX_STANZAS:
            raise CiphertextError(f"{label}: more than {_MAX_STANZAS} recipients: refused")
        body = bytearray()
        while True:
            text = line(64)
            data = b64decode(text[:-1])
            if data is None:
                raise damaged(label, "a stanza body line is not base64")
            body += data
            if len(text) - 1 < 64:
                break
        kind, *args = (part.decode("ascii") for part in parts[1:])
        stanzas.append(Stanza(kind, tuple(args), bytes(body)))


def _valid_arg(arg: bytes) -> bool:
    return bool(arg) and all(33 <= byte <= 126 for byte in arg)


def open_source(src: Readable, label: str) -> tuple[Source, Header]:
    source = Source(src)
    armored = _armored(source)
    if armored:
        source = Source(_Dearmor(source, label))
    return source, _parse_header(source, label, armored)


def read_header(src: BinaryIO, *, label: str = "<stream>") -> AgeHeader:
    """What the header shows without a key (for `inspect`). Reads a little past the header."""
    return open_source(src, label)[1].info
