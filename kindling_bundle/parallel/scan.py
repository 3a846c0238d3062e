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

import contextlib
import gc
import struct
import tempfile
from collections.abc import Callable, Iterator
from typing import Any

import msgspec

from kindling_bundle.db.connection import KindlingConnection, open_store
from kindling_bundle.db.export import SplitKey, export_observations_before, snapshot
from kindling_bundle.format.manifest import FRAME_RECORDS
from kindling_bundle.parallel.encoder import Witness
from kindling_bundle.parallel.forking import ChildFailed, pipe, start_child
from kindling_bundle.scrub import RecordFinding, Scanner, ScrubTally

SCAN_CHILD_SHARE = 0.55
"""Of a whole database's observations, the part the child scans. Unlike an export's, this
process has no compression left to do after its part, so the two halves balance by records:
the child's observations against this process's and the capsules, summaries and pins (about a
tenth of an agent's records)."""


class _Start(msgspec.Struct, tag=True):
    """To the child: nothing was committed since its snapshot; scan."""


class _Ready(msgspec.Struct, tag=True):
    """From the child: its snapshot is fixed."""


class _Found(msgspec.Struct, tag=True):
    """From the child: findings (masked previews only), and its records scanned so far."""

    findings: list[RecordFinding]
    scanned: int


class _Done(msgspec.Struct, tag=True):
    """From the child: its records, and its tally (records with a finding, findings by rule)."""

    records: int
    found_records: int
    by_rule: dict[str, int]


_FromChild = _Ready | _Found | _Done | ChildFailed


class ScanChild:
    """The child of a split scan, seen from this process: started on the observations before
    `key`. `on_finding` gets its findings and `on_progress(records)` its running count, when
    `poll` or `finish` takes them."""

    def __init__(
        self,
        conn: KindlingConnection,
        key: SplitKey,
        scanner: Scanner,
        on_finding: Callable[[RecordFinding], None] | None,
        on_progress: Callable[[int], None],
    ):
        self._reports, child_reports = pipe()
        child_commands, self._commands = pipe()
        self._child = start_child(
            _scan_child,
            (conn.path, key, scanner, child_commands, child_reports),
            "kbundle-scanner",
            parent_ends=(self._reports, self._commands),
        )
        child_commands.close()
        child_reports.close()
        self._decode = msgspec.msgpack.Decoder(_FromChild)
        self._on_finding = on_finding
        self._on_progress = on_progress
        self._last: _Done | ChildFailed | None = None
        self.key = key

    def __enter__(self) -> ScanChild:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def shares(self, witness: Witness) -> bool:
        """Wait until the child has its snapshot; tell it to start if it is this process's.
        False: it will scan nothing."""
        if not isinstance(self._receive(), _Ready) or not witness.unchanged():
            return False
        self._commands.send_bytes(msgspec.msgpack.encode(_Start()))
        return True

    def poll(self) -> None:
        """Pass on what the child reported so far, without waiting."""
        while self._last is None and self._reports.poll():
            self._take(self._receive())

    def finish(self) -> _Done:
        """Everything the child reports, until its last word; the error it met is raised."""
        while self._last is None:
            self._take(self._receive())
        if isinstance(self._last, ChildFailed):
            raise self._last.exception()
        return self._last

    def close(self) -> None:
        """Stop the child if it is still at work (after an error here, or if never started)."""
        self._commands.close()
        if not isinstance(self._last, _Done):
            self._child.terminate()
        self._child.join()
        self._reports.close()

    def _receive(self) -> _FromChild:
        try:
            message: _FromChild = self._decode.decode(self._reports.recv_bytes())
        except EOFError:  # gone without a last word
            return ChildFailed("BundleError", "the scanning process ended without a word (killed?)")
        return message

    def _take(self, report: _FromChild) -> None:
        if isinstance(report, _Found):
            if self._on_finding is not None:
                for finding in report.findings:
                    self._on_finding(finding)
            self._on_progress(report.scanned)
        elif isinstance(report, _Done | ChildFailed):
            self._last = report


def _scan_child(path: str, key: SplitKey, scanner: Scanner, commands: Any, reports: Any) -> None:
    """In the child: open the database, fix the snapshot and say so; when told to start, scan
    the observations before `key`, reporting findings a frame of records at a time."""
    encoder = msgspec.msgpack.Encoder()

    def report(message: _FromChild) -> None:
        reports.send_bytes(encoder.encode(message))

    gc.disable()  # records hold no cycles, and each is dropped after use
    try:
        conn = open_store(path, readonly=True)
        with snapshot(conn):
            report(_Ready())
            msgspec.msgpack.decode(commands.recv_bytes(), type=_Start)  # or the end: stopped
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
                    report(_Found(found, count))
                    found = []
            report(_Found(found, count))
            report(_Done(count, tally.records, dict(tally.by_rule)))
    except (EOFError, BrokenPipeError):  # the parent stopped the child, or is gone
        return
    except BaseException as exc:
        with contextlib.suppress(OSError):  # unless the parent is gone meanwhile
            report(ChildFailed.of(exc, "scanning"))


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
