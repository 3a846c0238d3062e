"""Restoring a bundle into a Kindling database: all of it, or nothing.

The manifest is read and validated before the database is touched. Then the members are
replayed in foreign-key order through the import primitives, one frame at a time, while the
reader checks each member's count and SHA-256 as it streams and, after the last one, that the
archive and the zstd stream end cleanly; `verify_import_integrity` then checks the database.
How the records reach the database depends on who else may be using it:

- A new database (`create_store`'s private file, `conn.private`): one write transaction, with
  the empty-database bulk load (`db.bulk`), the full-text index built meanwhile in a second
  process (`ops.restore_new`). Any failure rolls it back.
- A database that exists (Kindling may be writing to it): first `recover` any import that did
  not finish; then the records are decided outside the write lock and written in short
  journaled transactions (`db.live`), so that Kindling's writers never wait more than a
  fraction of a second. Any failure (damage found late, a conflict under `error`, a missing
  reference, a record the database rejects, an integrity problem, a full disk, an
  interruption) undoes what was written, from the journal (`db.journal`): the database is as it
  was, with whatever other writers committed meanwhile. A process killed mid-way leaves the
  journal; `recover` (which every writing command runs first) undoes it. Until then, readers
  see the part that was written.
- A dry run into a database that exists runs on a private copy of it (SQLite's backup, taken
  while others write), in one transaction that is rolled back; the database is never written.

An id that appears twice within one entity is refused, as verify refuses it (otherwise the
conflict strategy would silently pick one copy), without holding every id in memory: see
`ops.restore_new.RepeatedIds`. A database failure mid-way (disk full, a corrupt page, an I/O
error) is a StoreError naming the database.
"""

from __future__ import annotations

import bisect
import contextlib
import itertools
import sqlite3
from collections.abc import Callable, Iterator
from concurrent.futures import Future, ThreadPoolExecutor
from contextlib import contextmanager
from pathlib import Path
from typing import Literal

from kindling_bundle.db.conflicts import ImportEntityResult, check_strategy
from kindling_bundle.db.connection import (
    KindlingConnection,
    TransactionLost,
    describe_error,
    open_store,
)
from kindling_bundle.db.export import snapshot
from kindling_bundle.db.integrity import CheckedApart, check_apart, verify_import_integrity
from kindling_bundle.db.journal import Journal, recover
from kindling_bundle.db.live import Take, Writer, quick_handoffs
from kindling_bundle.db.pacing import Checkpointer, empty_log
from kindling_bundle.db.planner import Item, PlanAhead
from kindling_bundle.errors import (
    StoreError,
)
from kindling_bundle.format.manifest import Manifest, ProgressCallback
from kindling_bundle.format.reader import BundleSource
from kindling_bundle.io.read_options import ReadOptions
from kindling_bundle.ops.import_run import ImportReport, ImportRun
from kindling_bundle.ops.read import open_reader
from kindling_bundle.ops.restore_new import RepeatedIds as _RepeatedIds
from kindling_bundle.ops.restore_new import in_one_transaction, private_copy
from kindling_bundle.ops.restore_new import store_error as _store_error
from kindling_bundle.parallel import Workers, check_workers
from kindling_bundle.records import ENTITY_TYPES, ConflictStrategy

_LIVE_CACHE_KIB = 96 << 10
"""The importing connection's page cache (default 2 MiB). Another connection's commit (Kindling's,
between two steps) empties it, so what counts is one step's pages: the indexes it inserts into
at random (UUID ids: the primary keys, a capsule link's observation) are read again from the
file for every insert once they outgrow it."""


def import_bundle(
    conn: KindlingConnection,
    src: BundleSource,
    *,
    conflict: ConflictStrategy = "skip",
    dry_run: bool = False,
    progress: ProgressCallback | None = None,
    on_manifest: Callable[[Manifest], None] | None = None,
    name: str | None = None,
    options: ReadOptions | None = None,
    workers: Workers = "auto",
) -> ImportReport:
    """Import a bundle (a path or a readable binary stream, read once) into `conn`.

    `conflict` decides what happens to a record whose id is stored with other content: "skip"
    keeps the stored row, "overwrite" replaces it in place, "error" fails the import. Raises
    BundleError (damaged or not a bundle), RecordError (an invalid record), ImportConflictError
    (a conflict under "error"; MissingReferenceError, a subclass, for a record referencing one
    that is neither in the bundle nor in the database), IntegrityError (the database would fail
    its check: also a capsule linking an observation another connection deleted during the
    import) or StoreError (the database failed: locked, full, corrupt); in every case the
    database is left as it was (see the module docstring). `progress(records_done, bytes_done)`
    is called after each frame; `on_manifest(manifest)` once the manifest is valid, before any
    write. Messages name the bundle `name` when given (the file a temporary bundle was converted
    from). An encrypted bundle is opened with `options.identities`; should its stream fail to
    authenticate at the end, what was applied is undone. `options.signature` says whom to trust;
    a signature it refuses (a SignatureError) is refused before the database is touched.
    `workers`: whether a second process may index the observations for full-text search while
    they are loaded into an empty database (kindling_bundle.parallel.choose_workers); the
    database is the same either way. Into a database that exists, two settings of the whole
    process change while the import runs and are put back after: Python's switch interval and
    its cyclic garbage collector (`db.live.quick_handoffs`).
    """
    check_strategy(conflict)
    workers = check_workers(workers)
    with open_reader(src, options=options, name=name) as reader:
        manifest = reader.read_manifest()
        if on_manifest is not None:
            on_manifest(manifest)
        run = ImportRun(reader, manifest, conflict, dry_run, progress)
        if conn.private or not _file_of(conn):
            return in_one_transaction(conn, run, workers)
        if dry_run:
            with private_copy(conn) as copy:
                return in_one_transaction(copy, run, workers)
        with quick_handoffs():
            return _live(conn, run)


def _live(conn: KindlingConnection, run: ImportRun) -> ImportReport:
    """Import into a database in use, in short journaled transactions (module docstring).

    Three threads: this one writes; one reads the bundle and decides its records (`PlanAhead`,
    with a read-only connection of its own); one copies the write-ahead log into the database
    after each step (`Checkpointer`), having first checked that the database is not damaged."""
    path = _file_of(conn)
    timeout = conn.execute("PRAGMA busy_timeout").fetchone()[0]
    try:
        recover(conn)  # before anything is decided against what it would undo
    except (sqlite3.DatabaseError, TransactionLost) as exc:
        raise _store_error(conn, exc, "nothing written") from None
    with ThreadPoolExecutor(1, thread_name_prefix="kindling-check") as pool:
        damage = pool.submit(_damage, path, timeout)
        frames = run.reader.batches(run.progress)
        planner = PlanAhead(path, frames, run.conflict, run.redirect, busy_timeout_ms=timeout)
        try:
            items = planner.items()
            first = next(items)
            if first[0] == "failed":  # nothing to write before it
                _write(None, run, planner, iter([first]))
            problem = damage.result()
            if problem is not None:
                raise StoreError(f"{conn.path or path}: {problem}; nothing written")
        except BaseException:
            planner.close()
            raise
    with _live_settings(conn):
        try:
            journal = Journal.begin(conn, run.label)
        except BaseException as exc:
            planner.close()
            if isinstance(exc, sqlite3.DatabaseError | TransactionLost):
                raise _store_error(conn, exc, "nothing written") from None
            raise
        checkpointer = Checkpointer(path, timeout)
        writer = Writer(
            conn,
            run.conflict,
            journal,
            _taker(conn, run),
            checkpointer.after_step,
            planner.paused,
            checkpointer.restart,
        )
        try:
            try:
                report = _apply(conn, run, writer, planner, itertools.chain([first], items))
                journal.commit()
            finally:
                planner.close()
                writer.close()
                checkpointer.close()
        except BaseException as failure:
            _undo(conn, journal, failure)
            raise
    try:
        journal.end()
    except (sqlite3.DatabaseError, TransactionLost) as exc:
        raise _store_error(conn, exc, "imported, but its journal could not be removed") from None
    empty_log(conn)
    return report


def _apply(
    conn: KindlingConnection,
    run: ImportRun,
    writer: Writer,
    planner: PlanAhead,
    items: Iterator[Item],
) -> ImportReport:
    """Write the steps, then check the database (raising if it would fail its check).

    What the report checks of the observations (their full-text index) and of the capsules
    (their links' foreign keys and seq values) is final once their last step is written (later
    entities never write them): it is checked then, on a connection of its own, beside the steps
    that follow; the rest of the report after the last step."""
    path = _file_of(conn)
    timeout = conn.execute("PRAGMA busy_timeout").fetchone()[0]
    with ThreadPoolExecutor(1, thread_name_prefix="kindling-index") as pool:
        checks: list[Future[CheckedApart]] = []

        def written(entity: str) -> None:
            if entity in _APART:
                checks.append(
                    pool.submit(_check_apart, path, conn.path or path, timeout, _APART[entity])
                )

        _write(writer, run, planner, items, written)
        checked = [check.result() for check in checks]
    with snapshot(conn):  # one state, whatever others commit meanwhile
        integrity = verify_import_integrity(conn, quick_check=False, checked=checked)  # ran first
    return run.report(integrity)


_APART: dict[str, Literal["observations", "capsules"]] = {
    "observations": "observations",
    "capsules": "capsules",
}
"""The entities after whose last step `check_apart` runs."""


def _check_apart(
    path: str, label: str, busy_timeout_ms: int, part: Literal["observations", "capsules"]
) -> CheckedApart:
    """`check_apart`, in one read snapshot of a read-only connection of its own."""
    conn = open_store(path, readonly=True, busy_timeout_ms=busy_timeout_ms)
    conn.path = label
    try:
        with snapshot(conn):
            return check_apart(conn, part)
    finally:
        conn.close()


def _taker(conn: KindlingConnection, run: ImportRun) -> Take:
    """What the writer calls with each step's results, inside its transaction: count them, fail
    on an error, and find ids the bundle holds twice (the journal says which rows it inserted)."""
    inserted: dict[str, list[tuple[int, int]]] = {entity: [] for entity in ENTITY_TYPES}
    repeated = _RepeatedIds(conn, lambda entity, rowid: _within(inserted[entity], rowid))

    def take(results: list[ImportEntityResult], runs: list[tuple[str, int, int]]) -> None:
        for table, first, last in runs:
            if table in inserted:
                bisect.insort(inserted[table], (first, last))
        run.take(results)
        if results:
            repeated.check(results[0].entity, results)

    return take


@contextmanager
def _live_settings(conn: KindlingConnection) -> Iterator[None]:
    """The importing connection's settings while it writes in steps, restored afterwards.

    Statement journals in memory (each multi-row INSERT keeps one; in a file it would be
    created and deleted for every statement) unless the connection holds TEMP objects, which a
    change of `temp_store` deletes; a larger page cache; no auto-checkpoint (the Checkpointer's
    job)."""
    names = ["cache_size", "wal_autocheckpoint"]
    if not conn.execute("SELECT count(*) FROM temp.sqlite_master").fetchone()[0]:
        names.append("temp_store")
    saved = {name: conn.execute(f"PRAGMA {name}").fetchone()[0] for name in names}
    if "temp_store" in saved:
        conn.execute("PRAGMA temp_store = MEMORY")
    conn.execute(f"PRAGMA cache_size = -{_LIVE_CACHE_KIB}")
    conn.execute("PRAGMA wal_autocheckpoint = 0")
    try:
        yield
    finally:
        with contextlib.suppress(sqlite3.Error):
            for name, value in saved.items():
                conn.execute(f"PRAGMA {name} = {value}")


def _write(
    writer: Writer | None,
    run: ImportRun,
    planner: PlanAhead,
    items: Iterator[Item],
    written: Callable[[str], None] = lambda entity: None,
) -> None:
    """Write what the planner decided, in order; raise what it met, where it met it.
    `written(entity)` once the last of an entity's steps is committed."""
    for item in items:
        if item[0] == "failed":
            if item[1]:
                run.enter(item[1])
            if item[3]:  # deciding met it: name the member (reading names it already)
                with run.naming():
                    raise item[2]
            raise item[2]
        assert writer is not None
        with run.naming():
            if item[0] == "frame":
                run.enter(item[1])
                writer.add(item[2])
            elif item[0] == "entity done":
                writer.flush()  # before the next entity: what it references, pins' redirects
                written(item[1])
                planner.entity_done()
            else:
                writer.flush()


def _file_of(conn: KindlingConnection) -> str:
    """The database's file, for the import's other connections ("" for one in memory)."""
    return str(conn.execute("PRAGMA database_list").fetchone()[2] or "")


def _damage(path: str, busy_timeout_ms: int) -> str | None:
    """What is wrong with the database (the first problem `PRAGMA quick_check` finds), or None.
    Nothing is written into a damaged database: steps committed before the damage showed would
    be undone, but writing there at all may spread it. One pass over every page, on a
    connection of its own, while the import starts reading."""
    conn = sqlite3.connect(f"{Path(path).resolve().as_uri()}?mode=ro", uri=True)
    try:
        conn.execute(f"PRAGMA busy_timeout = {busy_timeout_ms}")
        (problem,) = conn.execute("PRAGMA quick_check(1)").fetchone()
    except sqlite3.DatabaseError as exc:
        return describe_error(exc)
    finally:
        conn.close()
    return None if problem == "ok" else f"database is corrupt ({problem})"


def _within(runs: list[tuple[int, int]], rowid: int) -> bool:
    at = bisect.bisect_right(runs, (rowid, float("inf")))
    return at > 0 and runs[at - 1][0] <= rowid <= runs[at - 1][1]


def _undo(conn: KindlingConnection, journal: Journal, failure: BaseException) -> None:
    """Undo a failed import; a database failure becomes a StoreError saying what is left."""
    try:
        if conn.in_transaction:
            conn.execute("ROLLBACK")
        with contextlib.suppress(sqlite3.DatabaseError):  # undoing needs room on a full disk:
            conn.execute("PRAGMA wal_checkpoint(PASSIVE)")  # let the write-ahead log start over
        journal.undo()
        journal.end()
    except (sqlite3.DatabaseError, TransactionLost, StoreError) as exc:
        detail = describe_error(exc) if isinstance(exc, sqlite3.DatabaseError) else str(exc)
        name = conn.path or "database"
        raise StoreError(
            f"{name}: import failed ({_cause(failure)}), and undoing it failed too ({detail}): "
            f"the database holds part of the import until `kindling-bundle recover --db "
            f"{name}` succeeds"
        ) from None
    if isinstance(failure, sqlite3.DatabaseError | TransactionLost):
        raise _store_error(conn, failure, "nothing written") from None


def _cause(failure: BaseException) -> str:
    if isinstance(failure, sqlite3.DatabaseError):
        return describe_error(failure)
    return str(failure) or type(failure).__name__
