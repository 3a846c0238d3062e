"""A database scan in two processes (parallel.scan) reports what one process reports, in the
same order; `workers=2` makes the small sample take that path."""

from __future__ import annotations

import os
import random
import sqlite3
import string
from pathlib import Path
from typing import Any

import pytest

from kindling_bundle import RecordError, RecordFinding, Scanner, open_store, scan_database
from kindling_bundle.errors import BundleError
from kindling_bundle.parallel import forking
from kindling_bundle.parallel import scan as parallel_scan
from kindling_bundle.parallel.scan import HeldFindings

pytestmark = pytest.mark.skipif(
    not forking.fork_is_safe(), reason="the scanning process needs fork (Linux, two CPUs)"
)
RNG = random.Random(5)


def _token() -> str:
    return "ghp_" + "".join(RNG.choice(string.ascii_letters + string.digits) for _ in range(36))


@pytest.fixture(scope="module")
def scanner() -> Scanner:
    return Scanner.load()


@pytest.fixture
def children(monkeypatch: pytest.MonkeyPatch) -> list[int]:
    started: list[int] = []
    start = parallel_scan.ScanChild.__init__

    def counted(self: parallel_scan.ScanChild, *args: object, **kwargs: object) -> None:
        started.append(1)
        start(self, *args, **kwargs)  # type: ignore[arg-type]

    monkeypatch.setattr(parallel_scan.ScanChild, "__init__", counted)
    return started


def _plant(db: Path) -> list[str]:
    """Secrets in observations all along the export order, a capsule intent and a pin reason."""
    conn = sqlite3.connect(db)
    ids = [row[0] for row in conn.execute("SELECT id FROM observations ORDER BY ts, id")]
    chosen = ids[:3] + ids[len(ids) // 2 : len(ids) // 2 + 2] + ids[-2:]
    for oid in chosen:
        conn.execute(
            "UPDATE observations SET content = ? || content WHERE id = ?",
            (f"GITHUB_TOKEN={_token()}\n", oid),
        )
    conn.execute("UPDATE capsules SET intent = ? WHERE rowid = 3", (f"use {_token()}",))
    conn.execute("UPDATE pins SET reason = ? WHERE rowid = 2", (f"revoke {_token()}",))
    conn.commit()
    conn.close()
    return chosen


def _scan(db: Path, scanner: Scanner, workers: int) -> tuple[list[RecordFinding], object]:
    found: list[RecordFinding] = []
    progress: list[int] = []
    conn = open_store(db, readonly=True)
    try:
        report = scan_database(
            conn,
            scanner,
            on_finding=found.append,
            progress=lambda records, _: progress.append(records),
            workers=workers,
        )
    finally:
        conn.close()
    assert progress[-1] == sum(report.records.values())
    return found, (report.records, report.tally.records, dict(report.tally.by_rule))


def test_two_processes_report_what_one_does_in_the_same_order(
    sample_copy: Path, scanner: Scanner, children: list[int]
) -> None:
    chosen = _plant(sample_copy)
    parallel, counts = _scan(sample_copy, scanner, workers=2)
    assert children == [1]
    alone, reference = _scan(sample_copy, scanner, workers=1)
    assert children == [1]
    assert parallel == alone and counts == reference
    assert [f.id for f in parallel if f.entity == "observations"] == chosen
    assert [f.entity for f in parallel][-2:] == ["capsules", "pins"]


def test_the_childs_error_comes_first_as_in_one_process(
    sample_copy: Path, scanner: Scanner, children: list[int]
) -> None:
    conn = sqlite3.connect(sample_copy)
    ids = [row[0] for row in conn.execute("SELECT id FROM observations ORDER BY ts, id")]
    for oid in (ids[10], ids[-10]):  # one in each process's part
        conn.execute("UPDATE observations SET provenance = '{oops' WHERE id = ?", (oid,))
    conn.commit()
    conn.close()
    errors = []
    for workers in (2, 1):
        with pytest.raises(RecordError) as info:
            _scan(sample_copy, scanner, workers)
        errors.append((str(info.value), info.value.record_id))
    assert children == [1]
    assert errors[0] == errors[1] and errors[0][1] == ids[10]


def test_a_child_that_dies_fails_the_scan(
    sample_db: Path, scanner: Scanner, monkeypatch: pytest.MonkeyPatch
) -> None:
    scan_child = parallel_scan._scan_child

    def dies_once_started(*args: Any) -> None:
        *first, parent = args
        ready = parent.ready

        def then_dies() -> None:
            ready()  # waits for the word to start
            os._exit(9)

        parent.ready = then_dies
        scan_child(*first, parent)

    monkeypatch.setattr(parallel_scan, "_scan_child", dies_once_started)
    with pytest.raises(BundleError, match="scanning process ended without a word"):
        _scan(sample_db, scanner, workers=2)


def test_held_findings_come_back_in_order_from_memory_or_disk() -> None:
    many = [
        RecordFinding("observations", f"o{i}", "content", "github-pat", f"ghp_…{i:04d}")
        for i in range(30_000)  # several MiB: past the in-memory part
    ]
    with HeldFindings() as held:
        for finding in many:
            held.add(finding)
        assert list(held) == many
