"""Importing into a database in use: decided outside the write lock, written in short steps.

Kindling's writers wait at most 5 s for SQLite's write lock. So an import into a database that
exists never holds it for long: records are looked up and decided by the conflict rules in a
read transaction (which never blocks a writer; `db.planner`), then written in write
transactions that each hold the lock about `pacing.TARGET_SECONDS`, sized by the time the last
ones took. Every change is journaled (`db.journal`) in the same transaction, so the whole
import can be undone.

A decision taken outside the lock can be stale by the time it is written: another writer, or an
earlier record of the same import still waiting to be written, may have changed what the record
meets. So only two kinds of decision are written as taken: "nothing to write" (unchanged,
skipped: true at the moment it was read, which is a moment during the import), and "insert",
which the database's own constraints check again (a stored id, a summary's missing capsule, a
capsule's second summary; a capsule's links, the integrity report after the last capsule step:
`_links_checked_later`), and a pin's target, looked up again in the transaction.
Whatever the database refuses, every overwrite, and every record that might depend on another
of its run, is imported inside the transaction by `import_record`: looked up, decided and
written at once. The results are therefore those of importing the records one by one in order.
"""

from __future__ import annotations

import contextlib
import gc
import sqlite3
import sys
import time
from collections.abc import Callable, Iterator
from concurrent.futures import Future, ThreadPoolExecutor
from contextlib import AbstractContextManager, nullcontext
from dataclasses import dataclass
from operator import attrgetter
from typing import cast

from kindling_bundle.db.conflicts import ImportEntityResult
from kindling_bundle.db.connection import savepoint
from kindling_bundle.db.fts_splice import (
    FTS,
    MOST_ROWS,
    Segment,
    Splicer,
    SpliceRefused,
    build_segment,
)
from kindling_bundle.db.fts_tuning import step_settings
from kindling_bundle.db.importer import FTS_OF_TABLE, import_record, insert_held
from kindling_bundle.db.journal import Journal
from kindling_bundle.db.lookup import present_targets
from kindling_bundle.db.pacing import Pace, Step, Turns
from kindling_bundle.db.planner import Planned
from kindling_bundle.db.rows import OBSERVATION_COLUMNS, column_names
from kindling_bundle.db.staging import Stage
from kindling_bundle.records import (
    Capsule,
    ConflictStrategy,
    Observation,
    Pin,
    Record,
    entity_of,
)

PARTS = 5
"""Parts a step's records are written in: between two, the step looks at the clock
(`pacing.LIMIT_SECONDS`)."""
ROWS_PER_STATEMENT = 32
"""Rows per INSERT statement: Kindling's FTS insert trigger fills one pending index for the
whole statement instead of writing a tiny segment after each row's statement."""

Take = Callable[[list[ImportEntityResult], list[tuple[str, int, int]]], None]
"""Called inside each write transaction with its records' results, in order, and the runs of
rowids it inserted; raising rolls the transaction back."""


_ROWS = attrgetter("rows")


def _parts(chunk: list[Planned], rows_per_part: int) -> list[tuple[int, int]]:
    """(start, end) of each part of a step's chunk: a run of records of one kind of write, cut
    after `rows_per_part` rows, so that the step can stop between two parts."""
    parts: list[tuple[int, int]] = []
    start = 0
    while start < len(chunk):
        kind = chunk[start].write
        end, rows = start, 0
        while end < len(chunk) and chunk[end].write == kind and rows < rows_per_part:
            rows += chunk[end].rows
            end += 1
        parts.append((start, end))
        start = end
    return parts


def _inserted(group: list[Planned]) -> list[ImportEntityResult]:
    """The results of records decided new, now inserted (or, for "none", left as they were)."""
    return cast(list[ImportEntityResult], [item.result for item in group])


_CONTENT = column_names(OBSERVATION_COLUMNS).index("content")
_REDACTED = column_names(OBSERVATION_COLUMNS).index("redacted")


@dataclass
class _Ahead:
    """A step's chunk cut before its turn (the first `count` records queued once the step
    before has written its whole chunk), the rowids reserved for its new observations (from
    `first` on), and their full-text index, built meanwhile (`db.fts_splice`)."""

    count: int
    first: int
    segment: Future[Segment | None]


class Writer:
    """Writes planned records, in foreign-key order, in short journaled transactions."""

    def __init__(
        self,
        conn: sqlite3.Connection,
        conflict: ConflictStrategy,
        journal: Journal,
        take: Take,
        after_step: Callable[[], None] = lambda: None,
        staging: Callable[[], AbstractContextManager[None]] = nullcontext,
        before_lock: Callable[[sqlite3.Connection], None] = lambda conn: None,
    ):
        self.conn = conn
        self.conflict = conflict
        self.journal = journal
        self.take = take
        self.after_step = after_step
        self._staging = staging
        self._paces: dict[type, Pace] = {}
        self._turns = Turns(before_lock)
        self._stage = Stage(conn)
        self._pending: list[Planned] = []
        self._pending_rows = 0
        self._splicer: Splicer | None = None
        self._splice_checked = False
        self._ahead: _Ahead | None = None
        self._builder: ThreadPoolExecutor | None = None

    def add(self, planned: list[Planned]) -> None:
        """Queue planned records of one entity (after those of the entities they reference),
        and write what is due."""
        self._pending.extend(planned)
        self._pending_rows += sum(map(_ROWS, planned))
        if any(p.result is not None and p.result.error is not None for p in planned):
            self.flush()  # fails at the first error, after what comes before it
        while self._pending and self._pending_rows >= self._due():
            self._write_step()

    def flush(self) -> None:
        """Write everything queued."""
        while self._pending:
            self._write_step()

    def close(self) -> None:
        """Stop building indexes ahead (after the last step, or a failure)."""
        if self._builder is not None:
            self._builder.shutdown(wait=True, cancel_futures=True)
            self._builder = None
        self._ahead = None

    def _due(self) -> int:
        """Rows queued before a step is written: two steps' worth where the next step's index
        is built while one writes."""
        return self._size() * (2 if self._spliced_kind() else 1)

    def _size(self) -> int:
        """Rows of the next step: as many as its pace allows, at most MOST_ROWS spliced."""
        size = self._pace().size
        return min(size, MOST_ROWS) if self._spliced_kind() else size

    def _spliced_kind(self) -> bool:
        """Whether the queue's records are of the kind whose index is built ahead."""
        return isinstance(self._pending[0].record, Observation) and self._splicing() is not None

    def _splicing(self) -> Splicer | None:
        if not self._splice_checked:
            self._splice_checked = True
            self._splicer = Splicer.attach(self.conn)
        return self._splicer

    def _stop_splicing(self) -> None:
        """From here on, Kindling's trigger indexes the observations this import writes."""
        self._splicer = None
        self._ahead = None

    def _pace(self) -> Pace:
        """Each entity's steps are sized apart: a capsule's row is a capsule and its links."""
        kind = type(self._pending[0].record)
        if kind not in self._paces:
            self._paces[kind] = Pace(turns=self._turns)
        return self._paces[kind]

    def _write_step(self) -> None:
        pace = self._pace()
        size = self._size()
        ahead, self._ahead = self._ahead, None
        if ahead is None:
            taken = self._cut(0, size)
            ahead = self._build(0, taken)
        else:
            taken = ahead.count
        following = self._cut(taken, size)
        if sum(map(_ROWS, self._pending[taken:following])) >= size:
            self._ahead = self._build(taken, following)  # built while this step writes
        chunk = self._pending[:taken]
        parts = _parts(chunk, max(1, pace.size // PARTS))
        new = {
            start: [(item.record, item.values) for item in chunk[start:end]]
            for start, end in parts
            if chunk[start].write == "insert"
        }
        with self._staging():  # binding every value, before the lock is taken
            staged = self._stage.put(new)
        segment = self._segment(ahead)
        # FTS5's settings only where the step writes: setting them writes the index's pages
        writes = any(item.write != "none" for item in chunk)
        fts = FTS_OF_TABLE.get(entity_of(chunk[0].record)) if writes else None
        with _links_checked_later(self.conn, chunk), pace.transaction(self.conn) as step:
            seq = self.journal.last_seq()
            results = None
            if ahead is not None and self._splicer is not None:
                results = self._spliced(chunk, parts, staged, ahead.first, segment, step)
            spliced = results is not None
            if results is None:
                with step_settings(self.conn, fts) if fts else nullcontext():
                    results = self._write(chunk, parts, staged, step)
            self.take(results, self.journal.inserted_since(seq))
            step.count = sum(map(_ROWS, chunk[: len(results)]))
        if not spliced and self._splicer is not None and isinstance(chunk[0].record, Observation):
            # it may have written part of its chunk only, and at rowids reserved for the next
            self._ahead = None
            self._splicer.after_unspliced(self.conn)
        self._stage.clear()
        del self._pending[: len(results)]
        self._pending_rows -= step.count
        self.after_step()

    def _cut(self, start: int, size: int) -> int:
        """Where a step's chunk that starts at `start` of the queue ends: `size` rows on, at
        least one record."""
        end, rows = start, 0
        while end < len(self._pending) and (rows < size or end == start):
            rows += self._pending[end].rows
            end += 1
        return end

    def _build(self, start: int, end: int) -> _Ahead | None:
        """Reserve rowids for the chunk's new observations and start building their full-text
        index; None where the chunk is not spliced: other records, or some to be imported
        inside the transaction ("exact")."""
        chunk = self._pending[start:end]
        if not chunk or not isinstance(chunk[0].record, Observation):
            return None
        splicer = self._splicing()
        if splicer is None or any(item.write == "exact" for item in chunk):
            return None
        new = [item.values for item in chunk if item.write == "insert"]
        if not new:
            return None
        first = splicer.reserve(len(new), others_writing=self._turns.others_lately())
        rows = [(first + n, v[_CONTENT]) for n, v in enumerate(new) if not v[_REDACTED]]
        if self._builder is None:
            self._builder = ThreadPoolExecutor(1, thread_name_prefix="kindling-fts")
        segment = self._builder.submit(build_segment, splicer.create_sql, splicer.pgsz, rows)
        return _Ahead(end - start, first, segment)

    def _segment(self, ahead: _Ahead | None) -> Segment | None:
        """The chunk's built index, waited for before the step takes the lock; if building it
        failed, the trigger indexes this import's observations instead."""
        if ahead is None or self._splicer is None:
            return None
        try:
            return ahead.segment.result()
        except (sqlite3.Error, SpliceRefused):
            self._stop_splicing()
            return None

    def _spliced(
        self,
        chunk: list[Planned],
        parts: list[tuple[int, int]],
        staged: dict[int, tuple[int, int, int, int]],
        first: int,
        segment: Segment | None,
        step: Step,
    ) -> list[ImportEntityResult] | None:
        """Inside the step: insert the chunk's new observations at their reserved rowids with
        Kindling's trigger set aside, and splice in their index; all the chunk's results. None,
        having written nothing, where that cannot be done: the step then writes the chunk the
        usual way. Where another writer took the rowids, the next steps splice at rowids above
        them; where the database refuses a row or FTS5's index cannot take the segment, the
        trigger indexes the rest of the import."""
        splicer = self._splicer
        assert splicer is not None
        if not splicer.free(self.conn, first):
            return None
        results: list[ImportEntityResult] = []
        try:
            with savepoint(self.conn, "kindling_splice"), step_settings(self.conn, FTS):
                with splicer.untriggered(self.conn):
                    for start, end in parts:
                        group = chunk[start:end]
                        if group[0].write == "insert":
                            with self.journal.run("observations", len(group), first):
                                self._stage.insert("observations", staged[start], first)
                            first += len(group)
                        results.extend(_inserted(group))
                if segment is not None:
                    splicer.splice(self.conn, segment, step.room)
        except (sqlite3.IntegrityError, SpliceRefused):
            self._stop_splicing()
            return None
        return results

    def _write(
        self,
        chunk: list[Planned],
        parts: list[tuple[int, int]],
        staged: dict[int, tuple[int, int, int, int]],
        step: Step,
    ) -> list[ImportEntityResult]:
        """Write the chunk's parts in order, as long as the step has room for one more as long
        as its longest so far (the first part always); the results of the records written."""
        results: list[ImportEntityResult] = []
        longest = 0.0
        for start, end in parts:
            if results and not step.room(longest):
                break
            began = time.perf_counter()
            kind = chunk[start].write
            if kind == "insert":
                results.extend(self._insert_staged(chunk[start:end], staged[start]))
            elif kind == "exact":
                for item in chunk[start:end]:
                    results.append(import_record(self.conn, item.record, self.conflict))
            else:
                for item in chunk[start:end]:
                    assert item.result is not None
                    results.append(item.result)
            longest = max(longest, time.perf_counter() - began)
        return results

    def _insert_staged(
        self, group: list[Planned], staged: tuple[int, int, int, int]
    ) -> list[ImportEntityResult]:
        """Insert a run of records decided new with one INSERT ... SELECT from where they were
        staged (Kindling's FTS trigger fills one pending index for the whole statement); if the
        database refuses it, insert them a few at a time, and those refused one by one."""
        records = [item.record for item in group]
        if self._a_pin_target_is_gone(records):
            return [import_record(self.conn, record, self.conflict) for record in records]
        entity = entity_of(records[0])  # its table's name
        try:
            with self._atomic(records), self.journal.run(entity, len(group)):
                self._stage.insert(entity, staged)
        except sqlite3.IntegrityError:
            results: list[ImportEntityResult] = []
            for first in range(0, len(group), ROWS_PER_STATEMENT):
                results.extend(self._insert(group[first : first + ROWS_PER_STATEMENT]))
            return results
        return _inserted(group)

    def _insert(self, group: list[Planned]) -> list[ImportEntityResult]:
        """Insert records decided new, in one statement; if the database refuses them (or a pin's
        target is gone), import them one by one instead."""
        records = [item.record for item in group]
        if self._a_pin_target_is_gone(records):
            return [import_record(self.conn, record, self.conflict) for record in records]
        try:
            with self._atomic(records):
                insert_held(
                    self.conn, records, [item.values for item in group], per_statement=len(group)
                )
        except sqlite3.IntegrityError:
            return [import_record(self.conn, record, self.conflict) for record in records]
        return _inserted(group)

    def _a_pin_target_is_gone(self, records: list[Record]) -> bool:
        """No constraint checks a pin's target: look again before inserting pins in bulk."""
        pins = [record for record in records if isinstance(record, Pin)]
        if not pins:
            return False
        there = present_targets(self.conn, pins)
        return any((p.target_type, p.target_id) not in there for p in pins)

    def _atomic(self, records: list[Record]) -> AbstractContextManager[None]:
        """Capsules are two statements (their rows, then their links): one savepoint for both."""
        if isinstance(records[0], Capsule):
            return savepoint(self.conn, "kindling_live")
        return nullcontext()


@contextlib.contextmanager
def _links_checked_later(conn: sqlite3.Connection, chunk: list[Planned]) -> Iterator[None]:
    """A step that only inserts capsules decided new (and skips others) writes their links
    without checking their foreign keys row by row: two index look-ups a link, on the thread
    that holds the write lock.

    Nothing is left unchecked. The planner looked up every linked observation in a snapshot
    taken after the import's last observation was committed, and decided "insert" only if all
    were stored; the capsule itself is inserted just before its links, in the same savepoint.
    Only another connection deleting an observation since could leave a link dangling, and the
    import's integrity report (which checks the links' foreign keys once the capsules are
    written) then fails the import, naming the capsule and the observation, and it is undone.
    Enforcement is the connection's own setting, which SQLite changes only between
    transactions: a step that failed with its transaction still open (a commit that failed) is
    rolled back here, so that enforcement is back, as the undo's cascades need, whatever
    happens."""
    if not isinstance(chunk[0].record, Capsule) or any(p.write == "exact" for p in chunk):
        yield
        return
    enforced = conn.execute("PRAGMA foreign_keys").fetchone()[0]
    try:
        conn.execute("PRAGMA foreign_keys = OFF")
        yield
    finally:
        if conn.in_transaction:  # only after a failure: the step is lost anyway
            conn.execute("ROLLBACK")
        conn.execute(f"PRAGMA foreign_keys = {int(enforced)}")


SWITCH_INTERVAL_SECONDS = 0.001
"""Python's thread switch interval while a live import runs (Python's default: 5 ms)."""


@contextlib.contextmanager
def quick_handoffs() -> Iterator[None]:
    """Python's global lock handed over sooner, and never kept for a garbage collection, while
    a live import runs.

    The writing thread lets go of the lock at every SQLite call and must take it back after;
    while the planner's thread runs Python (decoding or deciding a frame), the writer waits for
    the switch interval to pass, once per call, some of it holding the write lock. A collection
    of the cyclic garbage collector's oldest generation keeps the lock until it has walked every
    object alive, the planner's frames of records among them, however long the writer waits:
    the collector is off meanwhile. An import makes no reference cycles to speak of (records,
    rows and results are freed when the last reference goes), so nothing piles up. Both are the
    whole process's settings; they are put back as they were."""
    saved = sys.getswitchinterval()
    collecting = gc.isenabled()
    sys.setswitchinterval(min(saved, SWITCH_INTERVAL_SECONDS))
    gc.disable()
    try:
        yield
    finally:
        sys.setswitchinterval(saved)
        if collecting:
            gc.enable()
