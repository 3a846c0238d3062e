"""The undo journal's runs: rows one statement inserted, journaled as one entry (issue 22).

A run is undone only where its rows are still the ones inserted, in short steps that each
shorten it (so an interrupted undo resumes), a new capsule's unjournaled links go with it, and
the full-text index stays in step with what is left.
"""

from __future__ import annotations

import sqlite3
from pathlib import Path

import pytest

from conftest import dump_contents
from kindling_bundle import Capsule, Observation, generate_sample, open_store
from kindling_bundle.db import undo as undo_module
from kindling_bundle.db.connection import write_transaction
from kindling_bundle.db.integrity import verify_import_integrity
from kindling_bundle.db.journal import UNDO_TABLE, Journal
from kindling_bundle.db.writes import attach_observation, create_capsule, insert_observations


def _observations(prefix: str, n: int) -> list[Observation]:
    return [
        Observation(id=f"{prefix}-{i:04d}", kind="message", content=f"{prefix} words {i}", ts=i)
        for i in range(n)
    ]


@pytest.fixture
def db(tmp_path: Path) -> Path:
    path = tmp_path / "memory.db"
    generate_sample(path, observations=200, seed=5)
    return path


def _import_runs(conn: sqlite3.Connection, journal: Journal, n: int) -> None:
    """What a step of an import does: a run of observations, then a run of capsules with links."""
    with write_transaction(conn), journal.run("observations", n):
        insert_observations(conn, _observations("imported", n))
    with write_transaction(conn), journal.run("capsules", 1):
        create_capsule(
            conn, Capsule(id="imported-capsule", type="session", intent="i", opened_at=1)
        )
        for i in range(5):
            attach_observation(conn, "imported-capsule", f"imported-{i:04d}")


def _entries(conn: sqlite3.Connection) -> list[tuple[str, str]]:
    return conn.execute(f"SELECT tbl, op FROM {UNDO_TABLE} ORDER BY seq").fetchall()


def test_a_run_is_one_entry_and_undoing_it_keeps_what_another_writer_put_in_its_place(
    db: Path,
) -> None:
    before = dump_contents(db)
    conn = open_store(db)
    journal = Journal.begin(conn, "test")
    _import_runs(conn, journal, 40)
    assert _entries(conn) == [("observations", "inserts"), ("capsules", "inserts")]
    # Another writer deletes the import's last observation, and its own row takes that rowid.
    other = sqlite3.connect(db, isolation_level=None)
    last = other.execute("SELECT max(rowid) FROM observations").fetchone()[0]
    other.execute("DELETE FROM observations WHERE id = 'imported-0039'")
    other.execute(
        "INSERT INTO observations (id, kind, content, ts) VALUES ('theirs', 'message', 'x', 9)"
    )
    assert other.execute("SELECT rowid FROM observations WHERE id = 'theirs'").fetchone() == (last,)
    other.close()

    counts = journal.undo()
    journal.end()
    conn.close()
    assert (counts.removed, counts.restored, counts.kept) == (39 + 1 + 5, 0, 0)
    after = dump_contents(db)
    theirs = [row for row in after["observations"] if row[1] == "theirs"]
    assert len(theirs) == 1
    after["observations"].remove(theirs[0])
    for table in ("observations", "capsules", "capsule_observations"):
        assert after[table] == before[table]
    conn = open_store(db, readonly=True)
    assert verify_import_integrity(conn).ok  # the FTS index lost exactly the rows deleted
    conn.close()


def test_an_interrupted_undo_of_a_long_run_resumes_where_it_stopped(
    db: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    before = dump_contents(db)
    conn = open_store(db)
    journal = Journal.begin(conn, "test")
    _import_runs(conn, journal, 700)  # longer than undo's first step (256 rows)

    real, calls = undo_module._undo_run, []

    def stop_at_the_second_step(*args, **kwargs):  # a kill, between two steps
        calls.append(1)
        if len(calls) == 3:
            raise KeyboardInterrupt
        return real(*args, **kwargs)

    monkeypatch.setattr(undo_module, "_undo_run", stop_at_the_second_step)
    with pytest.raises(KeyboardInterrupt):
        journal.undo()
    left = conn.execute(f"SELECT row, a0 FROM {UNDO_TABLE} WHERE tbl = 'observations'")
    first, last = left.fetchone()
    assert 0 < last - first + 1 < 700  # the steps committed shortened the run
    monkeypatch.setattr(undo_module, "_undo_run", real)
    journal.undo()
    journal.end()
    conn.close()
    assert dump_contents(db) == before
