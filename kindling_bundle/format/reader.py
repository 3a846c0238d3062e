"""Reading bundles in one forward pass: from a path or any readable binary stream, seekable or not.

`BundleReader` exposes the steps (manifest, member headers, member data, end of archive) so that
`verify_bundle` can report every problem while `open_bundle(...).batches()` and `import_bundle`
stop at the first. It reads a bundle's plain bytes: `ops.read` opens an input, decrypting an
encrypted one, and hands it here. Memory holds one frame at a time, whatever the bundle's size.
Every size is bounded by what the manifest declares before a byte of it is trusted: a member
must be exactly as long as the manifest says, no frame may run past the end of its member or
exceed MAX_FRAME_BYTES (nor hold more than MAX_FRAME_VALUES values), and the decompressed stream
may not hold a byte more than the manifest's members, their tar headers and the end of the
archive (`declared_archive_bytes`). Nothing is ever written to disk: member names are compared
with the names a bundle holds, never used as paths.

A signed bundle's signature member (`format.signature`) is read and checked with the manifest,
before anything else: no record is read, let alone yielded, from a bundle whose signature is
refused.
"""

from __future__ import annotations

import hashlib
import os
import queue
import threading
from collections.abc import Callable, Generator, Iterator
from pathlib import Path
from typing import BinaryIO, Protocol

from kindling_bundle.errors import (
    BundleError,
    MalformedSignatureError,
    RecordError,
    UnsignedBundleError,
)
from kindling_bundle.format.increment import IncrementManifest
from kindling_bundle.format.manifest import (
    ENTITY_MEMBERS,
    FRAME_HEADER_BYTES,
    MANIFEST_MEMBER,
    MAX_FRAME_BYTES,
    MAX_FRAME_VALUES,
    MAX_MANIFEST_BYTES,
    SIGNATURE_MEMBER,
    SIGNED_FORMAT_VERSION,
    EntityEntry,
    Manifest,
    ProgressCallback,
    decode_manifest,
)
from kindling_bundle.format.record_frames import RecordDecoder, count_values
from kindling_bundle.format.signature import (
    SignatureOptions,
    signature_allowed,
    signature_required,
)
from kindling_bundle.format.tar import BLOCK, RECORD, MemberHeader, parse_header
from kindling_bundle.format.zstd_frames import ZstdFrameReader
from kindling_bundle.io.sshsig.verification import Signer
from kindling_bundle.io.sshsig.wire import MAX_SIGNATURE_BYTES
from kindling_bundle.records import Record

BundleSource = str | os.PathLike[str] | BinaryIO


def source_label(src: BundleSource) -> str:
    """How messages name a bundle: its path, or the stream's name, or `<stream>`."""
    if isinstance(src, str | os.PathLike):
        return os.fspath(src)
    name = getattr(src, "name", None)
    return name if isinstance(name, str) else "<stream>"


class FramingError(BundleError):
    """A member's frames cannot be split (the rest of the stream may still be readable)."""


_SIGNATURE_ROOM = BLOCK + MAX_SIGNATURE_BYTES + (-MAX_SIGNATURE_BYTES % BLOCK)
"""The most decompressed bytes a signature member may take, header and padding included."""


def declared_archive_bytes(manifest: Manifest) -> int:
    """The most decompressed bytes that may follow the manifest member: each entity member's
    header, data and padding, the end-of-archive marker, and at most one tar record of padding."""
    members = sum(BLOCK + entry.bytes + (-entry.bytes % BLOCK) for entry in manifest.entities)
    return members + 2 * BLOCK + RECORD


class Hasher(Protocol):
    def update(self, data: bytes | memoryview, /) -> None: ...

    def hexdigest(self) -> str: ...


class Sha256Thread:
    """SHA-256 of each member's data, computed in a thread of its own.

    Hashing is a small but real part of the work of checking a bundle's records
    (bench/RESULTS.md), and hashlib releases the GIL for large updates, so on a second core it
    costs the reading thread only a hand-over per read. The hand-over queue is bounded: if
    hashing ever fell behind, reading waits rather than holding more than a few frames. Small
    updates (a frame's 4-byte length) wait for the next large one: each hand-over costs a turn
    of the GIL for both threads."""

    def __init__(self) -> None:
        self._jobs: queue.Queue[list[bytes | memoryview] | None] = queue.Queue(maxsize=4)
        self._parts: list[bytes | memoryview] = []
        self._digests: queue.SimpleQueue[str] = queue.SimpleQueue()
        self._thread = threading.Thread(target=self._run, name="kbundle-sha256", daemon=True)
        self._thread.start()

    def update(self, data: bytes | memoryview) -> None:
        self._parts.append(data)
        if len(data) >= _HAND_OVER_BYTES:
            self._hand_over()

    def hexdigest(self) -> str:
        """The digest of everything since the previous one."""
        self._parts.append(_DIGEST)
        self._hand_over()
        return self._digests.get()

    def _hand_over(self) -> None:
        self._jobs.put(self._parts)
        self._parts = []

    def close(self) -> None:
        self._jobs.put(None)
        self._thread.join()

    def _run(self) -> None:
        sha256 = hashlib.sha256()
        while (parts := self._jobs.get()) is not None:
            for data in parts:
                if data is _DIGEST:
                    self._digests.put(sha256.hexdigest())
                    sha256 = hashlib.sha256()
                else:
                    sha256.update(data)


_DIGEST = b"digest"
"""Asks Sha256Thread for the digest so far (compared by identity, never hashed)."""
_HAND_OVER_BYTES = 4096
"""Updates smaller than this are handed over with the next larger one (or the digest)."""


class MemberData:
    """The data of one member: bounded reads that are hashed as they go (in `sha256`'s thread)."""

    def __init__(self, zstd: ZstdFrameReader, header: MemberHeader, where: str, sha256: Hasher):
        self._zstd = zstd
        self.header = header
        self.where = where
        self.remaining = header.size
        self._sha256 = sha256
        self._skipped = False

    def read(self, n: int, what: str) -> bytes | memoryview:
        """Exactly `n` bytes of this member (the caller checked `remaining`), without a copy
        where possible (ZstdFrameReader.read_view)."""
        data = self._zstd.read_exact_view(n, f"{self.where} ({what})")
        self._sha256.update(data)
        self.remaining -= n
        return data

    def skip_rest(self) -> None:
        """Discard what is left unread (e.g. after a framing error) without hashing it: the
        member is already known to be bad, and skipping gigabytes should cost no more than
        decompressing them."""
        if self.remaining:
            self._zstd.skip(self.remaining, f"{self.where} (member data)")
            self.remaining = 0
            self._skipped = True

    def close(self) -> str | None:
        """Skip what is left and the block padding; the SHA-256 of the member's data, or None
        if part of it was skipped unread."""
        self.skip_rest()
        digest = self._sha256.hexdigest()  # also starts the next member's afresh
        pad = -self.header.size % BLOCK
        if pad and self._zstd.read_exact(pad, f"{self.where} (padding)").count(0) != pad:
            raise BundleError(f"{self.where}: damaged tar padding after the member data")
        return None if self._skipped else digest

    def frames(self) -> Iterator[bytes | memoryview]:
        """Each frame's payload; a FramingError (naming the member and offset) on bad framing."""
        while self.remaining:
            offset = self.header.size - self.remaining
            if self.remaining < FRAME_HEADER_BYTES:
                raise FramingError(f"{self.where}: truncated frame header at byte {offset}")
            size = int.from_bytes(self.read(FRAME_HEADER_BYTES, "frame header"), "big")
            if not 0 < size <= MAX_FRAME_BYTES:
                raise FramingError(
                    f"{self.where}: frame at byte {offset} declares {size} bytes "
                    f"(allowed: 1 to {MAX_FRAME_BYTES})"
                )
            if size > self.remaining:
                raise FramingError(
                    f"{self.where}: frame at byte {offset} declares {size} bytes but the member "
                    f"has {self.remaining} left"
                )
            payload = self.read(size, "frame")
            if (
                size > MAX_FRAME_VALUES
                and count_values(payload, MAX_FRAME_VALUES) > MAX_FRAME_VALUES
            ):
                raise FramingError(
                    f"{self.where}: frame at byte {offset} holds more than {MAX_FRAME_VALUES} "
                    "values (maps, arrays, keys and elements); decoding it could take gigabytes"
                )
            yield payload


class BundleReader:
    """One forward pass over a bundle; use as a context manager (closes files it opened).

    Messages name the bundle `name` when given (a file the bundle was made from), else as
    `source_label` does. `signature` says whom to trust (default: check a signature if there is
    one, accept an unsigned bundle); `signer` is who signed, once the manifest is read.
    `closing` is called last by `close`: it closes what was opened to get `src` (ops.read opens
    an encrypted bundle's file and hands over its plaintext)."""

    def __init__(
        self,
        src: BundleSource,
        *,
        name: str | None = None,
        signature: SignatureOptions | None = None,
        closing: Callable[[], object] | None = None,
    ):
        self._closing = closing
        self.label = name or source_label(src)
        self._trust = signature or SignatureOptions()
        self.signer: Signer | None = None
        self._peeked: tuple[MemberHeader | None] | None = None
        """A header read after the manifest that was not a signature member's."""
        if isinstance(src, str | os.PathLike):
            try:
                # Closed by close(): the reader owns it for its whole life.
                self._file: BinaryIO = Path(src).open("rb")  # noqa: SIM115
            except OSError as exc:
                raise BundleError(f"{self.label}: cannot open: {exc.strerror}") from None
            self._owned = True
        else:
            self._file, self._owned = src, False
        self.zstd = ZstdFrameReader(self._file, self.label)
        self.manifest: Manifest | None = None
        self._sha256: Sha256Thread | None = None

    def __enter__(self) -> BundleReader:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def close(self) -> None:
        self.zstd.close()
        if self._sha256 is not None:
            self._sha256.close()
            self._sha256 = None
        if self._owned:
            self._file.close()
        if self._closing is not None:
            closing, self._closing = self._closing, None
            closing()

    def read_manifest(self) -> Manifest:
        """Read the first member, which must be the manifest, and validate it; then the
        signature member if there is one, and check the signature against `signature`'s policy
        (a SignatureError if refused)."""
        header = self.next_member()
        if header is None:
            raise BundleError(f"{self.label}: empty archive, no {MANIFEST_MEMBER}")
        if header.name != MANIFEST_MEMBER:
            raise BundleError(
                f"{self.label}: the first member is {header.name!r}, not {MANIFEST_MEMBER}"
            )
        if header.size > MAX_MANIFEST_BYTES:
            raise BundleError(
                f"{self.label}: {MANIFEST_MEMBER} is {header.size} bytes, more than a manifest "
                f"may be ({MAX_MANIFEST_BYTES})"
            )
        # Hashed here, not in Sha256Thread: no thread may run yet when verify forks its helper.
        member = MemberData(self.zstd, header, f"{self.label}: {MANIFEST_MEMBER}", hashlib.sha256())
        data = bytes(member.read(header.size, "manifest"))
        member.close()
        manifest = decode_manifest(data, self.label)
        start, declared = self.zstd.decompressed_bytes, declared_archive_bytes(manifest)
        signature = None
        if signature_allowed(manifest):  # a 1.0 bundle is read as it always was
            self.zstd.limit = start + declared + _SIGNATURE_ROOM
            signature = self._read_signature(manifest)
        self.zstd.limit = (start if signature is None else self.zstd.decompressed_bytes) + declared
        source = self.label if signature is None else f"{self.label}: {SIGNATURE_MEMBER}"
        self.signer = self._trust.check(data, signature, source)
        self.manifest = manifest  # only now: a manifest whose signature is refused is not one
        return manifest

    def _read_signature(self, manifest: Manifest) -> bytes | None:
        """The signature member's bytes, or None (then the header read is kept for
        next_member). Refused: one larger than any signature (before reading it), and none
        where the manifest says the bundle is signed."""
        header = self.next_member()
        version = manifest.format_version
        if header is None or header.name != SIGNATURE_MEMBER:
            self._peeked = (header,)
            if signature_required(manifest):
                raise UnsignedBundleError(
                    f"{self.label}: {SIGNATURE_MEMBER} is missing, but the manifest (format "
                    f"{version}) says the bundle is signed: the signature was removed"
                )
            return None
        where = f"{self.label}: {SIGNATURE_MEMBER}"
        if header.size > MAX_SIGNATURE_BYTES:
            raise MalformedSignatureError(
                f"{where}: {header.size} bytes, more than a signature may be "
                f"({MAX_SIGNATURE_BYTES})"
            )
        member = MemberData(self.zstd, header, where, hashlib.sha256())  # no thread yet
        signature = bytes(member.read(header.size, "signature"))
        member.close()
        return signature

    def next_member(self) -> MemberHeader | None:
        """The next member's header, or None at the end-of-archive marker."""
        if self._peeked is not None:
            (header,) = self._peeked
            self._peeked = None
            return header
        header = parse_header(self.zstd.read_exact(BLOCK, "a tar header"), self.label)
        if header is None:
            second = self.zstd.read_exact(BLOCK, "the end-of-archive marker")
            if second.count(0) != BLOCK:
                raise BundleError(f"{self.label}: damaged end-of-archive marker")
        return header

    def member(self, header: MemberHeader) -> MemberData:
        """The member's data, to be read (or skipped) and closed before the next header."""
        if self._sha256 is None:
            self._sha256 = Sha256Thread()
        return MemberData(self.zstd, header, f"{self.label}: {header.name}", self._sha256)

    def finish(self) -> None:
        """After the end-of-archive marker: only zero padding, then the end of the zstd frame,
        then the end of the source."""
        padding = self.zstd.read(RECORD)
        if padding.count(0) != len(padding):
            raise BundleError(f"{self.label}: unexpected data after the end of the tar archive")
        self.zstd.finish()
        if self._sha256 is not None:  # every member is hashed: no thread outlives the reading
            self._sha256.close()
            self._sha256 = None

    def batches(
        self, progress: ProgressCallback | None = None, *, increments: bool = False
    ) -> Iterator[tuple[str, list[Record]]]:
        """(entity, records of one frame) in bundle order, checking everything strictly: member
        order and sizes, framing, every record, and each member's count and SHA-256 before the
        next member starts; the end of the archive and of the stream after the last one. Reads
        the manifest first if that was not done yet.

        An incremental bundle (format.increment) is refused unless `increments` is true: its
        records are only the changes since its base, and its first member holds tombstones
        (entity "tombstones"), so a caller that takes it for a whole database would lose data."""
        manifest = self.manifest or self.read_manifest()
        if isinstance(manifest, IncrementManifest) and not increments:
            raise BundleError(
                f"{self.label}: is an incremental bundle (the changes since bundle "
                f"{manifest.base.sha256[:12]}): import it onto a database that holds its base, "
                "or import its whole chain (the full bundle, then each increment in order)"
            )
        self.zstd.start_read_ahead()
        records_done = bytes_done = 0
        for entry in manifest.entities:
            header = self.next_member()
            self._check_header(header, entry)
            member = self.member(header)  # type: ignore[arg-type]
            decoder = RecordDecoder(entry.entity)
            count = 0
            for payload in member.frames():
                try:
                    records = decoder.decode(payload, count)
                except RecordError as exc:
                    raise RecordError(
                        f"{member.where}: {exc}", entity=exc.entity, record_id=exc.record_id
                    ) from None
                except BundleError as exc:
                    raise BundleError(f"{member.where}: {exc}") from None
                count += len(records)
                if count > entry.records:
                    raise BundleError(
                        f"{member.where}: holds more records than the manifest's {entry.records}"
                    )
                records_done += len(records)
                bytes_done += FRAME_HEADER_BYTES + len(payload)
                yield entry.entity, records
                if progress is not None:
                    progress(records_done, bytes_done)
            digest = member.close()
            if count != entry.records:
                raise BundleError(
                    f"{member.where}: holds {count} records, the manifest says {entry.records}"
                )
            if digest != entry.sha256:
                raise BundleError(
                    f"{member.where}: SHA-256 {digest} does not match the manifest's "
                    f"{entry.sha256} (the data is damaged)"
                )
        header = self.next_member()
        if header is not None:
            raise BundleError(f"{self.label}: unexpected member {header.name!r} after the last one")
        self.finish()

    def records(self, progress: ProgressCallback | None = None) -> Generator[Record, None, None]:
        """Every record in bundle order, with the checks of `batches`."""
        for _, records in self.batches(progress):
            yield from records

    def _check_header(self, header: MemberHeader | None, entry: EntityEntry) -> None:
        if header is None:
            raise BundleError(f"{self.label}: member {entry.member} is missing")
        if header.name == SIGNATURE_MEMBER:
            raise BundleError(misplaced_signature(self.label))
        if header.name != entry.member:
            known = header.name == MANIFEST_MEMBER or header.name in ENTITY_MEMBERS.values()
            kind = "out of order or repeated" if known else "unknown"
            raise BundleError(
                f"{self.label}: expected member {entry.member}, found {kind} member {header.name!r}"
            )
        if header.size != entry.bytes:
            raise BundleError(
                f"{self.label}: {entry.member} holds {header.size} bytes, the manifest says "
                f"{entry.bytes}"
            )


MISPLACED_SIGNATURE = (
    f"unexpected {SIGNATURE_MEMBER}: a signature member may only follow the "
    f"manifest, once, in a signed (format {SIGNED_FORMAT_VERSION}) bundle"
)
"""The refusal of a signature member anywhere but right after a signed bundle's manifest
(a second one, one further on, one in a 1.0 bundle)."""


def misplaced_signature(label: str) -> str:
    """MISPLACED_SIGNATURE, naming the bundle."""
    return f"{label}: {MISPLACED_SIGNATURE}"
