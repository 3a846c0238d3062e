"""Kindling's own JSON export files: read them as record streams, and write them.

Kindling's command line and library export memory as one JSON document::

    {"bundleVersion": "1.0", "exportedAt": ms, "metadata"?: {...},
     "dataset": {"version": "1.0", "exportedAt"?: ms, "scope"?: {...},
                 "observations": [...], "capsules": [...], "summaries": [...], "pins": [...]}}

with records in camelCase and optional values (closedAt, reason, expiresAt, scope) left out.

Reading streams. Files run to hundreds of MB, so the document is never loaded at once: a small
scanner finds the bytes of one value at a time (one record, or one header field) and msgspec
decodes and validates that value straight into a record Struct. Memory is bounded by the largest
single record (`MAX_VALUE_BYTES`, 64 MiB; larger values are refused with their position) plus
one read chunk. Records come out in foreign-key order (observations, capsules, summaries, pins),
each entity in the order the file holds it. Kindling writes the four lists in that order, and
then nothing is buffered; a list that comes earlier than its turn is spooled to an anonymous
temporary file (MessagePack frames, about the size of its JSON) and replayed when its turn comes.
Because the document is read in one pass, some faults (a truncated end, a missing list, a bad
header field that follows the lists) surface only after records were yielded: consumers must be
atomic, as import (one transaction) and bundle writing (temporary file, renamed when complete) are.

Errors: invalid or truncated JSON raises `BundleError` naming the file, line, column (in bytes,
1-based) and byte offset; a record that fails validation raises `RecordError` naming the file,
entity, its index in the list, its id when it has one, and the field.

Unknown keys at the top level (`metadata`, ...) and in `dataset` are ignored; unknown fields inside
records are ignored (as bundle readers do); a `bundleVersion` or dataset `version` whose major
number is not 1 is refused.

Writing (`write_kindling_json`) produces exactly what Kindling's `JSON.stringify` would: compact,
fields in Kindling's order, absent optional values left out, numbers and escapes as JavaScript
writes them (see `jsjson`). Records keep their `redacted` flag, so redacted rows are present
(as Kindling's `includeRedacted: true` writes them).
"""

from __future__ import annotations

import dataclasses
import io
import itertools
import re
import struct
import tempfile
from collections.abc import Callable, Iterable, Iterator, Mapping
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, BinaryIO, Literal, NoReturn

import msgspec

from kindling_bundle.errors import BundleError, RecordError
from kindling_bundle.format.manifest import Manifest, ProgressCallback
from kindling_bundle.format.reader import BundleSource, open_bundle
from kindling_bundle.format.stream_rules import RecordRules
from kindling_bundle.format.zstd_frames import ZSTD_MAGIC
from kindling_bundle.io.storage import atomic_file
from kindling_bundle.kindling_json import jsjson
from kindling_bundle.ops.verify import VerifyReport
from kindling_bundle.records import ENTITY_TYPES, Capsule, ConflictStrategy, Pin, Record, Summary

if TYPE_CHECKING:  # the writing and importing modules load SQLite: imported where used
    from kindling_bundle.db.connection import KindlingConnection
    from kindling_bundle.db.export import ExportStreamOptions
    from kindling_bundle.ops.restore import ImportReport
    from kindling_bundle.ops.write import BundleDestination

KINDLING_JSON_VERSION = "1.0"
MAX_VALUE_BYTES = 64 * 1024 * 1024
CHUNK_BYTES = 1024 * 1024
_BOM = b"\xef\xbb\xbf"

InputFormat = Literal["bundle", "kindling-json"]

# Record fields that Kindling leaves out of its JSON when they hold no value.
_OPTIONAL_FIELDS: dict[type, tuple[str, ...]] = {
    Capsule: ("closedAt",),
    Pin: ("reason", "expiresAt"),
}

_WS = re.compile(rb"[ \t\n\r]*+")
# The rest of a string after its opening quote, up to and including the closing quote.
_STRING_TAIL = re.compile(rb'[^"\\]*+(?:\\.[^"\\]*+)*+"', re.DOTALL)
# Inside an object or array: everything up to the next bracket or incomplete string.
_CONTAINER_RUN = re.compile(rb'(?:[^"{}\[\]]++|"[^"\\]*+(?:\\.[^"\\]*+)*+")*+', re.DOTALL)
_SCALAR = re.compile(rb"[^ \t\n\r,\]}]*+")
_MSGSPEC_BYTE = re.compile(r"\(byte (\d+)\)")
_MSGSPEC_PATH = re.compile(r"^(.*) - at `\$(.*)`$", re.DOTALL)


def detect_format(head: bytes) -> InputFormat | None:
    """Tell a bundle (zstd magic) from a Kindling JSON export (first non-space byte `{`)."""
    if head.startswith(ZSTD_MAGIC):
        return "bundle"
    text = head.removeprefix(_BOM).lstrip(b" \t\r\n")
    if text[:1] == b"{":
        return "kindling-json"
    return None


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


def peek_format(stream: BinaryIO) -> tuple[InputFormat | None, BinaryIO]:
    """Detect the format of a stream, which may not be seekable (stdin, a pipe, a download).

    Returns the format and the stream to read instead: the same one rewound if it can seek,
    else one that gives back the bytes looked at first (under the same name).
    """
    seekable = stream.seekable()
    start = stream.tell() if seekable else 0
    head = b""
    while len(head) < 65536:
        data = stream.read(4096)
        if not data:
            break
        head += data
        if len(head) >= len(ZSTD_MAGIC) and head.removeprefix(_BOM).strip(b" \t\r\n"):
            break
    if seekable:
        stream.seek(start)
        return detect_format(head), stream
    prefixed = _PrefixedReader(head, stream)
    return detect_format(head), io.BufferedReader(prefixed, CHUNK_BYTES)


@dataclass
class KindlingJsonInfo:
    """The header of a Kindling JSON export, and how many records each list held."""

    bundle_version: str | None = None
    exported_at: int | None = None
    dataset_version: str | None = None
    dataset_exported_at: int | None = None
    scope: dict[str, str] | None = None
    counts: dict[str, int] = field(default_factory=lambda: dict.fromkeys(ENTITY_TYPES, 0))


class _Spool:
    """Records of one entity parked in an anonymous temporary file until their turn comes."""

    def __init__(self, entity: str, directory: str | None):
        self._file = tempfile.TemporaryFile(dir=directory)  # noqa: SIM115 - closed by replay
        self._encoder = msgspec.msgpack.Encoder()
        self._decoder = msgspec.msgpack.Decoder(list[ENTITY_TYPES[entity]])
        self._batch: list[Record] = []

    def add(self, record: Record) -> None:
        self._batch.append(record)
        if len(self._batch) >= 1024:
            self._flush()

    def _flush(self) -> None:
        if self._batch:
            frame = self._encoder.encode(self._batch)
            self._file.write(struct.pack(">I", len(frame)) + frame)
            self._batch = []

    def replay(self) -> Iterator[Record]:
        self._flush()
        self._file.seek(0)
        try:
            while header := self._file.read(4):
                yield from self._decoder.decode(self._file.read(struct.unpack(">I", header)[0]))
        finally:
            self.close()

    def close(self) -> None:
        self._file.close()


# Markers around each entity list in the parser's event stream.
_START = object()
_END = object()


class KindlingJsonReader:
    """One pass over a Kindling JSON export from a binary stream; see the module docstring."""

    def __init__(
        self,
        src: BinaryIO,
        *,
        name: str = "<stdin>",
        spool_dir: str | None = None,
        max_value_bytes: int = MAX_VALUE_BYTES,
    ):
        self.name = name
        self.info = KindlingJsonInfo()
        self._src = src
        self._spool_dir = spool_dir
        self._max = max_value_bytes
        self._buf = b""
        self._pos = 0
        self._base = 0  # absolute offset of self._buf[0]
        self._lines = 0  # newlines before self._base
        self._line_start = 0  # absolute offset where the line holding self._base starts
        self._eof = False
        self._used = False

    # -- public ----------------------------------------------------------------------------

    def records(self, on_error: Callable[[RecordError], None] | None = None) -> Iterator[Record]:
        """Every record, in foreign-key order; single use.

        With `on_error`, a record that fails validation is handed to it and left out instead
        of ending the pass (verify reports every bad record); JSON syntax errors always raise.
        """
        if self._used:
            raise RuntimeError("a KindlingJsonReader can be read only once")
        self._used = True
        order = list(ENTITY_TYPES)
        turn = 0  # index in `order` of the entity whose records may be yielded now
        finished: set[str] = set()
        spools: dict[str, _Spool] = {}
        try:
            for entity, event in self._parse(on_error):
                if event is _START:
                    if order[turn] != entity:  # a list that comes before its turn: park it
                        spools[entity] = _Spool(entity, self._spool_dir)
                elif event is _END:  # yield what was parked behind this list
                    finished.add(entity)
                    while turn < len(order) and order[turn] in finished:
                        turn += 1
                        if turn < len(order) and order[turn] in spools:
                            yield from spools.pop(order[turn]).replay()
                elif entity in spools:
                    spools[entity].add(event)
                else:
                    yield event
        finally:
            for spool in spools.values():
                spool.close()

    # -- the document ----------------------------------------------------------------------

    def _parse(self, on_error: Callable[[RecordError], None] | None) -> Iterator[tuple[str, Any]]:
        """Yield (entity, _START) and (entity, _END) around each entity list, and
        (entity, record) for each record in between."""
        while len(self._buf) < len(_BOM) and (data := self._src.read(CHUNK_BYTES)):
            self._buf += data
        if self._buf.startswith(_BOM):
            self._pos += len(_BOM)
        if self._peek("the start of the document") != b"{":
            raise BundleError(
                f"{self.name}: not a Kindling JSON export (it must be a JSON object, "
                f"beginning with '{{'; found {self._buf[self._pos : self._pos + 8]!r} "
                f"at {self._where(self._abs())})"
            )
        self._pos += 1
        seen: set[str] = set()
        for key in self._members("top-level object", seen):
            if key == "dataset":
                if self._peek("the dataset object") != b"{":
                    self._fail(self._abs(), '"dataset" must be an object')
                self._pos += 1
                yield from self._dataset(on_error)
            elif key == "bundleVersion":
                self.info.bundle_version = self._version(key)
            elif key == "exportedAt":
                self.info.exported_at = self._typed_value(int, key)
            else:
                self._value()  # metadata and anything newer: not ours to interpret
        self._skip_ws()
        if self._pos < len(self._buf):
            self._fail(self._abs(), "unexpected data after the end of the JSON document")
        for key in ("bundleVersion", "dataset"):
            if key not in seen:
                raise BundleError(f"{self.name}: not a Kindling JSON export (no {key!r} field)")

    def _dataset(self, on_error: Callable[[RecordError], None] | None) -> Iterator[tuple[str, Any]]:
        seen: set[str] = set()
        for key in self._members("dataset object", seen):
            if key in ENTITY_TYPES:
                yield key, _START
                yield from self._entity_list(key, on_error)
                yield key, _END
            elif key == "version":
                self.info.dataset_version = self._version("dataset version")
            elif key == "exportedAt":
                self.info.dataset_exported_at = self._typed_value(int, "dataset exportedAt")
            elif key == "scope":
                self.info.scope = self._typed_value(dict[str, str] | None, "dataset scope")
            else:
                self._value()
        missing = [key for key in ("version", *ENTITY_TYPES) if key not in seen]
        if missing:
            raise BundleError(
                f"{self.name}: not a Kindling JSON export: the dataset has no "
                + ", ".join(repr(key) for key in missing)
            )

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

    def _entity_list(
        self, entity: str, on_error: Callable[[RecordError], None] | None
    ) -> Iterator[tuple[str, Record]]:
        if self._peek(f"the {entity} list") != b"[":
            self._fail(self._abs(), f'"{entity}" must be a list')
        self._pos += 1
        decoder = msgspec.json.Decoder(ENTITY_TYPES[entity])
        if self._peek(f"a record or ']' in {entity}") == b"]":
            self._pos += 1
            return
        index = 0
        while True:
            at, span = self._value(f"a record in {entity}")
            try:
                record = decoder.decode(span)
            except msgspec.ValidationError as exc:
                error = self._record_error(entity, index, span, exc)
                if on_error is None:
                    raise error from None
                on_error(error)
            except msgspec.DecodeError as exc:
                self._decode_failed(at, span, exc, f"record {index} of {entity}")
            else:
                self.info.counts[entity] += 1
                yield entity, record
            index += 1
            token = self._peek(f"',' or ']' after record {index - 1} of {entity}")
            self._pos += 1
            if token == b"]":
                return
            if token != b",":
                self._fail(
                    self._abs() - 1, f"expected ',' or ']' after record {index - 1} of {entity}"
                )

    def _version(self, what: str) -> str:
        version = self._typed_value(str, what)
        if version.split(".")[0] != KINDLING_JSON_VERSION.split(".")[0]:
            raise BundleError(
                f"{self.name}: {what} {version!r} is not supported "
                f"(this tool reads Kindling JSON exports version {KINDLING_JSON_VERSION})"
            )
        return version

    def _typed_value(self, kind: Any, what: str) -> Any:
        at, span = self._value(what)
        try:
            return msgspec.json.decode(span, type=kind)
        except msgspec.ValidationError as exc:
            self._fail(at, f"{what}: {exc}")
        except msgspec.DecodeError as exc:
            self._decode_failed(at, span, exc, what)

    def _record_error(
        self, entity: str, index: int, span: bytes, exc: msgspec.ValidationError
    ) -> RecordError:
        try:
            raw = msgspec.json.decode(span)
        except msgspec.DecodeError:
            raw = None
        record_id = raw.get("id") if isinstance(raw, dict) else None
        record_id = record_id if isinstance(record_id, str) else None
        message = str(exc)
        match = _MSGSPEC_PATH.match(message)
        if match:
            path = match.group(2).lstrip(".").replace("[...]", "")
            message = f"field {path}: {match.group(1)}"
        label = f"{entity}[{index}]" + (f" (id {record_id})" if record_id is not None else "")
        return RecordError(f"{self.name}: {label}: {message}", entity=entity, record_id=record_id)

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
            i = _CONTAINER_RUN.match(self._buf, i).end()
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
            end = _SCALAR.match(self._buf, self._pos).end()
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
            self._pos = _WS.match(self._buf, self._pos).end()
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


@contextmanager
def open_kindling_json(
    src: str | Path | BinaryIO, *, name: str | None = None, spool_dir: str | None = None
) -> Iterator[KindlingJsonReader]:
    """A reader over a path or an open binary stream (which need not be seekable)."""
    if isinstance(src, (str, Path)):
        try:
            handle = open(src, "rb")  # noqa: SIM115 - closed by the with below
        except OSError as exc:
            raise BundleError(f"{src}: cannot open: {exc.strerror}") from None
        with handle:
            yield KindlingJsonReader(handle, name=_label(src, name), spool_dir=spool_dir)
    else:
        yield KindlingJsonReader(src, name=_label(src, name), spool_dir=spool_dir)


def entity_streams(records: Iterable[Record]) -> Iterator[tuple[str, Iterator[Record]]]:
    """Split one foreign-key-ordered record stream into (entity, records) for all four
    entities, in order (empty ones too). Consume each before asking for the next."""
    source = iter(records)
    rank = {cls: position for position, cls in enumerate(ENTITY_TYPES.values())}
    pending: list[Record] = []  # the first record of a later entity, read one too far

    def stream(position: int) -> Iterator[Record]:
        while True:
            record = pending.pop() if pending else next(source, None)
            if record is None:
                return
            if rank[type(record)] != position:
                if rank[type(record)] < position:
                    raise ValueError(f"a {type(record).__name__} out of foreign-key order")
                pending.append(record)
                return
            yield record

    for position, entity in enumerate(ENTITY_TYPES):
        yield entity, stream(position)


# -- writing ---------------------------------------------------------------------------------


def record_json(record: Record) -> bytes:
    """One record as Kindling's `JSON.stringify` writes it (absent optional values left out)."""
    value = msgspec.to_builtins(record)
    for key in _OPTIONAL_FIELDS.get(type(record), ()):
        if value[key] is None:
            del value[key]
    return jsjson.dumps(value).encode()


def write_kindling_json(
    dest: str | Path | BinaryIO,
    streams: Mapping[str, Iterable[Record]],
    *,
    exported_at: int,
    scope: Mapping[str, str] | None = None,
) -> dict[str, int]:
    """Write a Kindling JSON export from record streams; returns the count per entity.

    The streams are consumed in foreign-key order, one at a time, so they may be lazy streams
    of one snapshot or one bundle pass. A path destination appears only when complete
    (`io.storage.atomic_file`); failing to write it is a one-line StorageError naming it.
    """
    unknown = set(streams) - set(ENTITY_TYPES)
    if unknown:
        raise ValueError(f"unknown entities: {', '.join(sorted(unknown))}")
    if isinstance(dest, (str, Path)):
        with atomic_file(dest) as handle:
            return _write(handle, streams, exported_at, scope)
    return _write(dest, streams, exported_at, scope)


def _write(
    out: BinaryIO,
    streams: Mapping[str, Iterable[Record]],
    exported_at: int,
    scope: Mapping[str, str] | None,
) -> dict[str, int]:
    header = {"bundleVersion": KINDLING_JSON_VERSION, "exportedAt": exported_at}
    dataset: dict[str, Any] = {"version": KINDLING_JSON_VERSION, "exportedAt": exported_at}
    if scope:
        dataset["scope"] = dict(scope)
    out.write(
        jsjson.dumps(header)[:-1].encode() + b',"dataset":' + jsjson.dumps(dataset)[:-1].encode()
    )
    counts = {}
    for entity, cls in ENTITY_TYPES.items():
        out.write(b',"' + entity.encode() + b'":[')
        count = 0
        pieces: list[bytes] = []
        for record in streams.get(entity, ()):
            if type(record) is not cls:
                raise ValueError(f"a {type(record).__name__} in the {entity} stream")
            pieces.append(b"," + record_json(record) if count else record_json(record))
            count += 1
            if len(pieces) >= 256:
                out.write(b"".join(pieces))
                pieces = []
        out.write(b"".join(pieces) + b"]")
        counts[entity] = count
    out.write(b"}}")
    return counts


# -- references ------------------------------------------------------------------------------

DANGLING_HINT = (
    "Kindling's export leaves redacted observations out unless asked to include them, and a "
    "scoped export can leave out what a capsule or pin names; use --drop-dangling to leave "
    "such references out"
)
_LISTED_EXAMPLES = 10


@dataclass
class DanglingReport:
    """References to records that are not in the dataset, dropped with `drop_dangling`."""

    links: int = 0
    """Capsule links to observations that are not there (the link is dropped)."""
    summaries: int = 0
    """Summaries of capsules that are not there (the summary is dropped)."""
    pins: int = 0
    """Pins whose target is not there (the pin is dropped)."""
    examples: list[str] = field(default_factory=list)

    @property
    def total(self) -> int:
        return self.links + self.summaries + self.pins

    def note(self, text: str) -> None:
        if len(self.examples) < _LISTED_EXAMPLES:
            self.examples.append(text)

    def to_dict(self) -> dict[str, Any]:
        return {
            "links": self.links,
            "summaries": self.summaries,
            "pins": self.pins,
            "examples": self.examples,
        }


class ReferenceGuard:
    """Passes a foreign-key-ordered stream through the record rules (`format.stream_rules`),
    so what is written verifies and imports.

    A breach raises a RecordError naming `name` and the record. With `drop`, a dangling reference
    is left out instead and counted in `report`: removed from the record (a capsule link), or the
    record is (a summary, a pin). Evidence refs are left alone: Kindling keeps them when
    observations go away, and the integrity report lists them as warnings.
    """

    def __init__(
        self,
        *,
        drop: bool,
        name: str,
        report: DanglingReport,
        place: str = "the dataset",
    ):
        self.rules = RecordRules(place)
        self.drop = drop
        self.name = name
        self.report = report

    def check(self, record: Record) -> Record | None:
        """The record, repaired when `drop` is set; None when it must be left out."""
        breaches = self.rules.check(record)
        if breaches:
            dangling = None
            for breach in breaches:
                if breach.rule == "dangling" and self.drop:
                    dangling = breach
                elif not breach.warning:
                    hint = f" ({DANGLING_HINT})" if breach.rule == "dangling" else ""
                    raise RecordError(
                        f"{self.name}: {breach.text}{hint}",
                        entity=breach.entity,
                        record_id=breach.record_id,
                    )
            if dangling is not None:
                self.report.note(dangling.text)
                if type(record) is not Capsule:
                    if type(record) is Summary:
                        self.report.summaries += 1
                    else:
                        self.report.pins += 1
                    return None
                self.report.links += len(dangling.missing)
                absent = set(dangling.missing)
                kept = [o for o in record.observation_ids if o not in absent]
                record = msgspec.structs.replace(record, observation_ids=kept)
        self.rules.add(record)
        return record


def close_references(
    records: Iterable[Record],
    *,
    drop: bool,
    name: str,
    report: DanglingReport | None = None,
) -> Iterator[Record]:
    """Pass a foreign-key-ordered stream through the record rules (see ReferenceGuard): a
    repeated id, a repeated capsule link, a second summary of a capsule or (without `drop`) a
    dangling reference raises RecordError.

    Memory: the 64-bit hash of every id, about 10 bytes a record once there are many
    (kindling_bundle.format.hashset)."""
    guard = ReferenceGuard(
        drop=drop, name=name, report=report if report is not None else DanglingReport()
    )
    for record in records:
        kept = guard.check(record)
        if kept is not None:
            yield kept


# -- verify ----------------------------------------------------------------------------------


def verify_kindling_json(src: str | Path | BinaryIO, *, name: str | None = None) -> VerifyReport:
    """Check a Kindling JSON export completely, never raising for a bad file.

    Every record is validated (all bad records are reported, not just the first), then checked
    against the record rules (`format.stream_rules`, as bundle verify and conversions do):
    breaches are problems, since an import would refuse them; evidence refs that are not in the
    file are warnings. Invalid JSON ends the check with its position.
    """
    report = VerifyReport(source=_label(src, name))
    # References into an entity with invalid records are not checked: they would only echo.
    damaged: set[str] = set()
    rules = RecordRules("the file", trusted=lambda entity: entity not in damaged)
    dangling = False
    try:
        with open_kindling_json(src, name=name) as reader:
            report.source = reader.name

            def invalid(error: RecordError) -> None:
                report.problem(str(error))
                damaged.add(error.entity or "")

            for record in reader.records(on_error=invalid):
                for breach in rules.check(record):
                    if breach.warning:
                        report.warning(f"{reader.name}: {breach.text}")
                    else:
                        report.problem(f"{reader.name}: {breach.text}")
                        dangling = dangling or breach.rule == "dangling"
                rules.add(record)
            report.records = dict(reader.info.counts)
    except (BundleError, RecordError) as exc:
        report.problem(str(exc))
    if dangling:
        report.warning(f"{report.source}: {DANGLING_HINT}")
    return report


# -- conversions -----------------------------------------------------------------------------


def export_kindling_json(
    conn: KindlingConnection,
    dest: str | Path | BinaryIO,
    opts: ExportStreamOptions | None = None,
    *,
    exported_at: int | None = None,
) -> dict[str, int]:
    """Export a database as a Kindling JSON export (from one read snapshot), so its content
    can go to a Kindling installation that only reads JSON. Redacted rows are included and
    marked. A filtered export brings the records its selection references (as a bundle export
    does), so the file is referentially closed and imports. `exported_at` defaults as a bundle's
    creation time does ($SOURCE_DATE_EPOCH, else now). Returns the count per entity."""
    from kindling_bundle.db.export import ENTITY_EXPORTS, ExportStreamOptions, snapshot
    from kindling_bundle.ops.write import resolve_created_at

    opts = opts or ExportStreamOptions()
    if opts.filtered and not opts.include_references:
        opts = dataclasses.replace(opts, include_references=True)
    exported_at = resolve_created_at(exported_at)
    with snapshot(conn):
        streams = {entity: export(conn, opts) for entity, export in ENTITY_EXPORTS.items()}
        try:
            return write_kindling_json(dest, streams, exported_at=exported_at, scope=opts.scope_ids)
        finally:  # finalize unfinished streams while the connection is open, not at GC
            for stream in streams.values():
                stream.close()  # type: ignore[attr-defined]


def kindling_json_to_bundle(
    src: str | Path | BinaryIO,
    dest: BundleDestination,
    *,
    drop_dangling: bool = False,
    created_at: int | None = None,
    level: int = 3,
    dangling: DanglingReport | None = None,
    name: str | None = None,
    progress: ProgressCallback | None = None,
) -> Manifest:
    """Write a Kindling JSON export as a bundle, in one pass over the JSON.

    The bundle must import, so references are closed (`close_references`): a dangling one is
    an error, or with `drop_dangling` is left out and counted in `dangling`. The bundle's
    creation time is `created_at`, else the export's own `exportedAt` (so converting the same
    file twice gives the same bundle), else as for any bundle. The export's scope is recorded
    as the bundle's filter when it uses the four scope keys a filter can name.
    """
    from kindling_bundle.db.export import ExportStreamOptions
    from kindling_bundle.ops.write import (
        BundleOptions,
        resolve_created_at,
        write_bundle_from_records,
    )

    with open_kindling_json(src, name=name) as reader:
        records = iter(reader.records())
        first = next(records, None)  # parses the header fields that precede the lists
        if first is not None:
            records = itertools.chain([first], records)
        info = reader.info
        if created_at is None and info.exported_at is not None:
            try:
                created_at = resolve_created_at(info.exported_at)
            except ValueError as exc:
                raise BundleError(
                    f"{reader.name}: exportedAt cannot date a bundle ({exc})"
                ) from None
        try:
            export_filter = ExportStreamOptions(scope_ids=info.scope)
        except ValueError:  # a scope key no bundle filter can name: record no filter
            export_filter = ExportStreamOptions()
        closed = close_references(records, drop=drop_dangling, name=reader.name, report=dangling)
        return write_bundle_from_records(
            dest,
            dict(entity_streams(closed)),
            BundleOptions(filter=export_filter, created_at=created_at, level=level),
            progress=progress,
        )


def bundle_to_kindling_json(src: BundleSource, dest: str | Path | BinaryIO) -> dict[str, int]:
    """Write a bundle's content as a Kindling JSON export, with the bundle's creation time as
    `exportedAt` and its scope filter as `scope`. The bundle is checked as it is read (hashes,
    counts) and against the record rules, so the export imports; on a damaged bundle a path
    destination is left untouched."""
    with open_bundle(src) as reader:
        manifest = reader.manifest
        records = close_references(reader.records(), drop=False, name=reader.label)
        return write_kindling_json(
            dest,
            dict(entity_streams(records)),
            exported_at=manifest.created_at,
            scope=manifest.export_filter.scope_ids,
        )


def import_kindling_json(
    conn: KindlingConnection,
    src: str | Path | BinaryIO,
    *,
    conflict: ConflictStrategy = "skip",
    dry_run: bool = False,
    drop_dangling: bool = False,
    name: str | None = None,
    spool_dir: str | None = None,
    progress: ProgressCallback | None = None,
) -> tuple[ImportReport, DanglingReport]:
    """Import a Kindling JSON export with exactly a bundle import's semantics, by converting it
    to a bundle in a temporary file (in `spool_dir`, else TMPDIR) and importing that: one
    transaction, the same conflict strategies, the integrity check, all or nothing. The JSON is
    fully read and checked before the database is touched."""
    from kindling_bundle.ops.restore import import_bundle

    dangling = DanglingReport()
    with tempfile.TemporaryDirectory(prefix="kindling-json-", dir=spool_dir) as folder:
        bundle = Path(folder) / "converted.kbundle"
        kindling_json_to_bundle(
            src, bundle, drop_dangling=drop_dangling, dangling=dangling, name=name, level=1
        )
        report = import_bundle(
            conn,
            bundle,
            conflict=conflict,
            dry_run=dry_run,
            progress=progress,
            name=_label(src, name),
        )
    return report, dangling


def _label(src: str | Path | BinaryIO, name: str | None) -> str:
    """How messages name a source: the given name, its path, or the stream's name."""
    if name:
        return name
    if isinstance(src, (str, Path)):
        return str(src)
    return str(getattr(src, "name", "<stream>"))
