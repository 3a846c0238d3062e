"""Scanning a whole database for secrets in two processes: the split of `parallel.encoder`,
for `scan` instead of `export`.

A forked child with its own connection on the scan's snapshot (the same `Witness` handshake as
the encoder's) scans the first SCAN_CHILD_SHARE of the observations, while this process scans the
rest and then the other entities. The child sends its findings as it finds them, with its
running count, and its tally when done. Its part comes first in export order, so this process
passes the child's findings on as they arrive (between its own frames) and holds its own until
the child is done: the findings come in the order one process gives, whatever the number of
processes. Findings are few (a handful per thousand records); those held wait in a temporary
file once they pass a MiB, so memory stays flat however many there are.
"""

from __future__ import annotations

import functools
import struct
import tempfile
from collections.abc import Callable, Iterator

import msgspec

from kindling_bundle.db.connection import KindlingConnection, open_store
from kindling_bundle.db.export import SplitKey, export_observations_before, snapshot
from kindling_bundle.format.manifest import FRAME_RECORDS
from kindling_bundle.parallel.forking import ToParent, WorkerChild
from kindling_bundle.scrub import RecordFinding, Scanner, ScrubTally

SCAN_CHILD_SHARE = 0.55
"""Of a whole database's observations, the part the child scans. Unlike an export's, this
process has no compression left to do after its part, so the two halves balance by records:
the child's observations against this process's and the capsules, summaries and pins (about a
tenth of an agent's records)."""


class _Found(msgspec.Struct, tag=True):
    """From the child: findings (masked previews only), and its records scanned so far."""

    findings: list[RecordFinding]
    scanned: int


class _Done(msgspec.Struct, tag=True):
    """From the child: its records, and its tally (records with a finding, findings by rule)."""

    records: int
    found_records: int
    by_rule: dict[str, int]


class ScanChild(WorkerChild[_Done]):
    """The child of a split scan, seen from this process: started on the observations before
    `key`. `on_finding` gets its findings and `on_progress(records)` its running count, when
    `poll` or `wait` takes them."""

    def __init__(
        self,
        conn: KindlingConnection,
        key: SplitKey,
        scanner: Scanner,
        on_finding: Callable[[RecordFinding], None] | None,
        on_progress: Callable[[int], None],
    ):
        work = functools.partial(_scan_child, conn.path, key, scanner)
        super().__init__(work, "scanning", "kbundle-scanner", _Found, _Done)
        self._on_finding = on_finding
        self._on_progress = on_progress
        self.key = key

    def _progress(self, report: _Found) -> None:
        if self._on_finding is not None:
            for finding in report.findings:
                self._on_finding(finding)
        self._on_progress(report.scanned)


def _scan_child(path: str, key: SplitKey, scanner: Scanner, parent: ToParent) -> None:
    """In the child: open the database, fix the snapshot and say so; when told to start, scan
    the observations before `key`, reporting findings a frame of records at a time."""
    conn = open_store(path, readonly=True)
    with snapshot(conn):
        parent.ready()
        tally = ScrubTally()
        found: list[RecordFinding] = []
        count = 0
        for record in export_observations_before(conn, key):
            _, findings = scanner.scrub_record(record)
            if findings:
                tally.add(findings)
                found.extend(findings)
            count += 1
            if count % FRAME_RECORDS == 0:
                parent.send(_Found(found, count))
                found = []
        parent.send(_Found(found, count))
        parent.send(_Done(count, tally.records, dict(tally.by_rule)))


class HeldFindings:
    """This process's findings, kept in order until the child's have been passed on: in memory
    up to a MiB, then in an anonymous temporary file."""

    _LENGTH = struct.Struct(">I")

    def __init__(self) -> None:
        self._file = tempfile.SpooledTemporaryFile(max_size=1 << 20)  # noqa: SIM115
        self._encode = msgspec.msgpack.Encoder()
        self.count = 0

    def __enter__(self) -> HeldFindings:
        return self

    def __exit__(self, *exc: object) -> None:
        self._file.close()

    def add(self, finding: RecordFinding) -> None:
        data = self._encode.encode(finding)
        self._file.write(self._LENGTH.pack(len(data)) + data)
        self.count += 1

    def __iter__(self) -> Iterator[RecordFinding]:
        self._file.seek(0)
        decode = msgspec.msgpack.Decoder(RecordFinding).decode
        for _ in range(self.count):
            (size,) = self._LENGTH.unpack(self._file.read(self._LENGTH.size))
            yield decode(self._file.read(size))
