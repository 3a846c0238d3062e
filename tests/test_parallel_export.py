"""A large export encodes part of its observations in a second process; the bundle must not change.

kindling_bundle.parallel.encoder forks a child that reads and encodes the first part of a whole
export's observations while this process encodes the rest. `workers=2` makes the small sample
take that path: the bytes, the errors and the clean-up must be those of one process.
"""

from __future__ import annotations

import os
import sqlite3
import subprocess
import threading
import time
from pathlib import Path

import msgspec
import pytest
from test_encrypted_bundles import children as child_pids

from conftest import cli_executable
from kindling_bundle import (
    BundleOptions,
    Observation,
    RecordError,
    export_observations,
    generate_sample,
    open_bundle,
    open_store,
    write_bundle,
)
from kindling_bundle.db.export import snapshot
from kindling_bundle.errors import BundleError, StoreError
from kindling_bundle.parallel import choose_workers, encoder, forking

pytestmark = pytest.mark.skipif(
    not forking.fork_is_safe(), reason="the encoder process needs fork (Linux, two CPUs)"
)


@pytest.fixture
def children(monkeypatch: pytest.MonkeyPatch) -> list[int]:
    """Counts the children started (one 1 each)."""
    assert threading.active_count() == 1, (
        f"a thread left by an earlier test: {threading.enumerate()}"
    )
    started: list[int] = []
    start = encoder.SplitChild.__init__

    def counted(self, *args, **kwargs):
        started.append(1)
        start(self, *args, **kwargs)

    monkeypatch.setattr(encoder.SplitChild, "__init__", counted)
    return started


def _export(db: Path, dest: Path, workers: int | str) -> tuple[list, bytes]:
    conn = open_store(db, readonly=True)
    progress: list = []
    try:
        write_bundle(
            conn,
            dest,
            BundleOptions(created_at=1767225600000, workers=workers),
            progress=lambda records, size: progress.append((records, size)),
        )
    finally:
        conn.close()
    return progress, dest.read_bytes()


def test_the_child_writes_the_same_bundle(sample_db: Path, tmp_path: Path, children) -> None:
    progress, parallel = _export(sample_db, tmp_path / "parallel.kbundle", workers=2)
    assert children == [1]
    reference_progress, reference = _export(sample_db, tmp_path / "inline.kbundle", workers=1)
    assert children.count(1) == 1
    assert parallel == reference
    assert progress[-1] == reference_progress[-1]  # every record and byte counted


def test_auto_keeps_a_small_export_in_one_process(
    sample_db: Path, tmp_path: Path, children
) -> None:
    _, auto = _export(sample_db, tmp_path / "auto.kbundle", workers="auto")
    assert children == []
    assert choose_workers("auto", 1_000_000) == 2 and choose_workers(1, 1_000_000) == 1
    _, reference = _export(sample_db, tmp_path / "inline.kbundle", workers=1)
    assert auto == reference


def test_no_fork_while_another_thread_runs(sample_db: Path, tmp_path: Path, children) -> None:
    """A thread of the caller's (or fsspec's I/O thread, for an s3:// destination) would be
    copied into a forked child in whatever state its locks were: the export stays here."""
    release = threading.Event()
    other = threading.Thread(target=release.wait)
    other.start()
    try:
        _, alone = _export(sample_db, tmp_path / "threaded.kbundle", workers=2)
    finally:
        release.set()
        other.join()
    assert children == []
    _, forked = _export(sample_db, tmp_path / "forked.kbundle", workers=2)
    assert children == [1] and alone == forked


def test_no_fork_with_one_usable_cpu(
    sample_db: Path, tmp_path: Path, children, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(os, "sched_getaffinity", lambda pid: {0})
    _export(sample_db, tmp_path / "one.kbundle", workers=2)
    assert children == []


def test_workers_must_be_auto_or_a_whole_number() -> None:
    for wrong in (0, -1, True, 1.5, "many", None):
        with pytest.raises(ValueError, match="workers must be"):
            BundleOptions(workers=wrong)  # type: ignore[arg-type]


def test_a_bad_row_is_named_as_in_process(sample_copy: Path, tmp_path: Path, children) -> None:
    bad = _break(
        sample_copy,
        "UPDATE observations SET provenance = '{oops' WHERE rowid = 777",
        "SELECT id FROM observations WHERE rowid = 777",
    )
    parallel, alone = _errors(sample_copy, tmp_path)
    assert parallel == alone
    assert parallel[1].startswith(f"{sample_copy}: observation {bad}: column provenance")
    assert parallel[3] == bad


def test_a_child_that_dies_fails_the_export_and_leaves_nothing(
    sample_db: Path, tmp_path: Path, children, monkeypatch: pytest.MonkeyPatch
) -> None:
    split_child = encoder._split_child

    def dies_once_started(*args):  # in the child: it has its snapshot, then dies
        *first, parent = args
        ready = parent.ready

        def then_dies():
            ready()  # waits for the word to start
            os._exit(9)

        parent.ready = then_dies
        split_child(*first, parent)

    monkeypatch.setattr(encoder, "_split_child", dies_once_started)
    dest = tmp_path / "out.kbundle"
    with pytest.raises(BundleError, match="encoding process ended without a word"):
        _export(sample_db, dest, workers=2)
    assert children == [1]
    assert list(tmp_path.iterdir()) == []


def test_a_child_that_cannot_start_leaves_the_work_to_this_process(
    sample_db: Path, tmp_path: Path, children, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(encoder, "_split_child", lambda *args: os._exit(9))
    _, parallel = _export(sample_db, tmp_path / "parallel.kbundle", workers=2)
    _, reference = _export(sample_db, tmp_path / "inline.kbundle", workers=1)
    assert children == [1]
    assert parallel == reference


def test_an_export_inside_the_callers_transaction_reads_every_row_in_it(
    sample_copy: Path, tmp_path: Path, children
) -> None:
    """A caller's transaction may have begun before commits that a child's new connection would
    see: then every row is read here, from the caller's snapshot."""
    conn = open_store(sample_copy, readonly=True)
    try:
        with snapshot(conn):
            before = [o.content for o in export_observations(conn)]
            db = sqlite3.connect(sample_copy)
            db.execute("UPDATE observations SET content = 'changed'")
            db.commit()
            db.close()
            write_bundle(conn, tmp_path / "out.kbundle", BundleOptions(created_at=1, workers=2))
    finally:
        conn.close()
    records = open_bundle(tmp_path / "out.kbundle").records()
    assert [o.content for o in records if isinstance(o, Observation)] == before
    assert children == []


def test_a_commit_during_the_start_keeps_the_export_in_one_process(
    sample_copy: Path, tmp_path: Path, children, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A commit between the export's snapshot and the child's: the child would see another
    state, so it is stopped and this process reads every row (the snapshot's)."""
    conn = open_store(sample_copy, readonly=True)
    before = [o.content for o in export_observations(conn)]
    shares = encoder.SplitChild.shares

    def commit_meanwhile(self, witness) -> bool:
        db = sqlite3.connect(sample_copy)
        db.execute("UPDATE observations SET content = 'changed' WHERE rowid = 1")
        db.commit()
        db.close()
        return shares(self, witness)

    monkeypatch.setattr(encoder.SplitChild, "shares", commit_meanwhile)
    try:
        write_bundle(conn, tmp_path / "out.kbundle", BundleOptions(created_at=1, workers=2))
    finally:
        conn.close()
    assert children == [1]
    exported = [
        o.content
        for o in open_bundle(tmp_path / "out.kbundle").records()
        if isinstance(o, Observation)
    ]
    assert exported == before and "changed" not in exported


def _break(db_path: Path, sql: str, select: str) -> str:
    db = sqlite3.connect(db_path)
    db.execute(sql)
    (bad,) = db.execute(select).fetchone()
    db.commit()
    db.close()
    return bad


def _errors(db: Path, tmp_path: Path) -> list[tuple[type, str, str | None, str | None]]:
    """The error of an export with a child, then of one without: class, message, entity, id."""
    errors = []
    for workers in (2, 1):
        dest = tmp_path / f"{workers}.kbundle"
        with pytest.raises(RecordError) as caught:
            _export(db, dest, workers)
        assert not dest.exists()
        error = caught.value
        errors.append((type(error), str(error), error.entity, error.record_id))
    return errors


def test_a_bad_capsule_encoded_beside_the_child_is_named_as_in_process(
    sample_copy: Path, tmp_path: Path, children
) -> None:
    bad = _break(
        sample_copy,
        "UPDATE capsules SET scope_ids = '[1' WHERE rowid = 3",
        "SELECT id FROM capsules WHERE rowid = 3",
    )
    parallel, alone = _errors(sample_copy, tmp_path)
    assert children.count(1) == 1
    assert parallel == alone
    assert parallel[2:] == ("capsule", bad)
    assert [p for p in tmp_path.iterdir() if not p.name.startswith("copy.db")] == []


@pytest.mark.parametrize("rowid", [1, 1500])  # in the child's part, and in this process's
def test_the_childs_error_comes_first_as_in_foreign_key_order(
    sample_copy: Path, tmp_path: Path, children, rowid: int
) -> None:
    _break(sample_copy, "UPDATE capsules SET scope_ids = '[1' WHERE rowid = 3", "SELECT 1")
    bad = _break(
        sample_copy,
        f"UPDATE observations SET scope_ids = 'nope' WHERE rowid = {rowid}",
        f"SELECT id FROM observations WHERE rowid = {rowid}",
    )
    parallel, alone = _errors(sample_copy, tmp_path)
    assert parallel == alone
    assert parallel[0] is RecordError and parallel[2:] == ("observation", bad)


def test_the_cli_takes_workers_for_export_and_verify(
    sample_db: Path, tmp_path: Path, run_cli
) -> None:
    bundles = []
    for workers in ("1", "2", "auto"):
        dest = tmp_path / f"{workers}.kbundle"
        done = run_cli("export", "--db", sample_db, "--created-at", 0, "--workers", workers, dest)
        assert done.returncode == 0, done.stderr
        bundles.append(dest.read_bytes())
        verified = run_cli("verify", "--workers", workers, dest)
        assert verified.returncode == 0 and b"valid" in verified.stdout, verified.stderr
    assert bundles[0] == bundles[1] == bundles[2]
    for command in ("export", "verify"):
        for wrong in ("0", "many"):
            args = ("--db", sample_db) if command == "export" else ()
            refused = run_cli(command, *args, "--workers", wrong, tmp_path / "2.kbundle")
            assert refused.returncode == 2 and b"--workers" in refused.stderr


@pytest.mark.parametrize(
    "error",
    [
        RecordError(
            "db: observation o1: column ts is not an integer", entity="observation", record_id="o1"
        ),
        StoreError("db: cannot export observations: database disk image is malformed"),
        BundleError("out.kbundle: cannot write the spool file: No space left on device"),
    ],
)
def test_a_childs_error_crosses_as_the_same_class_and_message(error: Exception) -> None:
    sent = msgspec.msgpack.encode(forking.ChildFailed.of(error, "encoding"))
    raised = msgspec.msgpack.decode(sent, type=forking.ChildFailed).exception()
    assert type(raised) is type(error) and str(raised) == str(error)
    assert vars(raised) == vars(error)  # a RecordError's entity and record id too


@pytest.fixture(scope="module")
def larger_db(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Enough observations that the encoding child works for a while."""
    path = tmp_path_factory.mktemp("larger") / "larger.db"
    generate_sample(path, observations=20_000, seed=3)
    return path


@pytest.mark.parametrize("after", [0.0, 0.5])
def test_a_killed_export_leaves_no_encoding_process_behind(
    larger_db: Path, tmp_path: Path, after: float
) -> None:
    """A CLI export killed outright (no clean-up of its own runs) takes its child with it: the
    child sees the end of its pipes and exits, instead of sleeping on as an orphan."""
    command = [cli_executable(), "export", "--db", str(larger_db), "--workers", "2", "-q"]
    export = subprocess.Popen([*command, str(tmp_path / "out.kbundle")])
    try:
        while not (forked := list(child_pids(export.pid))):
            assert export.poll() is None, "the export ended before it forked"
            time.sleep(0.002)
        time.sleep(after)  # right after the fork, or while the child encodes
    finally:
        export.kill()
        export.wait()
    deadline = time.monotonic() + 30
    while any(_alive(pid) for pid in forked):
        assert time.monotonic() < deadline, f"an orphaned child lives on: {forked}"
        time.sleep(0.05)


def _alive(pid: int) -> bool:
    try:
        status = Path(f"/proc/{pid}/status").read_text()
    except OSError:
        return False
    return "\nState:\tZ" not in status
