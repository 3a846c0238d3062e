"""Giving freed heap memory back to the system between the phases of a long command.

glibc's malloc keeps what is freed in its heaps, and after the first large free it serves large
buffers (decompressed pieces, frames, NumPy arrays) from the heap too; so a command made of
phases (a restore's merge, then its import; an increment's comparison, then its writing) would
start each phase from the peak of the one before. `release_freed` (glibc's `malloc_trim`) hands
the whole free pages of every heap back at such a boundary: once, where a lower mmap threshold
would have every large buffer's pages fault anew (bench/RESULTS.md has what that cost). Where
malloc is not glibc's, it does nothing.
"""

from __future__ import annotations

import ctypes
import functools
import sys
from collections.abc import Callable


@functools.cache
def _malloc_trim() -> Callable[[int], int] | None:
    if not sys.platform.startswith("linux"):
        return None
    try:
        trim = ctypes.CDLL(None).malloc_trim
    except (OSError, AttributeError):  # not glibc (musl has no malloc_trim)
        return None
    trim.argtypes = (ctypes.c_size_t,)
    trim.restype = ctypes.c_int
    return trim


def release_freed() -> None:
    """Return the heap's free pages to the system (glibc); call it between phases."""
    trim = _malloc_trim()
    if trim is not None:
        trim(0)
