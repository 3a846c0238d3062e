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

Memory: one frame, plus the 64-bit hash of every id seen, about 10 bytes a record once there are
many (kindling_bundle.format.hashset); this is what resolving references in a single pass costs.
"""

from __future__ import annotations

from collections import deque
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from kindling_bundle.errors import BundleError, RecordError
from kindling_bundle.format.increment import rules_for
from kindling_bundle.format.manifest import (
    FRAME_HEADER_BYTES,
    MANIFEST_MEMBER,
    EntityEntry,
    Manifest,
    ProgressCallback,
)
from kindling_bundle.format.reader import (
    BundleReader,
    BundleSource,
    FramingError,
    MemberData,
    source_label,
)
from kindling_bundle.format.record_frames import RecordDecoder
from kindling_bundle.parallel.decoder import IN_FLIGHT, FrameHelper
from kindling_bundle.parallel.forking import PARALLEL_MIN_ROWS, parallel_available
from kindling_bundle.records import ENTITY_TYPES, Record

MAX_LISTED = 200
"""Problems (and warnings) listed in a report; the counts include those left out."""


@dataclass
class VerifyReport:
    """What verify found. `ok` means no problem at all (warnings allowed)."""

    source: str
    manifest: Manifest | None = None
    problems: list[str] = field(default_factory=list)
    problem_count: int = 0
    warnings: list[str] = field(default_factory=list)
    warning_count: int = 0
    records: dict[str, int] = field(default_factory=dict)
    """Records decoded and valid, per entity."""

    @property
    def ok(self) -> bool:
        return self.problem_count == 0

    def problem(self, text: str) -> None:
        self.problem_count += 1
        if len(self.problems) < MAX_LISTED:
            self.problems.append(text)

    def warning(self, text: str) -> None:
        self.warning_count += 1
        if len(self.warnings) < MAX_LISTED:
            self.warnings.append(text)

    def to_dict(self) -> dict[str, Any]:
        """A JSON-ready form, for the CLI's --json."""
        return {
            "source": self.source,
            "ok": self.ok,
            "problems": self.problems,
            "problem_count": self.problem_count,
            "warnings": self.warnings,
            "warning_count": self.warning_count,
            "records": self.records,
            "manifest": self.manifest.to_dict() if self.manifest else None,
        }


def verify_bundle(
    src: BundleSource,
    *,
    progress: ProgressCallback | None = None,
    on_manifest: Callable[[Manifest], None] | None = None,
    parallel: bool = True,
) -> VerifyReport:
    """Check a bundle completely (see the module docstring); never raises for a bad bundle.

    `on_manifest(manifest)` is called once the manifest is read and valid, before any record
    (e.g. to size a progress bar from `manifest.total_records`). `parallel`: decode some of a
    large bundle's observation frames in a second process where the platform allows
    (kindling_bundle.parallel.decoder); the report is the same either way."""
    report = VerifyReport(source=source_label(src))
    try:
        with BundleReader(src) as reader:
            _Verifier(reader, report, progress).run(on_manifest, parallel)
    except BundleError as exc:
        report.problem(str(exc))
    return report


Decoded = tuple[list[Record], list[RecordError | BundleError]]
_Pending = tuple[bytes | memoryview, Decoded | None]
"""A frame's payload, and its records and problems if decoded here (None: at the helper)."""

MAX_PENDING = IN_FLIGHT + 2
"""Frames read ahead of the oldest frame still at the helper, at most (their records in memory)."""


@dataclass
class _Tally:
    """One member's running counts while its frames are applied in order."""

    decoder: RecordDecoder
    where: str
    count: int = 0
    valid: int = 0
    clean: bool = True


class _Verifier:
    def __init__(
        self, reader: BundleReader, report: VerifyReport, progress: ProgressCallback | None
    ):
        self.reader = reader
        self.label = reader.label
        self.report = report
        self.progress = progress
        self.complete: dict[str, bool] = dict.fromkeys(ENTITY_TYPES, False)
        self.records_done = 0
        self.bytes_done = 0
        self.helper: FrameHelper | None = None

    def run(self, on_manifest: Callable[[Manifest], None] | None, parallel: bool) -> None:
        manifest = self.report.manifest = self.reader.read_manifest()
        expected = {entry.entity: entry.records for entry in manifest.entities}
        self.rules = rules_for(  # an increment's records may refer to its base (section 14)
            manifest, "the bundle", trusted=self.complete.__getitem__, expected=expected
        )
        observations = expected.get("observations", 0)
        if parallel and observations >= PARALLEL_MIN_ROWS and parallel_available():
            self.helper = FrameHelper()  # forked before any thread of ours starts
        try:
            self._members(manifest, on_manifest)
        finally:
            if self.helper is not None:
                self.helper.close()

    def _members(self, manifest: Manifest, on_manifest: Callable[[Manifest], None] | None) -> None:
        self.reader.zstd.start_read_ahead()
        if on_manifest is not None:
            on_manifest(manifest)
        entries = {entry.member: entry for entry in manifest.entities}
        order = [entry.member for entry in manifest.entities]
        seen: list[str] = []
        while (header := self.reader.next_member()) is not None:
            member = self.reader.member(header)
            entry = entries.get(header.name)
            if entry is None or header.name in seen:
                repeated = header.name in seen or header.name == MANIFEST_MEMBER
                kind = "repeated" if repeated else "unknown"
                self.report.problem(f"{self.label}: {kind} member {header.name!r}")
                member.close()
                continue
            # In order: after every member seen so far that precedes it in the manifest (a
            # missing member is reported once, below, without making its successors "late").
            latest = max(seen, key=order.index, default=None)
            in_order = latest is None or order.index(header.name) > order.index(latest)
            if not in_order:
                self.report.problem(
                    f"{self.label}: member {header.name} is out of order (after {latest})"
                )
            seen.append(header.name)
            self._member(member, entry, in_order)
        for name in order:
            if name not in seen:
                self.report.problem(f"{self.label}: member {name} is missing")
        self.reader.finish()

    def _member(self, member: MemberData, entry: EntityEntry, in_order: bool) -> None:
        where, entity = member.where, entry.entity
        if member.header.size != entry.bytes:
            self.report.problem(
                f"{where}: holds {member.header.size} bytes, the manifest says {entry.bytes}"
            )
        tally = _Tally(RecordDecoder(entity), where)
        helper = self.helper if entity == "observations" else None
        pending: deque[_Pending] = deque()  # None: at the helper
        try:
            for payload in member.frames():
                if helper is not None and helper.in_flight < IN_FLIGHT and helper.submit(payload):
                    pending.append((payload, None))
                else:
                    pending.append((payload, tally.decoder.decode_all(payload)))
                while pending and (
                    len(pending) > MAX_PENDING
                    or pending[0][1] is not None
                    or (helper is not None and helper.answered())
                ):
                    self._apply(*pending.popleft(), tally)
        except FramingError as exc:  # the rest of this member cannot be split into frames
            self._apply_all(pending, tally)
            self.report.problem(str(exc))
            member.skip_rest()
            tally.clean = False
        finally:  # the frames before whatever ended the member are reported first
            self._apply_all(pending, tally)
        count, valid, clean = tally.count, tally.valid, tally.clean
        digest = member.close()  # None after a framing error: the rest was skipped unhashed
        if digest is not None and digest != entry.sha256:
            self.report.problem(
                f"{where}: SHA-256 {digest} does not match the manifest's {entry.sha256}"
            )
        if clean and count != entry.records:
            self.report.problem(
                f"{where}: holds {count} records, the manifest says {entry.records}"
            )
        self.report.records[entity] = valid
        self.complete[entity] = clean and in_order

    def _apply_all(self, pending: deque[_Pending], tally: _Tally) -> None:
        while pending:
            self._apply(*pending.popleft(), tally)

    def _apply(self, payload: bytes | memoryview, decoded: Decoded | None, tally: _Tally) -> None:
        """Report one frame's problems and check its records, in member order."""
        if decoded is None:  # at the helper: the id hashes of a clean frame, or None
            assert self.helper is not None
            hashes = self.helper.answer()
            if hashes is not None:
                tally.count += len(hashes)
                tally.valid += len(hashes)
                if self.rules.clear_new_ids(tally.decoder.entity, hashes):
                    self.rules.add_ids(tally.decoder.entity, hashes)
                else:
                    self._check(tally.decoder.decode(payload), tally.where)
                self._progress(len(hashes), payload)
                return
        if decoded is None or decoded[1]:  # (again) here, numbering records from the right index
            decoded = tally.decoder.decode_all(payload, tally.count)
        records, problems = decoded
        for problem in problems:
            self.report.problem(f"{tally.where}: {problem}")
            tally.clean = False
        tally.count += len(records) + sum(1 for p in problems if not isinstance(p, BundleError))
        tally.valid += len(records)
        self._check(records, tally.where)
        self._progress(len(records), payload)

    def _progress(self, records: int, payload: bytes | memoryview) -> None:
        self.records_done += records
        self.bytes_done += FRAME_HEADER_BYTES + len(payload)
        if self.progress is not None:
            self.progress(self.records_done, self.bytes_done)

    def _check(self, records: list[Record], where: str) -> None:
        rules = self.rules
        if rules.clear_run(records):
            rules.add_run(records)
            return
        for record in records:
            for breach in rules.check(record):
                if breach.warning:
                    self.report.warning(f"{where}: {breach.text}")
                else:
                    self.report.problem(f"{where}: {breach.text}")
            rules.add(record)
