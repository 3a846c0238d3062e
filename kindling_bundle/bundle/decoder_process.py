"""Decoding observation frames in a second process while this one decodes others (verify).

Verify is bound by Python work per record on one core: at 1,000,000 observations decoding and
checking the records took ~2.7 s of ~4.7 s. Here a forked child takes some of the observation
frames: it decodes and checks them exactly as `RecordDecoder.decode_all` does in this process,
and answers each with the hashes of its records' ids, which is all the record rules need of a
clean run of observations (`RecordRules.clear_new_ids`). A frame with any problem is answered
"not clean", and this process decodes it itself, so every message is the one it would have
written alone. The child is forked before any thread starts (verify forks it right after the
manifest), shares nothing but two pipes, and leaves through `os._exit` (multiprocessing's fork
start). It is used on Linux only, for at least forking.PARALLEL_MIN_ROWS observations; a child
that dies costs only speed: its frames are decoded here.
"""

from __future__ import annotations

import contextlib
import gc
import multiprocessing
import queue
import sys
import threading
from array import array
from operator import attrgetter
from typing import Any

from kindling_bundle.bundle.frames import RecordDecoder

IN_FLIGHT = 4
"""Frames handed to the child and not yet answered, at most: the child finds the next frame
waiting when it finishes one. It never deadlocks: a thread in the child takes every frame off
the pipe as soon as it arrives, so this process is never stuck sending while the child is stuck
sending an answer (however large: a hostile frame may hold many records) that is not read yet."""

PIPE_BYTES = 1 << 20
"""The frames pipe's buffer (Linux's default limit for unprivileged processes): a frame sent
while the child is busy is taken in whole, instead of waiting for the child to read it."""

_CLEAN = b"\x01"
_ID = attrgetter("id")


class FrameHelper:
    """A child process that decodes observation frames on request, answering in order."""

    def __init__(self) -> None:
        context = multiprocessing.get_context("fork")
        child_frames, self._frames = context.Pipe(duplex=False)
        self._answers, child_answers = context.Pipe(duplex=False)
        self._child = context.Process(
            target=_child,
            args=(child_frames, child_answers),
            name="kbundle-decoder",
            daemon=True,
        )
        self._child.start()
        child_frames.close()
        child_answers.close()
        import fcntl  # Linux only, as this class

        with contextlib.suppress(OSError):  # room for frames, so that sending one rarely waits
            fcntl.fcntl(self._frames.fileno(), fcntl.F_SETPIPE_SZ, PIPE_BYTES)
        self.in_flight = 0
        self.alive = True

    def submit(self, payload: bytes) -> bool:
        """Hand a frame's payload over; False if the child is gone (decode it here)."""
        if not self.alive:
            return False
        try:
            self._frames.send_bytes(payload)
        except OSError:  # BrokenPipeError and the like: the child died
            self.alive = False
            return False
        self.in_flight += 1
        return True

    def answered(self) -> bool:
        """True if the oldest frame handed over has its answer waiting (or never will)."""
        return not self.alive or self._answers.poll()

    def answer(self) -> list[int] | None:
        """The id hashes of the oldest frame handed over, or None: decode it here (it is not
        clean, or the child died)."""
        self.in_flight -= 1
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


def _child(frames: Any, answers: Any) -> None:
    """Decode and check each frame received until the end marker (or the parent is gone)."""
    gc.disable()  # nothing decoded here holds a cycle, and each frame is dropped after use
    sys.setswitchinterval(0.0005)  # the receiving thread gets a turn soon after a frame arrives
    received: queue.SimpleQueue[bytes] = queue.SimpleQueue()
    threading.Thread(target=_receive, args=(frames, received), daemon=True).start()
    decoder = RecordDecoder("observations")
    try:
        while payload := received.get():
            records, problems = decoder.decode_all(payload)
            if problems:
                answers.send_bytes(b"")
            else:
                answers.send_bytes(_CLEAN + array("q", map(hash, map(_ID, records))).tobytes())
    except OSError:  # the parent is gone
        return


def _receive(frames: Any, received: queue.SimpleQueue[bytes]) -> None:
    """Move frames from the pipe into `received` as they arrive (at most IN_FLIGHT wait)."""
    try:
        while payload := frames.recv_bytes():
            received.put(payload)
    except (EOFError, OSError):
        pass
    received.put(b"")
