"""Importing into a database in use: decided outside the write lock, written in short steps.

Kindling's writers wait at most 5 s for SQLite's write lock. So an import into a database that
exists never holds it for long: records are looked up and decided by the conflict rules in a
read transaction (which never blocks a writer), then written in write transactions that each
hold the lock about `pacing.TARGET_SECONDS`, sized by the time the last ones took. Every change
is journaled (`db.journal`) in the same transaction, so the whole import can be undone.

A decision taken outside the lock can be stale by the time it is written: another writer, or an
earlier record of the same import still waiting to be written, may have changed what the record
meets. So only two kinds of decision are written as taken: "nothing to write" (unchanged,
skipped: true at the moment it was read, which is a moment during the import), and "insert",
which the database's own constraints check again (a stored id, a missing observation or
capsule, a capsule's second summary), and a pin's target, looked up again in the transaction.
Whatever the database refuses, every overwrite, and every record that might depend on another
of its run, is imported inside the transaction by `import_record`: looked up, decided and
written at once. The results are therefore those of importing the records one by one in order.
"""

from __future__ import annotations

import sqlite3
from collections.abc import Callable, Sequence
from contextlib import AbstractContextManager, nullcontext
from dataclasses import dataclass
from typing import Any, Literal

from kindling_bundle.db.conflicts import ImportEntityResult, decide
from kindling_bundle.db.connection import savepoint
from kindling_bundle.db.importer import import_record, insert_held
from kindling_bundle.db.journal import Journal
from kindling_bundle.db.lookup import independent_prefix, look_up, present_targets
from kindling_bundle.db.pacing import Pace
from kindling_bundle.records import Capsule, ConflictStrategy, Pin, Record, entity_of

ROWS_PER_STATEMENT = 256
"""Rows per INSERT statement: Kindling's FTS insert trigger fills one pending index for the
whole statement instead of writing a tiny segment after each row's statement."""

Take = Callable[[list[ImportEntityResult], list[tuple[str, int, int]]], None]
"""Called inside each write transaction with its records' results, in order, and the runs of
rowids it inserted; raising rolls the transaction back."""


@dataclass
class _Planned:
    record: Record
    write: Literal["insert", "exact", "none"]
    result: ImportEntityResult | None = None
    values: tuple[Any, ...] = ()


class LiveImport:
    """Imports runs of records, in foreign-key order, into a database others may be writing."""

    def __init__(
        self, conn: sqlite3.Connection, conflict: ConflictStrategy, journal: Journal, take: Take
    ):
        self.conn = conn
        self.conflict = conflict
        self.journal = journal
        self.take = take
        self.pace = Pace()
        self._pending: list[_Planned] = []

    def add(self, records: Sequence[Record]) -> None:
        """Decide a run of records of one type, and write what is due."""
        if not records:
            return
        if self._pending and type(self._pending[0].record) is not type(records[0]):
            self.flush()  # what the next entity references must be written first
        planned = self._plan(records)
        self._pending.extend(planned)
        if any(p.result is not None and p.result.error is not None for p in planned):
            self.flush()  # fails at the first error, after what comes before it
        while len(self._pending) >= self.pace.size:
            self._write_step()

    def flush(self) -> None:
        """Write everything decided so far."""
        while self._pending:
            self._write_step()

    def _plan(self, records: Sequence[Record]) -> list[_Planned]:
        independent = independent_prefix(records)
        self.conn.execute("BEGIN")  # one snapshot for every look-up; never blocks a writer
        try:
            held = look_up(self.conn, records[:independent])
        finally:
            self.conn.execute("COMMIT")
        planned: list[_Planned] = []
        for record, found in zip(records, held, strict=False):
            result, write = decide(entity_of(record), record.id, found.found, self.conflict)
            if write == "none":
                planned.append(_Planned(record, "none", result))
            elif write == "insert":
                planned.append(_Planned(record, "insert", values=found.values))
            else:
                planned.append(_Planned(record, "exact"))
            if found.holder is not None:  # replacing it changes what later summaries meet
                break
        planned.extend(_Planned(record, "exact") for record in records[len(planned) :])
        return planned

    def _write_step(self) -> None:
        with self.pace.transaction(self.conn) as step:
            chunk = self._pending[: step.size]
            seq = self.journal.last_seq()
            results = self._write(chunk)
            self.take(results, self.journal.inserted_since(seq))
            step.count = len(chunk)
        del self._pending[: len(chunk)]

    def _write(self, chunk: list[_Planned]) -> list[ImportEntityResult]:
        results: list[ImportEntityResult] = []
        start = 0
        while start < len(chunk):
            item = chunk[start]
            if item.write == "insert":
                end = start + 1
                while end < len(chunk) and chunk[end].write == "insert":
                    end += 1
                for first in range(start, end, ROWS_PER_STATEMENT):
                    last = min(end, first + ROWS_PER_STATEMENT)
                    results.extend(self._insert(chunk[first:last]))
                start = end
                continue
            if item.write == "exact":
                results.append(import_record(self.conn, item.record, self.conflict))
            else:
                assert item.result is not None
                results.append(item.result)
            start += 1
        return results

    def _insert(self, group: list[_Planned]) -> list[ImportEntityResult]:
        """Insert records decided new, in one statement; if the database refuses them (or a pin's
        target is gone), import them one by one instead."""
        records = [item.record for item in group]
        pins = [record for record in records if isinstance(record, Pin)]
        if pins:  # no constraint checks a pin's target: look again
            there = present_targets(self.conn, pins)
            if any((p.target_type, p.target_id) not in there for p in pins):
                return [import_record(self.conn, record, self.conflict) for record in records]
        atomic: AbstractContextManager[None] = nullcontext()
        if isinstance(records[0], Capsule):
            atomic = savepoint(self.conn, "kindling_live")
        try:
            with atomic:  # a capsule is two statements: its row, then its links
                insert_held(
                    self.conn, records, [item.values for item in group], per_statement=len(group)
                )
        except sqlite3.IntegrityError:
            return [import_record(self.conn, record, self.conflict) for record in records]
        entity = entity_of(records[0])
        return [ImportEntityResult(entity, record.id, "inserted") for record in records]
