"""A large export encodes its observations in a second process; the bundle must not change.

kindling_bundle.bundle.encoder_process forks a child that turns rows into records, checks and
encodes them while this process reads SQLite. Here the size threshold is lowered so the small
sample takes that path: the bytes, the errors and the clean-up must be those of in-process
encoding.
"""

from __future__ import annotations

import os
import sqlite3
from pathlib import Path

import pytest

from kindling_bundle import BundleOptions, RecordError, open_store, write_bundle
from kindling_bundle.bundle import encoder_process
from kindling_bundle.errors import BundleError

pytestmark = pytest.mark.skipif(
    not encoder_process.parallel_available(), reason="the encoder process needs fork (Linux)"
)


@pytest.fixture
def children(monkeypatch: pytest.MonkeyPatch) -> list[int]:
    """Every export takes the child path; the list counts the children started."""
    started: list[int] = []
    encode = encoder_process.encode_rows

    def counted(*args, **kwargs):
        started.append(1)
        return encode(*args, **kwargs)

    monkeypatch.setattr(encoder_process, "PARALLEL_MIN_ROWS", 0)
    monkeypatch.setattr("kindling_bundle.bundle.writer.PARALLEL_MIN_ROWS", 0)
    monkeypatch.setattr("kindling_bundle.bundle.writer.encode_rows", counted)
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
    assert children == [1]
    reference_progress, reference = _export(sample_db, tmp_path / "inline.kbundle", False)
    assert children == [1]
    assert parallel == reference
    assert progress[-1] == reference_progress[-1]  # every record and byte counted


def test_a_bad_row_is_named_as_in_process(sample_copy: Path, tmp_path: Path, children) -> None:
    db = sqlite3.connect(sample_copy)
    db.execute("UPDATE observations SET provenance = '{oops' WHERE rowid = 777")
    (bad,) = db.execute("SELECT id FROM observations WHERE rowid = 777").fetchone()
    db.commit()
    db.close()
    messages = []
    for parallel in (True, False):
        dest = tmp_path / f"{parallel}.kbundle"
        with pytest.raises(RecordError) as caught:
            _export(sample_copy, dest, parallel)
        assert not dest.exists()
        messages.append((str(caught.value), caught.value.entity, caught.value.record_id))
    assert messages[0] == messages[1]
    assert messages[0][0].startswith(f"{sample_copy}: observation {bad}: column provenance")
    assert messages[0][2] == bad


def test_a_child_that_dies_fails_the_export_and_leaves_nothing(
    sample_db: Path, tmp_path: Path, children, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(encoder_process, "_child", lambda *args: os._exit(9))
    dest = tmp_path / "out.kbundle"
    with pytest.raises(BundleError, match="encoding process ended without a word"):
        _export(sample_db, dest, parallel=True)
    assert list(tmp_path.iterdir()) == []
