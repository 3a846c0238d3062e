"""Computing an incremental bundle from a database (spec section 16.4).

`write_increment`: the base's snapshot as hashes (ops.state: from the local cache, else read
from its chain), one pass over the database comparing every row's content hash
(db.changes.scan), then the changed rows read again in export order and written, with a
tombstone for each record of the base that is gone, through the bundle writer. Memory: 16 bytes
a record of the base, one flag a record, the rowids that changed.
"""

from __future__ import annotations

import hashlib
from collections.abc import Callable, Iterator, Mapping, Sequence

import numpy as np

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
)
from kindling_bundle.db.export import snapshot
from kindling_bundle.format.increment import (
    DELETION_ORDER,
    BaseInfo,
    IncrementHeader,
    IncrementManifest,
    StateCounts,
)
from kindling_bundle.format.manifest import Manifest, ProgressCallback
from kindling_bundle.heap import release_freed
from kindling_bundle.ops.links import BundleRef
from kindling_bundle.ops.state import (
    PendingCache,
    SnapshotState,
    find_names,
    load_cached,
    pending_cache,
    read_chain,
    start_reading,
)
from kindling_bundle.ops.write import BundleDestination, BundleOptions, write_bundle
from kindling_bundle.ops.write import write_bundle_from_records as _write_records
from kindling_bundle.records import ENTITY_TYPES, TOMBSTONES, Record, Tombstone

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
    on_bundle: Callable[[bytes], None] | None = None,
) -> IncrementManifest:
    """Write an increment of the database `conn` on `base` to `dest` (a path or a writable
    stream): the records new or changed since the base's snapshot and a tombstone for each of
    its records that is gone, all read from one snapshot of the database.

    `base` is the chain of the base (its full bundle, then its increments in order; where the
    cache holds the last one's hashes, only that one is needed). Without the cache, the chain is
    read in a second process while this one reads the database, where the platform allows.
    `cache`: where to keep this snapshot's hashes (`PendingCache.keep` once the bundle is
    published, under its SHA-256). `on_bundle`: as write_bundle's (what the bundle's SHA-256,
    the one a next increment names, is computed from). Returns the manifest."""
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
            release_freed()  # what the comparison freed, before the increment is written
            names = _deleted_names(changes, state, base)
            manifest = _write_increment(
                conn, dest, state, changes, names, opts, progress, on_bundle
            )
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
    on_bundle: Callable[[bytes], None] | None,
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
        on_bundle=on_bundle,
    )
    assert isinstance(manifest, IncrementManifest)
    return manifest


def export_increment(
    conn: KindlingConnection,
    dest: BundleDestination,
    base: Sequence[BundleRef],
    opts: BundleOptions | None = None,
    *,
    progress: ProgressCallback | None = None,
) -> tuple[IncrementManifest, str]:
    """`write_increment`, keeping this snapshot's hashes in the local cache (ops.state) under
    the SHA-256 of the bundle written, so that an increment on it reads no bundle. Returns the
    manifest and that SHA-256 (of the plaintext, when `opts` encrypts: what an increment on
    this one names as its base)."""
    cache = pending_cache()
    bundle = hashlib.sha256()
    try:
        manifest = write_increment(
            conn, dest, base, opts, progress=progress, cache=cache, on_bundle=bundle.update
        )
    except BaseException:
        if cache is not None:
            cache.discard()
        raise
    if cache is not None:
        cache.keep(bundle.hexdigest(), manifest, manifest.base.full_sha256)
    return manifest, bundle.hexdigest()


def write_full(
    conn: KindlingConnection,
    dest: BundleDestination,
    opts: BundleOptions | None = None,
    *,
    progress: ProgressCallback | None = None,
    cache: PendingCache | None = None,
    on_bundle: Callable[[bytes], None] | None = None,
) -> Manifest:
    """`write_bundle` of the whole database, keeping the hashes of the same snapshot in `cache`
    (so that the next increment reads no bundle)."""
    opts = opts or BundleOptions()
    if opts.filter.filtered:
        raise ValueError("a chain's full bundle covers the whole database: it cannot be filtered")
    with snapshot(conn):
        if cache is not None:
            _scan_all(conn, dict.fromkeys(ENTITY_TYPES), cache)
        return write_bundle(conn, dest, opts, progress=progress, on_bundle=on_bundle)


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
