"""Entity member framing: length-prefixed MessagePack arrays of records, both ways.

msgspec has no streaming decoder, so a member is a sequence of frames: a 4-byte big-endian length
N, then N bytes holding one MessagePack array of records (maps with Kindling's camelCase keys).
A reader holds one frame at a time; a writer encodes FRAME_RECORDS records per frame, fewer when
a frame would exceed MAX_FRAME_BYTES. Frame boundaries carry no meaning.
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator
from itertools import islice
from typing import Any

import msgspec

from kindling_bundle.bundle.format import (
    FRAME_HEADER_BYTES,
    FRAME_RECORDS,
    MAX_FRAME_BYTES,
    describe_validation,
)
from kindling_bundle.errors import BundleError, RecordError
from kindling_bundle.records import ENTITY_TYPES, Record

SINGULAR = {
    "observations": "observation",
    "capsules": "capsule",
    "summaries": "summary",
    "pins": "pin",
}


class FrameEncoder:
    """Encodes one entity's records into frames with one reused encoder."""

    def __init__(self, entity: str):
        self.entity = entity
        self.record_type = ENTITY_TYPES[entity]
        self._encoder = msgspec.msgpack.Encoder()

    def frames(self, records: Iterable[Record]) -> Iterator[tuple[int, bytearray]]:
        """(record count, frame bytes: length prefix and payload) for each frame."""
        iterator = iter(records)
        while batch := list(islice(iterator, FRAME_RECORDS)):
            yield from self._encode(batch)

    def _encode(self, batch: list[Record]) -> Iterator[tuple[int, bytearray]]:
        wrong = set(map(type, batch)) - {self.record_type}
        if wrong:
            raise TypeError(
                f"{self.entity}: expected {self.record_type.__name__} records, "
                f"got {', '.join(sorted(t.__name__ for t in wrong))}"
            )
        buffer = bytearray(FRAME_HEADER_BYTES)
        self._encoder.encode_into(batch, buffer, FRAME_HEADER_BYTES)
        size = len(buffer) - FRAME_HEADER_BYTES
        if size > MAX_FRAME_BYTES:
            if len(batch) == 1:
                record = batch[0]
                raise RecordError(
                    f"{SINGULAR[self.entity]} {record.id}: {size} bytes encoded, more than "
                    f"a bundle frame can hold ({MAX_FRAME_BYTES} bytes)",
                    entity=self.entity,
                    record_id=record.id,
                )
            half = len(batch) // 2
            yield from self._encode(batch[:half])
            yield from self._encode(batch[half:])
            return
        buffer[:FRAME_HEADER_BYTES] = size.to_bytes(FRAME_HEADER_BYTES, "big")
        yield len(batch), buffer


class RecordDecoder:
    """Decodes and validates one entity's frames; on failure, finds every bad record by name."""

    def __init__(self, entity: str):
        self.entity = entity
        record_type = ENTITY_TYPES[entity]
        self._batch = msgspec.msgpack.Decoder(list[record_type])  # type: ignore[valid-type]
        self._one = msgspec.msgpack.Decoder(record_type)
        self._raw = msgspec.msgpack.Decoder()
        self._encoder = msgspec.msgpack.Encoder()

    def decode(self, payload: bytes, first_index: int = 0) -> list[Record]:
        """The frame's records; otherwise the error of the first bad record (a RecordError
        naming it, or a BundleError for a frame that is not an array of records)."""
        records, problems = self.decode_all(payload, first_index)
        if problems:
            raise problems[0]
        return records

    def decode_all(
        self, payload: bytes, first_index: int = 0
    ) -> tuple[list[Record], list[RecordError | BundleError]]:
        """The frame's valid records, and one error per bad record (or a single BundleError
        when the frame is not a MessagePack array at all). `first_index` is the member-wide
        index of the frame's first record, for messages. Fast unless something is wrong."""
        try:
            return self._batch.decode(payload), []
        except (msgspec.DecodeError, ValueError):  # ValueError: a string that is not UTF-8
            pass  # find every bad record, one by one
        try:
            raw = self._raw.decode(payload)
        except (msgspec.DecodeError, ValueError) as exc:
            return [], [BundleError(f"frame is not valid MessagePack ({exc})")]
        if not isinstance(raw, list):
            return [], [BundleError("frame is not a MessagePack array of records")]
        records: list[Record] = []
        problems: list[RecordError | BundleError] = []
        for index, item in enumerate(raw, first_index):
            try:
                records.append(self._one.decode(self._encoder.encode(item)))
            except (msgspec.ValidationError, TypeError) as exc:
                problems.append(self._record_error(index, item, exc))
        return records, problems

    def _record_error(self, index: int, item: Any, exc: Exception) -> RecordError:
        record_id = item.get("id") if isinstance(item, dict) else None
        if not isinstance(record_id, str):
            record_id = None
        detail = describe_validation(exc) if isinstance(exc, msgspec.ValidationError) else str(exc)
        name = f"{SINGULAR[self.entity]} {record_id}" if record_id else f"record #{index}"
        return RecordError(f"{name}: {detail}", entity=self.entity, record_id=record_id)
