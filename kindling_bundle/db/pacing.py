"""Short write transactions, sized by how long the last ones held the write lock.

Kindling's own writers wait at most 5 s for SQLite's write lock, then lose their write. Work on a
database in use (an import, undoing one, removing its journal) therefore goes in steps, each one
write transaction, sized so that each holds the lock about TARGET_SECONDS: the size of the next
step follows the time per unit the last steps took, as machines and rows differ. A step made of
parts (the import's) also watches the clock: it starts no new part that would, taking as long
as its longest part so far, end after LIMIT_SECONDS, so a step that runs slower than its size
foretold (a loaded machine) still ends in time; what it left is the next step's.

Every step costs something whatever its size (each commit writes the pages it changed to the
write-ahead log again, the index pages shared by many rows included; full-text segments; the gap
below), so steps are as long as a waiting writer can bear, not shorter.

Short steps are not enough: a writer waiting for the lock does not queue, it sleeps and tries
again (SQLite's busy handler: after its first few tries, every 100 ms), so steps that follow each
other closely can take the lock again and again before it wakes. While other writers are about
(another connection committed lately), `Turns` leaves the lock free for GAP_SECONDS between two
steps: long enough for a sleeping writer's next try.
"""

from __future__ import annotations

import contextlib
import sqlite3
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass

from kindling_bundle.db.connection import write_transaction

TARGET_SECONDS = 0.7
"""How long one step should hold the write lock."""
LIMIT_SECONDS = 0.85
"""A step made of parts starts no part expected to end after it has held the lock this long:
with its commit, it holds the lock about 1 s at most."""
GAP_SECONDS = 0.2
"""How long at least the lock stays free between two steps while others write (the gap ends when
one of them commits): more than the 100 ms SQLite's busy handler sleeps between two tries."""
LONGEST_GAP_SECONDS = 0.8
"""How long at most: on a loaded machine a writer woken late may need longer (`Turns`)."""
OTHERS_RECENTLY_SECONDS = 5.0
"""Another connection that committed within this long is taken to be writing still."""
RESTART_LOG_PAGES = 16_384
"""Pages the write-ahead log may hold before the next step lets it start over (64 MiB at
Kindling's 4 KiB pages): otherwise it grows by every page the import writes (`Checkpointer`)."""
RESTART_WAIT_MS = 50
"""How long that restart waits for readers of the log, holding the write lock meanwhile."""
TRUNCATE_WAIT_MS = 200
"""How long the last checkpoint waits for readers and writers to leave the log (new writers
wait for it meanwhile: far less than Kindling's 5 s busy timeout)."""


class Turns:
    """Leaves the write lock free between two steps for long enough that a writer waiting for
    it gets it, while other connections are writing (module docstring); one per connection.

    A writer that misses the gap waits a whole step more, so the gap follows how long waiting
    writers took lately to commit once the lock was free (twice the longest of the last few),
    between GAP_SECONDS and LONGEST_GAP_SECONDS: on a loaded machine a sleeping writer may be
    woken well after its 100 ms."""

    def __init__(
        self, before_lock: Callable[[sqlite3.Connection], None] = lambda conn: None
    ) -> None:
        self._before_lock = before_lock
        """Run after the gap, just before the step takes the lock."""
        self._ended: float | None = None
        self._version: int | None = None
        self._others_at = float("-inf")
        self._took: list[float] = []
        """How long after a step's commit another writer committed, for the last few steps."""

    def wait(self, conn: sqlite3.Connection) -> None:
        """Before a step: let another writer in first, if there is one about."""
        self._gap(conn)
        self._before_lock(conn)

    def _gap(self, conn: sqlite3.Connection) -> None:
        version = conn.execute("PRAGMA data_version").fetchone()[0]  # changed by others' commits
        now = time.monotonic()
        if self._ended is None:
            return
        if self._version is not None and version != self._version:
            # it had its turn already, at a moment this step cannot tell: not a measure of how
            # long writers take (that would count this process's own time since its commit)
            self._others_at = now
            return
        if now - self._others_at > OTHERS_RECENTLY_SECONDS:
            return
        gap = min(LONGEST_GAP_SECONDS, max(GAP_SECONDS, 2 * max(self._took, default=0.0)))
        while now < self._ended + gap:
            time.sleep(min(0.01, self._ended + gap - now))
            now = time.monotonic()
            if conn.execute("PRAGMA data_version").fetchone()[0] != version:
                self._came(now)
                return

    def others_lately(self) -> bool:
        """Whether another connection committed within OTHERS_RECENTLY_SECONDS (as far as the
        steps so far could tell)."""
        return time.monotonic() - self._others_at <= OTHERS_RECENTLY_SECONDS

    def _came(self, now: float) -> None:
        assert self._ended is not None
        self._others_at = now
        self._took = [*self._took[-7:], now - self._ended]

    def ended(self, conn: sqlite3.Connection) -> None:
        """After a step's commit."""
        self._version = conn.execute("PRAGMA data_version").fetchone()[0]
        self._ended = time.monotonic()


@dataclass
class Step:
    """One step: how many units it may take (`size`), and how many it took (`count`)."""

    size: int
    count: int = 0
    started: float = 0.0
    """When the step took the write lock (time.perf_counter)."""

    def room(self, part_seconds: float) -> bool:
        """Whether a part taking `part_seconds` would end in time (LIMIT_SECONDS)."""
        return time.perf_counter() - self.started + part_seconds <= LIMIT_SECONDS


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
        turns: Turns | None = None,
    ):
        self.turns = turns or Turns()
        self.target = target
        self.size = first
        self.least = least
        self.most = most
        self._per_unit: float | None = None

    @contextmanager
    def transaction(self, conn: sqlite3.Connection) -> Iterator[Step]:
        """One step in one write transaction (BEGIN IMMEDIATE ... COMMIT), timed from the moment
        the lock is held to the end of the commit."""
        step = Step(self.size)
        self.turns.wait(conn)
        with write_transaction(conn):
            step.started = time.perf_counter()
            yield step
        self._learn(step.count, time.perf_counter() - step.started)
        self.turns.ended(conn)

    def _learn(self, count: int, seconds: float) -> None:
        if count <= 0:
            return
        per_unit = seconds / count
        if self._per_unit is None:
            self._per_unit = per_unit
        else:  # recent steps weigh most; one odd step moves the size only part of the way
            self._per_unit = 0.5 * self._per_unit + 0.5 * per_unit
        wanted = int(self.target / max(self._per_unit, 1e-7))
        self.size = max(self.least, min(self.most, wanted, 2 * max(self.size, count)))


def empty_log(conn: sqlite3.Connection) -> None:
    """After an import, empty the write-ahead log file if no reader needs it: the import made it
    as large as itself, and SQLite reuses it without making it smaller while any connection
    stays open (Kindling's does). A writer that comes meanwhile waits at most TRUNCATE_WAIT_MS;
    if a reader holds the log, it stays as it is."""
    _checkpoint(conn, "TRUNCATE", TRUNCATE_WAIT_MS)


def _checkpoint(conn: sqlite3.Connection, mode: str, wait_ms: int) -> bool:
    """Checkpoint in `mode`, waiting at most `wait_ms` for other connections (the connection's
    own busy timeout put back after); whether it did all the mode asks."""
    timeout = conn.execute("PRAGMA busy_timeout").fetchone()[0]
    try:
        conn.execute(f"PRAGMA busy_timeout = {wait_ms}")
        busy, _, _ = conn.execute(f"PRAGMA wal_checkpoint({mode})").fetchone()
        return not busy
    except sqlite3.Error:
        return False
    finally:
        conn.execute(f"PRAGMA busy_timeout = {timeout}")


class Checkpointer:
    """Copies the write-ahead log back into the database from a thread of its own.

    Each write step appends the pages it changed to the write-ahead log, and someone must copy
    them into the database file before the log can start over. The committing connection would
    do it at once (SQLite's auto-checkpoint), in the import's own thread; this thread does it on
    its own connection instead, while the import goes on reading and deciding the next records.
    It checkpoints PASSIVE (never waiting for, nor blocking, a reader or writer) right after each
    step, so that a Kindling writer committing meanwhile finds little or nothing left to copy.
    Turn the importing connection's auto-checkpoint off while it runs.

    Copied is not enough for the log to get shorter: SQLite writes it from the start again only
    when a transaction begins with every page copied and no reader is still reading from the log,
    and beside Kindling's writes and the import's own readers that seldom happens (the log grew
    larger than the database). So once it holds RESTART_LOG_PAGES, the next step first
    checkpoints RESTART (`restart`), which waits for those readers."""

    def __init__(self, path: str, busy_timeout_ms: int):
        self._path = path
        self._busy_timeout_ms = busy_timeout_ms
        self._due = threading.Event()
        self._idle = threading.Event()
        self._idle.set()
        self._log_pages = 0
        """Pages in the log at the last checkpoint."""
        self._stop = False
        self._thread = threading.Thread(target=self._run, name="kindling-checkpoint", daemon=True)
        self._thread.start()

    def after_step(self) -> None:
        """A step committed: copy what it wrote."""
        self._idle.clear()
        self._due.set()

    def restart(self, conn: sqlite3.Connection) -> None:
        """On the writing connection, before a step: if the log has grown long, let it start
        over. Once this thread has copied the last step, a RESTART checkpoint copies what others
        wrote since and waits at most RESTART_WAIT_MS for readers to leave the log; the step
        then writes it from the start. If they stay, a later step tries again."""
        if self._log_pages < RESTART_LOG_PAGES:
            return
        self._idle.wait()
        if _checkpoint(conn, "RESTART", RESTART_WAIT_MS):  # else a later step tries again
            self._log_pages = 0

    def close(self) -> None:
        """Copy what is left, and end the thread."""
        self._stop = True
        self._due.set()
        self._thread.join()

    def _run(self) -> None:
        try:
            self._checkpoints()
        finally:
            self._idle.set()  # whatever ended it: a step must not wait for it

    def _checkpoints(self) -> None:
        conn = sqlite3.connect(self._path, isolation_level=None)
        try:
            conn.execute(f"PRAGMA busy_timeout = {self._busy_timeout_ms}")
            while True:
                self._due.wait()
                self._due.clear()
                stop = self._stop
                with contextlib.suppress(sqlite3.Error):  # a later one, or Kindling's, will do
                    _, pages, _ = conn.execute("PRAGMA wal_checkpoint(PASSIVE)").fetchone()
                    self._log_pages = pages
                if not self._due.is_set():
                    self._idle.set()
                if stop:
                    return
        finally:
            conn.close()
