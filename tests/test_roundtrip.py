"""Roundtrip: database -> bundle -> new database -> bundle loses nothing, and a restore is all or
nothing (run with `pytest -k roundtrip`)."""

from __future__ import annotations

import io
import sqlite3
from pathlib import Path

import pytest
from chain_steps import DATA_TABLES, table_rows
from test_bundle import edit_manifest

from conftest import dump_contents, dump_tables, make_v4_database
from kindling_bundle import (
    BundleError,
    BundleOptions,
    Capsule,
    ExportStreamOptions,
    ImportConflictError,
    Observation,
    Pin,
    Summary,
    generate_sample,
    import_bundle,
    open_store,
    read_manifest,
    verify_bundle,
    write_bundle,
)
from kindling_bundle.db.connection import write_transaction
from kindling_bundle.db.writes import (
    create_capsule,
    insert_observation,
    insert_pin,
    insert_summary,
)

CREATED_AT = 1_767_225_600_000


def export(db: Path, dest: Path, opts: BundleOptions | None = None) -> None:
    conn = open_store(db, readonly=True)
    try:
        write_bundle(conn, dest, opts or BundleOptions(created_at=CREATED_AT))
    finally:
        conn.close()


def restore(bundle: Path, db: Path, **kwargs):
    conn = open_store(db)
    try:
        return import_bundle(conn, bundle, **kwargs)
    finally:
        conn.close()


def test_roundtrip_gives_the_same_bundle_and_the_same_database(
    sample_db: Path, tmp_path: Path
) -> None:
    first, second = tmp_path / "first.kbundle", tmp_path / "second.kbundle"
    export(sample_db, first)
    report = restore(first, tmp_path / "copy.db")
    assert report.integrity.ok and not report.dry_run
    assert {e: c.inserted for e, c in report.counts.items()} == {
        e.entity: e.records for e in report.manifest.entities
    }
    export(tmp_path / "copy.db", second)
    # Same records in the same order: the same entity files, and so the very same bundle.
    assert first.read_bytes() == second.read_bytes()
    assert table_rows(tmp_path / "copy.db") == table_rows(sample_db)


def test_roundtrip_keeps_every_relationship(sample_db: Path, tmp_path: Path) -> None:
    """The sample holds each kind of relationship; name them, so the test cannot pass vacuously."""
    export(sample_db, tmp_path / "b.kbundle")
    restore(tmp_path / "b.kbundle", tmp_path / "copy.db")
    queries = {
        "capsules with several links": "SELECT count(*) FROM capsule_observations WHERE seq > 0",
        "node capsules": "SELECT count(*) FROM capsules WHERE type = 'pocketflow_node'",
        "open capsules": "SELECT count(*) FROM capsules WHERE closed_at IS NULL",
        "summaries with evidence": "SELECT count(*) FROM summaries WHERE evidence_refs != '[]'",
        "pins on observations": "SELECT count(*) FROM pins WHERE target_type = 'observation'",
        "pins on summaries": "SELECT count(*) FROM pins WHERE target_type = 'summary'",
        "expiring pins": "SELECT count(*) FROM pins WHERE expires_at IS NOT NULL",
        "pins without reason": "SELECT count(*) FROM pins WHERE reason IS NULL",
        "redacted rows": "SELECT count(*) FROM observations WHERE redacted = 1 "
        "AND content = '[redacted]'",
        "taskId scopes": "SELECT count(*) FROM observations WHERE scope_ids LIKE '%taskId%'",
        "unicode text": "SELECT count(*) FROM observations WHERE content LIKE '%日本語%'",
        "float provenance": "SELECT count(*) FROM observations WHERE provenance LIKE '%score%'",
    }
    source = sqlite3.connect(sample_db)
    copy = sqlite3.connect(tmp_path / "copy.db")
    for name, sql in queries.items():
        expected = source.execute(sql).fetchone()[0]
        assert expected > 0, f"the sample has no {name}"
        assert copy.execute(sql).fetchone()[0] == expected, name
    # A redacted row is back, unindexed; a search finds what it found before.
    for db in (source, copy):
        assert db.execute(
            "SELECT count(*) FROM observations o JOIN observations_fts_docsize d "
            "ON d.id = o.rowid WHERE o.redacted = 1"
        ).fetchone() == (0,)
    search = "SELECT o.id FROM observations_fts f JOIN observations o ON o.rowid = f.rowid "
    search += "WHERE observations_fts MATCH 'tokenizer' ORDER BY o.id"
    assert copy.execute(search).fetchall() == source.execute(search).fetchall() != []


def test_roundtrip_restores_identical_files_every_time(sample_db: Path, tmp_path: Path) -> None:
    """Two restores of one bundle give the same file contents, rowids and FTS shadow tables
    included (only the time each migration was applied differs)."""
    export(sample_db, tmp_path / "b.kbundle")
    dumps = []
    for name in ("one.db", "two.db"):
        restore(tmp_path / "b.kbundle", tmp_path / name)
        dump = dump_tables(tmp_path / name)
        dump["schema_migrations"] = [row[:3] for row in dump["schema_migrations"]]
        dumps.append(dump)
    assert dumps[0] == dumps[1]


def test_roundtrip_from_a_v4_database(tmp_path: Path) -> None:
    source = tmp_path / "v4.db"
    make_v4_database(source)
    conn = sqlite3.connect(source, isolation_level=None)
    with write_transaction(conn):
        insert_observation(conn, Observation(id="o1", kind="message", content="from v4", ts=5))
        create_capsule(
            conn, Capsule(id="c1", type="session", intent="v4", opened_at=5, observation_ids=["o1"])
        )
    conn.close()
    export(source, tmp_path / "v4.kbundle")
    report = restore(tmp_path / "v4.kbundle", tmp_path / "v5.db")
    assert report.manifest.source.schema_generation == 4
    rows = table_rows(tmp_path / "v5.db")
    assert rows["user_version"] == [(5,)]
    assert {k: v for k, v in rows.items() if k in DATA_TABLES} == {
        k: v for k, v in table_rows(source).items() if k in DATA_TABLES
    }


@pytest.mark.parametrize(
    "filter_opts",
    [
        {"scope": "session"},
        {"window": True},
        {"scope": "repo", "window": True},
    ],
)
def test_roundtrip_of_a_filtered_export_into_an_empty_database(
    sample_db: Path, tmp_path: Path, filter_opts: dict
) -> None:
    source = sqlite3.connect(sample_db)
    session, repo = source.execute(
        "SELECT session_id, repo_id FROM pins WHERE target_type = 'summary' LIMIT 1"
    ).fetchone()
    lo, hi = source.execute(
        "SELECT min(opened_at), max(coalesce(closed_at, opened_at)) FROM capsules "
        "WHERE session_id = ?",
        (session,),
    ).fetchone()
    scope = {"session": {"sessionId": session}, "repo": {"repoId": repo}}.get(
        filter_opts.get("scope")
    )
    window = {"from_ts": lo, "to_ts": lo + (hi - lo) // 2}  # the first half of that session
    selection = ExportStreamOptions(
        scope_ids=scope, include_references=True, **(window if filter_opts.get("window") else {})
    )
    path = tmp_path / "part.kbundle"
    export(sample_db, path, BundleOptions(filter=selection, created_at=CREATED_AT))
    assert verify_bundle(path).ok
    report = restore(path, tmp_path / "part.db")
    assert report.integrity.ok, report.integrity.problems
    counts = {entity: c.inserted for entity, c in report.counts.items()}
    assert (
        0
        < counts["observations"]
        < source.execute("SELECT count(*) FROM observations").fetchone()[0]
    )
    assert counts["capsules"] > 0
    manifest_filter = report.manifest.export_filter
    assert manifest_filter.include_references and manifest_filter.scope_ids == scope


def test_roundtrip_late_hash_mismatch_rolls_everything_back(
    sample_db: Path, tmp_path: Path
) -> None:
    """The last member's hash lies: found only after every record was written into a live
    database, and undone."""
    good = tmp_path / "good.kbundle"
    export(sample_db, good)

    def lie(manifest: dict) -> None:
        manifest["entities"][3]["sha256"] = "0" * 64

    bad = edit_manifest(good.read_bytes(), lie)
    target = tmp_path / "target.db"
    generate_sample(target, observations=300, seed=99)
    before = dump_contents(target)
    progress: list[int] = []
    conn = open_store(target)
    with pytest.raises(BundleError, match=r"pins.msgpack: SHA-256 \w+ does not match"):
        import_bundle(conn, io.BytesIO(bad), progress=lambda records, _: progress.append(records))
    conn.close()
    # Every record had been imported when the mismatch was found.
    assert progress[-1] == read_manifest(good).total_records
    assert dump_contents(target) == before


def test_roundtrip_into_a_live_database_is_all_or_nothing(
    sample_copy: Path, tmp_path: Path
) -> None:
    """A conflict under `error` found late (the last pin) leaves the database as it was;
    `skip` and `overwrite` then decide, and a dry run reports without writing."""
    other = tmp_path / "other.db"
    conn = open_store(other)
    with write_transaction(conn):
        insert_observation(conn, Observation(id="new-1", kind="message", content="new", ts=1))
        create_capsule(
            conn,
            Capsule(id="new-c", type="session", intent="n", opened_at=1, observation_ids=["new-1"]),
        )
        insert_summary(
            conn, Summary(id="new-s", capsule_id="new-c", content="s", confidence=1.0, created_at=2)
        )
        insert_pin(conn, Pin(id="new-p", target_type="summary", target_id="new-s", created_at=3))
    conn.close()
    bundle = tmp_path / "other.kbundle"
    export(other, bundle)
    # The target already holds pin new-p, with other content: the very last record conflicts.
    conn = open_store(sample_copy)
    with write_transaction(conn):
        insert_observation(conn, Observation(id="o-x", kind="message", content="x", ts=9))
        insert_pin(conn, Pin(id="new-p", target_type="observation", target_id="o-x", created_at=4))
    conn.close()
    before = dump_contents(sample_copy)
    conn = open_store(sample_copy)
    with pytest.raises(ImportConflictError, match=r"pins.msgpack: pin new-p: conflicts .*fields"):
        import_bundle(conn, bundle, conflict="error")
    assert dump_contents(sample_copy) == before

    dry = import_bundle(conn, bundle, conflict="overwrite", dry_run=True)
    assert dry.dry_run and dry.counts["pins"].overwritten == 1
    assert dry.counts["observations"].inserted == 1
    assert dump_contents(sample_copy) == before

    skipped = import_bundle(conn, bundle, conflict="skip")
    assert skipped.counts["pins"].skipped == 1 and skipped.counts["capsules"].inserted == 1
    assert conn.execute("SELECT target_id FROM pins WHERE id = 'new-p'").fetchone() == ("o-x",)
    overwritten = import_bundle(conn, bundle, conflict="overwrite")
    assert overwritten.counts["pins"].overwritten == 1
    assert overwritten.counts["observations"].unchanged == 1
    assert conn.execute("SELECT target_id FROM pins WHERE id = 'new-p'").fetchone() == ("new-s",)
    conn.close()


def test_roundtrip_refuses_unknown_conflict_strategy(sample_db: Path, tmp_path: Path) -> None:
    export(sample_db, tmp_path / "b.kbundle")
    with pytest.raises(ValueError, match="unknown conflict strategy 'merge'"):
        restore(tmp_path / "b.kbundle", tmp_path / "t.db", conflict="merge")
