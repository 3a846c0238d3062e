"""Restoring a chain (a full bundle, then its increments) into an empty database.

The chain is merged into one full bundle of its snapshot, in a temporary file, and that bundle
is imported as any other: a restore costs an import of the final state plus reading the chain
once more, where applying each increment in turn would index every intermediate version.

No file holds more of an encrypted chain in the clear than its stored bundles do: the
increments' records, spooled for the merge, and the merged bundle are encrypted to a key that
lives only in this process's memory, the merged bundle's spools sealed.
"""

from __future__ import annotations

import contextlib
import tempfile
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any, BinaryIO

import msgspec

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
from kindling_bundle.format.manifest import FRAME_HEADER_BYTES, Manifest, ProgressCallback
from kindling_bundle.format.reader import BundleReader
from kindling_bundle.format.record_frames import FrameEncoder
from kindling_bundle.heap import large_buffers_mapped, release_freed
from kindling_bundle.io.read_options import ReadOptions
from kindling_bundle.ops.apply import ChainReport, ChangeCounts
from kindling_bundle.ops.import_run import ImportReport
from kindling_bundle.ops.links import BundleRef, prepare_chain
from kindling_bundle.ops.restore import import_bundle
from kindling_bundle.ops.spool import spool_file
from kindling_bundle.ops.write import BundleOptions
from kindling_bundle.ops.write import write_bundle_from_records as _write_records
from kindling_bundle.records import ENTITY_TYPES, TOMBSTONES, Record, Tombstone

if TYPE_CHECKING:
    from kindling_bundle.io.age.identities import X25519Identity


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
        full = _import_full(conn, refs[0], dry_run, progress, on_manifest)
        counts = {entity: ChangeCounts(inserted=c.inserted) for entity, c in full.counts.items()}
        return ChainReport(label, links, counts, full.integrity, dry_run, full)
    # A chain opened with identities is taken to be encrypted: its merged bundle is too.
    key = None
    if any(ref.options.identities for ref in refs):
        from kindling_bundle.io.age.identities import X25519Identity  # loads `cryptography`

        key = X25519Identity.generate()
    with tempfile.TemporaryDirectory(prefix="kindling-chain-") as folder:
        # the import then starts from this process's size, not from the merge's peak
        with large_buffers_mapped():
            merged, counts = _merge_chain(refs, links, Path(folder), key)
        full = import_bundle(
            conn,
            merged,
            conflict="error",
            dry_run=dry_run,
            progress=progress,
            on_manifest=on_manifest,
            name=refs[-1].label,
            options=ReadOptions(identities=(key,) if key is not None else ()),
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
    refs: Sequence[BundleRef], links: Sequence[Link], folder: Path, key: X25519Identity | None
) -> tuple[Path, dict[str, ChangeCounts]]:
    """Write the chain's snapshot into `folder` as one full bundle (records of later links win,
    deleted records are left out; encrypted to `key` when given); every link is read once,
    completely, and its SHA-256 checked. The increments (small) are read first, their records
    spooled (`_Changes`): what is merged is what was checked. Returns the bundle, and what was
    left out per entity: earlier versions of records written again (`overwritten`), and records
    whose last word is a tombstone (`deleted`)."""
    with _Changes(folder, sealed=key is not None) as changes:
        _read_increments(refs[1:], changes)
        release_freed()
        return _write_snapshot(refs, links, folder, key, changes)


def _write_snapshot(
    refs: Sequence[BundleRef],
    links: Sequence[Link],
    folder: Path,
    key: X25519Identity | None,
    changes: _Changes,
) -> tuple[Path, dict[str, ChangeCounts]]:
    last, deleted = changes.last, changes.deleted
    counts = {entity: ChangeCounts() for entity in ENTITY_TYPES}

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

    def merged(entity: str, full: _Member) -> Iterator[Record]:
        yield from kept(entity, 0, full.records(entity))
        for position, batches in changes.sections(entity):
            yield from kept(entity, position, batches)

    dest = folder / "snapshot.kbundle"
    final = links[-1].manifest
    recipients = (key.recipient(),) if key is not None else ()
    with refs[0].reader() as (reader, stream):
        full = _Member(reader)
        manifest = _write_records(
            dest,
            {entity: merged(entity, full) for entity in ENTITY_TYPES},
            BundleOptions(created_at=final.created_at, level=1, recipients=recipients),
            source_generation=final.source.schema_generation,
            scratch=True,
        )
        full.finish()
        refs[0].check_sha256(stream.hexdigest())
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


class _Changes:
    """What the increments say, read once: for each entity, the (in-process) hash of every id
    an increment writes or deletes, with the position of the last link that does (the full
    bundle is 0), and the ids whose last word is a tombstone; and each entity's records of every
    increment, in chain order, re-encoded into a spool of its own (sealed for an encrypted
    chain), to be merged entity by entity without decompressing and decoding each increment
    again for each entity."""

    def __init__(self, folder: Path, *, sealed: bool):
        self.last: dict[str, dict[int, int]] = {entity: {} for entity in ENTITY_TYPES}
        self.deleted: dict[str, set[int]] = {entity: set() for entity in ENTITY_TYPES}
        self._stack = contextlib.ExitStack()
        self._spools = {
            entity: self._stack.enter_context(spool_file(folder / "changes", "chain", sealed))
            for entity in ENTITY_TYPES
        }
        self._encoders = {
            entity: FrameEncoder(entity, reuse_buffer=True, checked=True) for entity in ENTITY_TYPES
        }
        self._sections: dict[str, list[list[int]]] = {entity: [] for entity in ENTITY_TYPES}
        self._decoders = {
            entity: msgspec.msgpack.Decoder(list[kind])  # type: ignore[valid-type]
            for entity, kind in ENTITY_TYPES.items()
        }

    def __enter__(self) -> _Changes:
        return self

    def __exit__(self, *exc: object) -> None:
        self._stack.close()

    def add(self, position: int, entity: str, records: list[Any]) -> None:
        """One batch of an increment's member (`entity` "tombstones" or an entity's)."""
        for record in records:
            gone = isinstance(record, Tombstone)
            target = record.entity if gone else entity
            key = hash(record.id)
            self.last[target][key] = position
            if gone:
                self.deleted[target].add(key)
            else:
                self.deleted[target].discard(key)
        if entity == TOMBSTONES or not records:
            return
        size = 0
        for _, frame in self._encoders[entity].frames(records):
            self._spools[entity].write(frame)
            size += len(frame)
        sections = self._sections[entity]
        if sections and sections[-1][0] == position:
            sections[-1][1] += size
        else:
            sections.append([position, size])

    def sections(self, entity: str) -> Iterator[tuple[int, Iterator[list[Any]]]]:
        """(position, its batches of `entity`) for each increment that has any, in chain order;
        each section is to be read through before the next is asked for."""
        spool = self._spools[entity]
        spool.seek(0)
        for position, size in self._sections[entity]:
            yield position, self._batches(spool, entity, size)

    def _batches(self, spool: BinaryIO, entity: str, size: int) -> Iterator[list[Any]]:
        decoder = self._decoders[entity]
        while size:
            length = int.from_bytes(_read(spool, FRAME_HEADER_BYTES), "big")
            yield decoder.decode(_read(spool, length))
            size -= FRAME_HEADER_BYTES + length


def _read(spool: BinaryIO, size: int) -> bytes:
    data = spool.read(size)
    if len(data) != size:
        raise BundleError("a restore's spool of the chain's changes ended early")
    return data


def _read_increments(increments: Sequence[BundleRef], changes: _Changes) -> None:
    """Each increment read completely into `changes` (every check of the reader, and its
    SHA-256 against its link's)."""
    for position, ref in enumerate(increments, 1):
        with ref.reader() as (reader, stream):
            for entity, records in reader.batches(increments=True):
                changes.add(position, entity, records)
            ref.check_sha256(stream.hexdigest())


def _import_full(
    conn: KindlingConnection,
    ref: BundleRef,
    dry_run: bool,
    progress: ProgressCallback | None,
    on_manifest: Callable[[Manifest], None] | None,
) -> ImportReport:
    with ref.open() as plain:
        # checked when the stream ends, before the import commits
        stream = HashingReader(plain, at_end=ref.check_sha256)
        report = import_bundle(
            conn,
            stream,  # type: ignore[arg-type]
            conflict="error",
            dry_run=dry_run,
            progress=progress,
            on_manifest=on_manifest,
            name=ref.label,
            options=ReadOptions(signature=ref.options.signature),
        )
    return report
