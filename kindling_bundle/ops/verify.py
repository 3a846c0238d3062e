"""Verifying a bundle without a database: every byte read once, every problem reported.

Checked, in one forward pass: the zstd frame (checksum, complete, nothing after it), the tar
structure, the manifest (present, first, valid), every listed member present exactly once, in
order, and no other; each member's size, SHA-256 and record count against the manifest; the
framing; every record decoded and validated; and the record rules (`format.stream_rules`, the
same checker conversions and merges use): no id twice within an entity, no observation twice in
a capsule, every reference resolved inside the bundle (capsule observations, summary capsules, one
summary per capsule, pin targets). Summary evidence refs that do not resolve are warnings, as in
the integrity report (Kindling keeps evidence lists when observations are deleted).

A problem in one member does not stop the others from being checked; only damage that makes the
rest of the stream unreadable (zstd corruption, truncation, a broken tar header) ends the pass.
References to an entity are checked only if that entity's member was read, in order, without
framing or decoding problems, so one damaged member does not drown the report in echoes.

A signed bundle's signature is checked first, against `SignatureOptions` (format.signature); a
signature refused ends the pass there: nothing after an untrusted manifest is worth reporting.

Memory: one frame, plus the 64-bit hash of every id seen (`format.hashset`); this is what
resolving references in a single pass costs (measured in bench/RESULTS.md).
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from dataclasses import dataclass

from kindling_bundle.errors import BundleError, SignatureError
from kindling_bundle.format.increment import rules_for
from kindling_bundle.format.manifest import (
    FRAME_HEADER_BYTES,
    MANIFEST_MEMBER,
    SIGNATURE_MEMBER,
    EntityEntry,
    Manifest,
    ProgressCallback,
)
from kindling_bundle.format.reader import (
    MISPLACED_SIGNATURE,
    BundleReader,
    BundleSource,
    FramingError,
    MemberData,
    source_label,
)
from kindling_bundle.format.record_frames import RecordDecoder
from kindling_bundle.format.verify_report import ProblemKind, VerifyReport
from kindling_bundle.io.read_options import ReadOptions
from kindling_bundle.ops.read import open_reader
from kindling_bundle.parallel import Workers, check_workers, choose_workers
from kindling_bundle.parallel.decoder import Decoded, DecoderChild, Vouched, decode_here
from kindling_bundle.records import ENTITY_TYPES, Record


def verify_bundle(
    src: BundleSource,
    *,
    progress: ProgressCallback | None = None,
    on_manifest: Callable[[Manifest], None] | None = None,
    workers: Workers = "auto",
    options: ReadOptions | None = None,
) -> VerifyReport:
    """Check a bundle completely (see the module docstring); never raises for a bad bundle,
    nor for a signature `options.signature` refuses (both are problems in the report).

    `on_manifest(manifest)` is called once the manifest is read and valid, before any record
    (e.g. to size a progress bar from `manifest.total_records`). `workers`: processes that
    decode the observations (kindling_bundle.parallel.choose_workers); the report is the same
    whatever the number. An encrypted bundle is opened with `options.identities`: a damaged or
    truncated ciphertext is a problem in the report; no identity, or none that opens it, raises
    (an EncryptionError: it is not the bundle that is wrong). `options.signature`: whom to
    trust."""
    workers = check_workers(workers)
    report = VerifyReport(source=source_label(src))
    try:
        with open_reader(src, options=options) as reader:
            _Verifier(reader, report, progress).run(on_manifest, workers)
    except (BundleError, SignatureError) as exc:
        report.failed(exc)
    return report


@dataclass
class _Tally:
    """One member's running counts while its frames are applied in order."""

    decoder: RecordDecoder
    member: str
    count: int = 0
    valid: int = 0
    clean: bool = True


class _Verifier:
    def __init__(
        self, reader: BundleReader, report: VerifyReport, progress: ProgressCallback | None
    ):
        self.reader = reader
        self.report = report
        self.progress = progress
        self.complete: dict[str, bool] = dict.fromkeys(ENTITY_TYPES, False)
        self.records_done = 0
        self.bytes_done = 0
        self.child: DecoderChild | None = None

    def run(self, on_manifest: Callable[[Manifest], None] | None, workers: Workers) -> None:
        manifest = self.report.manifest = self.reader.read_manifest()
        self.report.signer = self.reader.signer
        expected = {entry.entity: entry.records for entry in manifest.entities}
        self.rules = rules_for(  # an increment's records may refer to its base (section 16)
            manifest, "the bundle", trusted=self.complete.__getitem__, expected=expected
        )
        # Forked before the reader starts its threads (read-ahead, SHA-256).
        if choose_workers(workers, expected.get("observations", 0)) > 1:
            self.child = DecoderChild()
        try:
            self._members(manifest, on_manifest)
        finally:
            if self.child is not None:
                self.child.close()

    def _members(self, manifest: Manifest, on_manifest: Callable[[Manifest], None] | None) -> None:
        self.reader.zstd.start_read_ahead()
        if on_manifest is not None:
            on_manifest(manifest)
        entries = {entry.member: entry for entry in manifest.entities}
        order = [entry.member for entry in manifest.entities]
        seen: list[str] = []
        while (header := self.reader.next_member()) is not None:
            member = self.reader.member(header)
            if header.name == SIGNATURE_MEMBER:
                self.report.problem("signature", MISPLACED_SIGNATURE)
                member.close()
                continue
            entry = entries.get(header.name)
            if entry is None or header.name in seen:
                repeated = header.name in seen or header.name == MANIFEST_MEMBER
                kind: ProblemKind = "repeated-member" if repeated else "unknown-member"
                detail = f"{'repeated' if repeated else 'unknown'} member {header.name!r}"
                self.report.problem(kind, detail, member=header.name)
                member.close()
                continue
            # In order: after every member seen so far that precedes it in the manifest (a
            # missing member is reported once, below, without making its successors "late").
            latest = max(seen, key=order.index, default=None)
            in_order = latest is None or order.index(header.name) > order.index(latest)
            if not in_order:
                self.report.problem(
                    "member-order",
                    f"member {header.name} is out of order (after {latest})",
                    member=header.name,
                )
            seen.append(header.name)
            self._member(member, entry, in_order)
        for name in order:
            if name not in seen:
                self.report.problem("member-missing", f"member {name} is missing", member=name)
        self.reader.finish()

    def _member(self, member: MemberData, entry: EntityEntry, in_order: bool) -> None:
        name, entity = entry.member, entry.entity
        if member.header.size != entry.bytes:
            self.report.problem(
                "member-size",
                f"holds {member.header.size} bytes, the manifest says {entry.bytes}",
                member=name,
            )
        tally = _Tally(RecordDecoder(entity), name)
        ended: list[BundleError] = []
        payloads = _until_error(member.frames(), ended)
        if self.child is not None and entity == "observations":
            frames = self.child.frames(payloads, tally.decoder)
        else:
            frames = decode_here(payloads, tally.decoder)
        for frame in frames:  # the frames before whatever ended the member are reported first
            self._apply(frame, tally)
        if ended and not isinstance(ended[0], FramingError):
            raise ended[0]
        if ended:  # the rest of this member cannot be split into frames
            self.report.failed(ended[0], member=name)
            member.skip_rest()
            tally.clean = False
        count, valid, clean = tally.count, tally.valid, tally.clean
        digest = member.close()  # None after a framing error: the rest was skipped unhashed
        if digest is not None and digest != entry.sha256:
            self.report.problem(
                "member-sha256",
                f"SHA-256 {digest} does not match the manifest's {entry.sha256}",
                member=name,
            )
        if clean and count != entry.records:
            self.report.problem(
                "member-count",
                f"holds {count} records, the manifest says {entry.records}",
                member=name,
            )
        self.report.records[entity] = valid
        self.complete[entity] = clean and in_order

    def _apply(self, frame: Decoded | Vouched, tally: _Tally) -> None:
        """Report one frame's problems and check its records, in member order."""
        entity = tally.decoder.entity
        if isinstance(frame, Vouched):
            hashes = list(map(hash, frame.ids))
            tally.count += len(hashes)
            tally.valid += len(hashes)
            if self.rules.clear_new_ids(entity, hashes):
                self.rules.add_ids(entity, hashes)
            else:
                self._check(tally.decoder.decode(frame.payload), tally.member)
            self._progress(len(hashes), frame.payload)
            return
        records, problems = frame.records, frame.problems
        if problems:  # decoded again, numbering records from their index in the member
            records, problems = tally.decoder.decode_all(frame.payload, tally.count)
        for problem in problems:
            self.report.invalid(problem, member=tally.member)
            tally.clean = False
        tally.count += len(records) + sum(1 for p in problems if not isinstance(p, BundleError))
        tally.valid += len(records)
        self._check(records, tally.member)
        self._progress(len(records), frame.payload)

    def _progress(self, records: int, payload: bytes | memoryview) -> None:
        self.records_done += records
        self.bytes_done += FRAME_HEADER_BYTES + len(payload)
        if self.progress is not None:
            self.progress(self.records_done, self.bytes_done)

    def _check(self, records: list[Record], member: str) -> None:
        rules = self.rules
        if rules.clear_run(records):
            rules.add_run(records)
            return
        for record in records:
            for breach in rules.check(record):
                self.report.breach(breach, member=member)
            rules.add(record)


def _until_error(
    frames: Iterator[bytes | memoryview], ended: list[BundleError]
) -> Iterator[bytes | memoryview]:
    """The frames, up to a BundleError that ends them, which goes into `ended` (so that the
    frames before it, some maybe at the child, are applied before it is reported or raised)."""
    try:
        yield from frames
    except BundleError as exc:
        ended.append(exc)
