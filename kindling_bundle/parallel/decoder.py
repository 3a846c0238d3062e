"""Decoding observation frames in a second process while this one decodes others (verify).

Verify is bound by Python work per record on one core: decoding and checking the records is
most of its time (bench/RESULTS.md). Here a forked child takes some of the observation
frames: it decodes and checks them exactly as `RecordDecoder.decode_all` does in this process,
and answers each with the hashes of its records' ids, which is all the record rules need of a
clean run of observations (`RecordRules.clear_new_ids`). A frame with any problem is answered
"not clean", and this process decodes it itself, so every message is the one it would have
written alone. The child is forked before any thread starts (verify forks it right after the
manifest), shares nothing but two pipes and a ring of shared memory, and leaves through
`os._exit` (multiprocessing's fork start). It is used on Linux only, for at least
forking.PARALLEL_MIN_ROWS observations; a child that dies costs only speed: its frames are
decoded here.

Frames travel through the ring, not a pipe: a frame is copied once into shared memory and the
pipe carries only where it is. Through a pipe, each frame was copied twice and the sender waited
while the child's receiving thread waited for the GIL (1acd6bd in bench/RESULTS.md).
"""

from __future__ import annotations

import contextlib
import gc
import mmap
import multiprocessing
import struct
from array import array
from collections import deque
from operator import attrgetter
from typing import Any

from kindling_bundle.format.record_frames import RecordDecoder

IN_FLIGHT = 4
"""Frames handed to the child and not yet answered, at most: the child finds the next frame
waiting when it finishes one."""

RING_BYTES = 4 << 20
"""Shared memory for frames in flight: room for IN_FLIGHT of the usual 1024-record frames. A frame
that finds no room (one bigger than the ring, or while bigger ones are in flight) is decoded
here. Only the pages used become resident."""

_WHERE = struct.Struct("<II")  # a frame's offset in the ring, and its length
_CLEAN = b"\x01"
_ID = attrgetter("id")


class FrameHelper:
    """A child process that decodes observation frames on request, answering in order."""

    def __init__(self) -> None:
        context = multiprocessing.get_context("fork")
        child_frames, self._frames = context.Pipe(duplex=False)
        self._answers, child_answers = context.Pipe(duplex=False)
        self._ring = mmap.mmap(-1, RING_BYTES)  # anonymous and shared: the child sees writes
        self._child = context.Process(
            target=_child,
            args=(child_frames, child_answers, self._ring),
            name="kbundle-decoder",
            daemon=True,
        )
        self._child.start()
        child_frames.close()
        child_answers.close()
        self._spans: deque[tuple[int, int]] = deque()  # (start, end) in the ring, oldest first
        self.alive = True

    @property
    def in_flight(self) -> int:
        return len(self._spans)

    def submit(self, payload: bytes | memoryview) -> bool:
        """Hand a frame's payload over; False if there is no room for it in the ring now, or if
        the child is gone (decode it here)."""
        start = self._room(len(payload)) if self.alive else None
        if start is None:
            return False
        end = start + len(payload)
        self._ring[start:end] = payload
        try:
            # 8 bytes: never waits, so the child can always send answers that are not read yet
            self._frames.send_bytes(_WHERE.pack(start, len(payload)))
        except OSError:  # BrokenPipeError and the like: the child died
            self.alive = False
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

    def answered(self) -> bool:
        """True if the oldest frame handed over has its answer waiting (or never will)."""
        return not self.alive or self._answers.poll()

    def answer(self) -> list[int] | None:
        """The id hashes of the oldest frame handed over, or None: decode it here (it is not
        clean, or the child died)."""
        self._spans.popleft()
        if not self.alive:
            return None
        try:
            data = self._answers.recv_bytes()
        except (EOFError, OSError):
            self.alive = False
            return None
        if data[:1] != _CLEAN:
            return None
        hashes = array("q")
        hashes.frombytes(memoryview(data)[1:])
        return hashes.tolist()

    def close(self) -> None:
        with contextlib.suppress(OSError):  # a child that died needs no end marker
            self._frames.send_bytes(b"")  # the end: the child exits
        self._frames.close()
        self._child.join(timeout=5)
        if self._child.exitcode is None:
            self._child.terminate()
            self._child.join()
        self._answers.close()
        self._ring.close()


def _child(frames: Any, answers: Any, ring: mmap.mmap) -> None:
    """Decode and check each frame received until the end marker (or the parent is gone)."""
    gc.disable()  # nothing decoded here holds a cycle, and each frame is dropped after use
    decoder = RecordDecoder("observations")
    view = memoryview(ring)
    try:
        while where := frames.recv_bytes():
            start, size = _WHERE.unpack(where)
            records, problems = decoder.decode_all(view[start : start + size])
            if problems:
                answers.send_bytes(b"")
            else:
                answers.send_bytes(_CLEAN + array("q", map(hash, map(_ID, records))).tobytes())
    except (EOFError, OSError):  # the parent is gone
        return
