"""Incremental bundles: computing one from a database, applying one (or a chain) to a database,
and verifying a chain (spec section 16).

Computing (`write_increment`): the base's snapshot as hashes (ops.state: from the local cache,
else read from its chain), one pass over the database comparing every row's content hash
(db.changes.scan), then the changed rows read again in export order and written, with a tombstone
for each record of the base that is gone, through the bundle writer. Memory: 16 bytes a record of
the base, one flag a record, the rowids that changed.

Applying (`apply_increments`, `restore_chain`): every link is checked before anything is written
(each file's SHA-256 against the next increment's base, their order and their chain), and the
database is checked to hold the first increment's base (its record counts). Then, in one write
transaction, each increment in order: its tombstones deleted (pins, summaries, capsules,
observations), its records written over the stored ones in place (db.importer's overwrite, which
keeps rowids and never fires ON DELETE CASCADE). A record already stored exactly as the increment
has it, a tombstone for a record that is not stored, or record counts that differ from the
increment's `state` mean the database did not hold the base: the transaction is rolled back. The
database's integrity report runs once, after the last increment, before the commit.
"""

from __future__ import annotations

import contextlib
import functools
import io
import sqlite3
import tempfile
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, BinaryIO

import msgspec
import numpy as np

from kindling_bundle.db.bulk import DATA_TABLES
from kindling_bundle.db.changes import (
    Collected,
    EntityChanges,
    EntityState,
    changed_records,
    collect,
    scan,
)
from kindling_bundle.db.connection import (
    KindlingConnection,
    TransactionLost,
    describe_error,
    write_transaction,
)
from kindling_bundle.db.export import snapshot
from kindling_bundle.db.importer import import_batch
from kindling_bundle.db.integrity import IntegrityReport, verify_import_integrity
from kindling_bundle.errors import (
    BundleError,
    ImportConflictError,
    IntegrityError,
    KindlingBundleError,
    SignatureError,
    StoreError,
)
from kindling_bundle.format.increment import (
    DELETION_ORDER,
    INCREMENT_MEMBERS,
    BaseInfo,
    HashingReader,
    IncrementHeader,
    IncrementManifest,
    IncrementRules,
    Link,
    StateCounts,
    check_applies_to,
    check_chain,
    check_link,
    file_sha256,
    state_of,
)
from kindling_bundle.format.manifest import ENTITY_MEMBERS, Manifest, ProgressCallback
from kindling_bundle.format.reader import BundleReader
from kindling_bundle.format.verify_report import VerifyProblem, VerifyReport
from kindling_bundle.io.read_options import ReadOptions
from kindling_bundle.io.storage import STDIO, is_url, open_source
from kindling_bundle.ops.read import read_manifest
from kindling_bundle.ops.restore import ImportReport, import_bundle
from kindling_bundle.ops.state import (
    BundleRef,
    PendingCache,
    SnapshotState,
    find_names,
    load_cached,
    read_chain,
    start_reading,
)
from kindling_bundle.ops.verify import verify_bundle
from kindling_bundle.ops.write import BundleDestination, BundleOptions, write_bundle
from kindling_bundle.ops.write import write_bundle_from_records as _write_records
from kindling_bundle.records import ENTITY_TYPES, SINGULAR, TOMBSTONES, Record, Tombstone

# --- naming the bundles of a chain ----------------------------------------------------------


def bundle_ref(
    target: str,
    storage_options: Mapping[str, Any] | None = None,
    *,
    sha256: str | None = None,
) -> BundleRef:
    """A bundle of a chain given as a path or URL (standard input cannot be one: a chain's
    bundles may be read twice)."""
    if target == STDIO:
        raise BundleError("a bundle of a chain, or a base, cannot come from standard input")
    opener = functools.partial(open_source, target, storage_options=storage_options)
    return BundleRef(target, opener, sha256)


def hashed(ref: BundleRef) -> BundleRef:
    """The ref with its SHA-256, read now if it was not known (a local file is hashed where it
    lies; a URL is read through once), so that a wrong link is refused before anything is
    written."""
    if ref.sha256 is not None:
        return ref
    if not is_url(ref.label):
        try:
            return BundleRef(ref.label, ref.open, file_sha256(ref.label))
        except OSError as exc:
            raise BundleError(f"{ref.label}: cannot open: {exc.strerror}") from None
    with ref.open() as stream:
        hashing = HashingReader(stream)
        while hashing.read(1 << 20):
            pass
    return BundleRef(ref.label, ref.open, hashing.hexdigest())


def read_links(refs: Sequence[BundleRef]) -> list[Link]:
    """Each ref's manifest (only the first member is read), with its known SHA-256."""
    links = []
    for position, ref in enumerate(refs, 1):
        try:
            with ref.open() as stream:
                links.append(Link(ref.label, ref.sha256 or "", read_manifest(stream)))
        except BundleError as exc:
            raise BundleError(f"link {position}, {exc}") from None
    return links


# --- computing an increment -----------------------------------------------------------------


def _cached_state(base: Sequence[BundleRef]) -> SnapshotState | None:
    """The base's snapshot from the cache, when its last bundle's SHA-256 is known and cached."""
    if base and base[-1].sha256 is not None:
        return load_cached(base[-1].sha256)
    return None


def write_increment(
    conn: KindlingConnection,
    dest: BundleDestination,
    base: Sequence[BundleRef],
    opts: BundleOptions | None = None,
    *,
    progress: ProgressCallback | None = None,
    cache: PendingCache | None = None,
) -> IncrementManifest:
    """Write an increment of the database `conn` on `base` to `dest` (a path or a writable
    stream): the records new or changed since the base's snapshot and a tombstone for each of
    its records that is gone, all read from one snapshot of the database.

    `base` is the chain of the base (its full bundle, then its increments in order; where the
    cache holds the last one's hashes, only that one is needed). Without the cache, the chain is
    read in a second process while this one reads the database, where the platform allows.
    `cache`: where to keep this snapshot's hashes (`PendingCache.keep` once the bundle is
    published, under its SHA-256). Returns the manifest."""
    opts = opts or BundleOptions()
    if opts.filter.filtered:
        raise ValueError("an increment covers the whole database: it cannot be filtered")
    state = _cached_state(base)
    reading = start_reading(base) if state is None else None
    try:
        if state is None and reading is None:
            state = read_chain(base)
        with snapshot(conn):
            if state is not None:
                changes = _scan_all(conn, state.entities, cache)
            else:
                assert reading is not None
                collected = _collect_all(conn, cache)
                state = reading.result()
                changes = {
                    entity: found.compare(state.entities[entity])
                    for entity, found in collected.items()
                }
                del collected
            names = _deleted_names(changes, state, base)
            manifest = _write_increment(conn, dest, state, changes, names, opts, progress)
    finally:
        if reading is not None:
            reading.close()
    return manifest


def _write_increment(
    conn: KindlingConnection,
    dest: BundleDestination,
    state: SnapshotState,
    changes: Mapping[str, EntityChanges],
    names: Mapping[str, list[str]],
    opts: BundleOptions,
    progress: ProgressCallback | None,
) -> IncrementManifest:
    header = IncrementHeader(
        BaseInfo(
            sha256=state.link.sha256,
            created_at=state.link.created_at,
            full_sha256=state.full_sha256,
            depth=state.depth + 1,
            records=StateCounts.of(state.counts()),
        ),
        {entity: change.count for entity, change in changes.items()},
    )
    streams: dict[str, Iterator[Record] | list[Tombstone]] = {TOMBSTONES: _tombstones(names)}
    for entity, change in changes.items():
        streams[entity] = changed_records(conn, entity, change.changed)
    manifest = _write_records(
        dest,
        streams,  # type: ignore[arg-type]
        opts,
        source_generation=getattr(conn, "generation", None),
        progress=progress,
        increment=header,
    )
    assert isinstance(manifest, IncrementManifest)
    return manifest


def write_full(
    conn: KindlingConnection,
    dest: BundleDestination,
    opts: BundleOptions | None = None,
    *,
    progress: ProgressCallback | None = None,
    cache: PendingCache | None = None,
) -> Manifest:
    """`write_bundle` of the whole database, keeping the hashes of the same snapshot in `cache`
    (so that the next increment reads no bundle)."""
    opts = opts or BundleOptions()
    if opts.filter.filtered:
        raise ValueError("a chain's full bundle covers the whole database: it cannot be filtered")
    with snapshot(conn):
        if cache is not None:
            _scan_all(conn, dict.fromkeys(ENTITY_TYPES), cache)
        return write_bundle(conn, dest, opts, progress=progress)


def _scan_all(
    conn: KindlingConnection, base: Mapping[str, EntityState | None], cache: PendingCache | None
) -> dict[str, EntityChanges]:
    changes = {}
    for entity in ENTITY_TYPES:
        if cache is None:
            changes[entity] = scan(conn, entity, base[entity])
            continue
        at = cache.names.tell()
        change = scan(conn, entity, base[entity], names=cache.names, names_at=at)
        assert change.state is not None
        cache.add(entity, change.state)
        change.state = None  # on disk now: not held while the bundle is written
        changes[entity] = change
    return changes


def _collect_all(conn: KindlingConnection, cache: PendingCache | None) -> dict[str, Collected]:
    """Every entity's rows as hashes, to compare once the base's snapshot arrives; the cache
    gets this snapshot's hashes as each entity is read (and the ids' places are let go)."""
    collected = {}
    for entity in ENTITY_TYPES:
        if cache is None:
            collected[entity] = collect(conn, entity)
            continue
        found = collect(conn, entity, names=cache.names, names_at=cache.names.tell())
        cache.add(entity, found.state)
        found.state.starts = found.state.lengths = None
        found.named = False
        collected[entity] = found
    return collected


def _deleted_names(
    changes: Mapping[str, EntityChanges], state: SnapshotState, base: Sequence[BundleRef]
) -> dict[str, list[str]]:
    """The ids of the base's records that are gone: from the cache, else from the chain."""
    names: dict[str, list[str]] = {}
    wanted = {}
    for entity, change in changes.items():
        if not len(change.deleted):
            continue
        entity_state = state.entities[entity]
        if entity_state.starts is not None:
            at = np.searchsorted(entity_state.ids, change.deleted)
            names[entity] = [entity_state.name(int(i)) or "" for i in at]
        else:
            wanted[entity] = change.deleted
    if wanted:
        names.update(find_names(base, wanted))
    return names


def _tombstones(names: Mapping[str, list[str]]) -> list[Tombstone]:
    """Tombstones in their member's order: by entity (DELETION_ORDER), then by id's bytes."""
    tombstones: list[Tombstone] = []
    for entity in DELETION_ORDER:
        ordered = sorted(names.get(entity, ()), key=lambda i: i.encode("utf-8", "surrogatepass"))
        tombstones.extend(Tombstone(entity=entity, id=i) for i in ordered)  # type: ignore[arg-type]
    return tombstones


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


def prepare_chain(refs: Sequence[BundleRef], *, full: bool) -> tuple[list[BundleRef], list[Link]]:
    """Hash every bundle and read every manifest, then check the links: a chain that starts with
    a full bundle (`full`), or increments each on the one before. Nothing has been written
    when this refuses a link (the BundleError names it)."""
    refs = [hashed(ref) for ref in refs]
    links = read_links(refs)
    if full:
        check_chain(links)
        return refs, links
    for position, link in enumerate(links, 1):
        if not link.increment:
            raise BundleError(
                f"link {position}, {link.describe()}: is a full bundle; to restore a chain, "
                "give its full bundle first and import it into an empty database"
            )
        if position > 1:
            check_link(links[position - 2], link, position, _full_of(links[0]))
    return refs, links


def _full_of(link: Link) -> Link:
    """A stand-in for the full bundle of `link`'s chain (only its SHA-256 is compared)."""
    manifest = link.manifest
    assert isinstance(manifest, IncrementManifest)
    return Link("its full bundle", manifest.base.full_sha256, manifest)


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
    with ref.open() as raw:
        stream = HashingReader(raw)
        with BundleReader(stream, name=ref.label) as reader:  # type: ignore[arg-type]
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
    if link.sha256 and digest != link.sha256:  # unknown for a stream read once
        raise BundleError(
            f"{ref.label}: its SHA-256 is now {digest}, not {link.sha256} as when its links "
            "were checked (the file changed)"
        )
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


_FTS = {"observations": "observations_fts", "summaries": "summaries_fts"}


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
    fts = _FTS.get(entity)
    if fts is not None:
        # Kindling's delete trigger removes the row's index entry; a row without one (a
        # redacted observation) gets it first: deleting an absent entry corrupts FTS5.
        conn.execute(
            f"INSERT INTO {fts}(rowid, content) SELECT t.rowid, t.content FROM {entity} AS t "
            f"WHERE t.id IN (SELECT value FROM json_each(?)) AND NOT EXISTS "
            f"(SELECT 1 FROM {fts}_docsize AS d WHERE d.id = t.rowid)",
            (wanted,),
        )
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


def restore_chain(
    conn: KindlingConnection,
    refs: Sequence[BundleRef],
    *,
    dry_run: bool = False,
    prepared: list[Link] | None = None,
    progress: ProgressCallback | None = None,
    on_manifest: Callable[[Manifest], None] | None = None,
) -> ChainReport:
    """Restore the snapshot of a chain (a full bundle, then its increments in order) into an
    empty database, all or nothing (one import). Every link is checked before anything is
    written. `prepared`: the links `prepare_chain(refs, full=True)` returned for `refs`.

    The chain is first merged into one full bundle of the snapshot, in a temporary file: each
    record as the last link that wrote it has it, none that a later link deleted. That bundle is
    then imported as any other (import_bundle, in one transaction, its integrity checked), so a
    restore costs an import of the final state plus reading the chain once more; applying each
    increment in turn would instead index every intermediate version."""
    if prepared is None:
        refs, prepared = prepare_chain(refs, full=True)
    links = prepared
    label = getattr(conn, "path", "") or "database"
    filled = [table for table in DATA_TABLES if conn.execute(f"SELECT 1 FROM {table}").fetchone()]
    if filled:
        raise StoreError(
            f"{label}: restoring a chain needs an empty database; this one holds "
            f"{', '.join(filled)}"
        )
    if len(refs) == 1:
        full = _import_full(conn, refs[0], links[0], dry_run, progress, on_manifest)
        counts = {entity: ChangeCounts(inserted=c.inserted) for entity, c in full.counts.items()}
        return ChainReport(label, links, counts, full.integrity, dry_run, full)
    with tempfile.TemporaryDirectory(prefix="kindling-chain-") as folder:
        merged, counts = _merge_chain(refs, links, Path(folder))
        full = import_bundle(
            conn,
            merged,
            conflict="error",
            dry_run=dry_run,
            progress=progress,
            on_manifest=on_manifest,
            name=refs[-1].label,
        )
    for entity, imported in full.counts.items():
        counts[entity].inserted = imported.inserted
    return ChainReport(label, links, counts, full.integrity, dry_run, full)


class _Member:
    """A bundle read member by member, in order (several are read side by side)."""

    def __init__(self, reader: BundleReader):
        self._batches = reader.batches(increments=True)
        self._ahead: tuple[str, list[Any]] | None = None

    def records(self, entity: str) -> Iterator[list[Any]]:
        """The batches of `entity`'s member; members before it are skipped."""
        order = list(INCREMENT_MEMBERS)
        while True:
            if self._ahead is None:
                self._ahead = next(self._batches, None)
                if self._ahead is None:
                    return
            name, records = self._ahead
            if order.index(name) > order.index(entity):
                return  # the next member's: kept for its turn
            self._ahead = None
            if name == entity:
                yield records

    def finish(self) -> None:
        """Read to the end (the reader checks the last member, the archive's end, the hash)."""
        if self._ahead is None:
            for _ in self._batches:
                pass


def _merge_chain(
    refs: Sequence[BundleRef], links: Sequence[Link], folder: Path
) -> tuple[Path, dict[str, ChangeCounts]]:
    """Write the chain's snapshot into `folder` as one full bundle (records of later links win,
    deleted records are left out); every link is read completely and its SHA-256 checked. The
    increments (small) are copied into `folder` first, hash-checked, and read from there: a
    bucket is read once, and what is merged is what was checked. Returns the bundle, and what
    was left out per entity: earlier versions of records written again (`overwritten`), and
    records whose last word is a tombstone (`deleted`)."""
    copies = [
        _local_copy(refs[position], links[position], folder, position + 1)
        for position in range(1, len(refs))
    ]
    last, deleted = _last_writes(copies)
    counts = {entity: ChangeCounts() for entity in ENTITY_TYPES}
    order = list(INCREMENT_MEMBERS)

    def kept(entity: str, position: int, batches: Iterator[list[Any]]) -> Iterator[Record]:
        latest = last[entity]
        for records in batches:
            for record in records:
                key = hash(record.id)
                if latest.get(key, 0) > position:  # a later link writes or deletes it
                    if key not in deleted[entity]:
                        counts[entity].overwritten += 1
                    continue
                yield record

    def member(copy: Path, entity: str) -> Iterator[list[Any]]:
        with BundleReader(copy) as reader:
            for name, records in reader.batches(increments=True):
                if name == entity:
                    yield records
                elif order.index(name) > order.index(entity):
                    return

    def merged(entity: str, full: _Member) -> Iterator[Record]:
        yield from kept(entity, 0, full.records(entity))
        for position, copy in enumerate(copies, 1):
            yield from kept(entity, position, member(copy, entity))

    dest = folder / "snapshot.kbundle"
    final = links[-1].manifest
    with refs[0].open() as raw:
        stream = HashingReader(raw)
        with BundleReader(stream, name=refs[0].label) as reader:  # type: ignore[arg-type]
            full = _Member(reader)
            manifest = _write_records(
                dest,
                {entity: merged(entity, full) for entity in ENTITY_TYPES},
                BundleOptions(created_at=final.created_at, level=1),
                source_generation=final.source.schema_generation,
            )
            full.finish()
        if stream.hexdigest() != links[0].sha256:
            raise BundleError(
                f"{refs[0].label}: its SHA-256 is now {stream.hexdigest()}, not "
                f"{links[0].sha256} as when its links were checked (the file changed)"
            )
    made = {entry.entity: entry.records for entry in manifest.entities}
    expected = state_of(final).as_dict()
    if made != expected:
        raise BundleError(
            f"{links[-1].describe()}: its chain makes a snapshot of {made} records, the "
            f"increment says {expected} (a damaged chain)"
        )
    for entity, tombstones in deleted.items():
        counts[entity].deleted = len(tombstones)
    return dest, counts


def _local_copy(ref: BundleRef, link: Link, folder: Path, position: int) -> Path:
    """A copy of a link in `folder`, whose SHA-256 is checked against the one its link has."""
    copy = folder / f"link-{position}.kbundle"
    with ref.open() as raw, copy.open("wb") as out:
        stream = HashingReader(raw)
        while data := stream.read(1 << 20):
            out.write(data)
    if stream.hexdigest() != link.sha256:
        raise BundleError(
            f"{ref.label}: its SHA-256 is now {stream.hexdigest()}, not {link.sha256} as when "
            "its links were checked (the file changed)"
        )
    return copy


def _last_writes(copies: Sequence[Path]) -> tuple[dict[str, dict[int, int]], dict[str, set[int]]]:
    """For each entity, the (in-process) hash of every id an increment writes or deletes, with
    the position of the last link that does (the full bundle is 0); and the ids whose last word
    is a tombstone. Each increment is read completely (every check of the reader)."""
    last: dict[str, dict[int, int]] = {entity: {} for entity in ENTITY_TYPES}
    deleted: dict[str, set[int]] = {entity: set() for entity in ENTITY_TYPES}
    for position, copy in enumerate(copies, 1):
        with BundleReader(copy) as reader:
            for entity, records in reader.batches(increments=True):
                for record in records:
                    gone = isinstance(record, Tombstone)
                    target = record.entity if isinstance(record, Tombstone) else entity
                    key = hash(record.id)
                    last[target][key] = position
                    if gone:
                        deleted[target].add(key)
                    else:
                        deleted[target].discard(key)
    return last, deleted


def _import_full(
    conn: KindlingConnection,
    ref: BundleRef,
    link: Link,
    dry_run: bool,
    progress: ProgressCallback | None,
    on_manifest: Callable[[Manifest], None] | None,
) -> ImportReport:
    with ref.open() as raw:
        stream = HashingReader(raw)
        report = import_bundle(
            conn,
            stream,  # type: ignore[arg-type]
            conflict="error",
            dry_run=dry_run,
            progress=progress,
            on_manifest=on_manifest,
            name=ref.label,
        )
        digest = stream.hexdigest()
    if digest != link.sha256:
        raise BundleError(
            f"{ref.label}: its SHA-256 is now {digest}, not {link.sha256} as when its links "
            "were checked (the file changed)"
        )
    return report


# --- verifying a chain ----------------------------------------------------------------------


@dataclass
class ChainVerifyReport:
    """Each bundle's own report (and the SHA-256 of what was read of it), and what is wrong
    with the links between them (problems of kind `chain-link`, the bundle at fault their
    source)."""

    reports: list[VerifyReport] = field(default_factory=list)
    digests: list[str] = field(default_factory=list)
    link_problems: list[VerifyProblem] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        return not self.link_problems and all(report.ok for report in self.reports)

    def to_dict(self) -> dict[str, Any]:
        return {
            "ok": self.ok,
            "bundles": [
                {**report.to_dict(), "sha256": digest}
                for report, digest in zip(self.reports, self.digests, strict=True)
            ],
            "link_problems": [problem.to_dict() for problem in self.link_problems],
        }


def verify_chain(
    refs: Sequence[BundleRef], *, options: ReadOptions | None = None
) -> ChainVerifyReport:
    """Verify each bundle of a chain completely (as `verify_bundle`, read with `options`), and
    the links between them: each increment's base is the bundle before it, in the same chain,
    and only the first bundle may be a full one (a chain may also be increments alone, each on
    the one before). Never raises for a bad bundle."""
    result = ChainVerifyReport()
    previous: Link | None = None
    full: Link | None = None
    for position, ref in enumerate(refs, 1):
        report, digest = _verify_one(ref, options)
        result.reports.append(report)
        result.digests.append(digest)
        if report.manifest is None or not report.ok:
            detail = f"link {position}: not a valid bundle, so its links are not checked"
            result.link_problems.append(VerifyProblem("chain-link", ref.label, detail))
            previous = None
            continue
        link = Link(ref.label, digest, report.manifest)
        if full is None:
            full = _full_of(link) if link.increment else link
        if previous is not None:
            try:
                check_link(previous, link, position, full)
            except BundleError as exc:
                detail = str(exc).removeprefix(f"{ref.label}: ")
                result.link_problems.append(VerifyProblem("chain-link", ref.label, detail))
        previous = link
    return result


def _verify_one(ref: BundleRef, options: ReadOptions | None) -> tuple[VerifyReport, str]:
    try:
        with ref.open() as raw:
            stream = HashingReader(raw)
            report = verify_bundle(stream, options=options)  # type: ignore[arg-type]
    except KindlingBundleError as exc:  # the file cannot be opened or read at all
        report = VerifyReport(ref.label)
        if isinstance(exc, BundleError | SignatureError):
            report.failed(exc)
        else:
            report.problem("unreadable", str(exc).removeprefix(f"{ref.label}: "))
        return report, ""
    report.source = ref.label
    return report, stream.hexdigest()


# --- telling an increment from a full bundle on a stream -----------------------------------


class _Recording(io.RawIOBase):
    """Reads through to `stream`, keeping a copy of what was read (for `peek_manifest`)."""

    def __init__(self, stream: BinaryIO):
        self._stream = stream
        self.seen = bytearray()
        self.name = getattr(stream, "name", "<stream>")

    def readable(self) -> bool:
        return True

    def readinto(self, buffer: Any) -> int:
        data = self._stream.read(len(buffer))
        buffer[: len(data)] = data
        self.seen += data
        return len(data)


def peek_manifest(stream: BinaryIO, name: str | None = None) -> tuple[Manifest, BinaryIO]:
    """A bundle stream's manifest, and the stream to read the whole bundle from: the same one
    rewound if it can seek, else one that gives back the bytes read first (standard input)."""
    if stream.seekable():
        start = stream.tell()
        with BundleReader(stream, name=name) as reader:
            manifest = reader.read_manifest()
        stream.seek(start)
        return manifest, stream
    recording = _Recording(stream)
    with BundleReader(io.BufferedReader(recording), name=name or recording.name) as reader:
        manifest = reader.read_manifest()
    replay = _Replay(bytes(recording.seen), stream)
    return manifest, io.BufferedReader(replay)


class _Replay(io.RawIOBase):
    """Gives back bytes already read from a stream, then the rest of it."""

    def __init__(self, head: bytes, rest: BinaryIO):
        self._head = memoryview(head)
        self._rest = rest
        self.name = getattr(rest, "name", "<stream>")

    def readable(self) -> bool:
        return True

    def readinto(self, buffer: Any) -> int:
        if self._head:
            n = min(len(buffer), len(self._head))
            buffer[:n] = self._head[:n]
            self._head = self._head[n:]
            return n
        data = self._rest.read(len(buffer))
        buffer[: len(data)] = data
        return len(data)


def stream_ref(stream: BinaryIO, label: str) -> BundleRef:
    """A bundle that can be read once only (standard input): enough to apply one increment."""
    return BundleRef(label, lambda: contextlib.nullcontext(stream))
