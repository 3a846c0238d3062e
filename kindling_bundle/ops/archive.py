"""An archive of snapshots in a folder or under a URL prefix: backup, snapshots, restore
(forget is ops.forget).

An archive is nothing but bundles in one folder (io.folder), each named

    kindling-<createdAt as YYYYMMDDTHHMMSS.mmmZ>-<full|incr>-<SHA-256 of the bundle>.kbundle

so that names sort by time, and a listing alone tells each snapshot's time, kind and identity.
An increment's manifest names its base by SHA-256 (spec section 16), so a snapshot's chain is
found by following those names back to a full bundle, and every link is checked before a byte of
a restore is written. For an encrypted snapshot the SHA-256 is its plaintext bundle's (what its
successor's manifest names), so an encrypted archive is followed exactly as a plain one, by
names, and reading one checks the hash on what it decrypted. Files that do not match the
pattern are not the archive's and are left alone. There is no index to keep consistent: a
backup adds one file, forget removes some.

`backup` writes a full bundle when the archive is empty, when the latest snapshot's chain has
reached `full_every` increments, or when that chain is broken; otherwise an increment on the
latest snapshot. It publishes the bundle only once complete (io.folder), so an interrupted backup
leaves the archive as it was.

A backup may be signed (`sign_key`: its full bundles are 1.1, its increments 2.1) and encrypted
(`recipients`: signed inside, encrypted outside, as an export). An archive is read with
ReadOptions: the identities that open its snapshots, and whom to trust (a signed snapshot's
signature is checked wherever it is read). Backing up needs no identity where the local cache
(ops.state) holds the latest snapshot's hashes; otherwise reading the latest chain does, and
without one the backup starts a new chain with a full bundle, saying why.
"""

from __future__ import annotations

import hashlib
import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import TYPE_CHECKING, Any

from kindling_bundle.db.connection import KindlingConnection
from kindling_bundle.errors import BundleError, EncryptionError, KindlingBundleError
from kindling_bundle.format.increment import (
    IncrementManifest,
    depth_of,
    iso_time,
    short,
    state_of,
)
from kindling_bundle.format.manifest import Manifest, ProgressCallback
from kindling_bundle.io.folder import FileInfo, Folder
from kindling_bundle.io.read_options import ReadOptions
from kindling_bundle.io.storage import is_url
from kindling_bundle.ops.apply import ChainReport
from kindling_bundle.ops.chain_restore import restore_chain
from kindling_bundle.ops.increment import write_full, write_increment
from kindling_bundle.ops.links import BundleRef, bundle_ref, hashed, key_problem, manifest_of
from kindling_bundle.ops.read import read_manifest
from kindling_bundle.ops.state import load_cached, pending_cache
from kindling_bundle.ops.write import BundleOptions, resolve_created_at

if TYPE_CHECKING:
    from kindling_bundle.io.age.recipients import Recipient
    from kindling_bundle.io.sshsig.keys import SigningKey

DEFAULT_FULL_EVERY = 7

_NAME = re.compile(r"^kindling-(\d{8}T\d{6}\.\d{3}Z)-(full|incr)-([0-9a-f]{64})\.kbundle$")
_TIME_FORMAT = "%Y%m%dT%H%M%S"


def snapshot_name(created_at: int, increment: bool, sha256: str) -> str:
    """The file name of a snapshot."""
    moment = datetime.fromtimestamp(created_at // 1000, tz=UTC)
    stamp = f"{moment:{_TIME_FORMAT}}.{created_at % 1000:03d}Z"
    return f"kindling-{stamp}-{'incr' if increment else 'full'}-{sha256}.kbundle"


@dataclass
class Snapshot:
    """A bundle of the archive, as its name describes it (and its manifest, once read)."""

    name: str
    created_at: int
    increment: bool
    sha256: str
    size: int
    manifest: Manifest | None = None

    @property
    def id(self) -> str:
        return short(self.sha256)

    @property
    def kind(self) -> str:
        return "increment" if self.increment else "full"

    def to_dict(self) -> dict[str, Any]:
        return {
            "name": self.name,
            "id": self.id,
            "sha256": self.sha256,
            "time": iso_time(self.created_at),
            "created_at": self.created_at,
            "kind": self.kind,
            "bytes": self.size,
        }


def _parse(info: FileInfo) -> Snapshot | None:
    match = _NAME.match(info.name)
    if match is None:
        return None
    stamp, kind, sha256 = match.groups()
    moment = datetime.strptime(stamp[:15], _TIME_FORMAT).replace(tzinfo=UTC)
    created_at = int(moment.timestamp()) * 1000 + int(stamp[16:19])
    return Snapshot(info.name, created_at, kind == "incr", sha256, info.size)


class Archive:
    """The snapshots in a folder or under a URL prefix."""

    def __init__(
        self,
        url: str,
        storage_options: Mapping[str, Any] | None = None,
        options: ReadOptions | None = None,
    ):
        self.url = url
        self.folder = Folder(url, storage_options)
        self.options = options or ReadOptions()
        """How its snapshots are read: identities for encrypted ones, whom to trust."""

    def snapshots(self) -> list[Snapshot]:
        """Every snapshot, oldest first (by time, then name)."""
        found = [snap for info in self.folder.list() if (snap := _parse(info)) is not None]
        return sorted(found, key=lambda snap: (snap.created_at, snap.name))

    def manifest(self, snap: Snapshot) -> Manifest:
        """The snapshot's manifest (only the start of its file is read), checked against its
        name."""
        if snap.manifest is None:
            with self.folder.open(snap.name, head=True) as stream:
                manifest = read_manifest(stream, options=self.options)
            if isinstance(manifest, IncrementManifest) != snap.increment:
                raise BundleError(
                    f"{self.folder.join(snap.name)}: its name says {snap.kind}, its manifest "
                    "does not"
                )
            snap.manifest = manifest
        return snap.manifest

    def ref(self, snap: Snapshot) -> BundleRef:
        """The snapshot as a link of a chain; what is read (decrypted) must match the SHA-256
        its name says."""
        name = snap.name
        return BundleRef(
            self.folder.join(name), lambda: self.folder.open(name), snap.sha256, self.options
        )

    def chain(self, snap: Snapshot, catalogue: Sequence[Snapshot]) -> list[Snapshot]:
        """The snapshot's chain, its full bundle first; a BundleError names a missing base."""
        by_sha = {s.sha256: s for s in catalogue}
        chain = [snap]
        while chain[0].increment:
            manifest = self.manifest(chain[0])
            assert isinstance(manifest, IncrementManifest)
            base = by_sha.get(manifest.base.sha256)
            if base is None or len(chain) > len(catalogue):
                raise BundleError(
                    f"{self.url}: snapshot {snap.name} cannot be restored: its chain needs "
                    f"{short(manifest.base.sha256)} (created {iso_time(manifest.base.created_at)},"
                    f" the base of {chain[0].name}), which is not in the archive"
                )
            chain.insert(0, base)
        return chain

    def find(self, which: str, catalogue: Sequence[Snapshot]) -> Snapshot:
        """A snapshot by `latest`, its file name (with or without .kbundle), its time as in its
        name, or a unique prefix (4 or more hex digits) of its SHA-256."""
        if not catalogue:
            raise KindlingBundleError(f"{self.url}: no snapshots")
        if which == "latest":
            return catalogue[-1]
        name = which.removesuffix(".kbundle")
        matches = [
            s
            for s in catalogue
            if s.name.removesuffix(".kbundle") == name
            or f"-{which}-" in s.name
            or (len(which) >= 4 and s.sha256.startswith(which.lower()))
        ]
        if len(matches) != 1:
            listed = ", ".join(s.id for s in matches[:5])
            reason = f"matches {len(matches)} snapshots ({listed})" if matches else "matches none"
            raise KindlingBundleError(
                f"{self.url}: snapshot {which!r} {reason}; `snapshots` lists them"
            )
        return matches[0]


def base_chain(
    targets: Sequence[str],
    storage_options: Mapping[str, Any] | None = None,
    options: ReadOptions | None = None,
) -> list[BundleRef]:
    """The chain `export --base` names: the bundles given, in order, read with `options`. A
    single increment's chain is found in its folder, among the bundles named as an archive names
    them (their names carry their SHA-256); where the cache holds the last bundle's hashes, that
    bundle alone will do."""
    refs = [
        bundle_ref(target, storage_options, sha256=_named_sha(target), options=options)
        for target in targets
    ]
    if refs[-1].sha256 is None and not is_url(refs[-1].label):
        refs[-1] = hashed(refs[-1])
    last = refs[-1]
    if len(refs) > 1 or (last.sha256 is not None and load_cached(last.sha256) is not None):
        return refs
    if not isinstance(manifest_of(last), IncrementManifest):
        return refs
    folder, _, _ = last.label.rstrip("/").rpartition("/")
    archive = Archive(folder or ".", storage_options, options)
    catalogue = archive.snapshots()
    found = [snap for snap in catalogue if snap.sha256 == last.sha256]
    if not found:
        raise BundleError(
            f"{last.label}: is an increment, and its chain is not in its folder under archive "
            "names; give the whole chain: --base FULL --base INC1 ... in order"
        )
    return [archive.ref(snap) for snap in archive.chain(found[0], catalogue)]


def _named_sha(target: str) -> str | None:
    """The SHA-256 an archive name carries, if `target` has one."""
    match = _NAME.match(target.rstrip("/").rsplit("/", 1)[-1])
    return match.group(3) if match else None


# --- backup ---------------------------------------------------------------------------------


@dataclass
class BackupReport:
    """What a backup wrote, and why a full bundle or an increment."""

    archive: str
    snapshot: Snapshot
    manifest: Manifest
    reason: str
    base: Snapshot | None = None

    def to_dict(self) -> dict[str, Any]:
        return {
            "archive": self.archive,
            "snapshot": self.snapshot.to_dict(),
            "reason": self.reason,
            "base": self.base.name if self.base is not None else None,
        }


def backup(
    conn: KindlingConnection,
    archive: Archive,
    *,
    full_every: int = DEFAULT_FULL_EVERY,
    level: int = 3,
    created_at: int | None = None,
    progress: ProgressCallback | None = None,
    sign_key: SigningKey | None = None,
    recipients: Sequence[Recipient] = (),
) -> BackupReport:
    """Add the database's current state to the archive as its next snapshot (module docstring).

    `full_every`: the most increments a chain may have (0: every backup is a full bundle).
    `created_at`: the snapshot's time (epoch ms; default $SOURCE_DATE_EPOCH, else now), which
    must be after the latest snapshot's. `sign_key`: sign the snapshot's bundle; `recipients`:
    encrypt it to them (the archive's ReadOptions open the latest chain, when the local cache
    does not hold its hashes)."""
    if isinstance(full_every, bool) or not isinstance(full_every, int) or full_every < 0:
        raise ValueError(f"full_every must be a whole number >= 0, got {full_every!r}")
    created = resolve_created_at(created_at)
    opts = BundleOptions(created_at=created, level=level, sign_key=sign_key, recipients=recipients)
    catalogue = archive.snapshots()
    latest = catalogue[-1] if catalogue else None
    if latest is not None and created <= latest.created_at:
        raise KindlingBundleError(
            f"{archive.url}: the latest snapshot was made at {iso_time(latest.created_at)}, not "
            f"before this backup's time {iso_time(created)} (is the clock behind?)"
        )
    chain, reason = _plan(archive, catalogue, latest, full_every)
    cache = pending_cache()
    try:
        snap, manifest = _write_snapshot(conn, archive, chain, opts, progress, cache)
    except BaseException:
        if cache is not None:
            cache.discard()
        raise
    if cache is not None:
        full_sha = (
            manifest.base.full_sha256 if isinstance(manifest, IncrementManifest) else snap.sha256
        )
        cache.keep(snap.sha256, manifest, full_sha)
    return BackupReport(archive.url, snap, manifest, reason, latest if chain else None)


def _plan(
    archive: Archive, catalogue: Sequence[Snapshot], latest: Snapshot | None, full_every: int
) -> tuple[list[BundleRef] | None, str]:
    """The chain to write an increment on (where the cache holds the latest snapshot's
    hashes, that snapshot alone), or None for a full bundle; and why."""
    if latest is None:
        return None, "the archive has no snapshot yet"
    if full_every == 0:
        return None, "every backup is a full bundle (--full-every 0)"
    cached = load_cached(latest.sha256)
    try:
        depth = cached.depth if cached is not None else depth_of(archive.manifest(latest))
    except KindlingBundleError as exc:
        hint = " (an identity that opens it continues its chain)" if key_problem(exc) else ""
        return None, f"starting a new chain: the latest snapshot cannot be read: {exc}{hint}"
    if depth >= full_every:
        return None, f"the latest chain has {depth} increments (--full-every {full_every})"
    reason = f"increment {depth + 1} on {latest.id}"
    if cached is not None:
        return [archive.ref(latest)], reason
    try:
        chain = archive.chain(latest, catalogue)
    except (BundleError, EncryptionError) as exc:  # a link missing, or not opened by the keys
        return None, f"starting a new chain: {exc}"
    return [archive.ref(snap) for snap in chain], reason


def _write_snapshot(
    conn: KindlingConnection,
    archive: Archive,
    chain: list[BundleRef] | None,
    opts: BundleOptions,
    progress: ProgressCallback | None,
    cache: Any,
) -> tuple[Snapshot, Manifest]:
    """Write the bundle (signed and encrypted as `opts` says), then publish it under its name,
    which carries the SHA-256 of the bundle as written (the plaintext, when encrypted)."""
    bundle = hashlib.sha256()
    with archive.folder.new_file() as new:
        manifest: Manifest
        if chain is None:
            manifest = write_full(
                conn, new.stream, opts, progress=progress, cache=cache, on_bundle=bundle.update
            )
        else:
            manifest = write_increment(
                conn,
                new.stream,
                chain,
                opts,
                progress=progress,
                cache=cache,
                on_bundle=bundle.update,
            )
        new.stream.flush()
        sha256 = bundle.hexdigest()
        assert opts.created_at is not None
        name = snapshot_name(opts.created_at, chain is not None, sha256)
        new.publish(name)
        size = new.path.stat().st_size
    snap = Snapshot(name, opts.created_at, chain is not None, sha256, size, manifest)
    return snap, manifest


# --- snapshots, restore ---------------------------------------------------------------------


@dataclass
class SnapshotInfo:
    """A snapshot as `snapshots` lists it."""

    snapshot: Snapshot
    depth: int
    base: str | None
    """The base's short id, for an increment."""
    records: dict[str, int]
    """The snapshot's record counts (of the database it restores)."""
    problem: str | None = None
    """Why it cannot be restored (a missing base, a damaged manifest), if it cannot."""

    def to_dict(self) -> dict[str, Any]:
        return {
            **self.snapshot.to_dict(),
            "depth": self.depth,
            "base": self.base,
            "records": self.records,
            "problem": self.problem,
        }


def list_snapshots(archive: Archive) -> list[SnapshotInfo]:
    """Every snapshot, oldest first, with its manifest's facts (only the start of each file is
    read) and whether its chain is complete. An encrypted snapshot that the archive's
    identities do not open raises (NoIdentityError, NoMatchingIdentityError)."""
    catalogue = archive.snapshots()
    infos = []
    for snap in catalogue:
        try:
            manifest = archive.manifest(snap)
        except KindlingBundleError as exc:
            if key_problem(exc):  # the keys are wrong, not the archive: said once
                raise
            infos.append(SnapshotInfo(snap, 0, None, {}, str(exc)))
            continue
        base = manifest.base.sha256 if isinstance(manifest, IncrementManifest) else None
        info = SnapshotInfo(
            snap, depth_of(manifest), short(base) if base else None, state_of(manifest).as_dict()
        )
        try:
            archive.chain(snap, catalogue)
        except KindlingBundleError as exc:
            info.problem = str(exc)
        infos.append(info)
    return infos


def restore(
    archive: Archive,
    which: str,
    conn: KindlingConnection,
    *,
    progress: ProgressCallback | None = None,
) -> tuple[Snapshot, ChainReport]:
    """Restore a snapshot (`latest`, or as `Archive.find` takes it) into the empty database
    `conn` (a new one, from `create_store`: it appears only if everything succeeded)."""
    catalogue = archive.snapshots()
    snap = archive.find(which, catalogue)
    chain = archive.chain(snap, catalogue)
    report = restore_chain(conn, [archive.ref(s) for s in chain], progress=progress)
    return snap, report
