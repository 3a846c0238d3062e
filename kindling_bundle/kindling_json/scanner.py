"""A scanner over JSON too large to load at once: the bytes of one value at a time.

Kindling JSON exports run to hundreds of MB. The scanner finds the bytes of the next value (one
record, or one header field) and msgspec decodes and validates that value straight into its
type. Memory is bounded by the largest single value (`MAX_VALUE_BYTES`, 64 MiB; larger values
are refused with their position) plus one read chunk. Errors name the source, line, column (in
bytes, 1-based) and byte offset.
"""

from __future__ import annotations

import re
from collections.abc import Iterator
from typing import Any, BinaryIO, NoReturn

import msgspec

from kindling_bundle.errors import BundleError

MAX_VALUE_BYTES = 64 * 1024 * 1024
CHUNK_BYTES = 1024 * 1024
UTF8_BOM = b"\xef\xbb\xbf"

_WS = re.compile(rb"[ \t\n\r]*+")
# The rest of a string after its opening quote, up to and including the closing quote.
_STRING_TAIL = re.compile(rb'[^"\\]*+(?:\\.[^"\\]*+)*+"', re.DOTALL)
# Inside an object or array: everything up to the next bracket or incomplete string.
_CONTAINER_RUN = re.compile(rb'(?:[^"{}\[\]]++|"[^"\\]*+(?:\\.[^"\\]*+)*+")*+', re.DOTALL)
_SCALAR = re.compile(rb"[^ \t\n\r,\]}]*+")
_MSGSPEC_BYTE = re.compile(r"\(byte (\d+)\)")


class JsonScanner:
    """One forward pass over a JSON document from a binary stream, one value at a time; a
    reader of a particular document builds on it."""

    def __init__(self, src: BinaryIO, *, name: str, max_value_bytes: int = MAX_VALUE_BYTES):
        self.name = name
        self._src = src
        self._max = max_value_bytes
        self._buf = b""
        self._pos = 0
        self._base = 0  # absolute offset of self._buf[0]
        self._lines = 0  # newlines before self._base
        self._line_start = 0  # absolute offset where the line holding self._base starts
        self._eof = False

    # -- objects and typed values ----------------------------------------------------------

    def _members(self, what: str, seen: set[str]) -> Iterator[str]:
        """Walk the members of an object whose '{' was consumed; the caller consumes values."""
        if self._peek(f"a key or '}}' in the {what}") == b"}":
            self._pos += 1
            return
        while True:
            if self._peek(f"a key in the {what}") != b'"':
                self._fail(self._abs(), f"expected a quoted key in the {what}")
            key_at = self._abs()
            key = self._typed_value(str, "key")
            if key in seen:
                self._fail(key_at, f"duplicate key {key!r} in the {what}")
            seen.add(key)
            if self._peek(f"':' after key {key!r}") != b":":
                self._fail(self._abs(), f"expected ':' after key {key!r}")
            self._pos += 1
            yield key
            token = self._peek(f"',' or '}}' in the {what}")
            self._pos += 1
            if token == b"}":
                return
            if token != b",":
                self._fail(self._abs() - 1, f"expected ',' or '}}' in the {what}")

    def _typed_value(self, kind: Any, what: str) -> Any:
        at, span = self._value(what)
        try:
            return msgspec.json.decode(span, type=kind)
        except msgspec.ValidationError as exc:
            self._fail(at, f"{what}: {exc}")
        except msgspec.DecodeError as exc:
            self._decode_failed(at, span, exc, what)

    # -- the scanner -----------------------------------------------------------------------

    def _value(self, what: str = "a value") -> tuple[int, bytes]:
        """The bytes of the next JSON value (not yet validated) and its absolute offset."""
        self._skip_ws()
        if self._pos >= len(self._buf):
            self._truncated(what)
        first = self._buf[self._pos : self._pos + 1]
        if first in (b"{", b"["):
            end = self._container_end(what)
        elif first == b'"':
            end = self._string_end(what)
        else:
            end = self._scalar_end(what)
        at = self._abs()
        if end - self._pos > self._max:
            self._too_large(what)
        span = self._buf[self._pos : end]
        self._pos = end
        return at, span

    def _container_end(self, what: str) -> int:
        """Where the object or array at self._pos ends. A mismatched bracket ends it early, so
        that msgspec, decoding the span, reports the fault at its true position."""
        closers = bytearray()
        i = self._pos
        while True:
            i = _CONTAINER_RUN.match(self._buf, i).end()  # type: ignore[union-attr]
            if i >= len(self._buf) or self._buf[i] == 0x22:  # more bytes needed, or a '"'
                i -= self._more(what, i)
                continue
            char = self._buf[i]
            i += 1
            if char == 0x7B:  # {
                closers.append(0x7D)
            elif char == 0x5B:  # [
                closers.append(0x5D)
            elif closers.pop() != char or not closers:
                return i

    def _string_end(self, what: str) -> int:
        while True:
            match = _STRING_TAIL.match(self._buf, self._pos + 1)
            if match:
                return match.end()
            self._more(what, len(self._buf))

    def _scalar_end(self, what: str) -> int:
        while True:
            end = _SCALAR.match(self._buf, self._pos).end()  # type: ignore[union-attr]
            if end < len(self._buf) or self._eof:
                if end == self._pos:
                    self._fail(self._abs(), f"expected {what}")
                return end
            self._more(what, end)

    def _more(self, what: str, scanned_to: int) -> int:
        """Read more input for the value starting at self._pos; return how far the buffer
        shifted. At the end of input, the value is truncated; past the limit, too large."""
        if scanned_to - self._pos > self._max:
            self._too_large(what)
        if self._eof:
            self._truncated(what)
        shift = self._compact()
        data = self._src.read(max(CHUNK_BYTES, len(self._buf)))
        if data:
            self._buf += data
        else:
            self._eof = True
        return shift

    def _compact(self) -> int:
        shift = self._pos
        if shift:
            buf = self._buf
            self._lines += buf.count(b"\n", 0, shift)
            last = buf.rfind(b"\n", 0, shift)
            if last >= 0:
                self._line_start = self._base + last + 1
            self._base += shift
            self._buf = buf[shift:]
            self._pos = 0
        return shift

    def _skip_ws(self) -> None:
        while True:
            self._pos = _WS.match(self._buf, self._pos).end()  # type: ignore[union-attr]
            if self._pos < len(self._buf) or self._eof:
                return
            self._compact()
            data = self._src.read(CHUNK_BYTES)
            if data:
                self._buf += data
            else:
                self._eof = True

    def _peek(self, what: str) -> bytes:
        self._skip_ws()
        if self._pos >= len(self._buf):
            self._truncated(what)
        return self._buf[self._pos : self._pos + 1]

    def _abs(self) -> int:
        return self._base + self._pos

    # -- errors ----------------------------------------------------------------------------

    def _where(self, offset: int) -> str:
        rel = offset - self._base
        if rel < 0:  # before the buffer: only the byte offset is known exactly
            return f"byte {offset}"
        line = self._lines + self._buf.count(b"\n", 0, rel) + 1
        last = self._buf.rfind(b"\n", 0, rel)
        line_start = self._base + last + 1 if last >= 0 else self._line_start
        return f"line {line}, column {offset - line_start + 1} (byte {offset})"

    def _fail(self, offset: int, message: str) -> NoReturn:
        raise BundleError(f"{self.name}: invalid JSON at {self._where(offset)}: {message}")

    def _too_large(self, what: str) -> NoReturn:
        limit = (
            f"{self._max // (1024 * 1024)} MiB"
            if self._max >= 1024 * 1024
            else f"{self._max} bytes"
        )
        self._fail(self._abs(), f"{what} is larger than the {limit} limit for one value")

    def _truncated(self, what: str) -> NoReturn:
        raise BundleError(
            f"{self.name}: JSON ends early at {self._where(self._base + len(self._buf))} "
            f"(expected {what}): the file is truncated or incomplete"
        )

    def _decode_failed(self, at: int, span: bytes, exc: msgspec.DecodeError, what: str) -> NoReturn:
        text = str(exc)
        match = _MSGSPEC_BYTE.search(text)
        offset = at + int(match.group(1)) if match else at + len(span)
        detail = _MSGSPEC_BYTE.sub("", text).removeprefix("JSON is malformed: ").strip()
        self._fail(offset, f"{detail} (in {what})")
