"""Writing bundles: spool each entity's frames, then write manifest and members into one zstd frame.

A tar header states its member's size before the data, and the manifest (first member) states
every member's size, count and SHA-256, so nothing can be written before all records have been
encoded. Each entity is therefore encoded once, in export order, into one anonymous temporary
file (the spool: beside the destination file, or in TMPDIR for a stream destination) while it is
hashed and counted; then the archive is written from the spool. Memory holds one frame at a time.
For a database export the read snapshot covers the spooling only, not the slower compression.

A path destination is written through `storage.atomic_file`: a temporary file in the same
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
from collections.abc import Iterable, Iterator, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import BinaryIO

from kindling_bundle.bundle.encoder_process import (
    PARALLEL_MIN_ROWS,
    encode_rows,
    parallel_available,
)
from kindling_bundle.bundle.format import (
    ENTITY_MEMBERS,
    FORMAT_NAME,
    FORMAT_VERSION,
    MANIFEST_MEMBER,
    EntityEntry,
    FilterInfo,
    Manifest,
    ProgressCallback,
    SourceInfo,
    ToolInfo,
    encode_manifest,
)
from kindling_bundle.bundle.frames import FrameEncoder
from kindling_bundle.bundle.reader import source_label
from kindling_bundle.bundle.tarstream import MAX_MTIME, end_of_archive, member_header, padding
from kindling_bundle.bundle.zstdio import MAX_LEVEL, MIN_LEVEL, compressor
from kindling_bundle.errors import BundleError, KindlingBundleError
from kindling_bundle.export import (
    ENTITY_EXPORTS,
    ExportStreamOptions,
    export_observation_rows,
    label_error,
    snapshot,
)
from kindling_bundle.records import Record
from kindling_bundle.storage import atomic_file, check_local_destination
from kindling_bundle.store.connection import KindlingConnection

BundleDestination = str | os.PathLike[str] | BinaryIO

TOOL_NAME = "kindling-bundle"
MAX_CREATED_AT = MAX_MTIME * 1000 + 999
_COPY_BYTES = 1 << 20


@dataclass(frozen=True)
class BundleOptions:
    """How to write a bundle.

    `filter`: which records (recorded in the manifest). A bundle is always referentially closed,
    so `write_bundle` exports a filtered selection with its references (`include_references` is
    implied). `created_at`: epoch ms stored in the
    manifest and as every member's mtime; None means $SOURCE_DATE_EPOCH (seconds) if set, else
    now. Fix it to get byte-identical bundles from identical data. `level`: zstd level 1-19.
    `parallel`: encode a large export's observations in a second process where the platform
    allows (kindling_bundle.bundle.encoder_process); the bundle is the same either way.
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
) -> Manifest:
    """Export a Kindling database to a bundle at `dest` (a path or a writable binary stream).

    All four entities come from one read snapshot, so they agree with each other. A filtered
    export brings the records its selection references (kindling_bundle.export's closure), so
    every bundle is referentially closed.
    `progress(records_done, bytes_done)` is called as records are encoded. Returns the manifest.
    """
    opts = opts or BundleOptions()
    created_at = resolve_created_at(opts.created_at)
    selection = opts.filter
    if selection.filtered and not selection.include_references:
        selection = dataclasses.replace(selection, include_references=True)
    label = source_label(dest)
    with _spool(dest, label) as spool:
        with snapshot(conn):
            streams = {entity: export(conn, selection) for entity, export in ENTITY_EXPORTS.items()}
            if opts.parallel and _worth_a_process(conn):
                streams["observations"].close()  # type: ignore[attr-defined]
                streams["observations"] = _RowsInChild(export_observation_rows(conn, selection))
            try:
                entries = _encode_entities(spool, streams, label, progress, conn)
            finally:  # finalize unfinished streams while the connection is open, not at GC
                for stream in streams.values():
                    stream.close()  # type: ignore[attr-defined]
        manifest = _manifest(created_at, getattr(conn, "generation", None), selection, entries)
        _write_archive(dest, label, spool, manifest, opts.level)
    return manifest


def write_bundle_from_records(
    dest: BundleDestination,
    streams: Mapping[str, Iterable[Record]],
    opts: BundleOptions | None = None,
    *,
    source_generation: int | None = None,
    progress: ProgressCallback | None = None,
) -> Manifest:
    """Write a bundle from record streams that do not come from a database (convert, merge).

    `streams` maps entity names ("observations", ...) to iterables of that entity's records, in
    the order they should be stored; missing entities are empty. They are consumed one after
    the other in foreign-key order, so they may be lazy. `opts.filter` is only recorded in the
    manifest; `source_generation` is the Kindling schema generation the records came from, if
    known. The caller is responsible for referential closure.
    """
    unknown = set(streams) - set(ENTITY_MEMBERS)
    if unknown:
        raise ValueError(f"unknown entities: {', '.join(sorted(unknown))}")
    opts = opts or BundleOptions()
    created_at = resolve_created_at(opts.created_at)
    label = source_label(dest)
    with _spool(dest, label) as spool:
        entries = _encode_entities(spool, streams, label, progress)
        manifest = _manifest(created_at, source_generation, opts.filter, entries)
        _write_archive(dest, label, spool, manifest, opts.level)
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


class _RowsInChild:
    """Observation rows to be encoded by a child process (encoder_process)."""

    def __init__(self, rows: Iterator[tuple]):
        self.rows = rows

    def close(self) -> None:
        self.rows.close()  # type: ignore[attr-defined]


def _worth_a_process(conn: KindlingConnection) -> bool:
    if not parallel_available():
        return False
    try:  # an upper bound of the count, read from the end of the table's b-tree
        last = conn.execute("SELECT coalesce(max(rowid), 0) FROM observations").fetchone()[0]
    except sqlite3.DatabaseError:  # the export stream meets it too, and says so in its words
        return False
    return last >= PARALLEL_MIN_ROWS


def _offset_progress(
    progress: ProgressCallback | None,
    records_before: int,
    bytes_before: int,
    records: int,
    size: int,
) -> None:
    if progress is not None:
        progress(records_before + records, bytes_before + size)


def _encode_entities(
    spool: BinaryIO,
    streams: Mapping[str, Iterable[Record] | _RowsInChild],
    label: str,
    progress: ProgressCallback | None,
    conn: KindlingConnection | None = None,
) -> list[EntityEntry]:
    """Encode each entity's frames into the spool, in FK order; their manifest entries."""
    entries = []
    records_done = bytes_done = 0
    for entity, member in ENTITY_MEMBERS.items():
        stream = streams.get(entity, ())
        if isinstance(stream, _RowsInChild):
            assert conn is not None
            reported = functools.partial(_offset_progress, progress, records_done, bytes_done)
            try:
                count, size, digest = encode_rows(
                    spool, stream.rows, functools.partial(label_error, conn), reported
                )
            except OSError as exc:
                raise BundleError(f"{label}: cannot write the spool file: {exc.strerror}") from None
            records_done += count
            bytes_done += size
            entries.append(
                EntityEntry(entity=entity, member=member, records=count, bytes=size, sha256=digest)
            )
            continue
        sha256 = hashlib.sha256()
        count = size = 0
        for records, frame in FrameEncoder(entity).frames(stream):
            sha256.update(frame)
            try:
                spool.write(frame)
            except OSError as exc:
                raise BundleError(f"{label}: cannot write the spool file: {exc.strerror}") from None
            count += records
            size += len(frame)
            records_done += records
            bytes_done += len(frame)
            if progress is not None:
                progress(records_done, bytes_done)
        entries.append(
            EntityEntry(
                entity=entity, member=member, records=count, bytes=size, sha256=sha256.hexdigest()
            )
        )
    return entries


def _write_archive(
    dest: BundleDestination, label: str, spool: BinaryIO, manifest: Manifest, level: int
) -> None:
    try:
        with _destination(dest) as out:
            _emit(out, spool, manifest, level)
    except BrokenPipeError:  # the reader went away (`| head`): the caller decides, as for any pipe
        raise
    except OSError as exc:
        raise BundleError(f"{label}: cannot write: {exc.strerror or exc}") from None


@contextlib.contextmanager
def _destination(dest: BundleDestination) -> Iterator[BinaryIO]:
    """The stream to write to; for a path, a file that appears only when complete."""
    if isinstance(dest, str | os.PathLike):
        with atomic_file(dest) as out:
            yield out
        return
    yield dest
    dest.flush()


def _emit(out: BinaryIO, spool: BinaryIO, manifest: Manifest, level: int) -> None:
    """The archive: manifest member, then each entity member copied from the spool, then the
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
        spool.seek(0)
        for entry in manifest.entities:
            put(member_header(entry.member, entry.bytes, mtime))
            remaining = entry.bytes
            while remaining:
                chunk = spool.read(min(remaining, _COPY_BYTES))
                if not chunk:
                    raise BundleError(f"{entry.member}: the spool file ended early")
                put(chunk)
                remaining -= len(chunk)
            put(padding(entry.bytes))
        put(end_of_archive(written))
