"""A set of 64-bit id hashes that costs a few bytes a member once it is large.

Checking a stream's record rules in one pass needs every id seen so far
(`format.stream_rules.RecordRules`). In a Python set each member is an int object plus its share
of the table, so verify's memory grew with the bundle, and the cyclic garbage collector walked the
whole set at every full collection (bench/RESULTS.md has the figures before and after).

`HashSet` keeps the newest members in a small Python set (`young`, at most YOUNG_MAX members: C
speed for the set operations the rules use) and, each time that fills, merges it into one sorted
NumPy int64 array (`old`): 8 bytes a member, looked up by binary search over a whole batch at a
time, never walked by the garbage collector. A merge appends the sorted newcomers after the sorted
array, in place (the buffer grows by `realloc`, which moves large blocks without copying them),
and sorts the two runs with NumPy's stable sort, a timsort that merges them with a buffer the
size of the newcomers. Small sets never leave the Python set, so NumPy is imported only by a run
that needs it.
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

YOUNG_MAX = 1 << 14
"""Members kept in the Python set before they are merged into the sorted array. Halved, with
BITMAP_BITS, in d924522: less peak memory in as much time (the merges, twice as many, are a
memmove each; bench/RESULTS.md)."""

SET_ONLY_MAX = 1 << 18
"""A set expected to hold at most this many members stays a Python set (see `HashSet`): about
where its memory (a 2^19-slot table and an int object a member) reaches that of importing NumPy
and the array, so small bundles are checked faster (no import, no merges) in as much memory
(bench/RESULTS.md)."""


BITMAP_BITS = 8
"""At least this many bitmap bits a member of `old` (1-2 bytes): only the few new ids whose
bit is marked are looked up in the array."""


class HashSet:
    """The subset of `set[int]` the record rules use, for hashes that fit in 64 bits.

    `expected`: how many members it will hold, if known (a bundle's manifest says). Up to
    SET_ONLY_MAX, the members stay in the Python set, which is faster and then costs no more
    memory than importing NumPy; more members than expected are merged as usual."""

    __slots__ = ("_bits", "_count", "_old", "_young", "_young_max")

    def __init__(self, expected: int | None = None) -> None:
        self._young_max = YOUNG_MAX
        if expected is not None and expected <= SET_ONLY_MAX:  # small: all in the set
            self._young_max = max(expected + 1, YOUNG_MAX)
        self._young: set[int] = set()
        self._old: Any = None  # a NumPy int64 buffer; its first _count members sorted
        self._count = 0
        self._bits: Any = None  # a NumPy uint8 bitmap, one bit set for each member of `old`

    def __contains__(self, value: int) -> bool:
        if value in self._young:
            return True
        if not self._count:
            return False
        old = self._old[: self._count]
        index = int(old.searchsorted(value))
        return index < self._count and int(old[index]) == value

    def add(self, value: int) -> None:
        self._young.add(value)
        if len(self._young) >= self._young_max:
            self._merge()

    def update(self, values: Iterable[int]) -> None:
        self._young.update(values)
        if len(self._young) >= self._young_max:
            self._merge()

    def isdisjoint(self, values: Iterable[int]) -> bool:
        values = values if isinstance(values, list) else list(values)
        if not self._young.isdisjoint(values):
            return False
        if not self._count:
            return True
        import numpy

        wanted = numpy.asarray(values, numpy.int64)
        maybe = wanted[self._marked(wanted)]
        return not maybe.size or not self._found(maybe).any()

    def issuperset(self, values: Iterable[int]) -> bool:
        values = values if isinstance(values, list) else list(values)
        if not self._count:
            return self._young.issuperset(values)
        import numpy

        wanted = numpy.asarray(values, numpy.int64)
        found = self._found(wanted)
        if found.all():
            return True
        return self._young.issuperset(wanted[~found].tolist())

    def _found(self, wanted: Any) -> Any:
        """For each of `wanted` (a NumPy int64 array, sorted here in place: binary searches in
        ascending order touch the sorted array's memory in order), whether it is in `old`."""
        import numpy

        wanted.sort()
        old = self._old[: self._count]
        index = old.searchsorted(wanted)
        numpy.minimum(index, self._count - 1, out=index)
        return old[index] == wanted

    def _marked(self, wanted: Any) -> Any:
        """For each of `wanted`, whether its bit is set: False means surely not in `old`. One
        random access each into a bitmap an eighth the size of `old`, instead of a binary
        search's many over all of it (new ids, the usual question, are rarely marked)."""
        bits = self._bits
        return (bits[(wanted >> 3) & (len(bits) - 1)] >> (wanted & 7).astype(bits.dtype)) & 1 != 0

    def _mark(self, values: Any) -> None:
        import numpy

        bits = self._bits
        shifts = (values & 7).astype(bits.dtype)
        numpy.bitwise_or.at(bits, (values >> 3) & (len(bits) - 1), numpy.left_shift(1, shifts))

    def _merge(self) -> None:
        import numpy

        young = numpy.fromiter(self._young, numpy.int64, len(self._young))
        young.sort()
        count = self._count + len(young)
        if self._old is None:
            self._old = numpy.empty(max(count, YOUNG_MAX), numpy.int64)
        elif count > len(self._old):
            # Exactly: NumPy zero-fills what it adds, so room to spare would cost memory now.
            # Growing a large block is cheap: realloc moves its pages (mremap), not its bytes.
            self._old.resize(count, refcheck=False)
        self._old[self._count : count] = young
        self._old[:count].sort(kind="stable")
        self._count = count
        self._young = set()
        if self._bits is None or len(self._bits) * 8 < BITMAP_BITS * count:
            bits = BITMAP_BITS * count
            self._bits = numpy.zeros(1 << ((bits - 1).bit_length() - 3), numpy.uint8)
            self._mark(self._old[:count])
        else:
            self._mark(young)
