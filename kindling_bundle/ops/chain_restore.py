"""Restoring a chain (a full bundle, then its increments) into an empty database.

The chain is merged into one full bundle of its snapshot, in a temporary file, and that bundle
is imported as any other: a restore costs an import of the final state plus reading the chain
once more, where applying each increment in turn would index every intermediate version.
"""

from __future__ import annotations

import tempfile
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path
from typing import Any

from kindling_bundle.db.bulk import DATA_TABLES
from kindling_bundle.db.connection import (
    KindlingConnection,
)
from kindling_bundle.errors import (
    BundleError,
    StoreError,
)
from kindling_bundle.format.increment import (
    INCREMENT_MEMBERS,
    HashingReader,
    Link,
    state_of,
)
from kindling_bundle.format.manifest import Manifest, ProgressCallback
from kindling_bundle.format.reader import BundleReader
from kindling_bundle.ops.apply import ChainReport, ChangeCounts
from kindling_bundle.ops.links import prepare_chain
from kindling_bundle.ops.restore import ImportReport, import_bundle
from kindling_bundle.ops.state import (
    BundleRef,
)
from kindling_bundle.ops.write import BundleOptions
from kindling_bundle.ops.write import write_bundle_from_records as _write_records
from kindling_bundle.records import ENTITY_TYPES, Record, Tombstone


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
