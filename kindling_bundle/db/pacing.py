"""Short write transactions, sized by how long the last ones held the write lock.

Kindling's own writers wait at most 5 s for SQLite's write lock, then lose their write. Work on a
database in use (an import, undoing one, removing its journal) therefore goes in steps, each one
write transaction, sized so that each holds the lock about TARGET_SECONDS: the size of the next
step follows the time per unit the last steps took, as machines and rows differ.
"""

from __future__ import annotations

import sqlite3
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass

from kindling_bundle.db.connection import write_transaction

TARGET_SECONDS = 0.2
"""How long one step should hold the write lock."""


@dataclass
class Step:
    """One step: how many units it may take (`size`), and how many it took (`count`)."""

    size: int
    count: int = 0


class Pace:
    """Sizes steps of a repeated job so that each holds the write lock about `target` seconds.

    Starts at `first` units; then each size is what the recent time per unit allows, at most
    double the previous one (a step that was fast by luck must not make the next one long)."""

    def __init__(
        self,
        *,
        target: float = TARGET_SECONDS,
        first: int = 256,
        least: int = 16,
        most: int = 50_000,
    ):
        self.target = target
        self.size = first
        self.least = least
        self.most = most
        self._per_unit: float | None = None
        self.longest = 0.0
        """The longest any step held the lock, in seconds."""

    @contextmanager
    def transaction(self, conn: sqlite3.Connection) -> Iterator[Step]:
        """One step in one write transaction (BEGIN IMMEDIATE ... COMMIT), timed from the moment
        the lock is held to the end of the commit."""
        step = Step(self.size)
        with write_transaction(conn):
            started = time.perf_counter()
            yield step
        self._learn(step.count, time.perf_counter() - started)

    def _learn(self, count: int, seconds: float) -> None:
        self.longest = max(self.longest, seconds)
        if count <= 0:
            return
        per_unit = seconds / count
        if self._per_unit is None:
            self._per_unit = per_unit
        else:  # recent steps weigh most; one odd step moves the size only part of the way
            self._per_unit = 0.5 * self._per_unit + 0.5 * per_unit
        wanted = int(self.target / max(self._per_unit, 1e-7))
        self.size = max(self.least, min(self.most, wanted, 2 * max(self.size, count)))
