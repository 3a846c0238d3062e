"""Crashes, full disks and concurrent writers (issue 8): an import killed at any point leaves the
database as it was or fully imported (into a database that exists, once `recover` has undone the
part written, which `check` reports until then), and `check` passes; a killed export leaves
nothing at (or beside) the destination; a full disk fails cleanly; an export taken while another
process writes thousands of observations a second is a consistent bundle.

Kill points are random (fixed seeds) or triggered by the importer's undo journal reaching a
size (inside the import) or its commit point. No assertion depends on timing.
"""

from __future__ import annotations

import io
import os
import random
import resource
import shutil
import signal
import sqlite3
import subprocess
import sys
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest

from conftest import cli_executable, dump_contents, dump_tables, one_error_line
from kindling_bundle import generate_sample, import_bundle, open_store, verify_bundle, write_bundle
from kindling_bundle.db.journal import IMPORT_TABLE, UNDO_TABLE
from kindling_bundle.errors import StoreError

BUNDLE_OBSERVATIONS = 20_000
IMPORT_KILLS = 18
EXPORT_KILLS = 10
EXPORT_LEVEL = 12  # slower compression: a wider window in which the output is being written
Dumps = dict[str, list[tuple]]


def _cli(*args: str | Path) -> list[str]:
    return [cli_executable(), *map(str, args)]


def _check_passes(db: Path) -> None:
    proc = subprocess.run(_cli("check", "--db", db), capture_output=True, timeout=120)
    assert proc.returncode == 0, proc.stdout.decode() + proc.stderr.decode()
    assert "integrity: ok" in proc.stdout.decode()


@pytest.fixture(scope="module")
def source(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A database of BUNDLE_OBSERVATIONS observations (about 21,700 records in all)."""
    path = tmp_path_factory.mktemp("source") / "source.db"
    generate_sample(path, observations=BUNDLE_OBSERVATIONS, seed=5)
    return path


@pytest.fixture(scope="module")
def bundle(source: Path) -> Path:
    path = source.parent / "source.kbundle"
    conn = open_store(source, readonly=True)
    write_bundle(conn, path)
    conn.close()
    return path


@pytest.fixture(scope="module")
def targets(
    tmp_path_factory: pytest.TempPathFactory, bundle: Path
) -> list[tuple[Path, Dumps, Dumps]]:
    """(template, contents before, contents after a complete import) for a database that does
    not exist yet (the one-transaction bulk load into a private file), an empty one and a small
    one (both in use, as far as the import knows: short journaled steps)."""
    folder = tmp_path_factory.mktemp("targets")
    new, empty, small = folder / "new.db", folder / "empty.db", folder / "small.db"
    open_store(empty).close()
    generate_sample(small, observations=300, seed=2)
    result = []
    for template in (new, empty, small):
        imported = folder / f"imported-{template.name}"
        if template.exists():
            shutil.copy(template, imported)
        subprocess.run(_cli("import", "--db", imported, bundle, "-q"), check=True, timeout=120)
        before = dump_contents(template) if template.exists() else {}
        result.append((template, before, dump_contents(imported)))
    return result


def _journal(db: Path) -> tuple[str, int] | None:
    """The state of the undo journal in `db` and the rows it journals (an `inserts` entry is a
    run of rows), or None if it has none."""
    if not db.exists():
        return None
    conn = sqlite3.connect(f"file:{db}?mode=ro", uri=True)
    try:
        state = conn.execute(f"SELECT state FROM {IMPORT_TABLE}").fetchone()[0]
        entries = conn.execute(
            f"SELECT coalesce(sum(CASE op WHEN 'inserts' THEN a0 - row + 1 ELSE 1 END), 0) "
            f"FROM {UNDO_TABLE}"
        ).fetchone()[0]
    except (sqlite3.OperationalError, TypeError):
        return None
    finally:
        conn.close()
    return state, entries


def _made_alike(db: Path, contents: Dumps) -> bool:
    """`db` holds `contents`, but for when its schema was created."""
    found = dump_contents(db)
    return {**found, "schema_migrations": []} == {**contents, "schema_migrations": []}


def _kill_when(proc: subprocess.Popen, ready: Callable[[], bool]) -> bool:
    """SIGKILL `proc` as soon as `ready()`; False if it exited first."""
    while not ready():
        if proc.poll() is not None:
            return False
        time.sleep(0.002)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    return True


def test_an_import_killed_at_any_point_is_all_or_nothing(
    tmp_path: Path, bundle: Path, targets: list[tuple[Path, Dumps, Dumps]]
) -> None:
    rng = random.Random(8)
    plans: list[tuple[str, float]] = []
    for n in range(IMPORT_KILLS):
        if n % 3 == 0:  # anywhere, from process start to past the end of a typical import
            plans.append(("delay", rng.uniform(0.0, 4.0)))
        elif n % 3 == 1:  # inside the import: once its journal holds this many rows
            plans.append(("journal", rng.randrange(1, 20_000)))
        else:  # as soon as it succeeded, before its journal is gone
            plans.append(("commit", 0))

    def attempt(n: int) -> tuple[str, str]:
        template, before, after = targets[n % 3]
        target = tmp_path / f"{n}-{template.name}"
        if template.exists():
            shutil.copy(template, target)
        proc = subprocess.Popen(
            _cli("import", "--db", target, bundle, "-q"),
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        kind, value = plans[n]
        if kind == "delay":
            deadline = time.monotonic() + value
            killed = _kill_when(proc, lambda: time.monotonic() >= deadline)
        elif kind == "journal":
            killed = _kill_when(proc, lambda: (_journal(target) or ("", 0))[1] >= value)
        else:
            killed = _kill_when(proc, lambda: (_journal(target) or ("",))[0] == "committed")
        proc.wait()
        if not template.exists():  # a new database: there whole, or not at all
            assert not target.exists() or _made_alike(target, after), f"kill {n}"
            if not target.exists():
                return "before", ""
            _check_passes(target)
            return "after", ""
        journal = _journal(target)
        if journal is not None:  # the part written is there until `recover` undoes it
            line = one_error_line(
                subprocess.run(_cli("check", "--db", target), capture_output=True)
            )
            assert f"kindling-bundle recover --db {target}" in line
            subprocess.run(_cli("recover", "--db", target, "-q"), check=True, timeout=120)
        state = dump_contents(target)
        assert state in (before, after), f"kill {n} ({kind} {value}): a partial import"
        _check_passes(target)
        outcome = "completed" if not killed else "before" if state == before else "after"
        return outcome, "mid-import" if journal is not None and state == before else ""

    with ThreadPoolExecutor(max_workers=2) as pool:
        outcomes = list(pool.map(attempt, range(IMPORT_KILLS)))
    # Evidence that both endings were exercised: kills inside the import, and after it.
    assert any(note == "mid-import" for _, note in outcomes), outcomes
    assert any(outcome in ("after", "completed") for outcome, _ in outcomes), outcomes

    # A killed import is simply run again: it undoes the part written, completes, and gives
    # the same database.
    for n in range(IMPORT_KILLS):
        if outcomes[n][1] == "mid-import":
            template, _, after = targets[n % 3]
            target = tmp_path / f"{n}-{template.name}"
            shutil.copy(template, target)
            _kill_when(
                subprocess.Popen(_cli("import", "--db", target, bundle, "-q")),
                lambda target=target: (_journal(target) or ("", 0))[1] > 0,
            )
            subprocess.run(_cli("import", "--db", target, bundle, "-q"), check=True, timeout=120)
            assert dump_contents(target) == after
            break


def _directory_listing(folder: Path) -> dict[str, bytes]:
    return {p.name: p.read_bytes() for p in folder.iterdir()}


def test_an_export_killed_at_any_point_leaves_nothing_behind(tmp_path: Path, source: Path) -> None:
    """On Linux the bundle is an unnamed file until it is complete: a kill leaves no file at
    all. Elsewhere a `.NAME.XXXXXXXX.tmp` may stay; it never takes the destination's name."""
    out = tmp_path / "out"
    out.mkdir()
    dest = out / "memory.kbundle"
    dest.write_bytes(b"the previous bundle")
    rng = random.Random(9)
    for _ in range(EXPORT_KILLS):
        proc = subprocess.Popen(
            _cli("export", "--db", source, "--level", EXPORT_LEVEL, dest, "-q"),
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        deadline = time.monotonic() + rng.uniform(0.05, 1.0)
        _kill_when(proc, lambda deadline=deadline: time.monotonic() >= deadline)
        leftovers = _directory_listing(out)
        if dest.read_bytes() != b"the previous bundle":  # the export finished before the kill
            assert verify_bundle(dest).ok
            dest.write_bytes(b"the previous bundle")
            leftovers = _directory_listing(out)
        assert leftovers == {"memory.kbundle": b"the previous bundle"} or (
            not hasattr(os, "O_TMPFILE")
            and all(n.startswith(".memory.kbundle.") for n in leftovers if n != "memory.kbundle")
        ), sorted(leftovers)
    finished = subprocess.run(_cli("export", "--db", source, dest, "-q"), timeout=120)
    assert finished.returncode == 0 and verify_bundle(dest).ok
    assert sorted(p.name for p in out.iterdir()) == ["memory.kbundle"]


def _file_size_limit(limit: int) -> Callable[[], None]:
    def apply() -> None:  # Python ignores SIGXFSZ, so a write past the limit fails with EFBIG
        resource.setrlimit(resource.RLIMIT_FSIZE, (limit, limit))

    return apply


def test_a_full_disk_during_export_fails_cleanly(tmp_path: Path, source: Path) -> None:
    dest = tmp_path / "memory.kbundle"
    proc = subprocess.run(
        _cli("export", "--db", source, dest),
        capture_output=True,
        timeout=120,
        preexec_fn=_file_size_limit(256 << 10),
    )
    line = one_error_line(proc)
    assert "memory.kbundle: cannot write" in line and "File too large" in line
    assert list(tmp_path.iterdir()) == []


def test_json_export_destinations_that_cannot_be_written_are_one_line(
    tmp_path: Path, source: Path
) -> None:
    dest = tmp_path / "memory.json"
    proc = subprocess.run(
        _cli("export", "--db", source, "--format", "kindling-json", dest),
        capture_output=True,
        timeout=120,
        preexec_fn=_file_size_limit(256 << 10),
    )
    assert one_error_line(proc).endswith(f"cannot write {dest}: File too large")
    assert list(tmp_path.iterdir()) == []
    for target, reason in [
        (tmp_path / "nodir" / "o.json", f"folder {tmp_path / 'nodir'} does not exist"),
        (tmp_path, "it is a folder"),
    ]:
        proc = subprocess.run(
            _cli("export", "--db", source, "--format", "kindling-json", target),
            capture_output=True,
            timeout=120,
        )
        assert one_error_line(proc).endswith(f"cannot write {target}: {reason}")
    assert list(tmp_path.iterdir()) == []


def test_a_full_disk_during_import_fails_cleanly(
    tmp_path: Path, bundle: Path, targets: list[tuple[Path, Dumps, Dumps]]
) -> None:
    template, before, _ = targets[2]
    target = tmp_path / "t.db"
    shutil.copy(template, target)
    proc = subprocess.run(
        _cli("import", "--db", target, bundle),
        capture_output=True,
        timeout=120,
        preexec_fn=_file_size_limit(2 << 20),  # the database outgrows it mid-import
    )
    line = one_error_line(proc)
    if "t.db: import failed, nothing written" not in line:
        # The steps written before the disk filled are undone by writing too: when the database
        # file cannot grow, neither can the write-ahead log be emptied. The journal stays, and
        # the line says what to do once there is room again.
        assert "t.db: import failed (" in line and "undoing it failed too" in line
        assert f"until `kindling-bundle recover --db {target}` succeeds" in line
        subprocess.run(_cli("recover", "--db", target, "-q"), check=True, timeout=120)
    assert dump_contents(target) == before
    _check_passes(target)


_WRITER = """
import sys, pathlib
from kindling_bundle import open_store
from kindling_bundle.records import Capsule, Observation, Pin, Summary
from kindling_bundle.db.connection import write_transaction
from kindling_bundle.db.writes import (
    create_capsule, insert_observations, insert_pin, insert_summary,
)
conn = open_store(sys.argv[1])
stop = pathlib.Path(sys.argv[2])
ts = 1_900_000_000_000
batch = 0
while not stop.exists():
    with write_transaction(conn):
        scope = {"sessionId": f"live-{batch // 10}"}
        observations = [
            Observation(id=f"live-{batch}-{i}", kind="message", ts=ts + i, scope_ids=scope,
                        content=f"written while an export runs, batch {batch} item {i}")
            for i in range(200)
        ]
        insert_observations(conn, observations)
        capsule = Capsule(id=f"live-cap-{batch}", type="session", intent="live", opened_at=ts,
                          scope_ids=scope, observation_ids=[o.id for o in observations[:20]])
        create_capsule(conn, capsule)
        insert_summary(conn, Summary(id=f"live-sum-{batch}", capsule_id=capsule.id, content="s",
                                     confidence=0.5, created_at=ts,
                                     evidence_refs=[observations[0].id]))
        insert_pin(conn, Pin(id=f"live-pin-{batch}", target_type="observation",
                             target_id=observations[1].id, created_at=ts))
    batch += 1
    ts += 1000
    if batch == 1:
        print("writing", flush=True)
print(batch * 200, flush=True)
"""


def test_an_export_while_another_process_writes_is_consistent(tmp_path: Path, source: Path) -> None:
    db = tmp_path / "live.db"
    shutil.copy(source, db)
    stop = tmp_path / "stop"
    writer = subprocess.Popen(
        [sys.executable, "-c", _WRITER, str(db), str(stop)], stdout=subprocess.PIPE
    )
    assert writer.stdout is not None and writer.stdout.readline() == b"writing\n"

    def observations() -> int:
        conn = open_store(db, readonly=True)
        try:
            return conn.execute("SELECT count(*) FROM observations").fetchone()[0]
        finally:
            conn.close()

    bundles = []
    try:
        for n in range(2):
            during = observations()
            out = tmp_path / f"live-{n}.kbundle"
            subprocess.run(_cli("export", "--db", db, out, "-q"), check=True, timeout=120)
            bundles.append((during, out, observations()))
    finally:
        stop.touch()
        written = int(writer.communicate(timeout=60)[0].split()[-1])
    assert written > 0 and writer.returncode == 0
    for before, out, after in bundles:
        assert after > before  # the other process wrote while this export ran
        report = verify_bundle(out)
        assert report.ok, report.problems
        assert before <= report.records["observations"] <= after
        restored = open_store(tmp_path / f"restored-{out.stem}.db")
        imported = import_bundle(restored, out)
        restored.close()
        assert imported.integrity.ok, imported.integrity.problems
        assert imported.counts["observations"].inserted == report.records["observations"]


def test_the_crash_fixtures_are_what_the_tests_assume(
    bundle: Path, targets: list[tuple[Path, Dumps, Dumps]]
) -> None:
    """A few tens of thousands of records; complete imports differ from the starting states."""
    report = verify_bundle(io.BytesIO(bundle.read_bytes()))
    assert report.ok and sum(report.records.values()) > 20_000
    for _, before, after in targets:
        assert before != after


def test_an_import_goes_no_further_once_sqlite_rolled_it_back(
    tmp_path: Path,
    bundle: Path,
    targets: list[tuple[Path, Dumps, Dumps]],
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """On a full disk SQLite rolls the whole transaction back inside the failing statement; an
    importer that steps past the error then sees the bundle's later records miss what they
    reference (so it seemed on a full tmpfs). Simulated here after the second frame of a load
    into a private empty database (one transaction): the import must report the lost
    transaction, not a missing capsule, and leave the database as it was."""
    from kindling_bundle.ops import restore_new

    real_import_batch = restore_new.import_batch
    frames = 0

    def import_batch_then_lose_the_transaction(conn, records, *args, **kwargs):
        nonlocal frames
        frames += 1
        results = real_import_batch(conn, records, *args, **kwargs)
        if frames == 2:
            conn.execute("ROLLBACK")  # what SQLite does by itself on SQLITE_FULL
        return results

    monkeypatch.setattr(restore_new, "import_batch", import_batch_then_lose_the_transaction)
    template, _, _ = targets[1]  # empty: the insert-first path, which uses no savepoint
    target = tmp_path / "t.db"
    shutil.copy(template, target)
    conn = open_store(target)
    conn.private = True
    with pytest.raises(StoreError, match=r"t\.db: import failed, nothing written: SQLite rolled"):
        import_bundle(conn, bundle)
    conn.close()
    assert frames == 2
    assert dump_tables(target) == dump_tables(template)


def test_a_step_sqlite_rolled_back_is_undone_with_the_rest(
    tmp_path: Path,
    bundle: Path,
    targets: list[tuple[Path, Dumps, Dumps]],
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """The same in a database in use: the step SQLite rolled back goes no further (the rows its
    next statements wrote, each committing alone, are journaled all the same), and the steps
    committed before it are undone."""
    from kindling_bundle.db import staging

    real_insert = staging.Stage.insert
    inserts = 0

    def insert_then_lose_the_transaction(stage, *args, **kwargs):  # each staged run moved in
        nonlocal inserts
        inserts += 1
        real_insert(stage, *args, **kwargs)
        if inserts == 3:  # a later step's: the steps before it are committed
            stage.conn.execute("ROLLBACK")  # what SQLite does by itself on SQLITE_FULL

    monkeypatch.setattr(staging.Stage, "insert", insert_then_lose_the_transaction)
    template, before, _ = targets[2]
    target = tmp_path / "t.db"
    shutil.copy(template, target)
    conn = open_store(target)
    with pytest.raises(StoreError, match=r"t\.db: import failed, nothing written: SQLite rolled"):
        import_bundle(conn, bundle)
    conn.close()
    assert inserts >= 3
    assert dump_contents(target) == before
    _check_passes(target)
