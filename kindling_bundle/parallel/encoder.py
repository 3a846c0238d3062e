"""Encoding a whole export's observations in two processes: the split.

An export is bound by Python work per record on one core: reading rows, making records,
checking and encoding them. In the split a forked child, with a connection of its own on the
export's snapshot, reads and encodes the first CHILD_SHARE of the observations into a spool of
its own, while this process reads and encodes the rest into its spool, then the other members
into a second one: as soon as its part of the observations is complete, the child (once done
with its own part) hashes it, beside the encoding of the other members. The split falls on a
multiple of FRAME_RECORDS, so the frames are those of one pass and the bundle is byte for byte
the one a single process writes. A scrubbing export
(BundleOptions.scrub) scrubs in both processes, each what it encodes; the child sends its
counts with its last word.

The child's connection must see the export's snapshot. A second connection opened before the
snapshot (`Witness`) tells whether anything was committed since; the child fixes its snapshot,
says it is ready, and is told to start only if nothing was. Otherwise (or if the child cannot
open the database) it is stopped before it has written anything, and the export runs in one
process.

Errors come in foreign-key order, as in one process: the child's part comes first, so an error
met here waits for the child's word, and the child's own error, if it met one, is raised instead:
the same class and message as in one process (the child runs the same export stream and the
same member loop). A child that dies is a BundleError. Messages between the processes are typed
(msgspec Structs); each process writes only its own spools (the child reads this process's
part of the observations, to hash the whole member, only once it is complete).

An encrypted export's spools are SealedSpools (io.age): the child is forked, so it holds the
same in-memory keys. Each side seals its last chunk before the other reads (`finish_spool`), and
reads what the other wrote through the spool's own decrypting reader, never the raw file.
"""

from __future__ import annotations

import contextlib
import functools
import hashlib
import sqlite3
from collections.abc import Callable, Iterator
from typing import TYPE_CHECKING, BinaryIO

import msgspec

from kindling_bundle.db.connection import KindlingConnection, open_store
from kindling_bundle.db.export import (
    ENTITY_EXPORTS,
    ExportStreamOptions,
    SplitKey,
    export_observations_before,
    export_observations_from,
    observation_split,
    snapshot,
)
from kindling_bundle.errors import BundleError, KindlingBundleError
from kindling_bundle.format.manifest import ENTITY_MEMBERS, FRAME_RECORDS, EntityEntry
from kindling_bundle.ops.spool import (
    Member,
    Progress,
    encode_member,
    encode_members,
    finish_spool,
    written_elsewhere,
)
from kindling_bundle.parallel.forking import ToParent, WorkerChild
from kindling_bundle.records import Record

if TYPE_CHECKING:
    from hashlib import _Hash

    from kindling_bundle.scrub import Scrubber

CHILD_SHARE = 0.60
"""Of a whole export's observations, the part the child reads and encodes: about what balances
the work, since this process also encodes capsules, summaries and pins (bench/RESULTS.md)."""

_READ_BYTES = 1 << 20


class Witness:
    """A second connection that tells whether anything was committed since it was opened (a
    connection's `PRAGMA data_version` does not move inside a read transaction, so the export's
    own connection cannot tell)."""

    def __init__(self, conn: KindlingConnection):
        self._conn = conn
        self._first = self._version()

    @classmethod
    def for_split(cls, conn: KindlingConnection, selection: ExportStreamOptions) -> Witness | None:
        """A witness for a split of this export, opened before its snapshot; None where there
        can be no split: a filtered export, a caller's transaction (its snapshot may predate
        commits a new connection would see), no database file, or one that cannot be opened."""
        path = getattr(conn, "path", "")
        if selection.filtered or conn.in_transaction:
            return None
        if not path or path == ":memory:" or path.startswith("file:"):
            return None
        try:
            return cls(open_store(path, readonly=True))
        except (KindlingBundleError, sqlite3.Error):
            return None

    def unchanged(self) -> bool:
        return self._version() == self._first

    def close(self) -> None:
        self._conn.close()

    def _version(self) -> int:
        self._conn.execute("SELECT count(*) FROM sqlite_master").fetchone()  # a fresh look
        version: int = self._conn.execute("PRAGMA data_version").fetchone()[0]
        return version


class _Finish(msgspec.Struct, tag=True):
    """To the child: this process's part is the first `side_bytes` of its spool; hash it."""

    side_bytes: int


class _Encoded(msgspec.Struct, tag=True):
    """From the child: its running totals, after each frame."""

    records: int
    bytes: int


class _Done(msgspec.Struct, tag=True):
    """From the child: its part (records, bytes), the SHA-256 of the whole member, and when it
    scrubbed, what (records with a finding, findings by rule: counts only)."""

    records: int
    bytes: int
    sha256: str
    scrubbed_records: int = 0
    scrubbed_by_rule: dict[str, int] = {}


class SplitChild(WorkerChild[_Done]):
    """The child of a split, seen from this process: started on `key`, writing `spool`;
    `on_progress(records, bytes)` gets its running totals (passed on by `poll` and `finish`).
    `side` is this process's spool, which the child hashes once told its part is complete.
    With `scrub`, the child scrubs the records it encodes (with a copy of its scanner)."""

    def __init__(
        self,
        conn: KindlingConnection,
        key: SplitKey,
        label: str,
        spool: BinaryIO,
        side: BinaryIO,
        on_progress: Callable[[int, int], None],
        scrub: Scrubber | None = None,
    ):
        work = functools.partial(_split_child, conn.path, key, label, spool, side, scrub)
        super().__init__(work, "encoding", "kbundle-encoder", _Encoded, _Done)
        self._spool = spool
        self._on_progress = on_progress
        self._handed_over = False
        self.key = key

    def hand_over(self, side_bytes: int) -> None:
        """Tell the child that this process's part is the first `side_bytes` of its spool
        (complete: `finish_spool`), to hash once its own part is done. Once only."""
        if self._handed_over:
            return
        self._handed_over = True
        with contextlib.suppress(OSError):  # a child that stopped early reads nothing more
            self._send(_Finish(side_bytes))

    def finish(self) -> _Done:
        """The child's last word once it has hashed what `hand_over` gave it (nothing, if this
        process never handed its part over: after an error); the error it met is raised."""
        self.hand_over(0)
        return self.wait()

    @property
    def spool(self) -> BinaryIO:
        return self._spool

    def _progress(self, report: _Encoded) -> None:
        self._on_progress(report.records, report.bytes)


def split_key(conn: KindlingConnection, share: float = CHILD_SHARE) -> SplitKey | None:
    """Where a whole export's observations split (the child takes `share` of them), or None
    for too few to split. Inside the export's snapshot."""
    (total,) = conn.execute("SELECT count(*) FROM observations").fetchone()
    index = round(total * share / FRAME_RECORDS) * FRAME_RECORDS
    return observation_split(conn, index) if 0 < index < total else None


def encode_split(
    conn: KindlingConnection,
    child: SplitChild,
    spool: BinaryIO,
    others_spool: BinaryIO,
    label: str,
    progress: Progress,
    scrub: Scrubber | None = None,
) -> list[Member]:
    """Every member, while `child` (started, sharing this snapshot) encodes the first part of
    the observations: this process encodes the rest of them into `spool`, hands that over to
    the child to hash, then encodes the other members into `others_spool`. With `scrub`, both
    scrub what they encode; the child's counts are added to `scrub.tally`."""
    progress.watch = child.poll
    others = [entity for entity in ENTITY_MEMBERS if entity != "observations"]
    streams: dict[str, Iterator[Record]] = {
        "observations": export_observations_from(conn, child.key)
    }
    streams |= {entity: ENTITY_EXPORTS[entity](conn, ExportStreamOptions()) for entity in others}
    try:
        # Not hashed here: the child hashes the whole member, this part included.
        rest = encode_member(
            spool,
            "observations",
            streams["observations"],
            label,
            progress.add,
            scrub=scrub,
            hashed=False,
        )
        finish_spool(spool, label)  # the child reads it
        child.hand_over(rest.entry.bytes)
        members = encode_members(
            others_spool,
            {entity: streams[entity] for entity in others},
            label,
            progress,
            {entity: ENTITY_MEMBERS[entity] for entity in others},
            scrub=scrub,
        )
    except KindlingBundleError:
        child.finish()  # the child's own error comes first, if it met one
        raise
    finally:  # finalize unfinished streams while the connection is open, not at GC
        for stream in streams.values():
            stream.close()  # type: ignore[attr-defined]
    done = child.finish()
    if scrub is not None:
        scrub.tally.merge(done.scrubbed_records, done.scrubbed_by_rule)
    entry = EntityEntry(
        entity="observations",
        member=ENTITY_MEMBERS["observations"],
        records=done.records + rest.entry.records,
        bytes=done.bytes + rest.entry.bytes,
        sha256=done.sha256,
    )
    pieces = ((child.spool, 0, done.bytes), *rest.pieces)
    return [Member(entry, pieces), *members]


def _split_child(
    path: str,
    key: SplitKey,
    label: str,
    spool: BinaryIO,
    side: BinaryIO,
    scrub: Scrubber | None,
    parent: ToParent,
) -> None:
    """In the child: open the database, fix the snapshot and say so; when told to start, encode
    (and scrub) the observations before `key` into `spool`, then hash this process's part from
    `side`."""
    totals = [0, 0]

    def on_frame(records: int, size: int) -> None:
        totals[0] += records
        totals[1] += size
        parent.send(_Encoded(*totals))

    conn = open_store(path, readonly=True)
    with snapshot(conn):
        parent.ready()
        sha256 = hashlib.sha256()
        records = export_observations_before(conn, key)
        mine = type(scrub)(scrub.scanner) if scrub is not None else None  # its own counts
        part = encode_member(spool, "observations", records, label, on_frame, sha256, mine)
        finish_spool(spool, label)
        _hash_file(side, parent.receive(_Finish).side_bytes, sha256, label)
        scrubbed = (mine.tally.records, dict(mine.tally.by_rule)) if mine else (0, {})
        parent.send(_Done(part.entry.records, part.entry.bytes, sha256.hexdigest(), *scrubbed))


def _hash_file(spool: BinaryIO, size: int, sha256: _Hash, label: str) -> None:
    """Hash the first `size` bytes the parent wrote to `spool` (read at offsets: no shared file
    position)."""
    read = written_elsewhere(spool)
    offset = 0
    while offset < size:
        try:
            chunk = read(min(size - offset, _READ_BYTES))
        except OSError as exc:
            raise BundleError(f"{label}: cannot read the spool file: {exc.strerror}") from None
        if not chunk:
            raise BundleError(f"{label}: the spool file ended early")
        sha256.update(chunk)
        offset += len(chunk)
