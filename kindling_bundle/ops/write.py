"""Writing bundles: spool each entity's frames, then write manifest and members into one zstd frame.

A tar header states its member's size before the data, and the manifest (first member) states
every member's size, count and SHA-256, so nothing can be written before all records have been
encoded. Each entity is therefore encoded once, in export order, into an anonymous temporary
file (the spool: beside the destination file, or in TMPDIR for a stream destination) while it is
hashed and counted; then the archive is written from the spool. Memory holds one frame at a time.
When a child process encodes the observations (parallel.encoder), the other members go to a
second spool meanwhile, and the archive takes each member from where it was written.
For a database export the read snapshot covers the spooling only, not the slower compression.

A path destination is written through `io.storage.atomic_file`: a temporary file in the same
directory, fsynced, and renamed into place only when complete, so on any failure there is no file
at the destination (an existing file there is replaced only by a complete bundle). On Linux the
temporary file has no name until it is complete (O_TMPFILE), so a process killed mid-export
(SIGKILL, power loss) leaves nothing behind at all: the kernel frees the unnamed file, as it does
the spool. Elsewhere it is `.NAME.XXXXXXXX.tmp` beside the destination (see atomic_file). A
stream destination (stdout, an upload) is written front to back and flushed, never sought nor
closed.
"""

from __future__ import annotations

import contextlib
import dataclasses
import functools
import hashlib
import os
import sqlite3
import tempfile
import time
from collections.abc import Callable, Generator, Iterable, Iterator, Mapping
from dataclasses import dataclass, field
from itertools import islice
from pathlib import Path
from typing import BinaryIO

from kindling_bundle.db.connection import KindlingConnection, open_store
from kindling_bundle.db.export import (
    ENTITY_EXPORTS,
    ExportStreamOptions,
    export_observation_row_batches,
    export_observations_from,
    label_error,
    observation_split,
    observations_before_sql,
    snapshot,
)
from kindling_bundle.errors import BundleError, KindlingBundleError
from kindling_bundle.format.increment import (
    INCREMENT_MEMBERS,
    IncrementHeader,
    increment_manifest,
)
from kindling_bundle.format.manifest import (
    ENTITY_MEMBERS,
    FORMAT_NAME,
    FORMAT_VERSION,
    FRAME_RECORDS,
    MANIFEST_MEMBER,
    EntityEntry,
    FilterInfo,
    Manifest,
    ProgressCallback,
    SourceInfo,
    ToolInfo,
    encode_manifest,
)
from kindling_bundle.format.reader import source_label
from kindling_bundle.format.record_frames import FrameEncoder
from kindling_bundle.format.tar import MAX_MTIME, end_of_archive, member_header, padding
from kindling_bundle.format.zstd_frames import MAX_LEVEL, MIN_LEVEL, compressor
from kindling_bundle.io.storage import atomic_file, check_local_destination
from kindling_bundle.parallel.encoder import ChildEncoder, ReadingChild
from kindling_bundle.parallel.forking import PARALLEL_MIN_ROWS, parallel_available
from kindling_bundle.records import Record

BundleDestination = str | os.PathLike[str] | BinaryIO

TOOL_NAME = "kindling-bundle"
MAX_CREATED_AT = MAX_MTIME * 1000 + 999
_COPY_BYTES = 1 << 20
STEP_RECORDS = 64
"""Records read between pauses of a member encoded beside the observations' child."""


@dataclass(frozen=True)
class BundleOptions:
    """How to write a bundle.

    `filter`: which records (recorded in the manifest). A bundle is always referentially closed,
    so `write_bundle` exports a filtered selection with its references (`include_references` is
    implied). `created_at`: epoch ms stored in the
    manifest and as every member's mtime; None means $SOURCE_DATE_EPOCH (seconds) if set, else
    now. Fix it to get byte-identical bundles from identical data. `level`: zstd level 1-19.
    `parallel`: encode a large export's observations in a second process where the platform
    allows (kindling_bundle.parallel.encoder); the bundle is the same either way.
    """

    filter: ExportStreamOptions = field(default_factory=ExportStreamOptions)
    created_at: int | None = None
    level: int = 3
    parallel: bool = True

    def __post_init__(self) -> None:
        if not isinstance(self.filter, ExportStreamOptions):
            raise TypeError(f"filter must be ExportStreamOptions, got {type(self.filter).__name__}")
        if isinstance(self.level, bool) or not isinstance(self.level, int):
            raise ValueError(f"level must be an integer, got {self.level!r}")
        if not MIN_LEVEL <= self.level <= MAX_LEVEL:
            raise ValueError(f"level must be {MIN_LEVEL}..{MAX_LEVEL}, got {self.level}")
        if self.created_at is not None:
            _check_created_at(self.created_at, "created_at")


def _check_created_at(value: object, what: str) -> int:
    if isinstance(value, bool) or not isinstance(value, int):
        raise ValueError(f"{what} must be an integer (epoch ms), got {value!r}")
    if not 0 <= value <= MAX_CREATED_AT:
        raise ValueError(f"{what} {value} is outside 0..{MAX_CREATED_AT} (what tar can date)")
    return value


def resolve_created_at(created_at: int | None) -> int:
    """The creation time a bundle gets: the explicit value, else $SOURCE_DATE_EPOCH, else now."""
    if created_at is not None:
        return _check_created_at(created_at, "created_at")
    env = os.environ.get("SOURCE_DATE_EPOCH")
    if env is None or env == "":
        return time.time_ns() // 1_000_000
    if not env.isdigit():
        raise KindlingBundleError(f"SOURCE_DATE_EPOCH={env!r} is not a whole number of seconds")
    try:
        return _check_created_at(int(env) * 1000, "SOURCE_DATE_EPOCH")
    except ValueError as exc:
        raise KindlingBundleError(str(exc)) from None


def write_bundle(
    conn: KindlingConnection,
    dest: BundleDestination,
    opts: BundleOptions | None = None,
    *,
    progress: ProgressCallback | None = None,
    on_output: Callable[[bytes], None] | None = None,
) -> Manifest:
    """Export a Kindling database to a bundle at `dest` (a path or a writable binary stream).

    All four entities come from one read snapshot, so they agree with each other. A filtered
    export brings the records its selection references (kindling_bundle.db.export's closure), so
    every bundle is referentially closed.
    `progress(records_done, bytes_done)` is called as records are encoded; `on_output(data)`
    with each piece of the bundle as it is written (to hash it without reading it back).
    Returns the manifest.
    """
    opts = opts or BundleOptions()
    created_at = resolve_created_at(opts.created_at)
    selection = opts.filter
    if selection.filtered and not selection.include_references:
        selection = dataclasses.replace(selection, include_references=True)
    label = source_label(dest)
    with contextlib.ExitStack() as stack:
        spool = stack.enter_context(_spool(dest, label))
        parallel = opts.parallel and _worth_a_process(conn)
        # Opened before the snapshot: it tells whether anything is committed after it starts.
        # (A caller's transaction may have begun before commits the witness would not see.)
        split = parallel and not selection.filtered and not conn.in_transaction
        witness = _Witness.open(conn) if split else None
        if witness is not None:
            stack.callback(witness.close)
        with snapshot(conn):
            streams = {entity: export(conn, selection) for entity, export in ENTITY_EXPORTS.items()}
            try:
                members = None
                if parallel:
                    side = stack.enter_context(_spool(dest, label))
                    if witness is not None:
                        members = _encode_split(
                            spool, side, conn, witness, streams, label, progress
                        )
                    if members is None:
                        streams["observations"].close()  # type: ignore[attr-defined]
                        rows = export_observation_row_batches(conn, selection, FRAME_RECORDS)
                        streams["observations"] = rows  # closed below with the others
                        members = _encode_beside_child(
                            spool, side, rows, streams, label, progress, conn
                        )
                else:
                    members = _encode_entities(spool, streams, label, _Progress(progress))
            finally:  # finalize unfinished streams while the connection is open, not at GC
                for stream in streams.values():
                    stream.close()  # type: ignore[attr-defined]
        entries = [member.entry for member in members]
        manifest = _manifest(created_at, getattr(conn, "generation", None), selection, entries)
        _write_archive(dest, label, members, manifest, opts.level, on_output)
    return manifest


def write_bundle_from_records(
    dest: BundleDestination,
    streams: Mapping[str, Iterable[Record]],
    opts: BundleOptions | None = None,
    *,
    source_generation: int | None = None,
    progress: ProgressCallback | None = None,
    increment: IncrementHeader | None = None,
) -> Manifest:
    """Write a bundle from record streams that do not come from a database (convert, merge).

    `streams` maps entity names ("observations", ...) to iterables of that entity's records, in
    the order they should be stored; missing entities are empty. They are consumed one after
    the other in foreign-key order, so they may be lazy. `opts.filter` is only recorded in the
    manifest; `source_generation` is the Kindling schema generation the records came from, if
    known. The caller is responsible for referential closure.

    With `increment` (ops.increment), the bundle is an incremental one (format version 2.0):
    `streams` may also hold "tombstones" (Tombstone records, written first), and the manifest
    names the base and the snapshot's counts.
    """
    names = ENTITY_MEMBERS if increment is None else INCREMENT_MEMBERS
    unknown = set(streams) - set(names)
    if unknown:
        raise ValueError(f"unknown entities: {', '.join(sorted(unknown))}")
    opts = opts or BundleOptions()
    created_at = resolve_created_at(opts.created_at)
    label = source_label(dest)
    with _spool(dest, label) as spool:
        members = _encode_entities(spool, streams, label, _Progress(progress), names)
        entries = [member.entry for member in members]
        manifest = _manifest(created_at, source_generation, opts.filter, entries)
        if increment is not None:
            manifest = increment_manifest(manifest, increment.base, increment.state)
        _write_archive(dest, label, members, manifest, opts.level)
    return manifest


def _manifest(
    created_at: int,
    generation: int | None,
    export_filter: ExportStreamOptions,
    entries: list[EntityEntry],
) -> Manifest:
    from kindling_bundle import __version__

    scope = export_filter.scope_ids
    return Manifest(
        format=FORMAT_NAME,
        format_version=FORMAT_VERSION,
        created_at=created_at,
        tool=ToolInfo(name=TOOL_NAME, version=__version__),
        source=SourceInfo(schema_generation=generation),
        export_filter=FilterInfo(
            scope_ids=dict(sorted(scope.items())) if scope else None,
            from_ts=export_filter.from_ts,
            to_ts=export_filter.to_ts,
            include_references=export_filter.include_references,
        ),
        entities=entries,
    )


@contextlib.contextmanager
def _spool(dest: BundleDestination, label: str) -> Iterator[BinaryIO]:
    """An anonymous temporary file beside a path destination (same filesystem, and not a RAM
    disk by accident), or in TMPDIR for a stream destination."""
    directory = None
    if isinstance(dest, str | os.PathLike):  # refused now, not after the records are encoded
        check_local_destination(dest, label=label)
        directory = Path(dest).parent
    try:  # entered just below, outside this try (whose except is about creating it)
        spool = tempfile.TemporaryFile(dir=directory, prefix=".kbundle-spool-")  # noqa: SIM115
    except OSError as exc:
        raise BundleError(f"{label}: cannot create a temporary file: {exc.strerror}") from None
    with spool:
        yield spool  # type: ignore[misc]


def _worth_a_process(conn: KindlingConnection) -> bool:
    if not parallel_available():
        return False
    try:  # an upper bound of the count, read from the end of the table's b-tree
        last = conn.execute("SELECT coalesce(max(rowid), 0) FROM observations").fetchone()[0]
    except sqlite3.DatabaseError:  # the export stream meets it too, and says so in its words
        return False
    return last >= PARALLEL_MIN_ROWS


class _Progress:
    """Records and bytes encoded so far, over every member (the child's too), for `progress`."""

    def __init__(self, callback: ProgressCallback | None):
        self._callback = callback
        self._records = self._bytes = 0
        self._child_records = self._child_bytes = 0

    def add(self, records: int, size: int) -> None:
        self._records += records
        self._bytes += size
        self._report()

    def child(self, records: int, size: int) -> None:
        """The child's running totals (parallel.encoder reports them so)."""
        self._child_records, self._child_bytes = records, size
        self._report()

    def _report(self) -> None:
        if self._callback is not None:
            self._callback(self._records + self._child_records, self._bytes + self._child_bytes)


@dataclass(frozen=True)
class _Spooled:
    """A member encoded into spools: its manifest entry, and where its bytes are, in order
    ((spool, offset, size) pieces)."""

    entry: EntityEntry
    pieces: tuple[tuple[BinaryIO, int, int], ...]


def _encode_entities(
    spool: BinaryIO,
    streams: Mapping[str, Iterable[Record]],
    label: str,
    progress: _Progress,
    names: Mapping[str, str] = ENTITY_MEMBERS,
) -> list[_Spooled]:
    """Encode each member's frames into the spool, in member order (`names`: FK order, or an
    increment's, tombstones first)."""
    return [
        _finished(_entity_steps(spool, entity, streams.get(entity, ()), label, progress, names))
        for entity in names
    ]


def _entity_steps(
    spool: BinaryIO,
    entity: str,
    stream: Iterable[Record],
    label: str,
    progress: _Progress,
    names: Mapping[str, str] = ENTITY_MEMBERS,
) -> Generator[None, None, _Spooled]:
    """One member's frames into the spool, hashed and counted, pausing every STEP_RECORDS
    records (so that parallel.encoder can take it a step of a millisecond or two at a time, and
    its child never waits long for rows); returns where the member is. The frames are those of
    `FrameEncoder.frames` over the whole stream: batches of FRAME_RECORDS, then the rest."""
    offset = spool.tell()
    sha256 = hashlib.sha256()
    count = size = 0
    encoder = FrameEncoder(entity)
    batch: list[Record] = []
    records = iter(stream)
    while True:
        before = len(batch)
        batch.extend(islice(records, STEP_RECORDS))
        ended = len(batch) - before < STEP_RECORDS
        if not ended and len(batch) < FRAME_RECORDS:  # FRAME_RECORDS is a multiple of steps
            yield
            continue
        for records_in_frame, frame in encoder.frames(batch):
            sha256.update(frame)
            try:
                spool.write(frame)
            except OSError as exc:
                raise BundleError(f"{label}: cannot write the spool file: {exc.strerror}") from None
            count += records_in_frame
            size += len(frame)
            progress.add(records_in_frame, len(frame))
        if ended:
            break
        batch = []
        yield
    member = names[entity]
    entry = EntityEntry(
        entity=entity, member=member, records=count, bytes=size, sha256=sha256.hexdigest()
    )
    return _Spooled(entry, ((spool, offset, size),))


def _finished(
    steps: Generator[None, None, _Spooled], between: Callable[[], None] | None = None
) -> _Spooled:
    """Run the steps to the end (calling `between()` after each); what they return."""
    while True:
        try:
            next(steps)
        except StopIteration as end:
            return end.value
        if between is not None:
            between()


class _Others:
    """The members after observations, encoded into the side spool a step at a time while an
    observations' child works (ChildEncoder.send's `spare` work, or between its progress
    reports). An error is kept until the observations are done: one of theirs comes first, in
    foreign-key order."""

    def __init__(
        self,
        side: BinaryIO,
        streams: Mapping[str, Iterable[Record]],
        label: str,
        progress: _Progress,
    ):
        self.members: list[_Spooled] = []
        self.error: KindlingBundleError | None = None
        self._steps = self._all(side, streams, label, progress)

    def step(self) -> Iterator[None]:
        """A step at a time, until all are written or one failed."""
        while self.error is None:
            try:
                next(self._steps)
            except StopIteration:
                return
            except KindlingBundleError as exc:
                self.error = exc
                return
            yield

    def _all(
        self,
        side: BinaryIO,
        streams: Mapping[str, Iterable[Record]],
        label: str,
        progress: _Progress,
    ) -> Iterator[None]:
        for entity in ENTITY_MEMBERS:
            if entity != "observations":
                steps = _entity_steps(side, entity, streams.get(entity, ()), label, progress)
                self.members.append((yield from steps))


def _encode_beside_child(
    spool: BinaryIO,
    side: BinaryIO,
    rows: Iterable[list[tuple]],
    streams: Mapping[str, Iterable[Record]],
    label: str,
    callback: ProgressCallback | None,
    conn: KindlingConnection,
) -> list[_Spooled]:
    """The observations encoded by a child into `spool` (parallel.encoder) from the rows this
    process reads, while this process encodes the other entities into `side` whenever the child
    is busy: on two cores the two halves overlap. Errors come in foreign-key order, as they
    would in one process."""
    progress = _Progress(callback)
    others = _Others(side, streams, label, progress)
    child = ChildEncoder(spool, functools.partial(label_error, conn), progress.child)
    try:
        steps = others.step()
        child.send(rows, steps)
        child.raise_if_stopped()
        for _ in steps:  # what the child left undone, while it finishes
            child.pump()
        count, size, digest = child.finish()
    except OSError as exc:  # the child's, reported through its pipe
        raise BundleError(f"{label}: cannot write the spool file: {exc.strerror}") from None
    finally:
        child.close()
    return _with_observations(others, count, digest, ((spool, 0, size),))


def _with_observations(
    others: _Others, records: int, digest: str, pieces: tuple[tuple[BinaryIO, int, int], ...]
) -> list[_Spooled]:
    """Every member, observations (in `pieces`) first; an error the other members kept is
    raised now, after any of the observations' own."""
    if others.error is not None:
        raise others.error
    entry = EntityEntry(
        entity="observations",
        member=ENTITY_MEMBERS["observations"],
        records=records,
        bytes=sum(size for _, _, size in pieces),
        sha256=digest,
    )
    return [_Spooled(entry, pieces), *others.members]


CHILD_SHARE = 0.62
"""Of a whole export's observations, the part a ReadingChild reads and encodes: about what
balances the work, since this process also encodes capsules, summaries and pins. Measured on the
200,000-observation sample (5 runs each, in one process): the encoding phase took 1.04 s at
0.53 (the child idle for 0.3 s of it), 0.82-0.86 s at 0.60-0.66, 0.87 s at 0.72."""


class _Witness:
    """A second connection that tells whether anything was committed since it was opened (a
    connection's `PRAGMA data_version` does not move inside a read transaction, so the export's
    own connection cannot tell)."""

    def __init__(self, conn: KindlingConnection):
        self._conn = conn
        self._first = self._version()

    @classmethod
    def open(cls, conn: KindlingConnection) -> _Witness | None:
        """A witness for `conn`'s database file, or None (no file, or it cannot be opened)."""
        path = getattr(conn, "path", "")
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
        return self._conn.execute("PRAGMA data_version").fetchone()[0]


def _encode_split(
    spool: BinaryIO,
    side: BinaryIO,
    conn: KindlingConnection,
    witness: _Witness,
    streams: Mapping[str, Iterable[Record]],
    label: str,
    callback: ProgressCallback | None,
) -> list[_Spooled] | None:
    """A whole export's observations in two parts: the first CHILD_SHARE read and encoded by a
    child into `spool` (parallel.encoder.ReadingChild), the rest here into `side`, then the other
    entities here into `side`. The split falls on a multiple of FRAME_RECORDS, so the frames are
    those of one pass. None if the child cannot share this snapshot (something was committed
    since it began): then nothing was written, and the caller encodes another way."""
    (total,) = conn.execute("SELECT count(*) FROM observations").fetchone()
    index = round(total * CHILD_SHARE / FRAME_RECORDS) * FRAME_RECORDS
    key = observation_split(conn, index) if 0 < index < total else None
    if key is None:
        return None
    progress = _Progress(callback)
    sql, params = observations_before_sql(key)
    on_error = functools.partial(label_error, conn)
    child = ReadingChild(conn.path, sql, params, spool, side, on_error, progress.child)
    rest = export_observations_from(conn, key)
    try:
        if not child.ready() or not witness.unchanged():
            return None  # the child has written nothing; close() stops it
        child.start()
        try:
            steps = _entity_steps(side, "observations", rest, label, progress)
            part = _finished(steps, child.pump)
        except KindlingBundleError:
            child.finish(0)  # raises the child's error, if it met one: it comes first
            raise
        others = _Others(side, streams, label, progress)
        for _ in others.step():
            child.pump()
        side.flush()
        count, size, digest = child.finish(part.entry.bytes)
    except OSError as exc:  # the child's, reported through its pipe
        raise BundleError(f"{label}: cannot write the spool file: {exc.strerror}") from None
    finally:
        rest.close()  # type: ignore[attr-defined]
        child.close()
    pieces = ((spool, 0, size), *part.pieces)
    return _with_observations(others, count + part.entry.records, digest, pieces)


def _write_archive(
    dest: BundleDestination,
    label: str,
    members: list[_Spooled],
    manifest: Manifest,
    level: int,
    on_output: Callable[[bytes], None] | None = None,
) -> None:
    try:
        with _destination(dest) as out:
            _emit(_Tee(out, on_output) if on_output else out, members, manifest, level)
    except BrokenPipeError:  # the reader went away (`| head`): the caller decides, as for any pipe
        raise
    except OSError as exc:
        raise BundleError(f"{label}: cannot write: {exc.strerror or exc}") from None


class _Tee:
    """Writes to `out`, showing each piece to `see` first."""

    def __init__(self, out: BinaryIO, see: Callable[[bytes], None]):
        self._out = out
        self._see = see

    def write(self, data: bytes) -> int:
        self._see(data)
        return self._out.write(data)

    def flush(self) -> None:
        self._out.flush()


@contextlib.contextmanager
def _destination(dest: BundleDestination) -> Iterator[BinaryIO]:
    """The stream to write to; for a path, a file that appears only when complete."""
    if isinstance(dest, str | os.PathLike):
        with atomic_file(dest) as out:
            yield out
        return
    yield dest
    dest.flush()


def _emit(out: BinaryIO, members: list[_Spooled], manifest: Manifest, level: int) -> None:
    """The archive: manifest member, then each entity member copied from its spool, then the
    end-of-archive marker, all in one zstd frame."""
    mtime = manifest.created_at // 1000
    written = 0
    with compressor(level).stream_writer(out, closefd=False) as zstd:

        def put(data: bytes) -> None:
            nonlocal written
            zstd.write(data)
            written += len(data)

        manifest_bytes = encode_manifest(manifest)
        put(member_header(MANIFEST_MEMBER, len(manifest_bytes), mtime))
        put(manifest_bytes)
        put(padding(len(manifest_bytes)))
        for member in members:
            entry = member.entry
            put(member_header(entry.member, entry.bytes, mtime))
            for spool, offset, size in member.pieces:
                spool.seek(offset)
                remaining = size
                while remaining:
                    chunk = spool.read(min(remaining, _COPY_BYTES))
                    if not chunk:
                        raise BundleError(f"{entry.member}: the spool file ended early")
                    put(chunk)
                    remaining -= len(chunk)
            put(padding(entry.bytes))
        put(end_of_archive(written))
