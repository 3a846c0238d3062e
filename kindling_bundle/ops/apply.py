"""Applying increments onto a database that holds their base (spec section 16.5).

Every link is checked before anything is written (each bundle's SHA-256 against the next
increment's base, their order and their chain), and the database is checked to hold the first
increment's base (its record counts). Then, in one write transaction, each increment in order:
its tombstones deleted (pins, summaries, capsules, observations), its records written over the
stored ones in place (db.importer's overwrite, which keeps rowids and never fires ON DELETE
CASCADE). A record already stored exactly as the increment has it, a tombstone for a record that
is not stored, or record counts that differ from the increment's `state` mean the database did
not hold the base: the transaction is rolled back. The database's integrity report runs once,
after the last increment, before the commit.
"""

from __future__ import annotations

import sqlite3
from collections.abc import Sequence
from dataclasses import asdict, dataclass
from typing import Any

import msgspec

from kindling_bundle.db.connection import (
    KindlingConnection,
    TransactionLost,
    describe_error,
    write_transaction,
)
from kindling_bundle.db.importer import ensure_fts_entries, import_batch
from kindling_bundle.db.integrity import IntegrityReport, verify_import_integrity
from kindling_bundle.errors import (
    BundleError,
    ImportConflictError,
    IntegrityError,
    StoreError,
)
from kindling_bundle.format.increment import (
    IncrementManifest,
    IncrementRules,
    Link,
    check_applies_to,
)
from kindling_bundle.format.manifest import ENTITY_MEMBERS, ProgressCallback
from kindling_bundle.ops.import_run import ImportReport
from kindling_bundle.ops.links import BundleRef, prepare_chain
from kindling_bundle.records import ENTITY_TYPES, SINGULAR, TOMBSTONES, Record, Tombstone

# --- applying increments --------------------------------------------------------------------


@dataclass
class ChangeCounts:
    """What applying increments did to one entity."""

    inserted: int = 0
    overwritten: int = 0
    deleted: int = 0


@dataclass
class ChainReport:
    """The outcome of applying increments (after a full bundle, for a restore)."""

    database: str
    links: list[Link]
    counts: dict[str, ChangeCounts]
    integrity: IntegrityReport
    dry_run: bool = False
    full: ImportReport | None = None
    """The full bundle's import, when the chain started with one."""

    def to_dict(self) -> dict[str, Any]:
        return {
            "database": self.database,
            "dry_run": self.dry_run,
            "committed": not self.dry_run,
            "links": [_link_dict(link) for link in self.links],
            "counts": {entity: asdict(counts) for entity, counts in self.counts.items()},
            "full": self.full.to_dict() if self.full is not None else None,
            "integrity": self.integrity.to_dict(),
        }


def _link_dict(link: Link) -> dict[str, Any]:
    return {
        "bundle": link.label,
        "sha256": link.sha256,
        "increment": link.increment,
        "manifest": link.manifest.to_dict(),
    }


class _RollBack(Exception):
    def __init__(self, report: ChainReport):
        super().__init__("dry run")
        self.report = report


def _counts(conn: sqlite3.Connection) -> dict[str, int]:
    return {
        entity: conn.execute(f"SELECT count(*) FROM {entity}").fetchone()[0]
        for entity in ENTITY_TYPES
    }


def apply_increments(
    conn: KindlingConnection,
    refs: Sequence[BundleRef],
    *,
    dry_run: bool = False,
    prepared: list[Link] | None = None,
    progress: ProgressCallback | None = None,
) -> ChainReport:
    """Apply increments, in order, onto a database that holds the first one's base: all of them
    or nothing (one write transaction). Raises BundleError (a wrong link, damage, a database that
    does not hold the base), ImportConflictError, IntegrityError or StoreError; in every case
    nothing was written. `prepared`: the links `prepare_chain` returned for `refs`."""
    if prepared is None:
        refs, prepared = prepare_chain(refs, full=False)
    label = getattr(conn, "path", "") or "database"
    counts = {entity: ChangeCounts() for entity in ENTITY_TYPES}
    try:
        with write_transaction(conn):
            stored = _counts(conn)
            check_applies_to(prepared[0], stored, label)
            for ref, link in zip(refs, prepared, strict=True):
                _apply_one(conn, ref, link, stored, counts, progress)
            integrity = verify_import_integrity(conn)
            report = ChainReport(label, list(prepared), counts, integrity, dry_run)
            if not integrity.ok:
                listed = "; ".join(
                    f"{p.kind} {p.entity} {p.id}: {p.detail}" for p in integrity.problems[:3]
                )
                raise IntegrityError(
                    f"{prepared[-1].label}: applying rolled back, the database would fail its "
                    f"integrity check: {listed}"
                )
            if dry_run:
                raise _RollBack(report)
    except _RollBack as rollback:
        return rollback.report
    except (sqlite3.DatabaseError, TransactionLost) as exc:
        cause = exc if isinstance(exc, sqlite3.DatabaseError) else exc.__context__
        detail = (
            describe_error(cause)
            if isinstance(cause, sqlite3.DatabaseError)
            else "SQLite rolled the transaction back after an error"
        )
        raise StoreError(f"{label}: applying failed, nothing written: {detail}") from None
    return report


def _apply_one(
    conn: sqlite3.Connection,
    ref: BundleRef,
    link: Link,
    stored: dict[str, int],
    counts: dict[str, ChangeCounts],
    progress: ProgressCallback | None,
) -> None:
    """Apply one increment inside the caller's transaction, checking it as it streams."""
    manifest = link.manifest
    assert isinstance(manifest, IncrementManifest)
    with ref.reader() as (reader, stream):
        if reader.read_manifest() != manifest:
            raise BundleError(f"{ref.label}: changed while it was being read")
        expected = {entry.entity: entry.records for entry in manifest.entities}
        rules = IncrementRules("the increment", expected=expected)
        for entity, records in reader.batches(progress, increments=True):
            where = f"{ref.label}: {ENTITY_MEMBERS.get(entity, f'{entity}.msgpack')}"
            _check_rules(rules, records, where)
            if entity == TOMBSTONES:
                _delete(conn, records, where, stored, counts)  # type: ignore[arg-type]
            else:
                _write(conn, entity, records, where, stored, counts)
        digest = stream.hexdigest()
    ref.check_sha256(digest)  # unknown for a stream read once
    expected_state = manifest.state.as_dict()
    if stored != expected_state:
        raise BundleError(
            f"{link.describe()}: the database holds {stored} records after applying it, the "
            f"increment says {expected_state}: the database did not hold its base"
        )


def _check_rules(rules: IncrementRules, records: Sequence[Any], where: str) -> None:
    if rules.clear_run(records):
        rules.add_run(records)
        return
    for record in records:
        for breach in rules.check(record):
            if not breach.warning:
                raise BundleError(f"{where}: {breach.text}")
        rules.add(record)


def _delete(
    conn: sqlite3.Connection,
    tombstones: Sequence[Tombstone],
    where: str,
    stored: dict[str, int],
    counts: dict[str, ChangeCounts],
) -> None:
    """Delete the records of a frame of tombstones (they come in deletion order)."""
    start = 0
    while start < len(tombstones):
        entity = tombstones[start].entity
        end = start
        while end < len(tombstones) and tombstones[end].entity == entity:
            end += 1
        ids = [t.id for t in tombstones[start:end]]
        _delete_ids(conn, entity, ids, where)
        stored[entity] -= len(ids)
        counts[entity].deleted += len(ids)
        start = end


def _delete_ids(conn: sqlite3.Connection, entity: str, ids: list[str], where: str) -> None:
    wanted = msgspec.json.encode(ids).decode()
    present = {
        value
        for (value,) in conn.execute(
            f"SELECT j.value FROM json_each(?) AS j WHERE EXISTS "
            f"(SELECT 1 FROM {entity} AS t WHERE t.id = j.value)",
            (wanted,),
        )
    }
    for record_id in ids:
        if record_id not in present:
            raise ImportConflictError(
                f"{where}: tombstone for {SINGULAR[entity]} {record_id}: the database does not "
                "hold it, so it does not hold this increment's base",
                entity=entity,
                record_id=record_id,
            )
    # Kindling's delete trigger removes the row's index entry, which a redacted one lacks
    ensure_fts_entries(conn, entity, "t.id IN (SELECT value FROM json_each(?))", (wanted,))
    conn.execute(f"DELETE FROM {entity} WHERE id IN (SELECT value FROM json_each(?))", (wanted,))


def _write(
    conn: sqlite3.Connection,
    entity: str,
    records: list[Record],
    where: str,
    stored: dict[str, int],
    counts: dict[str, ChangeCounts],
) -> None:
    """Write an increment's records over the stored ones (in place), or insert them."""
    for result in import_batch(conn, records, "overwrite"):
        if result.error is not None:
            raise ImportConflictError(
                f"{where}: {result.error}", entity=result.entity, record_id=result.id
            )
        if result.outcome == "unchanged":
            raise ImportConflictError(
                f"{where}: {SINGULAR[entity]} {result.id} is stored exactly as this increment "
                "has it, so the database does not hold its base (was it applied already?)",
                entity=entity,
                record_id=result.id,
            )
        if result.outcome == "inserted":
            stored[entity] += 1
            counts[entity].inserted += 1
        else:
            counts[entity].overwritten += 1
