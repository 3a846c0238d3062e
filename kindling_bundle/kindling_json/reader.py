"""Reading Kindling's own JSON export files as record streams, and verifying them.

Kindling's command line and library export memory as one JSON document::

    {"bundleVersion": "1.0", "exportedAt": ms, "metadata"?: {...},
     "dataset": {"version": "1.0", "exportedAt"?: ms, "scope"?: {...},
                 "observations": [...], "capsules": [...], "summaries": [...], "pins": [...]}}

with records in camelCase and optional values (closedAt, reason, expiresAt, scope) left out.

Reading streams. Files run to hundreds of MB, so the document is never loaded at once: the
scanner (`kindling_json.scanner`) hands over one record at a time, decoded and validated
straight into a record Struct; memory is bounded by the largest single record plus one read
chunk. Records come out in foreign-key order (observations, capsules, summaries, pins),
each entity in the order the file holds it. Kindling writes the four lists in that order, and
then nothing is buffered; a list that comes earlier than its turn is spooled to an anonymous
temporary file (MessagePack frames, about the size of its JSON) and replayed when its turn comes.
That file is sealed (io.age.SealedSpool: encrypted under a key held only in memory), so records
of an encrypted export never reach the disk in the clear.
Because the document is read in one pass, some faults (a truncated end, a missing list, a bad
header field that follows the lists) surface only after records were yielded: consumers must be
atomic, as import (one transaction) and bundle writing (temporary file, renamed when complete) are.

Errors: invalid or truncated JSON raises `BundleError` naming the file, line, column (in bytes,
1-based) and byte offset; a record that fails validation raises `RecordError` naming the file,
entity, its index in the list, its id when it has one, and the field.

Unknown keys at the top level (`metadata`, ...) and in `dataset` are ignored; unknown fields inside
records are ignored (as bundle readers do); a `bundleVersion` or dataset `version` whose major
number is not 1 is refused (`UnsupportedVersionError`).
"""

from __future__ import annotations

import re
import struct
from collections.abc import Callable, Generator, Iterator
from contextlib import ExitStack, contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, BinaryIO

import msgspec

from kindling_bundle.errors import BundleError, RecordError, UnsupportedVersionError
from kindling_bundle.format.stream_rules import RecordRules
from kindling_bundle.format.verify_report import VerifyReport
from kindling_bundle.io.read_options import ReadOptions
from kindling_bundle.io.sniff import open_input
from kindling_bundle.kindling_json.scanner import (
    CHUNK_BYTES,
    MAX_VALUE_BYTES,
    UTF8_BOM,
    JsonScanner,
)
from kindling_bundle.records import ENTITY_TYPES, Record

KINDLING_JSON_VERSION = "1.0"
DANGLING_HINT = (
    "Kindling's export leaves redacted observations out unless asked to include them, and a "
    "scoped export can leave out what a capsule or pin names; use --drop-dangling to leave "
    "such references out"
)

_MSGSPEC_PATH = re.compile(r"^(.*) - at `\$(.*)`$", re.DOTALL)


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
    """Records of one entity parked in a sealed temporary file until their turn comes."""

    def __init__(self, entity: str, directory: str | None):
        from kindling_bundle.io.age.spool import SealedSpool  # loads `cryptography`

        self._file = SealedSpool(directory, prefix=".kindling-json-spool-")
        self._encoder = msgspec.msgpack.Encoder()
        self._decoder = msgspec.msgpack.Decoder(list[ENTITY_TYPES[entity]])  # type: ignore[valid-type]
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


class KindlingJsonReader(JsonScanner):
    """One pass over a Kindling JSON export from a binary stream; see the module docstring."""

    def __init__(
        self,
        src: BinaryIO,
        *,
        name: str = "<stdin>",
        spool_dir: str | None = None,
        max_value_bytes: int = MAX_VALUE_BYTES,
        encrypted: bool = False,
    ):
        super().__init__(src, name=name, max_value_bytes=max_value_bytes)
        self.encrypted = encrypted
        """`src` is the plaintext of an encrypted file: what is made of it stays off the disk
        in the clear (kindling_json_to_bundle seals its spools)."""
        self.info = KindlingJsonInfo()
        self._spool_dir = spool_dir
        self._used = False

    # -- public ----------------------------------------------------------------------------

    def records(
        self, on_error: Callable[[RecordError], None] | None = None
    ) -> Generator[Record, None, None]:
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
        while len(self._buf) < len(UTF8_BOM) and (data := self._src.read(CHUNK_BYTES)):
            self._buf += data
        if self._buf.startswith(UTF8_BOM):
            self._pos += len(UTF8_BOM)
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
        version: str = self._typed_value(str, what)
        if version.split(".")[0] != KINDLING_JSON_VERSION.split(".")[0]:
            raise UnsupportedVersionError(
                f"{self.name}: {what} {version!r} is not supported "
                f"(this tool reads Kindling JSON exports version {KINDLING_JSON_VERSION})"
            )
        return version

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
        field = None
        if match:
            path = match.group(2).lstrip(".").replace("[...]", "")
            message = f"field {path}: {match.group(1)}"
            field = re.split(r"[.\[]", path)[0] or None
        label = f"{entity}[{index}]" + (f" (id {record_id})" if record_id is not None else "")
        return RecordError(
            f"{self.name}: {label}: {message}", entity=entity, record_id=record_id, field=field
        )


@contextmanager
def open_kindling_json(
    src: str | Path | BinaryIO,
    *,
    name: str | None = None,
    spool_dir: str | None = None,
    options: ReadOptions | None = None,
) -> Iterator[KindlingJsonReader]:
    """A reader over a path or an open binary stream (which need not be seekable); an
    encrypted export is opened with `options.identities` (io.sniff.open_input)."""
    label = source_name(src, name)
    with ExitStack() as stack:
        if isinstance(src, (str, Path)):
            try:
                handle: BinaryIO = stack.enter_context(open(src, "rb"))
            except OSError as exc:
                raise BundleError(f"{src}: cannot open: {exc.strerror}") from None
        else:
            handle = src
        opened = open_input(handle, options, label=label)
        encrypted = opened.envelope is not None
        yield KindlingJsonReader(
            opened.stream, name=label, spool_dir=spool_dir, encrypted=encrypted
        )


def verify_kindling_json(
    src: str | Path | BinaryIO, *, name: str | None = None, options: ReadOptions | None = None
) -> VerifyReport:
    """Check a Kindling JSON export completely, never raising for a bad file.

    Every record is validated (all bad records are reported, not just the first), then checked
    against the record rules (`format.stream_rules`, as bundle verify and conversions do):
    breaches are problems, since an import would refuse them; evidence refs that are not in the
    file are warnings. Invalid JSON ends the check with its position. An encrypted export is
    opened with `options.identities`; damaged ciphertext is a problem like any other.
    """
    report = VerifyReport(source=source_name(src, name), dataset="Kindling JSON export")
    # References into an entity with invalid records are not checked: they would only echo.
    damaged: set[str] = set()
    rules = RecordRules("the file", trusted=lambda entity: entity not in damaged)
    dangling = False
    try:
        with open_kindling_json(src, name=name, options=options) as reader:
            report.source = reader.name

            def invalid(error: RecordError) -> None:
                report.invalid(error)
                damaged.add(error.entity or "")

            for record in reader.records(on_error=invalid):
                for breach in rules.check(record):
                    report.breach(breach)
                    dangling = dangling or breach.rule == "dangling"
                rules.add(record)
            report.records = dict(reader.info.counts)
    except BundleError as exc:
        report.failed(exc)
    if dangling:
        report.problem("dangling-hint", DANGLING_HINT, severity="warning")
    return report


def source_name(src: str | Path | BinaryIO, name: str | None) -> str:
    """How messages name a source: the given name, its path, or the stream's name."""
    if name:
        return name
    if isinstance(src, (str, Path)):
        return str(src)
    return str(getattr(src, "name", "<stream>"))
