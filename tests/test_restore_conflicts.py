"""Restoring into a database that already holds other versions of the same memory."""

from __future__ import annotations

from pathlib import Path

import pytest

from kindling_bundle import (
    Capsule,
    ImportConflictError,
    Observation,
    Pin,
    Summary,
    import_bundle,
    open_store,
    write_bundle_from_records,
)
from kindling_bundle.db.writes import create_capsule, insert_observation, insert_summary

OBS = Observation(id="o1", kind="message", content="first words", ts=1)
CAPSULE = Capsule(
    id="c1",
    type="session",
    intent="work",
    status="closed",
    opened_at=1,
    closed_at=2,
    observation_ids=["o1"],
)
STORED = Summary(id="s-old", capsule_id="c1", content="old summary", confidence=0.5, created_at=3)
INCOMING = Summary(id="s-new", capsule_id="c1", content="new summary", confidence=0.9, created_at=4)
PIN = Pin(id="p1", target_type="summary", target_id="s-new", created_at=5)


@pytest.fixture
def target(tmp_path: Path):
    conn = open_store(tmp_path / "target.db")
    insert_observation(conn, OBS)
    create_capsule(conn, CAPSULE)
    insert_summary(conn, STORED)
    yield conn
    conn.close()


@pytest.fixture
def bundle(tmp_path: Path) -> Path:
    path = tmp_path / "incoming.kbundle"
    streams = {"observations": [OBS], "capsules": [CAPSULE], "summaries": [INCOMING], "pins": [PIN]}
    write_bundle_from_records(path, streams)
    return path


def test_skip_keeps_the_stored_summary_and_moves_the_bundles_pins_onto_it(target, bundle):
    report = import_bundle(target, bundle, conflict="skip")
    assert report.counts["summaries"].skipped == 1
    assert report.counts["pins"].inserted == 1
    assert report.integrity.ok
    assert target.execute("SELECT id, content FROM summaries").fetchall() == [
        ("s-old", "old summary")
    ]
    assert target.execute("SELECT target_id FROM pins WHERE id = 'p1'").fetchone() == ("s-old",)


def test_overwrite_replaces_the_summary_and_the_pin_targets_the_new_one(target, bundle):
    report = import_bundle(target, bundle, conflict="overwrite")
    assert report.counts["summaries"].overwritten == 1
    assert report.integrity.ok
    assert target.execute("SELECT id FROM summaries").fetchall() == [("s-new",)]
    assert target.execute("SELECT target_id FROM pins WHERE id = 'p1'").fetchone() == ("s-new",)


def test_error_names_both_summaries_and_writes_nothing(target, bundle):
    with pytest.raises(ImportConflictError, match=r"s-new.*s-old"):
        import_bundle(target, bundle, conflict="error")
    assert target.execute("SELECT count(*) FROM pins").fetchone() == (0,)
