"""Entity member framing: length-prefixed MessagePack arrays of records, both ways.

msgspec has no streaming decoder, so a member is a sequence of frames: a 4-byte big-endian length
N, then N bytes holding one MessagePack array of records (maps with Kindling's camelCase keys).
A reader holds one frame at a time; a writer encodes FRAME_RECORDS records per frame, fewer when
a frame would exceed MAX_FRAME_BYTES or MAX_FRAME_VALUES. Frame boundaries carry no meaning.

Both directions hold an observation's provenance (the one field of any shape) to what Kindling can
store as JSON text: maps with string keys, arrays, strings, integers, finite floats, booleans and
nil, nested at most MAX_NESTING_DEPTH deep. No bin or ext values (bytes, timestamps), no NaN or
Infinity. The writer refuses to write what the reader would refuse to read.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Iterator
from itertools import islice
from typing import Any, cast

import msgspec

from kindling_bundle.errors import BundleError, RecordError
from kindling_bundle.format.manifest import (
    FRAME_HEADER_BYTES,
    FRAME_RECORDS,
    MAX_FRAME_BYTES,
    MAX_FRAME_VALUES,
    MAX_NESTING_DEPTH,
    describe_validation,
    validation_field,
)
from kindling_bundle.records import (
    ENTITY_TYPES,
    SINGULAR,
    TOMBSTONES,
    Observation,
    Record,
    Tombstone,
)

# Every kind of record a member may hold: the four entities, and an increment's tombstones.
_MEMBER_TYPES: dict[str, type] = {**ENTITY_TYPES, TOMBSTONES: Tombstone}
_MEMBER_SINGULAR = {**SINGULAR, TOMBSTONES: "tombstone"}

# What follows a MessagePack type byte 0xc0-0xdf: (bytes to skip, size of a big-endian length
# field, values per unit of length: 1 for arrays, 2 for maps, 0 for data of that many bytes).
_TYPE_LAYOUT = [
    (0, 0, 0), (0, 0, 0), (0, 0, 0), (0, 0, 0),  # nil, (never used), false, true
    (0, 1, 0), (0, 2, 0), (0, 4, 0),  # bin 8/16/32
    (1, 1, 0), (1, 2, 0), (1, 4, 0),  # ext 8/16/32 (after the length: a type byte)
    (4, 0, 0), (8, 0, 0),  # float 32/64
    (1, 0, 0), (2, 0, 0), (4, 0, 0), (8, 0, 0),  # uint 8/16/32/64
    (1, 0, 0), (2, 0, 0), (4, 0, 0), (8, 0, 0),  # int 8/16/32/64
    (2, 0, 0), (3, 0, 0), (5, 0, 0), (9, 0, 0), (17, 0, 0),  # fixext 1/2/4/8/16
    (0, 1, 0), (0, 2, 0), (0, 4, 0),  # str 8/16/32
    (0, 2, 1), (0, 4, 1), (0, 2, 2), (0, 4, 2),  # array 16/32, map 16/32
]  # fmt: skip


def count_values(payload: bytes | memoryview, limit: int) -> int:
    """How many MessagePack values `payload` starts with (every container, map key and element
    counts), without decoding it: strings and binary data are skipped over, not read. Stops at
    `limit + 1` and at the end of the payload, so damaged input costs no more than that."""
    pos, end, count, pending = 0, len(payload), 0, 1
    while pending and pos < end and count <= limit:
        pending -= 1
        count += 1
        byte = payload[pos]
        pos += 1
        if byte < 0x80 or byte >= 0xE0:  # positive and negative fixint
            continue
        if byte < 0xA0:  # fixmap (2 values an entry), fixarray
            pending += (byte & 0x0F) * (2 if byte < 0x90 else 1)
            continue
        if byte < 0xC0:  # fixstr
            pos += byte & 0x1F
            continue
        skip, length_bytes, per_unit = _TYPE_LAYOUT[byte - 0xC0]
        if length_bytes:
            length = int.from_bytes(payload[pos : pos + length_bytes], "big")
            pos += length_bytes
            if per_unit:
                pending += per_unit * length
            else:
                pos += skip + length
        else:
            pos += skip
    return count


_SCALARS = frozenset({str, int, bool, type(None)})
_MIN_INT, _MAX_INT = -(2**63), 2**64 - 1  # what MessagePack can hold
_PATH_CHARS = 60


def provenance_problems(records: list[Observation]) -> list[tuple[int, str]]:
    """(index, problem) for each observation whose provenance cannot be stored as JSON text.
    Cheap for flat maps of strings, integers, booleans and nils (the usual provenance): only the
    others are walked."""
    flat = _SCALARS.issuperset
    suspects = [
        i for i, record in enumerate(records) if not flat(map(type, record.provenance.values()))
    ]
    problems = []
    for index in suspects:
        problem = provenance_problem(records[index].provenance)
        if problem is not None:
            problems.append((index, problem))
    return problems


def provenance_problem(provenance: dict[str, Any]) -> str | None:
    """What keeps a provenance value from being stored as JSON text (naming where), or None."""
    found = _value_problem(provenance, 1)
    if found is None:
        return None
    segments, problem = found
    path = "".join(reversed(segments))
    if len(path) > _PATH_CHARS:
        path = f"{path[:_PATH_CHARS]}..."
    return f"field provenance{path} {problem}"


def _value_problem(value: Any, depth: int) -> tuple[list[str], str] | None:
    """(path segments, innermost first; the problem) for the first bad value, or None."""
    kind = type(value)
    if kind is dict or kind is list:
        if depth > MAX_NESTING_DEPTH:
            return [], f"nests maps and arrays more than {MAX_NESTING_DEPTH} levels deep"
        items = value.items() if kind is dict else enumerate(value)
        for key, item in items:
            if kind is dict and type(key) is not str:
                return [], f"has a map key that is not a string: {key!r:.40}"
            if type(item) in _SCALARS and type(item) is not int:
                continue
            found = _value_problem(item, depth + 1)
            if found is not None:
                found[0].append(f".{key}" if kind is dict else f"[{key}]")
                return found
    elif kind is float:
        if not math.isfinite(value):
            return [], f"is {value!r}, which JSON cannot hold"
    elif kind is int:
        if not _MIN_INT <= value <= _MAX_INT:
            return [], "holds an integer beyond 64 bits"
    elif kind not in _SCALARS:
        name = "bin" if kind is bytes else "ext"
        return [], f"holds a MessagePack {name} value ({kind.__name__}), which JSON cannot hold"
    return None


class FrameEncoder:
    """Encodes one entity's records into frames with one reused encoder.

    `reuse_buffer`: every frame is encoded into the same buffer, valid only until the next
    frame is asked for; for a caller that writes each frame out at once. A buffer grown afresh
    for every frame has its pages faulted anew each time once malloc maps it on its own (see
    heap.large_buffers_mapped). `checked`: the records were decoded by a reader, which refused
    any provenance the writer would refuse: it is not walked again."""

    def __init__(self, entity: str, *, reuse_buffer: bool = False, checked: bool = False):
        self.entity = entity
        self.record_type = _MEMBER_TYPES[entity]
        self._check_provenance = self.record_type is Observation and not checked
        self._encoder = msgspec.msgpack.Encoder()
        self._buffer = bytearray(FRAME_HEADER_BYTES) if reuse_buffer else None

    def frames(self, records: Iterable[Record | Tombstone]) -> Iterator[tuple[int, bytearray]]:
        """(record count, frame bytes: length prefix and payload) for each frame."""
        iterator = iter(records)
        while batch := list(islice(iterator, FRAME_RECORDS)):
            yield from self._encode(batch)

    def _encode(self, batch: list[Record | Tombstone]) -> Iterator[tuple[int, bytearray]]:
        wrong = set(map(type, batch)) - {self.record_type}
        if wrong:
            raise TypeError(
                f"{self.entity}: expected {self.record_type.__name__} records, "
                f"got {', '.join(sorted(t.__name__ for t in wrong))}"
            )
        if self._check_provenance:
            for index, problem in provenance_problems(batch):  # type: ignore[arg-type]
                raise self._refused(batch[index], problem)
        buffer = bytearray(FRAME_HEADER_BYTES) if self._buffer is None else self._buffer
        try:
            self._encoder.encode_into(batch, buffer, FRAME_HEADER_BYTES)
        except OverflowError:  # an integer MessagePack cannot hold, somewhere in the batch
            raise self._unencodable(batch) from None
        size = len(buffer) - FRAME_HEADER_BYTES
        values = 0
        if size > MAX_FRAME_VALUES:  # only then can it hold more values than a reader accepts
            with memoryview(buffer) as view:
                values = count_values(view[FRAME_HEADER_BYTES:], MAX_FRAME_VALUES)
        if size > MAX_FRAME_BYTES or values > MAX_FRAME_VALUES:
            if len(batch) == 1:
                raise self._refused(
                    batch[0],
                    f"{size} bytes encoded, more than a bundle frame can hold "
                    f"({MAX_FRAME_BYTES} bytes)"
                    if size > MAX_FRAME_BYTES
                    else f"more than {MAX_FRAME_VALUES} values (maps, arrays, keys and "
                    "elements), more than a bundle frame may hold",
                )
            half = len(batch) // 2
            yield from self._encode(batch[:half])
            yield from self._encode(batch[half:])
            return
        buffer[:FRAME_HEADER_BYTES] = size.to_bytes(FRAME_HEADER_BYTES, "big")
        yield len(batch), buffer

    def _refused(self, record: Record | Tombstone, problem: str) -> RecordError:
        return RecordError(
            f"{_MEMBER_SINGULAR[self.entity]} {record.id}: {problem}",
            entity=self.entity,
            record_id=record.id,
        )

    def _unencodable(self, batch: list[Record | Tombstone]) -> RecordError:
        """The error for the first record of `batch` that MessagePack cannot encode."""
        for record in batch:
            try:
                self._encoder.encode(record)
            except OverflowError:
                problem = (
                    provenance_problem(record.provenance)
                    if isinstance(record, Observation)
                    else None
                )
                return self._refused(record, problem or "holds an integer beyond 64 bits")
        return self._refused(batch[0], "cannot be encoded")


class RecordDecoder:
    """Decodes and validates one entity's frames; on failure, finds every bad record by name."""

    def __init__(self, entity: str):
        self.entity = entity
        record_type = _MEMBER_TYPES[entity]
        self._batch: msgspec.msgpack.Decoder[list[Record]]
        self._batch = msgspec.msgpack.Decoder(list[record_type])  # type: ignore[valid-type]
        self._one: msgspec.msgpack.Decoder[Record]
        self._one = msgspec.msgpack.Decoder(record_type)
        self._raw = msgspec.msgpack.Decoder()
        self._encoder = msgspec.msgpack.Encoder()

    def decode(self, payload: bytes | memoryview, first_index: int = 0) -> list[Record]:
        """The frame's records; otherwise the error of the first bad record (a RecordError
        naming it, or a BundleError for a frame that is not an array of records)."""
        records, problems = self.decode_all(payload, first_index)
        if problems:
            raise problems[0]
        return records

    def decode_all(
        self, payload: bytes | memoryview, first_index: int = 0
    ) -> tuple[list[Record], list[RecordError | BundleError]]:
        """The frame's valid records, and one error per bad record (or a single BundleError
        when the frame is not a MessagePack array at all). `first_index` is the member-wide
        index of the frame's first record, for messages. Fast unless something is wrong."""
        try:
            records = self._batch.decode(payload)
        except (msgspec.DecodeError, ValueError, RecursionError):  # ValueError: not UTF-8
            pass  # find every bad record, one by one
        else:
            if self.entity != "observations":
                return records, []
            bad = provenance_problems(cast("list[Observation]", records))  # as the entity says
            if not bad:
                return records, []
            refused = {index for index, _ in bad}
            return [r for i, r in enumerate(records) if i not in refused], [
                self._record_error(first_index + i, records[i].id, problem, "provenance")
                for i, problem in bad
            ]
        try:
            raw = self._raw.decode(payload)
        except RecursionError:
            return [], [BundleError("frame nests values too deeply to be decoded")]
        except (msgspec.DecodeError, ValueError) as exc:
            return [], [BundleError(f"frame is not valid MessagePack ({exc})")]
        if not isinstance(raw, list):
            return [], [BundleError("frame is not a MessagePack array of records")]
        records = []
        problems: list[RecordError | BundleError] = []
        for index, item in enumerate(raw, first_index):
            record_id = item.get("id") if isinstance(item, dict) else None
            try:
                record = self._one.decode(self._encoder.encode(item))
            except (msgspec.ValidationError, TypeError, OverflowError, RecursionError) as exc:
                field = validation_field(exc) if isinstance(exc, msgspec.ValidationError) else None
                problems.append(self._record_error(index, record_id, self._describe(exc), field))
                continue
            problem = (
                provenance_problem(record.provenance) if isinstance(record, Observation) else None
            )
            if problem is None:
                records.append(record)
            else:
                problems.append(self._record_error(index, record.id, problem, "provenance"))
        return records, problems

    @staticmethod
    def _describe(exc: Exception) -> str:
        if isinstance(exc, msgspec.ValidationError):
            return describe_validation(exc)
        if isinstance(exc, RecursionError):
            return "nests values too deeply to be decoded"
        return str(exc)

    def _record_error(
        self, index: int, record_id: Any, detail: str, field: str | None
    ) -> RecordError:
        if not isinstance(record_id, str):
            record_id = None
        singular = _MEMBER_SINGULAR[self.entity]
        name = f"{singular} {record_id}" if record_id else f"record #{index}"
        return RecordError(
            f"{name}: {detail}", entity=self.entity, record_id=record_id, field=field
        )
