"""Finding secrets in a dataset without changing it: what `kindling-bundle scan` reports.

The records are read as any reader reads them (a bundle through `format.reader`, with every
check; a Kindling JSON export through `kindling_json.reader`; a database from one read
snapshot, in export order) and scanned as `export --scrub` would scrub them
(`Scanner.scrub_record`), so a scan and a scrub agree on what is a secret. Findings are handed
to `on_finding` as they are found and not kept, so memory stays flat however many there are.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from typing import Any

from kindling_bundle.db.connection import KindlingConnection
from kindling_bundle.db.export import ENTITY_EXPORTS, ExportStreamOptions, snapshot
from kindling_bundle.format.manifest import FRAME_RECORDS, ProgressCallback
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
) -> ScanReport:
    """Scan a whole database from one read snapshot, in export order (what `export` would
    write, redacted rows included)."""
    opts = ExportStreamOptions()
    with snapshot(conn):
        streams = [export(conn, opts) for export in ENTITY_EXPORTS.values()]
        try:
            return scan_records(
                (record for stream in streams for record in stream),
                scanner,
                on_finding=on_finding,
                progress=progress,
            )
        finally:  # finalize unfinished streams while the connection is open, not at GC
            for stream in streams:
                stream.close()
