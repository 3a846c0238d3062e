"""The records of a bundle's snapshot as hashes (db.changes): read from its chain, or from a cache.

Computing an increment needs, for each record of the base's snapshot, its id hash and content
hash: a few sorted NumPy arrays, 16 bytes a record, never the records themselves. They come from
reading the base's chain (its full bundle, then each increment in order, every link checked), or
from the local cache, where each increment or backup leaves the hashes of the snapshot it wrote,
under the SHA-256 of the bundle it wrote (of its plaintext, for an encrypted one): then the next
backup downloads nothing at all.

The cache is a folder (`$KINDLING_BUNDLE_CACHE`, else `$XDG_CACHE_HOME/kindling-bundle/snapshots`,
else `~/.cache/kindling-bundle/snapshots`; `KINDLING_BUNDLE_CACHE=off` turns it off) holding one
folder per snapshot: for each entity its id hashes, content hashes and where each id is in
`names.bin` (the ids themselves, to name the tombstones of a later increment), read through memory
maps. Only the most recent few are kept. A cache entry that is missing, damaged or disagrees with
the bundle's manifest is ignored: the chain is read instead. It holds ids and 64-bit hashes, no
content.
"""

from __future__ import annotations

import contextlib
import mmap
import os
import shutil
import tempfile
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, BinaryIO

import msgspec
import numpy as np

from kindling_bundle.db.changes import EntityState, Hashes, id_hashes, record_hashes
from kindling_bundle.errors import BundleError, KindlingBundleError
from kindling_bundle.format.increment import (
    IncrementManifest,
    Link,
    check_first_link,
    check_link,
    depth_of,
    short,
    state_of,
)
from kindling_bundle.format.manifest import ENTITY_MEMBERS, decode_manifest
from kindling_bundle.format.reader import BundleReader
from kindling_bundle.ops.links import BundleRef
from kindling_bundle.records import ENTITY_TYPES, TOMBSTONES, Tombstone


@dataclass
class SnapshotState:
    """A snapshot's records as hashes, and the bundle that makes it."""

    entities: dict[str, EntityState]
    link: Link
    full_sha256: str

    @property
    def depth(self) -> int:
        return depth_of(self.link.manifest)

    def counts(self) -> dict[str, int]:
        return {entity: len(state) for entity, state in self.entities.items()}


def read_chain(refs: Sequence[BundleRef]) -> SnapshotState:
    """The snapshot the chain `refs` (a full bundle, then its increments in order) makes, read
    and checked link by link: every bundle completely (hashes, counts, records), and each
    increment against the bundle before it (section 16.3). A BundleError names the link."""
    if not refs:
        raise ValueError("a chain has at least one bundle")
    entities: dict[str, EntityState] = {}
    links: list[Link] = []
    for position, ref in enumerate(refs, 1):
        with ref.reader() as (reader, stream):
            manifest = reader.read_manifest()
            link = Link(ref.label, ref.sha256 or "", manifest)
            if position == 1:
                check_first_link(link)
            else:
                check_link(links[-1], link, position, links[0])
            entities = _apply(entities, reader, link, position)
            digest = stream.hexdigest()
        ref.check_sha256(digest)
        links.append(Link(ref.label, digest, manifest))
    return SnapshotState(entities, links[-1], links[0].sha256)


def _apply(
    entities: dict[str, EntityState], reader: BundleReader, link: Link, position: int
) -> dict[str, EntityState]:
    """The snapshot after this link: a full bundle's records, or the base's with an increment's
    tombstones and records applied. Arrays are sized once from the manifest's counts and sorted
    in place, and the base's arrays are let go as soon as the new ones are built."""
    manifest = link.manifest
    expected = {entry.entity: entry.records for entry in manifest.entities}
    written = {
        entity: (np.empty(expected[entity], np.uint64), np.empty(expected[entity], np.uint64))
        for entity in ENTITY_TYPES
    }
    filled = dict.fromkeys(ENTITY_TYPES, 0)
    deleted: dict[str, list[str]] = {entity: [] for entity in ENTITY_TYPES}
    for entity, records in reader.batches(increments=True):
        if entity == TOMBSTONES:
            for tombstone in records:
                assert isinstance(tombstone, Tombstone)
                deleted[tombstone.entity].append(tombstone.id)
            continue
        ids, contents = record_hashes(records)
        at = filled[entity]  # the reader refuses a member holding more than its count
        written[entity][0][at : at + len(ids)] = ids
        written[entity][1][at : at + len(ids)] = contents
        filled[entity] = at + len(ids)
    where = f"link {position}, {link.label}"
    result: dict[str, EntityState] = {}
    for entity in ENTITY_TYPES:
        ids, contents = written.pop(entity)
        _sort(ids, contents, where, entity)
        if not isinstance(manifest, IncrementManifest):
            result[entity] = EntityState(ids, contents)
            continue
        base = entities.pop(entity)
        gone = id_hashes(deleted[entity])
        missing = len(gone) - int(np.isin(gone, base.ids).sum())
        if missing:
            raise BundleError(
                f"{where}: deletes {missing} {entity} that its base does not hold (a damaged "
                "chain, or a link that is not built on the one before)"
            )
        keep = ~np.isin(base.ids, np.concatenate([gone, ids]))
        merged_ids = np.concatenate([base.ids[keep], ids])
        merged_contents = np.concatenate([base.contents[keep], contents])
        del base, keep
        _sort(merged_ids, merged_contents, where, entity)
        result[entity] = EntityState(merged_ids, merged_contents)
    counts = {entity: len(state) for entity, state in result.items()}
    if counts != state_of(manifest).as_dict():
        raise BundleError(
            f"{where}: makes a snapshot of {counts}, but its manifest says "
            f"{state_of(manifest).as_dict()} (a damaged chain, or a link that is not built on "
            "the one before)"
        )
    return result


def _sort(ids: Hashes, contents: Hashes, where: str, entity: str) -> None:
    """Sort both arrays by id hash, in place; refuse an id that appears twice."""
    order = np.argsort(ids, kind="stable")
    ids[:] = ids[order]
    contents[:] = contents[order]
    if len(ids) > 1 and bool((ids[1:] == ids[:-1]).any()):
        raise BundleError(f"{where}: {ENTITY_MEMBERS[entity]}: an id appears more than once")


def find_names(refs: Sequence[BundleRef], wanted: Mapping[str, Hashes]) -> dict[str, list[str]]:
    """The ids whose id hashes are `wanted` (per entity), found in the chain's bundles (each
    re-read, reading only the members of those entities and only their ids). For the
    tombstones of an increment computed without a cache: the ids of records gone from the
    database are only in the bundles."""
    todo = {entity: hashes for entity, hashes in wanted.items() if len(hashes)}
    found: dict[str, dict[int, str]] = {entity: {} for entity in todo}
    for ref in reversed(refs):  # the newest bundle has the newest records
        if all(len(found[entity]) == len(hashes) for entity, hashes in todo.items()):
            break
        with ref.reader() as (reader, stream):
            _find_in(reader, todo, found)
            digest = stream.hexdigest()
        ref.check_sha256(digest)
    names: dict[str, list[str]] = {}
    for entity, hashes in todo.items():
        names[entity] = [found[entity][h] for h in hashes.tolist() if h in found[entity]]
        if len(names[entity]) != len(hashes):
            raise BundleError(
                f"{refs[-1].label}: the ids of {len(hashes) - len(names[entity])} {entity} "
                "its snapshot holds were not found in its chain (a damaged chain)"
            )
    return names


class _Id(msgspec.Struct):
    id: str


_ids_decoder = msgspec.msgpack.Decoder(list[_Id])
_tombstones_decoder = msgspec.msgpack.Decoder(list[Tombstone])


def _find_in(
    reader: BundleReader, todo: Mapping[str, Hashes], found: dict[str, dict[int, str]]
) -> None:
    """Read one bundle's members, decoding only the ids of those in `todo` (the bundle was read
    completely and checked when its snapshot was computed; its SHA-256 is checked again)."""
    manifest = reader.read_manifest()
    for entry in manifest.entities:
        header = reader.next_member()
        if header is None or header.name != entry.member:
            raise BundleError(f"{reader.label}: member {entry.member} is missing or misplaced")
        member = reader.member(header)
        if entry.entity in todo:
            wanted = set(todo[entry.entity].tolist())
            for payload in member.frames():
                ids = [record.id for record in _ids_decoder.decode(payload)]
                for value, hashed in zip(ids, id_hashes(ids).tolist(), strict=True):
                    if hashed in wanted:
                        found[entry.entity][hashed] = value
        member.close()
    if reader.next_member() is not None:
        raise BundleError(f"{reader.label}: unexpected member after the last one")
    reader.finish()


# --- the cache --------------------------------------------------------------------------------

CACHE_KEPT = 4
"""Snapshots whose hashes the cache keeps (the most recently written or used)."""
_CACHE_VERSION = 1


def cache_folder() -> Path | None:
    """Where snapshot hashes are cached, or None when the cache is off."""
    setting = (os.environ.get("KINDLING_BUNDLE_CACHE") or "").strip()
    if setting.lower() in ("off", "0", "no", "false"):
        return None
    if setting:
        return Path(setting).expanduser()
    base = os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache"
    return Path(base) / "kindling-bundle" / "snapshots"


class _Meta(msgspec.Struct, kw_only=True, rename="camel"):
    version: int
    sha256: str
    full_sha256: str
    manifest: Any
    counts: dict[str, int]


def load_cached(sha256: str) -> SnapshotState | None:
    """The cached hashes of the snapshot of the bundle with this SHA-256, or None."""
    folder = cache_folder()
    if folder is None or not (folder / sha256).is_dir():
        return None
    entry = folder / sha256
    try:
        meta = msgspec.json.decode((entry / "meta.json").read_bytes(), type=_Meta)
        if meta.version != _CACHE_VERSION or meta.sha256 != sha256:
            return None
        manifest = decode_manifest(msgspec.json.encode(meta.manifest), f"cache {entry}")
        names = _map(entry / "names.bin")
        entities = {}
        for entity in ENTITY_TYPES:
            arrays = [
                np.load(entry / f"{entity}.{part}.npy", mmap_mode="r", allow_pickle=False)
                for part in ("ids", "contents", "starts", "lengths")
            ]
            if not all(len(a) == meta.counts[entity] for a in arrays):
                return None
            ids, contents, starts, lengths = arrays
            entities[entity] = EntityState(ids, contents, starts, lengths, names)
        if {e: len(s) for e, s in entities.items()} != state_of(manifest).as_dict():
            return None
        os.utime(entry)  # recently used: kept
    except (OSError, ValueError, KeyError, msgspec.DecodeError, BundleError):
        return None
    link = Link(f"cache {short(sha256)}", sha256, manifest)
    return SnapshotState(entities, link, meta.full_sha256)


def _map(path: Path) -> Any:
    with path.open("rb") as handle:
        if os.fstat(handle.fileno()).st_size == 0:
            return b""
        return mmap.mmap(handle.fileno(), 0, access=mmap.ACCESS_READ)


class PendingCache:
    """Hashes of a snapshot being written, in a private folder of the cache; `keep` files them
    under the SHA-256 of the bundle once it is published, `discard` (or a failure) drops them."""

    def __init__(self, folder: Path):
        folder.mkdir(parents=True, exist_ok=True, mode=0o700)
        self.root = folder
        self.path = Path(tempfile.mkdtemp(dir=folder, prefix=".pending-"))
        self.names: BinaryIO = (self.path / "names.bin").open("wb")
        self.counts: dict[str, int] = {}

    def add(self, entity: str, state: EntityState) -> None:
        """Write one entity's hashes now (the caller need not hold them while it writes the
        bundle)."""
        for part in ("ids", "contents", "starts", "lengths"):
            np.save(self.path / f"{entity}.{part}.npy", getattr(state, part))
        self.counts[entity] = len(state)

    def keep(self, sha256: str, manifest: Any, full_sha256: str) -> None:
        """File the hashes under `sha256`, the bundle just published."""
        self.names.close()
        meta = _Meta(
            version=_CACHE_VERSION,
            sha256=sha256,
            full_sha256=full_sha256,
            manifest=manifest.to_dict(),
            counts=self.counts,
        )
        (self.path / "meta.json").write_bytes(msgspec.json.encode(meta))
        target = self.root / sha256
        if target.exists():
            shutil.rmtree(target, ignore_errors=True)
        os.replace(self.path, target)
        _prune(self.root)

    def discard(self) -> None:
        with contextlib.suppress(OSError):
            self.names.close()
        shutil.rmtree(self.path, ignore_errors=True)


def pending_cache() -> PendingCache | None:
    """A PendingCache, or None when the cache is off or its folder cannot be written."""
    folder = cache_folder()
    if folder is None:
        return None
    try:
        return PendingCache(folder)
    except OSError:
        return None


def _prune(root: Path) -> None:
    """Keep the CACHE_KEPT most recently used snapshots (and nothing left by a dead process
    that is older than a day)."""
    entries = [p for p in root.iterdir() if p.is_dir() and not p.name.startswith(".")]
    entries.sort(key=lambda p: p.stat().st_mtime, reverse=True)
    for stale in entries[CACHE_KEPT:]:
        shutil.rmtree(stale, ignore_errors=True)
    for pending in root.glob(".pending-*"):
        with contextlib.suppress(OSError):
            if pending.stat().st_mtime < time.time() - 86400:
                shutil.rmtree(pending, ignore_errors=True)


# --- reading a chain beside the database scan -------------------------------------------------

FORK_MIN_BYTES = 4 << 20
"""Chains smaller than this are read in this process: a second one would cost more than it saves."""


class ChainReading:
    """`read_chain` in a forked child, while this process scans the database: on two cores the
    two halves of computing an increment without a cache overlap. The child sends the snapshot's
    hashes back through a pipe (16 bytes a record), or its error."""

    def __init__(self, refs: Sequence[BundleRef]):
        from kindling_bundle.parallel.forking import pipe, start_child

        self._receive, send = pipe()
        self._process = start_child(
            _read_in_child, (refs, send), "kindling-bundle-chain", parent_ends=(self._receive,)
        )
        send.close()

    def result(self) -> SnapshotState:
        """The snapshot's hashes (waiting for the child); its error, raised here."""
        try:
            head = msgspec.json.decode(self._receive.recv_bytes())
            if head["error"] is not None:
                raise _error(head["error"], head["message"])
            manifest = decode_manifest(msgspec.json.encode(head["manifest"]), head["label"])
            entities = {}
            for entity in ENTITY_TYPES:
                ids = np.frombuffer(self._receive.recv_bytes(), dtype=np.uint64)
                contents = np.frombuffer(self._receive.recv_bytes(), dtype=np.uint64)
                entities[entity] = EntityState(ids, contents)
        except EOFError:
            self._process.join()
            raise BundleError(
                f"reading the base's chain in a second process failed (exit code "
                f"{self._process.exitcode})"
            ) from None
        return SnapshotState(entities, Link(head["label"], head["sha256"], manifest), head["full"])

    def close(self) -> None:
        self._receive.close()
        if self._process.is_alive():
            self._process.terminate()
        self._process.join()


def _read_in_child(refs: Sequence[BundleRef], send: Any) -> None:
    try:
        try:
            state = read_chain(refs)
        except Exception as exc:  # sent to the parent, which raises it in its own words
            send.send_bytes(msgspec.json.encode({"error": type(exc).__name__, "message": str(exc)}))
            return
        send.send_bytes(
            msgspec.json.encode(
                {
                    "error": None,
                    "label": state.link.label,
                    "sha256": state.link.sha256,
                    "full": state.full_sha256,
                    "manifest": state.link.manifest.to_dict(),
                }
            )
        )
        for entity in ENTITY_TYPES:
            send.send_bytes(state.entities[entity].ids.tobytes())
            send.send_bytes(state.entities[entity].contents.tobytes())
    finally:
        send.close()


def _error(kind: str, message: str) -> KindlingBundleError:
    """The child's error as this process would have raised it (same class where it is one of
    ours: every failure of ours is one line, whichever process met it)."""
    import kindling_bundle.errors as errors

    cls = getattr(errors, kind, None)
    if isinstance(cls, type) and issubclass(cls, KindlingBundleError):
        try:
            return cls(message)
        except TypeError:  # a class that wants more than a message
            return BundleError(message)
    return BundleError(f"reading the base's chain failed: {kind}: {message}")


def start_reading(refs: Sequence[BundleRef]) -> ChainReading | None:
    """Read the chain in a second process where that is safe and worth it (parallel.forking,
    local files, a chain of at least FORK_MIN_BYTES), else None."""
    from kindling_bundle.parallel.forking import fork_is_safe

    if not fork_is_safe():
        return None
    try:
        size = sum(os.path.getsize(ref.label) for ref in refs)
    except OSError:  # a URL, or not there: read here, where errors are met in order
        return None
    if size < FORK_MIN_BYTES:
        return None
    return ChainReading(refs)
