"""The staging file of an import into a database in use (db/live_stage.py): the planner's thread
binds new rows into it while a step holds the database's write lock, and the file goes away
when the import ends. Where SQLite takes no URI in ATTACH, the file is attached read-write and
the import gives the same database."""

from __future__ import annotations

import shutil
import sqlite3
import tempfile
import threading
from pathlib import Path

import pytest

from conftest import dump_contents
from kindling_bundle import generate_sample, import_bundle, open_store, write_bundle
from kindling_bundle.db import live_stage
from kindling_bundle.db.connection import write_transaction
from kindling_bundle.db.live_stage import StageFile, Stager


@pytest.fixture
def temporary(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """The temporary directory the staging folders go to, empty."""
    folder = tmp_path / "tmp"
    folder.mkdir()
    monkeypatch.setattr(tempfile, "tempdir", str(folder))
    return folder


def test_the_planner_stages_while_a_step_holds_the_write_lock(
    tmp_path: Path, temporary: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(live_stage, "_WAIT_MS", 0)  # a staging write that waits fails at once
    stage = StageFile({"rows": 2})
    conn = open_store(tmp_path / "memory.db")
    stage.attach(conn)
    staged: list[int] = []

    def planner() -> None:  # its own thread and connection, as PlanAhead's
        stager = Stager(stage)
        stager.begin()
        staged.append(stager.put("rows", [("a", 1), ("b", 2)]))
        stager.commit()
        stager.close()

    with write_transaction(conn):  # a step: the database's write lock is held
        assert conn.execute(f"SELECT count(*) FROM {live_stage.SCHEMA}.rows").fetchone() == (0,)
        thread = threading.Thread(target=planner)
        thread.start()
        thread.join()
        assert staged == [1]  # the planner did not wait for the step
        seen = conn.execute(f"SELECT count(*) FROM {live_stage.SCHEMA}.rows").fetchone()
        assert seen == (0,)  # the step reads the rows staged before it began
    rows = conn.execute(f"SELECT c0, c1 FROM {live_stage.SCHEMA}.rows ORDER BY rowid")
    assert rows.fetchall() == [("a", 1), ("b", 2)]  # the next step sees them
    stage.detach(conn)
    conn.close()
    stage.remove()
    assert list(temporary.iterdir()) == []


def test_without_uris_in_attach_the_file_is_attached_read_write_and_gives_the_same_database(
    tmp_path: Path, temporary: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    template = tmp_path / "memory.db"
    generate_sample(template, observations=600, seed=31)
    source = tmp_path / "teammate.db"
    generate_sample(source, observations=1500, seed=32)
    bundle = tmp_path / "teammate.kbundle"
    with open_store(source, readonly=True) as conn:
        write_bundle(conn, bundle)
    merged = tmp_path / "merged.db"
    shutil.copy(template, merged)
    with open_store(merged) as conn:
        import_bundle(conn, bundle)
    assert list(temporary.iterdir()) == []  # the staging folder went with the import

    attached: list[str] = []
    real_attach = StageFile.attach

    def literal(self: StageFile) -> str:  # what SQLite without URIs makes of the URI: a file
        return str(self.folder / "file:stage.db?mode=ro")

    def attach(self: StageFile, conn: sqlite3.Connection) -> None:
        real_attach(self, conn)
        attached.append(
            conn.execute(
                "SELECT file FROM pragma_database_list WHERE name = ?", (live_stage.SCHEMA,)
            ).fetchone()[0]
        )

    monkeypatch.setattr(StageFile, "_read_only", literal)
    monkeypatch.setattr(StageFile, "attach", attach)
    db = tmp_path / "read-write.db"
    shutil.copy(template, db)
    with open_store(db) as conn:
        report = import_bundle(conn, bundle)
    assert [Path(name).name for name in attached] == ["stage.db"]  # the file itself, read-write
    assert report.counts["observations"].inserted == 1500
    assert dump_contents(db) == dump_contents(merged)
    assert list(temporary.iterdir()) == []
