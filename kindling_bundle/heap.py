"""Giving freed heap memory back to the system between the phases of a long command.

glibc's malloc keeps what is freed in its heaps, and after the first large free it serves large
buffers (decompressed pieces, frames, NumPy arrays) from the heap too; so a command made of
phases (a restore's merge, then its import; an increment's comparison, then its writing) would
start each phase from the peak of the one before. `release_freed` (glibc's `malloc_trim`) hands
the whole free pages of every heap back at such a boundary: once, where a lower mmap threshold
for the whole command would have every large buffer's pages fault anew (bench/RESULTS.md has
what that cost). A phase that leaves its heap too fragmented for that (a restore's merge) runs
within `large_buffers_mapped` instead. Where malloc is not glibc's, both do nothing.
"""

from __future__ import annotations

import contextlib
import ctypes
import functools
import sys
from collections.abc import Callable, Iterator

_M_MMAP_THRESHOLD = -3
OWN_MAPPING_BYTES = 256 << 10
"""Within `large_buffers_mapped`, allocations this large or larger get their own mapping."""
HEAP_MAX_BYTES = 32 << 20
"""glibc's highest mmap threshold on 64-bit, where its dynamic threshold ends up: set after."""


@functools.cache
def _glibc() -> tuple[Callable[[int], int], Callable[[int, int], int]] | None:
    if not sys.platform.startswith("linux"):
        return None
    try:
        libc = ctypes.CDLL(None)
        trim, mallopt = libc.malloc_trim, libc.mallopt
    except (OSError, AttributeError):  # not glibc (musl has no malloc_trim)
        return None
    trim.argtypes = (ctypes.c_size_t,)
    trim.restype = ctypes.c_int
    mallopt.argtypes = (ctypes.c_int, ctypes.c_int)
    mallopt.restype = ctypes.c_int
    return trim, mallopt


def release_freed() -> None:
    """Return the heap's free pages to the system (glibc); call it between phases."""
    glibc = _glibc()
    if glibc is not None:
        glibc[0](0)


@contextlib.contextmanager
def large_buffers_mapped() -> Iterator[None]:
    """Within, every allocation of OWN_MAPPING_BYTES or more gets its own mapping, unmapped
    when freed: for a phase whose large buffers would otherwise fragment the heap it leaves
    behind (a restore's merge: two bundles read and one written at once). Each such buffer's
    pages fault anew, so only a phase that is followed by a bigger one is worth it. After it,
    the threshold is glibc's highest (where its dynamic one ends up) and the free pages are
    handed back."""
    glibc = _glibc()
    if glibc is None:
        yield
        return
    glibc[1](_M_MMAP_THRESHOLD, OWN_MAPPING_BYTES)
    try:
        yield
    finally:
        glibc[1](_M_MMAP_THRESHOLD, HEAP_MAX_BYTES)
        release_freed()
