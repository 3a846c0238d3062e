"""When a second process is worth forking, for export (parallel.encoder) and verify
(parallel.decoder): on Linux, where fork is safe and cheap, and for enough observations to repay
starting it. Kept apart from both so that verify imports none of export's modules (SQLite)."""

from __future__ import annotations

import contextlib
import multiprocessing
import sys

from kindling_bundle.format.manifest import FRAME_RECORDS

PARALLEL_MIN_ROWS = 16 * FRAME_RECORDS
"""Below this many observations, starting a process costs more than it saves."""


def parallel_available() -> bool:
    return sys.platform.startswith("linux") and "fork" in multiprocessing.get_all_start_methods()


PIPE_BYTES = 1 << 20
"""The buffer asked for a pipe to a child (Linux's limit for unprivileged processes): a message
sent while the child is busy is taken in whole instead of waiting for the child to read it."""


def widen_pipe(fd: int) -> int:
    """Grow a pipe's buffer to PIPE_BYTES if allowed; its size in bytes, or 0 if unknown."""
    import fcntl  # Linux only, as the children

    for command, argument in ((fcntl.F_SETPIPE_SZ, PIPE_BYTES), (fcntl.F_GETPIPE_SZ, 0)):
        with contextlib.suppress(OSError):
            return fcntl.fcntl(fd, command, argument)
    return 0


def pipe_has_room(fd: int, pipe_bytes: int, size: int) -> bool:
    """True if a `size`-byte message (multiprocessing's send_bytes) fits in the pipe now, so
    sending it cannot wait for the child to read: waiting is worse than doing the work here."""
    import fcntl
    import termios

    try:
        waiting = int.from_bytes(fcntl.ioctl(fd, termios.FIONREAD, b"\0\0\0\0"), sys.byteorder)
    except OSError:
        return False
    return waiting + size + 4 <= pipe_bytes  # 4: send_bytes's length header
