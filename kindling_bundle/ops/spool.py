"""Members encoded into spool files before the archive is written (ops.write says why).

`encode_member` is the one loop that turns an entity's records into a member's frames: the
writer runs it for every member, and so does an export's worker process (parallel.encoder) for
its part of the observations.

An encrypted export's spools are SealedSpools (io.age): they hold only ciphertext, under a key
that lives in this process's memory (and its forked worker's), so no spooled record reaches the
disk in the clear.
"""

from __future__ import annotations

import contextlib
import hashlib
import os
import sys
import tempfile
from collections.abc import Callable, Iterable, Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, BinaryIO, TypeGuard

from kindling_bundle.errors import BundleError
from kindling_bundle.format.manifest import ENTITY_MEMBERS, EntityEntry, ProgressCallback
from kindling_bundle.format.record_frames import FrameEncoder
from kindling_bundle.io.storage import check_local_destination
from kindling_bundle.records import Record

if TYPE_CHECKING:
    from hashlib import _Hash

    from kindling_bundle.io.age.spool import SealedSpool
    from kindling_bundle.scrub import Scrubber

Piece = tuple[BinaryIO, int, int]
"""Where some of a member's bytes are: (spool, offset, size)."""


@dataclass(frozen=True)
class Member:
    """A member encoded into spools: its manifest entry, and where its bytes are, in order."""

    entry: EntityEntry
    pieces: tuple[Piece, ...]


@contextlib.contextmanager
def spool_file(
    dest: str | os.PathLike[str] | BinaryIO, label: str, sealed: bool = False
) -> Iterator[BinaryIO]:
    """An anonymous temporary file beside a path destination (same filesystem, and not a RAM
    disk by accident), or in TMPDIR for a stream destination; `sealed`: one that holds only
    ciphertext, under a key in this process's memory (io.age.SealedSpool)."""
    directory = None
    if isinstance(dest, str | os.PathLike):  # refused now, not after the records are encoded
        check_local_destination(dest, label=label)
        directory = Path(dest).parent
    prefix = ".kbundle-spool-"
    try:  # entered just below, outside this try (whose except is about creating it)
        if sealed:
            from kindling_bundle.io.age.spool import SealedSpool  # loads `cryptography`

            spool: BinaryIO = SealedSpool(directory, prefix=prefix)
        else:
            spool = tempfile.TemporaryFile(dir=directory, prefix=prefix)  # noqa: SIM115
    except OSError as exc:
        raise BundleError(f"{label}: cannot create a temporary file: {exc.strerror}") from None
    with spool:
        yield spool


class Progress:
    """Records and bytes encoded so far, over every member (a worker's too), for `progress`."""

    def __init__(self, callback: ProgressCallback | None):
        self._callback = callback
        self._records = self._bytes = 0
        self._worker_records = self._worker_bytes = 0
        self.watch: Callable[[], None] | None = None
        """Called at each frame encoded here: a worker's reports are taken then."""

    def add(self, records: int, size: int) -> None:
        self._records += records
        self._bytes += size
        if self.watch is not None:
            self.watch()
        self._report()

    def worker(self, records: int, size: int) -> None:
        """A worker's running totals."""
        self._worker_records, self._worker_bytes = records, size
        self._report()

    def _report(self) -> None:
        if self._callback is not None:
            self._callback(self._records + self._worker_records, self._bytes + self._worker_bytes)


def encode_member(
    spool: BinaryIO,
    entity: str,
    records: Iterable[Record],
    label: str,
    on_frame: Callable[[int, int], None],
    sha256: _Hash | None = None,
    scrub: Scrubber | None = None,
    member: str | None = None,
    hashed: bool = True,
    checked: bool = False,
) -> Member:
    """The entity's records as frames (`FrameEncoder.frames`) at the end of `spool`, hashed
    into `sha256` (a new hash if None) and counted; `on_frame(records, bytes)` after each.
    With `scrub`, each record is scrubbed first (counted in `scrub.tally`): here, where records
    are encoded, so that a worker process scrubs the records it encodes.
    `member` is the member's name where it is not the entity's (an increment's tombstones).
    Not `hashed`: the entry's SHA-256 is left empty, for a part of a member another process
    hashes whole (parallel.encoder). `checked`: as FrameEncoder's."""
    if scrub is not None:
        records = scrub.records(records)
    offset = spool.tell()
    if sha256 is None:
        sha256 = hashlib.sha256()
    count = size = 0
    encoder = FrameEncoder(entity, reuse_buffer=True, checked=checked)
    for records_in_frame, frame in encoder.frames(records):
        if hashed:
            sha256.update(frame)
        try:
            spool.write(frame)
        except OSError as exc:
            raise BundleError(f"{label}: cannot write the spool file: {exc.strerror}") from None
        count += records_in_frame
        size += len(frame)
        on_frame(records_in_frame, len(frame))
    entry = EntityEntry(
        entity=entity,
        member=member or ENTITY_MEMBERS[entity],
        records=count,
        bytes=size,
        sha256=sha256.hexdigest() if hashed else "",
    )
    return Member(entry, ((spool, offset, size),))


def finish_spool(spool: BinaryIO, label: str) -> None:
    """The writer's last word on `spool`, for another process to read it: what it holds in its
    buffer written out (a full disk may show only now), and a SealedSpool's last chunk sealed
    (it stays in the writer's memory until then). Nothing may be written to it after this."""
    try:
        if _is_sealed(spool):
            spool.finish()
        else:
            spool.flush()
    except OSError as exc:
        raise BundleError(f"{label}: cannot write the spool file: {exc.strerror}") from None


def written_elsewhere(spool: BinaryIO) -> Callable[[int], bytes]:
    """Reads, from its start, what another process (forked from this one, or this one's
    parent) wrote to `spool` and finished, without moving the file position both share: by
    offset (pread), or through a SealedSpool's decrypting reader (which leaves this copy's own
    writing state, stale since the fork, alone)."""
    if _is_sealed(spool):
        return spool.written_elsewhere().read
    fd, at = spool.fileno(), 0

    def pread(size: int) -> bytes:
        nonlocal at
        data = os.pread(fd, size, at)
        at += len(data)
        return data

    return pread


def _is_sealed(spool: BinaryIO) -> TypeGuard[SealedSpool]:
    """Whether `spool` is a SealedSpool, without importing io.age (and `cryptography`) for the
    plain exports that never make one: there is none unless its module was loaded."""
    module = sys.modules.get("kindling_bundle.io.age.spool")
    return module is not None and isinstance(spool, module.SealedSpool)


def encode_members(
    spool: BinaryIO,
    streams: Mapping[str, Iterable[Record]],
    label: str,
    progress: Progress,
    names: Mapping[str, str] = ENTITY_MEMBERS,
    *,
    scrub: Scrubber | None = None,
    checked: bool = False,
) -> list[Member]:
    """Each member into the spool, one after the other, in the order of `names` (entity: member
    name): foreign-key order, or an increment's, tombstones first. `checked`: as
    FrameEncoder's."""
    return [
        encode_member(
            spool,
            entity,
            streams.get(entity, ()),
            label,
            progress.add,
            scrub=scrub if entity in ENTITY_MEMBERS else None,  # tombstones hold only ids
            member=names[entity],
            checked=checked,
        )
        for entity in names
    ]
