"""Finding secrets in a dataset without changing it: what `kindling-bundle scan` reports.

The records are read as any reader reads them (a bundle through `format.reader`, with every
check; a Kindling JSON export through `kindling_json.reader`; a database from one read
snapshot, in export order) and scanned as `export --scrub` would scrub them
(`Scanner.scrub_record`), so a scan and a scrub agree on what is a secret. Findings are handed
to `on_finding` as they are found and not kept, so memory stays flat however many there are.
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Generator, Iterable, Sequence
from dataclasses import dataclass, field
from typing import Any

from kindling_bundle.db.connection import KindlingConnection
from kindling_bundle.db.export import (
    ENTITY_EXPORTS,
    ExportStreamOptions,
    export_observations_from,
    observations_bound,
    snapshot,
)
from kindling_bundle.errors import KindlingBundleError
from kindling_bundle.format.manifest import FRAME_RECORDS, ProgressCallback
from kindling_bundle.parallel import Workers, check_workers, choose_workers
from kindling_bundle.parallel.encoder import Witness, split_key
from kindling_bundle.parallel.scan import SCAN_CHILD_SHARE, HeldFindings, ScanChild
from kindling_bundle.records import ENTITY_TYPES, Record, entity_of
from kindling_bundle.scrub import RecordFinding, Scanner, ScrubTally

FindingCallback = Callable[[RecordFinding], None]
"""`on_finding(finding)`: called with each finding (masked preview only), in record order."""


@dataclass
class ScanReport:
    """What a scan found: records scanned per entity, and counts by rule (no secrets)."""

    scanner: Scanner
    records: dict[str, int] = field(default_factory=lambda: dict.fromkeys(ENTITY_TYPES, 0))
    tally: ScrubTally = field(default_factory=ScrubTally)

    @property
    def clean(self) -> bool:
        return not self.tally.findings

    def to_dict(self) -> dict[str, Any]:
        """Counts for a JSON report: records scanned, and in `summary` what a scrubbed bundle's
        manifest would say (rule set, rule files, records and findings by rule)."""
        return {
            "clean": self.clean,
            "scanned": dict(self.records),
            "summary": self.tally.manifest(self.scanner),
        }


def scan_records(
    records: Iterable[Record],
    scanner: Scanner,
    *,
    on_finding: FindingCallback | None = None,
    progress: ProgressCallback | None = None,
) -> ScanReport:
    """Scan every record; `progress(records_done, 0)` about every FRAME_RECORDS records."""
    report = ScanReport(scanner)
    counts, tally = report.records, report.tally
    scrub = scanner.scrub_record
    done = 0
    for record in records:
        counts[entity_of(record)] += 1
        _, findings = scrub(record)
        if findings:
            tally.add(findings)
            if on_finding is not None:
                for finding in findings:
                    on_finding(finding)
        done += 1
        if progress is not None and done % FRAME_RECORDS == 0:
            progress(done, 0)
    if progress is not None:
        progress(done, 0)
    return report


def scan_database(
    conn: KindlingConnection,
    scanner: Scanner,
    *,
    on_finding: FindingCallback | None = None,
    progress: ProgressCallback | None = None,
    workers: Workers = "auto",
) -> ScanReport:
    """Scan a whole database from one read snapshot, in export order (what `export` would
    write, redacted rows included). `workers`: as for an export, a large database's first
    observations are scanned by a second process (parallel.scan) where that is safe; the
    findings and their order are the same."""
    check_workers(workers)
    witness = None
    if choose_workers(workers, observations_bound(conn)) > 1:
        # Opened before the snapshot: it tells whether anything is committed after it starts.
        witness = Witness.for_split(conn, ExportStreamOptions())
    with contextlib.ExitStack() as stack:
        if witness is not None:
            stack.callback(witness.close)
        stack.enter_context(snapshot(conn))
        key = split_key(conn, SCAN_CHILD_SHARE) if witness is not None else None
        if witness is not None and key is not None:
            done = [0, 0]  # records scanned: the child's, this process's

            def count(records: int) -> None:
                done[0] = records
                if progress is not None:
                    progress(sum(done), 0)

            child = stack.enter_context(ScanChild(conn, key, scanner, on_finding, count))
            if child.shares(witness):
                return _scan_split(conn, child, scanner, on_finding, progress, done)
        return _scan_streams(
            [export(conn, ExportStreamOptions()) for export in ENTITY_EXPORTS.values()],
            scanner,
            on_finding,
            progress,
        )


def _scan_streams(
    streams: Sequence[Generator[Record, None, None]],
    scanner: Scanner,
    on_finding: FindingCallback | None,
    progress: ProgressCallback | None,
) -> ScanReport:
    try:
        records = (record for stream in streams for record in stream)
        return scan_records(records, scanner, on_finding=on_finding, progress=progress)
    finally:  # finalize unfinished streams while the connection is open, not at GC
        for stream in streams:
            stream.close()


def _scan_split(
    conn: KindlingConnection,
    child: ScanChild,
    scanner: Scanner,
    on_finding: FindingCallback | None,
    progress: ProgressCallback | None,
    done: list[int],
) -> ScanReport:
    """This process's part while `child` scans the first observations: the rest of them, then
    the other entities. The child's findings are passed on as they come (its part is first),
    this process's held until the child is done."""

    def mine(records: int, _: int) -> None:
        done[1] = records
        child.poll()
        if progress is not None:
            progress(sum(done), 0)

    others = [e for name, e in ENTITY_EXPORTS.items() if name != "observations"]
    streams: list[Generator[Record, None, None]] = [export_observations_from(conn, child.key)]
    streams += [export(conn, ExportStreamOptions()) for export in others]
    with HeldFindings() as held:
        try:
            report = _scan_streams(streams, scanner, held.add, mine)
        except KindlingBundleError:
            child.wait()  # the child's own error comes first, if it met one
            raise
        last = child.wait()
        for finding in held:
            if on_finding is not None:
                on_finding(finding)
    report.records["observations"] += last.records
    report.tally.merge(last.found_records, last.by_rule)
    return report
