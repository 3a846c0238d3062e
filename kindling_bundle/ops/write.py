"""Writing bundles: spool each entity's frames, then write manifest and members into one zstd frame.

A tar header states its member's size before the data, and the manifest (first member) states
every member's size, count and SHA-256, so nothing can be written before all records have been
encoded. Each entity is therefore encoded once, in export order, into an anonymous temporary
file (the spool: beside the destination file, or in TMPDIR for a stream destination) while it is
hashed and counted (ops.spool); then the archive is written from the spool. Memory holds one
frame at a time. When a second process encodes part of the observations (parallel.encoder), it
writes a spool of its own, and the archive takes each member's pieces from where they were
written. For a database export the read snapshot covers the spooling only, not the slower
compression.

A path destination is written through `io.storage.atomic_file`: a temporary file in the same
directory, fsynced, and renamed into place only when complete, so on any failure there is no file
at the destination (an existing file there is replaced only by a complete bundle). On Linux the
temporary file has no name until it is complete (O_TMPFILE), so a process killed mid-export
(SIGKILL, power loss) leaves nothing behind at all: the kernel frees the unnamed file, as it does
the spool. Elsewhere it is `.NAME.XXXXXXXX.tmp` beside the destination (see atomic_file). A
stream destination (stdout, an upload) is written front to back and flushed, never sought nor
closed.

An encrypted bundle (BundleOptions.recipients) is the same archive written through an age
encrypting writer (io.age) inside that temporary file or stream, and its spools are
SealedSpools: nothing that reaches a file holds plaintext records. A signed and encrypted
bundle is signed inside: the signature member is in the plaintext bundle, so without a key
nobody learns who signed it.
"""

from __future__ import annotations

import contextlib
import dataclasses
import io
import os
import time
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, BinaryIO, cast

import msgspec

from kindling_bundle.db.connection import KindlingConnection
from kindling_bundle.db.export import (
    ENTITY_EXPORTS,
    ExportStreamOptions,
    observations_bound,
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
    MANIFEST_MEMBER,
    SIGNATURE_MEMBER,
    SIGNED_FORMAT_VERSION,
    EntityEntry,
    FilterInfo,
    Manifest,
    ProgressCallback,
    ScrubInfo,
    SourceInfo,
    ToolInfo,
    encode_manifest,
)
from kindling_bundle.format.reader import source_label
from kindling_bundle.format.tar import (
    MAX_MTIME,
    archive_size,
    end_of_archive,
    member_header,
    padding,
)
from kindling_bundle.format.zstd_frames import MAX_LEVEL, MIN_LEVEL, compressor
from kindling_bundle.io.envelope import encrypting
from kindling_bundle.io.storage import atomic_file
from kindling_bundle.ops.spool import Member, Progress, encode_members, spool_file
from kindling_bundle.parallel import Workers, check_workers, choose_workers
from kindling_bundle.parallel.encoder import SplitChild, Witness, encode_split, split_key
from kindling_bundle.records import Record

if TYPE_CHECKING:  # scrub (its rules engine) and keys (`cryptography`) only where used
    from kindling_bundle.io.age.recipients import Recipient
    from kindling_bundle.io.sshsig.keys import SigningKey
    from kindling_bundle.scrub import Scanner, Scrubber

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
    `workers`: processes that encode a database export's observations, "auto" or a number
    (kindling_bundle.parallel.choose_workers); the bundle is the same whatever the number.
    `sign_key`: sign the bundle (format 1.1: the SSH signature over the manifest's bytes, in a
    member right after it); ed25519 and RSA signatures are deterministic, so a signed bundle
    stays byte-identical from run to run. Unsigned bundles are format 1.0.
    `recipients`: encrypt the bundle to these public keys (io.age.parse_recipient,
    read_recipients_file): the output is an age file whose plaintext is the bundle (the same
    bytes as without them, a signature included), and every spool holds only ciphertext.
    `sealed_spools`: spools hold only ciphertext without recipients too (for records that come
    from an encrypted input).
    `scrub`: replace every secret this scanner finds in the records' free text by
    `[REDACTED:<rule-id>]` where they are encoded (in the worker too), and say so in the
    manifest's optional `scrub` record (the format version stays what it would be).
    """

    filter: ExportStreamOptions = field(default_factory=ExportStreamOptions)
    created_at: int | None = None
    level: int = 3
    workers: Workers = "auto"
    sign_key: SigningKey | None = None
    recipients: Sequence[Recipient] = ()
    sealed_spools: bool = False
    scrub: Scanner | None = None

    def __post_init__(self) -> None:
        recipients = tuple(self.recipients)
        if recipients:  # the key modules load `cryptography`: only for exports that use keys
            from kindling_bundle.io.age.recipients import Recipient

            if not all(isinstance(recipient, Recipient) for recipient in recipients):
                raise TypeError(
                    "recipients must be Recipient objects (see io.age.recipients.parse_recipient)"
                )
        object.__setattr__(self, "recipients", recipients)
        if not isinstance(self.filter, ExportStreamOptions):
            raise TypeError(f"filter must be ExportStreamOptions, got {type(self.filter).__name__}")
        if isinstance(self.level, bool) or not isinstance(self.level, int):
            raise ValueError(f"level must be an integer, got {self.level!r}")
        if not MIN_LEVEL <= self.level <= MAX_LEVEL:
            raise ValueError(f"level must be {MIN_LEVEL}..{MAX_LEVEL}, got {self.level}")
        if self.created_at is not None:
            _check_created_at(self.created_at, "created_at")
        check_workers(self.workers)
        if self.sign_key is not None and not isinstance(self.sign_key, _signing_key_class()):
            raise TypeError(
                f"sign_key must be a SigningKey (load_signing_key), got "
                f"{type(self.sign_key).__name__}"
            )
        if self.scrub is not None and not isinstance(self.scrub, _scanner_class()):
            raise TypeError(f"scrub must be a Scanner, got {type(self.scrub).__name__}")


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
    on_bundle: Callable[[bytes], None] | None = None,
) -> Manifest:
    """Export a Kindling database to a bundle at `dest` (a path or a writable binary stream).

    All four entities come from one read snapshot, so they agree with each other. A filtered
    export brings the records its selection references (kindling_bundle.db.export's closure), so
    every bundle is referentially closed.
    `progress(records_done, bytes_done)` is called as records are encoded; `on_output(data)`
    with each piece of the output as it is written (to hash it without reading it back);
    `on_bundle(data)` with each piece of the bundle itself, which for an encrypted one is the
    plaintext (what an increment's base names, spec 16.2). Returns the manifest.
    """
    opts = opts or BundleOptions()
    created_at = resolve_created_at(opts.created_at)
    selection = opts.filter
    if selection.filtered and not selection.include_references:
        selection = dataclasses.replace(selection, include_references=True)
    label = source_label(dest)
    scrub = _scrubber(opts)
    with contextlib.ExitStack() as stack:
        sealed = _sealed(opts)
        spool = stack.enter_context(spool_file(dest, label, sealed))
        tally = Progress(progress)
        witness = None
        if choose_workers(opts.workers, observations_bound(conn)) > 1:
            # Opened before the snapshot: it tells whether anything is committed after it starts.
            witness = Witness.for_split(conn, selection)
            if witness is not None:
                stack.callback(witness.close)
        with snapshot(conn):
            child = None
            if witness is not None:
                child = _split(conn, witness, spool, dest, label, tally, stack, sealed, scrub)
            if child is not None:
                others = stack.enter_context(spool_file(dest, label, sealed))
                members = encode_split(conn, child, spool, others, label, tally, scrub)
            else:
                members = _encode_here(conn, selection, spool, label, tally, scrub)
        entries = [member.entry for member in members]
        generation = getattr(conn, "generation", None)
        manifest = _manifest(created_at, generation, selection, entries, opts.sign_key, scrub)
        _write_archive(dest, label, members, manifest, opts, on_output, on_bundle)
    return manifest


def _encode_here(
    conn: KindlingConnection,
    selection: ExportStreamOptions,
    spool: BinaryIO,
    label: str,
    progress: Progress,
    scrub: Scrubber | None,
) -> list[Member]:
    """Every member in this process, one after the other."""
    streams = {entity: export(conn, selection) for entity, export in ENTITY_EXPORTS.items()}
    try:
        return encode_members(spool, streams, label, progress, scrub=scrub)
    finally:  # finalize unfinished streams while the connection is open, not at GC
        for stream in streams.values():
            stream.close()


def _split(
    conn: KindlingConnection,
    witness: Witness,
    spool: BinaryIO,
    dest: BundleDestination,
    label: str,
    tally: Progress,
    stack: contextlib.ExitStack,
    sealed: bool,
    scrub: Scrubber | None,
) -> SplitChild | None:
    """A child started on the first part of the observations (parallel.encoder), on this
    snapshot, writing a spool of its own (`sealed` as this process's); None if there are too
    few to split, or if it cannot share the snapshot (then it has written nothing)."""
    key = split_key(conn)
    if key is None:
        return None
    child_spool = stack.enter_context(spool_file(dest, label, sealed))
    child = SplitChild(conn, key, label, child_spool, spool, tally.worker, scrub)
    stack.enter_context(child)
    return child if child.shares(witness) else None


def write_bundle_from_records(
    dest: BundleDestination,
    streams: Mapping[str, Iterable[Record]],
    opts: BundleOptions | None = None,
    *,
    source_generation: int | None = None,
    progress: ProgressCallback | None = None,
    increment: IncrementHeader | None = None,
    on_bundle: Callable[[bytes], None] | None = None,
    scratch: bool = False,
) -> Manifest:
    """Write a bundle from record streams that do not come from a database (convert, merge).

    `streams` maps entity names ("observations", ...) to iterables of that entity's records, in
    the order they should be stored; missing entities are empty. They are consumed one after
    the other in foreign-key order, so they may be lazy. `opts.filter` is only recorded in the
    manifest; `source_generation` is the Kindling schema generation the records came from, if
    known. The caller is responsible for referential closure.

    With `increment` (ops.increment), the bundle is an incremental one (format version 2.0, or
    2.1 signed): `streams` may also hold "tombstones" (Tombstone records, written first), and
    the manifest names the base and the snapshot's counts. `on_bundle` is as in write_bundle.
    `scratch`: a bundle this process reads back and deletes (zstd_frames.compressor's `wide`),
    from records a reader decoded (FrameEncoder's `checked`): reading it back checks them again.
    """
    names = ENTITY_MEMBERS if increment is None else INCREMENT_MEMBERS
    unknown = set(streams) - set(names)
    if unknown:
        raise ValueError(f"unknown entities: {', '.join(sorted(unknown))}")
    opts = opts or BundleOptions()
    created_at = resolve_created_at(opts.created_at)
    label = source_label(dest)
    scrub = _scrubber(opts)
    with spool_file(dest, label, _sealed(opts)) as spool:
        members = encode_members(
            spool, streams, label, Progress(progress), names, scrub=scrub, checked=scratch
        )
        entries = [member.entry for member in members]
        manifest = _manifest(
            created_at, source_generation, opts.filter, entries, opts.sign_key, scrub
        )
        if increment is not None:
            manifest = increment_manifest(manifest, increment.base, increment.state)
        _write_archive(dest, label, members, manifest, opts, on_bundle=on_bundle, wide=not scratch)
    return manifest


def _scanner_class() -> type[Scanner]:
    from kindling_bundle.scrub import Scanner

    return Scanner


def _signing_key_class() -> type[SigningKey]:
    from kindling_bundle.io.sshsig.keys import SigningKey  # loads `cryptography`

    return SigningKey


def _scrubber(opts: BundleOptions) -> Scrubber | None:
    """What scrubs this export's records (counting what it finds), or None."""
    if opts.scrub is None:
        return None
    from kindling_bundle.scrub import Scrubber

    return Scrubber(opts.scrub)


def _sealed(opts: BundleOptions) -> bool:
    return bool(opts.recipients) or opts.sealed_spools


def _manifest(
    created_at: int,
    generation: int | None,
    export_filter: ExportStreamOptions,
    entries: list[EntityEntry],
    sign_key: SigningKey | None = None,
    scrub: Scrubber | None = None,
) -> Manifest:
    from kindling_bundle import __version__

    scope = export_filter.scope_ids
    # `scrub` is optional in every 1.x version and changes none (spec section 8).
    scrubbed = msgspec.convert(scrub.manifest(), ScrubInfo) if scrub is not None else None
    return Manifest(
        format=FORMAT_NAME,
        format_version=FORMAT_VERSION if sign_key is None else SIGNED_FORMAT_VERSION,
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
        scrub=scrubbed,
    )


def _write_archive(
    dest: BundleDestination,
    label: str,
    members: list[Member],
    manifest: Manifest,
    opts: BundleOptions,
    on_output: Callable[[bytes], None] | None = None,
    on_bundle: Callable[[bytes], None] | None = None,
    wide: bool = True,
) -> None:
    # Signed before the destination is opened: a key that cannot sign (an agent gone) leaves
    # nothing behind.
    sign_key = opts.sign_key
    signature = None if sign_key is None else sign_key.sign(encode_manifest(manifest)).encode()
    try:
        with contextlib.ExitStack() as stack:
            out = stack.enter_context(_destination(dest))
            # zstandard calls only write and flush on what it writes to: a _Tee will do
            sink = cast(BinaryIO, _Tee(out, on_output)) if on_output else out
            target = stack.enter_context(encrypting(sink, opts.recipients))
            if on_bundle is not None:
                target = cast(BinaryIO, _Tee(target, on_bundle))
            _emit(target, members, manifest, opts.level, signature, wide)
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


def _emit(
    out: BinaryIO,
    members: list[Member],
    manifest: Manifest,
    level: int,
    signature: bytes | None = None,
    wide: bool = True,
) -> None:
    """The archive: manifest member, the signature member of a signed bundle, then each entity
    member copied from its spool, then the end-of-archive marker, all in one zstd frame
    (`wide`: as zstd_frames.compressor's)."""
    mtime = manifest.created_at // 1000
    manifest_bytes = encode_manifest(manifest)
    sizes = [len(manifest_bytes), *([len(signature)] if signature is not None else [])]
    sizes += [member.entry.bytes for member in members]
    written = 0
    # one buffer for every copy out of a spool (a fresh one would fault its pages anew)
    copy = memoryview(bytearray(_COPY_BYTES))
    with compressor(level, archive_size(sizes), wide=wide).stream_writer(
        out, closefd=False
    ) as zstd:

        def put(data: bytes | memoryview) -> None:
            nonlocal written
            zstd.write(data)
            written += len(data)

        put(member_header(MANIFEST_MEMBER, len(manifest_bytes), mtime))
        put(manifest_bytes)
        put(padding(len(manifest_bytes)))
        if signature is not None:
            put(member_header(SIGNATURE_MEMBER, len(signature), mtime))
            put(signature)
            put(padding(len(signature)))
        for member in members:
            entry = member.entry
            put(member_header(entry.member, entry.bytes, mtime))
            for spool, offset, size in member.pieces:
                source = cast(io.BufferedIOBase, spool)  # a temporary file or a SealedSpool
                source.seek(offset)
                remaining = size
                while remaining:
                    got = source.readinto(copy[: min(remaining, _COPY_BYTES)])
                    if not got:
                        raise BundleError(f"{entry.member}: the spool file ended early")
                    put(copy[:got])
                    remaining -= got
            put(padding(entry.bytes))
        put(end_of_archive(written))
