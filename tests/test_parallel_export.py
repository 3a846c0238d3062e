"""A large export encodes its observations in a second process; the bundle must not change.

kindling_bundle.parallel.encoder forks a child that turns rows into records, checks and
encodes them while this process reads SQLite. Here the size threshold is lowered so the small
sample takes that path: the bytes, the errors and the clean-up must be those of in-process
encoding.
"""

from __future__ import annotations

import os
import sqlite3
from pathlib import Path

import pytest

from kindling_bundle import (
    BundleOptions,
    Observation,
    RecordError,
    export_observations,
    open_bundle,
    open_store,
    write_bundle,
)
from kindling_bundle.db.export import snapshot
from kindling_bundle.errors import BundleError
from kindling_bundle.ops import write
from kindling_bundle.parallel import encoder, forking
from kindling_bundle.parallel.encoder import ChildEncoder

pytestmark = pytest.mark.skipif(
    not forking.parallel_available(), reason="the encoder process needs fork (Linux)"
)


@pytest.fixture(params=["split", "roomy pipe", "full pipe"])
def children(request: pytest.FixtureRequest, monkeypatch: pytest.MonkeyPatch) -> list[int]:
    """Every export takes a child path; the list counts the children started (1) and the
    batches of rows this process encoded itself (0).

    "split": a child reads and encodes the first part of the observations itself (a whole
    export). The others are what happens when it cannot share the snapshot (or the export is
    filtered): rows are sent to the child. With a full pipe (one page) that child never has room
    for a batch: this process encodes the other members, then observations too."""
    started: list[int] = []
    child = encoder.ReadingChild if request.param == "split" else ChildEncoder
    start = child.__init__

    def counted(self, *args, **kwargs):
        started.append(1)
        start(self, *args, **kwargs)

    monkeypatch.setattr("kindling_bundle.ops.write.PARALLEL_MIN_ROWS", 0)
    monkeypatch.setattr(child, "__init__", counted)
    if request.param != "split":
        monkeypatch.setattr(write._Witness, "unchanged", lambda self: False)
    if request.param == "full pipe":
        monkeypatch.setattr(forking, "PIPE_BYTES", 1)
        here = ChildEncoder._encoded_here

        def counted_here(self, batch):
            started.append(0)  # a batch encoded here, not by the child
            return here(self, batch)

        monkeypatch.setattr(ChildEncoder, "_encoded_here", counted_here)
    return started


def _export(db: Path, dest: Path, parallel: bool) -> tuple[list, bytes | None]:
    conn = open_store(db, readonly=True)
    progress: list = []
    try:
        write_bundle(
            conn,
            dest,
            BundleOptions(created_at=1767225600000, parallel=parallel),
            progress=lambda records, size: progress.append((records, size)),
        )
    finally:
        conn.close()
    return progress, dest.read_bytes()


def test_the_child_writes_the_same_bundle(sample_db: Path, tmp_path: Path, children) -> None:
    progress, parallel = _export(sample_db, tmp_path / "parallel.kbundle", parallel=True)
    assert children[0] == 1 and len(children) in (1, 3)  # 1500 rows: two batches here, or none
    reference_progress, reference = _export(sample_db, tmp_path / "inline.kbundle", False)
    assert children.count(1) == 1
    assert parallel == reference
    assert progress[-1] == reference_progress[-1]  # every record and byte counted


def test_a_bad_row_is_named_as_in_process(sample_copy: Path, tmp_path: Path, children) -> None:
    bad = _break(
        sample_copy,
        "UPDATE observations SET provenance = '{oops' WHERE rowid = 777",
        "SELECT id FROM observations WHERE rowid = 777",
    )
    parallel, alone = _errors(sample_copy, tmp_path)
    assert parallel == alone
    assert parallel[0].startswith(f"{sample_copy}: observation {bad}: column provenance")
    assert parallel[2] == bad


def test_a_child_that_dies_fails_the_export_and_leaves_nothing(
    sample_db: Path, tmp_path: Path, children, monkeypatch: pytest.MonkeyPatch
) -> None:
    reading_child = encoder._reading_child

    def dies_once_started(*args):  # in the child: it has its snapshot, then dies
        *first, commands, reports = args

        class Commands:
            def recv(self):
                if (command := commands.recv()) == "start":
                    os._exit(9)
                return command

        reading_child(*first, Commands(), reports)

    monkeypatch.setattr(encoder, "_reading_child", dies_once_started)
    monkeypatch.setattr(encoder, "_child", lambda *args: os._exit(9))
    dest = tmp_path / "out.kbundle"
    with pytest.raises(BundleError, match="encoding process ended without a word"):
        _export(sample_db, dest, parallel=True)
    assert list(tmp_path.iterdir()) == []


def test_a_reading_child_that_cannot_start_leaves_the_work_to_the_other_way(
    sample_db: Path, tmp_path: Path, children, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(encoder, "_reading_child", lambda *args: os._exit(9))
    _, parallel = _export(sample_db, tmp_path / "parallel.kbundle", parallel=True)
    _, reference = _export(sample_db, tmp_path / "inline.kbundle", parallel=False)
    assert parallel == reference


def test_an_export_inside_the_callers_transaction_reads_every_row_in_it(
    sample_copy: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A caller's transaction may have begun before commits that a child's new connection would
    see: then the rows come from the caller's snapshot, through the pipe."""
    monkeypatch.setattr("kindling_bundle.ops.write.PARALLEL_MIN_ROWS", 0)
    conn = open_store(sample_copy, readonly=True)
    try:
        with snapshot(conn):
            before = [o.content for o in export_observations(conn)]
            db = sqlite3.connect(sample_copy)
            db.execute("UPDATE observations SET content = 'changed'")
            db.commit()
            db.close()
            write_bundle(conn, tmp_path / "out.kbundle", BundleOptions(created_at=1))
    finally:
        conn.close()
    records = open_bundle(tmp_path / "out.kbundle").records()
    assert [o.content for o in records if isinstance(o, Observation)] == before


def test_a_commit_during_the_start_sends_rows_instead(
    sample_copy: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A commit between the export's snapshot and the reading child's: the child would see
    another state, so it is stopped and this process reads every row (the snapshot's)."""
    monkeypatch.setattr("kindling_bundle.ops.write.PARALLEL_MIN_ROWS", 0)
    sent_rows: list[int] = []
    start = ChildEncoder.__init__

    def counted(self, *args, **kwargs):
        sent_rows.append(1)
        start(self, *args, **kwargs)

    monkeypatch.setattr(ChildEncoder, "__init__", counted)
    ready = encoder.ReadingChild.ready

    def commit_meanwhile(self) -> bool:
        db = sqlite3.connect(sample_copy)
        db.execute("UPDATE observations SET content = 'changed' WHERE rowid = 1")
        db.commit()
        db.close()
        return ready(self)

    conn = open_store(sample_copy, readonly=True)
    try:
        with snapshot(conn):  # the state before the commit
            before = [o.content for o in export_observations(conn)]
            monkeypatch.setattr(encoder.ReadingChild, "ready", commit_meanwhile)
            write_bundle(conn, tmp_path / "out.kbundle", BundleOptions(created_at=1))
    finally:
        conn.close()
    assert sent_rows == [1]
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


def _errors(db: Path, tmp_path: Path) -> list[tuple[str, str | None, str | None]]:
    messages = []
    for parallel in (True, False):
        dest = tmp_path / f"{parallel}.kbundle"
        with pytest.raises(RecordError) as caught:
            _export(db, dest, parallel)
        assert not dest.exists()
        messages.append((str(caught.value), caught.value.entity, caught.value.record_id))
    return messages


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
    assert parallel[1:] == ("capsule", bad)
    assert [p for p in tmp_path.iterdir() if not p.name.startswith("copy.db")] == []


def test_the_childs_error_comes_first_as_in_foreign_key_order(
    sample_copy: Path, tmp_path: Path, children
) -> None:
    _break(sample_copy, "UPDATE capsules SET scope_ids = '[1' WHERE rowid = 3", "SELECT 1")
    bad = _break(
        sample_copy,
        "UPDATE observations SET scope_ids = 'nope' WHERE rowid = 1000",
        "SELECT id FROM observations WHERE rowid = 1000",
    )
    parallel, alone = _errors(sample_copy, tmp_path)
    assert parallel == alone
    assert parallel[1:] == ("observation", bad)
