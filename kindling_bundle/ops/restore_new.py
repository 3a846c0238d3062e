"""Importing in one write transaction: into a database nobody else can reach.

That is a new database (`create_store`'s private file, `conn.private`), one in memory, or the
private copy a dry run works on. Any failure rolls everything back. Into an empty database the
load is `db.bulk`'s (indexes, full-text indexes and foreign-key checks once at the end), and
with a second CPU the observations' full-text index is built meanwhile in a forked child
(`parallel.fts`) and copied in at the end; without one, or should the child fail, it is built
here. Either way the database is the same.

An id that appears twice within one entity is refused, as verify refuses it (otherwise the
conflict strategy would silently pick one copy), without holding every id in memory: see
`RepeatedIds`, which the import into a database in use shares.
"""

from __future__ import annotations

import contextlib
import sqlite3
import tempfile
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path
from typing import cast

import msgspec

from kindling_bundle.db.bulk import (
    bulk_load,
    first_dangling_reference,
    foreign_keys_checked_after,
    takes_prebuilt,
)
from kindling_bundle.db.conflicts import ImportEntityResult
from kindling_bundle.db.connection import (
    KindlingConnection,
    TransactionLost,
    describe_error,
    open_store,
    write_transaction,
)
from kindling_bundle.db.fts_build import detach_prebuilt
from kindling_bundle.db.importer import import_batch
from kindling_bundle.db.integrity import verify_import_integrity
from kindling_bundle.db.journal import recover
from kindling_bundle.errors import MissingReferenceError, RecordError, StoreError
from kindling_bundle.format.manifest import ENTITY_MEMBERS
from kindling_bundle.ops.import_run import ImportReport, ImportRun
from kindling_bundle.parallel import Workers, choose_workers
from kindling_bundle.parallel.fts import IndexerChild
from kindling_bundle.records import ENTITY_TYPES, SINGULAR, Observation, Record


class RollBack(Exception):
    """Raised at the end of a dry run so that write_transaction rolls everything back."""

    def __init__(self, report: ImportReport):
        super().__init__("dry run")
        self.report = report


def in_one_transaction(conn: KindlingConnection, run: ImportRun, workers: Workers) -> ImportReport:
    """Import in one write transaction: for a database nobody else can reach."""
    with _indexer(conn, run, workers) as indexer:
        try:
            with foreign_keys_checked_after(conn) as deferred, write_transaction(conn):
                before = {
                    entity: conn.execute(
                        f"SELECT coalesce(max(rowid), 0) FROM {entity}"
                    ).fetchone()[0]
                    for entity in ENTITY_TYPES
                }
                repeated = RepeatedIds(conn, lambda entity, rowid: rowid > before[entity])
                prebuilt = indexer.finish if indexer is not None else None
                with bulk_load(
                    conn, references_checked_after=deferred, prebuilt=prebuilt
                ) as insert_first:
                    for entity, records in run.reader.batches(run.progress):
                        run.enter(entity)
                        if indexer is not None and entity == "observations":
                            indexer.add(cast(list[Observation], records))
                        with run.naming():
                            results = _batch(conn, run.redirect(records), run, insert_first)
                            run.take(results)
                            repeated.check(entity, results)
                integrity = verify_import_integrity(conn)
                if deferred and not integrity.ok:
                    _refuse_dangling(conn, run.label)
                report = run.report(integrity)
                if run.dry_run:
                    raise RollBack(report)
        except RollBack as rollback:
            return rollback.report
        except (sqlite3.DatabaseError, TransactionLost) as exc:  # rolled back: nothing written
            raise store_error(conn, exc, "nothing written") from None
    return report


@contextmanager
def _indexer(
    conn: KindlingConnection, run: ImportRun, workers: Workers
) -> Iterator[IndexerChild | None]:
    """A child indexing the observations beside the load, if it pays and is safe now (forked
    before the reader starts its threads); its file is detached and removed afterwards."""
    folder = _folder_of(conn)
    observations = sum(e.records for e in run.manifest.entities if e.entity == "observations")
    if folder is None or not takes_prebuilt(conn) or choose_workers(workers, observations) < 2:
        yield None
        return
    (create_sql,) = conn.execute(
        "SELECT sql FROM sqlite_master WHERE type = 'table' AND name = 'observations_fts'"
    ).fetchone()
    try:
        child: IndexerChild | None = IndexerChild(folder, "observations_fts", create_sql)
    except OSError:  # no room beside the database, no process to spare: index in place
        child = None
    if child is None:
        yield None
        return
    try:
        yield child
    finally:
        with contextlib.suppress(sqlite3.Error):
            detach_prebuilt(conn)
        child.close()


def _folder_of(conn: KindlingConnection) -> Path | None:
    """The folder of the database's file (None for a database in memory)."""
    name = conn.execute("PRAGMA database_list").fetchone()[2]
    return Path(name).parent if name else None


def _batch(
    conn: KindlingConnection, records: list[Record], run: ImportRun, insert_first: frozenset[type]
) -> list[ImportEntityResult]:
    try:
        return import_batch(conn, records, run.conflict, insert_first=insert_first)
    finally:
        _transaction_alive(conn)


def store_error(conn: KindlingConnection, exc: BaseException, outcome: str) -> StoreError:
    """A database failure as one StoreError naming the database and what is left of it."""
    # TransactionLost: SQLite rolled back by itself; the error that made it may be in the
    # context, unless the code that met it went on (and so met TransactionLost).
    cause = exc if isinstance(exc, sqlite3.DatabaseError) else exc.__context__
    detail = (
        describe_error(cause)
        if isinstance(cause, sqlite3.DatabaseError)
        else "SQLite rolled the transaction back after an error (a full disk, an I/O "
        "error or a corrupt database)"
    )
    return StoreError(f"{conn.path or 'database'}: import failed, {outcome}: {detail}")


@contextmanager
def private_copy(conn: KindlingConnection) -> Iterator[KindlingConnection]:
    """A copy of the database (as of one moment, taken while others write) that nobody else
    can reach, beside it (where there is room for it), removed afterwards. An import that did
    not finish is undone in the copy."""
    folder = Path(conn.path).parent if conn.path else None
    with tempfile.TemporaryDirectory(prefix=".kindling-dry-run-", dir=folder) as temporary:
        path = Path(temporary) / "copy.db"
        target = sqlite3.connect(path)
        try:
            conn.backup(target)
        finally:
            target.close()
        copy = open_store(path)
        try:
            copy.path = conn.path
            recover(copy)
            copy.private = True
            yield copy
        finally:
            copy.close()


def _refuse_dangling(conn: KindlingConnection, label: str) -> None:
    """Fail as the record-by-record path would have, had a reference checked after the load
    been missing."""
    failure = first_dangling_reference(conn)
    if failure is not None:
        raise MissingReferenceError(
            f"{label}: {ENTITY_MEMBERS[failure.entity]}: {failure.error}",
            entity=failure.entity,
            record_id=failure.id,
            missing=failure.missing,
        )


def _transaction_alive(conn: KindlingConnection) -> None:
    # A write error the importer met and went past (a full disk) may have made SQLite roll back
    # everything: the records that follow would then seem to miss what they reference.
    if not conn.in_transaction:
        raise TransactionLost(f"{conn.path or 'database'}: transaction lost")


class RepeatedIds:
    """Finds an id that appears twice within one entity of the bundle.

    Holding every id would cost memory in proportion to the bundle. Instead: a record that meets
    no stored row is inserted, and a later copy of it meets the row it made, which this import
    inserted (`inserted(entity, rowid)`: from the undo journal, or in one transaction, a rowid
    above the largest the table held when it began). So only the ids of records that met rows
    stored before the import (or no row: a summary skipped in favour of another) are
    remembered. An import into an empty database remembers none."""

    def __init__(self, conn: sqlite3.Connection, inserted: Callable[[str, int], bool]):
        self._conn = conn
        self._inserted = inserted
        self._met: dict[str, set[str]] = {entity: set() for entity in ENTITY_TYPES}

    def check(self, entity: str, results: Sequence[ImportEntityResult]) -> None:
        met = [result.id for result in results if result.outcome != "inserted"]
        if not met:
            return
        rowids = dict(
            self._conn.execute(
                f"SELECT j.value, t.rowid FROM json_each(?) AS j JOIN {entity} AS t "
                "ON t.id = j.value",
                (msgspec.json.encode(met).decode(),),
            ).fetchall()
        )
        seen = self._met[entity]
        for record_id in met:
            rowid = rowids.get(record_id)
            if (rowid is not None and self._inserted(entity, rowid)) or record_id in seen:
                raise RecordError(
                    f"{SINGULAR[entity]} {record_id} appears more than once",
                    entity=entity,
                    record_id=record_id,
                )
            seen.add(record_id)
