"""Restoring a bundle into a Kindling database: all of it, or nothing.

The manifest is read and validated, and a signature checked (`format.signature`), before the
database is touched. Then one write transaction
(BEGIN IMMEDIATE) replays the members in foreign-key order through the import primitives
(`kindling_bundle.db.importer.import_batch`, one frame at a time), while the reader checks each
member's count and SHA-256 as it streams and, after the last one, that the archive and the zstd
stream end cleanly. `verify_import_integrity` then checks the database as it would be committed.
Any failure (damage found late, a conflict under `error`, a missing reference, a record the
database rejects, an integrity problem, an interruption) rolls the transaction back: the
database is exactly as it was. A dry run does everything, reports, and rolls back.

An id that appears twice within one entity is refused, as verify refuses it (otherwise the
conflict strategy would silently pick one copy), without holding every id in memory: see
`_RepeatedIds`. A database failure mid-way (disk full, a corrupt page, an I/O error) is a
StoreError naming the database; a process killed mid-way leaves an uncommitted transaction,
which SQLite discards when the database is next opened.
"""

from __future__ import annotations

import sqlite3
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass
from typing import Any, cast

import msgspec

from kindling_bundle.db.connection import (
    KindlingConnection,
    TransactionLost,
    describe_error,
    write_transaction,
)
from kindling_bundle.db.importer import (
    ImportEntityResult,
    bulk_load,
    check_strategy,
    first_dangling_reference,
    foreign_keys_checked_after,
    import_batch,
)
from kindling_bundle.db.integrity import IntegrityReport, verify_import_integrity
from kindling_bundle.errors import (
    ImportConflictError,
    IntegrityError,
    MissingReferenceError,
    RecordError,
    StoreError,
)
from kindling_bundle.format.manifest import ENTITY_MEMBERS, Manifest, ProgressCallback
from kindling_bundle.format.reader import BundleSource
from kindling_bundle.format.signature import signature_to_dict
from kindling_bundle.io.read_options import ReadOptions
from kindling_bundle.io.sshsig import Signer
from kindling_bundle.ops.read import open_reader
from kindling_bundle.records import ENTITY_TYPES, SINGULAR, ConflictStrategy, Pin, Record

_LISTED_PROBLEMS = 3


@dataclass
class EntityCounts:
    """What happened to one entity's records."""

    inserted: int = 0
    overwritten: int = 0
    skipped: int = 0
    unchanged: int = 0

    @property
    def total(self) -> int:
        return self.inserted + self.overwritten + self.skipped + self.unchanged


@dataclass
class ImportReport:
    """The outcome of an import (or, with `dry_run`, of what an import would do)."""

    source: str
    manifest: Manifest
    conflict: ConflictStrategy
    dry_run: bool
    counts: dict[str, EntityCounts]
    integrity: IntegrityReport
    signer: Signer | None = None
    """Who signed the bundle; None if it is unsigned."""

    def to_dict(self) -> dict[str, Any]:
        """A JSON-ready form, for the CLI's --json."""
        return {
            "source": self.source,
            "conflict": self.conflict,
            "dry_run": self.dry_run,
            "committed": not self.dry_run,
            "counts": {entity: asdict(counts) for entity, counts in self.counts.items()},
            "integrity": self.integrity.to_dict(),
            "manifest": self.manifest.to_dict(),
            "signature": signature_to_dict(self.signer),
        }


class _RollBack(Exception):
    """Raised at the end of a dry run so that write_transaction rolls everything back."""

    def __init__(self, report: ImportReport):
        super().__init__("dry run")
        self.report = report


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
) -> ImportReport:
    """Import a bundle (a path or a readable binary stream, read once) into `conn`.

    `conflict` decides what happens to a record whose id is stored with other content: "skip"
    keeps the stored row, "overwrite" replaces it in place, "error" fails the import. Raises
    BundleError (damaged or not a bundle), RecordError (an invalid record),
    ImportConflictError (a conflict under "error"; MissingReferenceError, a subclass, for a
    record referencing one that is neither in the bundle nor in the database), IntegrityError or
    StoreError (the database failed: locked, full, corrupt); in every case nothing was
    written. `progress(records_done, bytes_done)` is called after each frame;
    `on_manifest(manifest)` once the manifest is valid, before any write. Messages name the
    bundle `name` when given (the file a temporary bundle was converted from). An encrypted
    bundle is opened with `options.identities`; nothing is committed before its whole stream
    has authenticated (the reader reaches the source's end before the last batch is done).
    `options.signature` says whom to trust; a signature it refuses (a SignatureError) is
    refused before the database is touched.
    """
    check_strategy(conflict)
    with open_reader(src, options=options, name=name) as reader:
        label = reader.label
        manifest = reader.read_manifest()
        if on_manifest is not None:
            on_manifest(manifest)
        counts = {entity: EntityCounts() for entity in ENTITY_TYPES}
        redirects: dict[str, str] = {}
        try:
            with foreign_keys_checked_after(conn) as deferred, write_transaction(conn):
                repeated = _RepeatedIds(conn)
                with bulk_load(conn, references_checked_after=deferred) as insert_first:
                    for entity, records in reader.batches(progress):
                        where = f"{label}: {ENTITY_MEMBERS[entity]}"
                        results = _import_frame(
                            conn, records, conflict, counts, where, redirects, insert_first
                        )
                        repeated.check(entity, results, where)
                integrity = verify_import_integrity(conn)
                if deferred and not integrity.ok:
                    _refuse_dangling(conn, label)
                report = ImportReport(
                    label, manifest, conflict, dry_run, counts, integrity, reader.signer
                )
                if not integrity.ok:
                    message = _integrity_message(label, integrity)
                    raise IntegrityError(message, problems=integrity.problems)
                if dry_run:
                    raise _RollBack(report)
        except _RollBack as rollback:
            return rollback.report
        except (sqlite3.DatabaseError, TransactionLost) as exc:  # rolled back: nothing written
            # TransactionLost: SQLite rolled back by itself; the error that made it may be in
            # the context, unless the code that met it went on (and so met TransactionLost).
            cause = exc if isinstance(exc, sqlite3.DatabaseError) else exc.__context__
            name = getattr(conn, "path", "") or "database"
            detail = (
                describe_error(cause)
                if isinstance(cause, sqlite3.DatabaseError)
                else "SQLite rolled the transaction back after an error (a full disk, an I/O "
                "error or a corrupt database)"
            )
            raise StoreError(f"{name}: import failed, nothing written: {detail}") from None
    return report


def _import_frame(
    conn: KindlingConnection,
    records: list[Record],
    conflict: ConflictStrategy,
    counts: dict[str, EntityCounts],
    where: str,
    redirects: dict[str, str],
    insert_first: frozenset[type],
) -> list[ImportEntityResult]:
    """Import one frame; `redirects` maps summaries skipped in favour of their capsule's stored
    summary to that summary, so that the bundle's pins on them follow (and none dangles)."""
    if redirects and isinstance(records[0], Pin):
        pins = cast("list[Pin]", records)  # a frame holds records of one entity
        records = [_redirected(pin, redirects) for pin in pins]
    try:
        results = import_batch(conn, records, conflict, insert_first=insert_first)
    except RecordError as exc:
        _transaction_alive(conn)
        raise RecordError(f"{where}: {exc}", entity=exc.entity, record_id=exc.record_id) from None
    # A write error the importer met and went past (a full disk) may have made SQLite roll back
    # everything: the records that follow would then seem to miss what they reference.
    _transaction_alive(conn)
    for result in results:
        if result.missing:
            raise MissingReferenceError(
                f"{where}: {result.error}",
                entity=result.entity,
                record_id=result.id,
                missing=result.missing,
            )
        if result.error is not None:
            raise ImportConflictError(
                f"{where}: {result.error}", entity=result.entity, record_id=result.id
            )
        if result.kept_id is not None:
            redirects[result.id] = result.kept_id
        entity_counts = counts[result.entity]
        assert result.outcome is not None  # set whenever `error` is not
        setattr(entity_counts, result.outcome, getattr(entity_counts, result.outcome) + 1)
    return results


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
    if not conn.in_transaction:
        raise TransactionLost(f"{getattr(conn, 'path', '') or 'database'}: transaction lost")


class _RepeatedIds:
    """Finds an id that appears twice within one entity of the bundle.

    Holding every id would cost memory in proportion to the bundle. Instead: a record that meets
    no stored row is inserted, and a later copy of it meets the row it made, whose rowid is
    above the largest the table held when the import began (SQLite gives a new row the largest
    rowid plus one). So only the ids of records that met rows stored before the import (or no
    row: a summary skipped in favour of another) are remembered. An import into an empty
    database remembers none, and costs nothing while every record is inserted."""

    def __init__(self, conn: sqlite3.Connection):
        self._conn = conn
        self._before = {
            entity: conn.execute(f"SELECT coalesce(max(rowid), 0) FROM {entity}").fetchone()[0]
            for entity in ENTITY_TYPES
        }
        self._met: dict[str, set[str]] = {entity: set() for entity in ENTITY_TYPES}

    def check(self, entity: str, results: Sequence[ImportEntityResult], where: str) -> None:
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
            if (rowid is not None and rowid > self._before[entity]) or record_id in seen:
                raise RecordError(
                    f"{where}: {SINGULAR[entity]} {record_id} appears more than once",
                    entity=entity,
                    record_id=record_id,
                )
            seen.add(record_id)


def _redirected(pin: Pin, redirects: dict[str, str]) -> Pin:
    if pin.target_type == "summary" and pin.target_id in redirects:
        return msgspec.structs.replace(pin, target_id=redirects[pin.target_id])
    return pin


def _integrity_message(label: str, integrity: IntegrityReport) -> str:
    listed = "; ".join(
        f"{p.kind} {p.entity} {p.id}: {p.detail}" for p in integrity.problems[:_LISTED_PROBLEMS]
    )
    more = len(integrity.problems) - _LISTED_PROBLEMS
    suffix = f" (and {more} more)" if more > 0 else ""
    return (
        f"{label}: import rolled back, the database would fail its integrity check: "
        f"{listed}{suffix}"
    )
