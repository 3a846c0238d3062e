"""Decoding a member's frames for verify: in this process, or partly in a forked child.

Verify is bound by Python work per record on one core, most of it decoding and validating
records. `DecoderChild` takes some observation frames off this process: the child decodes and
checks each exactly as `RecordDecoder.decode_all` does here and answers with its records' ids,
which is all the record rules need of a clean run of observations
(`RecordRules.clear_new_ids`). A frame with any problem is answered "not clean" and decoded here,
so every message is the one this process would have written alone. A child that dies costs
only speed: its frames are decoded here.

Ids cross the process boundary as text: the rules hash them here, with this process's hash, so
nothing depends on the child sharing its hash seed.

Frames travel through a ring of shared memory that only this process writes: a frame is copied
once, and the pipe carries only where it is.
"""

from __future__ import annotations

import contextlib
import gc
import mmap
from collections import deque
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from operator import attrgetter
from typing import Any

import msgspec

from kindling_bundle.errors import BundleError, RecordError
from kindling_bundle.format.record_frames import RecordDecoder
from kindling_bundle.parallel.forking import pipe, start_child
from kindling_bundle.records import Record

Payload = bytes | memoryview


@dataclass(frozen=True, slots=True)
class Decoded:
    """A frame decoded in this process: its valid records, and a problem per bad record (or one
    for a frame that is no array of records)."""

    payload: Payload
    records: list[Record]
    problems: list[RecordError | BundleError]


@dataclass(frozen=True, slots=True)
class Vouched:
    """A frame the child decoded and found clean: the ids of its records, in order."""

    payload: Payload
    ids: list[str]


def decode_here(payloads: Iterable[Payload], decoder: RecordDecoder) -> Iterator[Decoded]:
    """Every frame decoded in this process, in order: the one-process way."""
    for payload in payloads:
        yield Decoded(payload, *decoder.decode_all(payload))


class _Where(msgspec.Struct, array_like=True):
    """To the child: a frame's place in the ring."""

    start: int
    size: int


class _Clean(msgspec.Struct, tag=True, array_like=True):
    """From the child: the frame is clean; its ids."""

    ids: list[str]


class _NotClean(msgspec.Struct, tag=True, array_like=True):
    """From the child: decode the frame here, it has problems to report."""


IN_FLIGHT = 4
"""Frames handed to the child and not yet answered, at most: the child finds the next frame
waiting when it finishes one."""

MAX_PENDING = IN_FLIGHT + 2
"""Frames read ahead of the oldest frame still at the child, at most (their records in memory)."""

RING_BYTES = 4 << 20
"""Shared memory for frames in flight: four of the usual 1024-record frames and room to spare.
A frame that finds no room (one bigger than the ring, or while bigger ones are in flight) is
decoded here. Only the pages used become resident."""

_ID = attrgetter("id")


class DecoderChild:
    """A forked child that decodes observation frames on request, answering in order."""

    def __init__(self) -> None:
        child_frames, self._frames = pipe()
        self._answers, child_answers = pipe()
        self._ring = mmap.mmap(-1, RING_BYTES)  # anonymous and shared: the child sees writes
        self._child = start_child(
            _child,
            (child_frames, child_answers, self._ring),
            "kbundle-decoder",
            parent_ends=(self._frames, self._answers),
        )
        child_frames.close()
        child_answers.close()
        self._spans: deque[tuple[int, int]] = deque()  # (start, end) in the ring, oldest first
        self._where = msgspec.msgpack.Encoder()
        self._answer = msgspec.msgpack.Decoder(_Clean | _NotClean)
        self._alive = True

    def frames(
        self, payloads: Iterable[Payload], decoder: RecordDecoder
    ) -> Iterator[Decoded | Vouched]:
        """Every frame, in order: Vouched if the child found it clean, else Decoded here. A frame
        is handed over while fewer than IN_FLIGHT are at the child and the ring has room; the
        others are decoded here at once, while the child works."""
        pending: deque[Decoded | Payload] = deque()  # a Payload is at the child
        for payload in payloads:
            if len(self._spans) < IN_FLIGHT and self._submit(payload):
                pending.append(payload)
            else:
                pending.append(Decoded(payload, *decoder.decode_all(payload)))
            while pending and (
                len(pending) > MAX_PENDING or isinstance(pending[0], Decoded) or self._answered()
            ):
                yield self._in_order(pending.popleft(), decoder)
        while pending:
            yield self._in_order(pending.popleft(), decoder)

    def close(self) -> None:
        self._frames.close()  # the end: the child exits
        self._child.join(timeout=5)
        if self._child.exitcode is None:
            self._child.terminate()
            self._child.join()
        self._answers.close()
        self._ring.close()

    def _in_order(self, frame: Decoded | Payload, decoder: RecordDecoder) -> Decoded | Vouched:
        if isinstance(frame, Decoded):
            return frame
        self._spans.popleft()
        answer = self._receive()
        if isinstance(answer, _Clean):
            return Vouched(frame, answer.ids)
        return Decoded(frame, *decoder.decode_all(frame))

    def _submit(self, payload: Payload) -> bool:
        """Hand a frame over; False if there is no room for it in the ring now, or if the child
        is gone (decode it here)."""
        start = self._room(len(payload)) if self._alive else None
        if start is None:
            return False
        end = start + len(payload)
        self._ring[start:end] = payload
        try:
            # a few bytes: never waits, so the child can always send answers not read yet
            self._frames.send_bytes(self._where.encode(_Where(start, len(payload))))
        except OSError:  # BrokenPipeError and the like: the child died
            self._alive = False
            return False
        self._spans.append((start, end))
        return True

    def _room(self, size: int) -> int | None:
        """Where a frame of `size` bytes fits in the ring without touching a frame in flight."""
        if not self._spans:
            return 0 if size <= RING_BYTES else None
        oldest, newest = self._spans[0][0], self._spans[-1][1]
        if self._spans[-1][0] < oldest:  # wrapped around: free from the newest to the oldest
            return newest if newest + size <= oldest else None
        if newest + size <= RING_BYTES:
            return newest
        return 0 if size <= oldest else None

    def _answered(self) -> bool:
        """True if the oldest frame handed over has its answer waiting (or never will)."""
        return not self._alive or self._answers.poll()

    def _receive(self) -> _Clean | _NotClean:
        if self._alive:
            try:
                return self._answer.decode(self._answers.recv_bytes())
            except (EOFError, OSError):
                self._alive = False
        return _NotClean()


def _child(frames: Any, answers: Any, ring: mmap.mmap) -> None:
    """Decode and check each frame received until the end (or until the parent is gone)."""
    gc.disable()  # nothing decoded here holds a cycle, and each frame is dropped after use
    decoder = RecordDecoder("observations")
    view = memoryview(ring)
    where_of = msgspec.msgpack.Decoder(_Where)
    encoder = msgspec.msgpack.Encoder()
    with contextlib.suppress(EOFError, OSError):  # the end, or the parent is gone
        while True:
            where = where_of.decode(frames.recv_bytes())
            records, problems = decoder.decode_all(view[where.start : where.start + where.size])
            answer = _NotClean() if problems else _Clean(list(map(_ID, records)))
            answers.send_bytes(encoder.encode(answer))
