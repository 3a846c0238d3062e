"""Restoring into an empty database takes a faster path; its result must be the trigger path's.

The fast path (kindling_bundle.importer.deferred_fts) indexes the full-text tables once at the
end instead of through Kindling's per-row insert triggers. What the index holds (every token of
every indexed row at every position, and the per-row statistics) must be exactly what the
triggers give, the triggers must be back afterwards, and a failed import must leave the database
exactly as it was, schema included.
"""

from __future__ import annotations

import sqlite3
from pathlib import Path

import pytest

from conftest import dump_tables
from kindling_bundle import (
    BundleOptions,
    import_batch,
    import_bundle,
    open_bundle,
    write_bundle,
    write_bundle_from_records,
)
from kindling_bundle.errors import BundleError
from kindling_bundle.records import Observation, Record
from kindling_bundle.store import open_store, write_transaction

CREATED_AT = 1767225600000
FTS_TABLES = ("observations_fts", "summaries_fts")


def export(db: Path, dest: Path) -> Path:
    conn = open_store(db, readonly=True)
    try:
        write_bundle(conn, dest, BundleOptions(created_at=CREATED_AT))
    finally:
        conn.close()
    return dest


def restore(bundle: Path, db: Path, conflict: str = "error") -> None:
    """The fast path: what `kindling-bundle import` does."""
    conn = open_store(db)
    try:
        report = import_bundle(conn, bundle, conflict=conflict)  # type: ignore[arg-type]
    finally:
        conn.close()
    assert report.integrity.ok, report.integrity.problems


def restore_with_triggers(bundle: Path, db: Path, conflict: str = "error") -> None:
    """The reference: the same records through the import primitives, triggers indexing."""
    with open_bundle(bundle) as reader:
        records: list[Record] = list(reader.records())
    conn = open_store(db)
    try:
        with write_transaction(conn):
            results = import_batch(conn, records, conflict)  # type: ignore[arg-type]
    finally:
        conn.close()
    assert all(r.error is None for r in results)


def index_contents(db: Path) -> dict[str, list[tuple]]:
    """Everything a full-text index holds, independent of how its segments are laid out:
    each token instance (term, row, column, offset), each row's token count, the config."""
    conn = sqlite3.connect(db)
    contents: dict[str, list[tuple]] = {}
    for fts in FTS_TABLES:
        conn.execute(f"CREATE VIRTUAL TABLE temp.{fts}_v USING fts5vocab(main, {fts}, instance)")
        contents[f"{fts} instances"] = conn.execute(
            f"SELECT term, doc, col, offset FROM temp.{fts}_v ORDER BY term, doc, offset"
        ).fetchall()
        contents[f"{fts} docsize"] = conn.execute(
            f"SELECT id, sz FROM {fts}_docsize ORDER BY id"
        ).fetchall()
        contents[f"{fts} config"] = conn.execute(f"SELECT * FROM {fts}_config").fetchall()
        contents[f"{fts} rows"] = conn.execute(f"SELECT count(*) FROM {fts}_docsize").fetchall()
    conn.close()
    return contents


def data_tables(db: Path) -> dict[str, list[tuple]]:
    """dump_tables without the two shadow tables whose layout may differ (segments), and
    without schema_migrations (when each database was created)."""
    tables = dump_tables(db)
    del tables["schema_migrations"]
    for fts in FTS_TABLES:
        del tables[f"{fts}_data"], tables[f"{fts}_idx"]
    return tables


def schema(db: Path) -> list[tuple]:
    conn = sqlite3.connect(db)
    rows = conn.execute("SELECT type, name, tbl_name, sql FROM sqlite_master ORDER BY name")
    result = rows.fetchall()
    conn.close()
    return result


def search(db: Path, fts: str, query: str) -> list[int]:
    conn = sqlite3.connect(db)
    found = [r[0] for r in conn.execute(f"SELECT rowid FROM {fts}({query!r}) ORDER BY rank")]
    conn.close()
    return found


def test_restore_into_an_empty_database_indexes_exactly_as_the_triggers_do(
    sample_db: Path, tmp_path: Path
) -> None:
    bundle = export(sample_db, tmp_path / "all.kbundle")
    fast, reference = tmp_path / "fast.db", tmp_path / "reference.db"
    restore(bundle, fast)
    restore_with_triggers(bundle, reference)

    contents = index_contents(fast)
    assert contents == index_contents(reference)
    redacted = sqlite3.connect(sample_db).execute(
        "SELECT count(*) FROM observations WHERE redacted = 1"
    )
    assert redacted.fetchone()[0] > 0  # the sample exercises the rows the index must leave out
    indexed = contents["observations_fts rows"][0][0]
    assert 0 < indexed < len(dump_tables(fast)["observations"])
    assert data_tables(fast) == data_tables(reference)
    assert schema(fast) == schema(reference)  # the insert triggers are back, as they were
    for fts, query in (("observations_fts", "capsule"), ("summaries_fts", "import")):
        assert search(fast, fts, query) == search(reference, fts, query)
        assert search(fast, fts, query)


def test_rows_added_after_a_fast_restore_are_indexed_by_the_triggers(
    sample_db: Path, tmp_path: Path
) -> None:
    bundle = export(sample_db, tmp_path / "all.kbundle")
    db = tmp_path / "restored.db"
    restore(bundle, db)
    conn = open_store(db)
    with write_transaction(conn):
        conn.execute(
            "INSERT INTO observations (id, kind, content, ts) "
            "VALUES ('late', 'message', 'zanzibarite appears', 1)"
        )
    conn.close()
    assert len(search(db, "observations_fts", "zanzibarite")) == 1


def test_an_observation_overwritten_within_the_restore_is_indexed_once_with_its_last_content(
    tmp_path: Path,
) -> None:
    first = Observation(id="o1", kind="message", content="alpha words here", ts=1)
    second = Observation(id="o1", kind="message", content="omega words here", ts=1)
    other = Observation(id="o2", kind="message", content="alpha again", ts=2)
    bundle = tmp_path / "twice.kbundle"
    write_bundle_from_records(
        bundle, {"observations": [first, other, second]}, BundleOptions(created_at=CREATED_AT)
    )
    fast, reference = tmp_path / "fast.db", tmp_path / "reference.db"
    restore(bundle, fast, conflict="overwrite")
    restore_with_triggers(bundle, reference, conflict="overwrite")
    assert index_contents(fast) == index_contents(reference)
    assert search(fast, "observations_fts", "omega") == [1]
    assert search(fast, "observations_fts", "alpha") == [2]


def test_a_failed_restore_into_an_empty_database_leaves_it_exactly_as_it_was(
    sample_db: Path, tmp_path: Path
) -> None:
    bundle = export(sample_db, tmp_path / "all.kbundle")
    damaged = tmp_path / "damaged.kbundle"
    damaged.write_bytes(bundle.read_bytes()[:-64])  # the end of the stream is lost
    db = tmp_path / "empty.db"
    open_store(db).close()
    before = (dump_tables(db), schema(db))
    conn = open_store(db)
    with pytest.raises(BundleError, match="truncated"):
        import_bundle(conn, damaged)
    conn.close()
    assert (dump_tables(db), schema(db)) == before


def test_a_dry_run_into_an_empty_database_changes_nothing(sample_db: Path, tmp_path: Path):
    bundle = export(sample_db, tmp_path / "all.kbundle")
    db = tmp_path / "empty.db"
    open_store(db).close()
    before = (dump_tables(db), schema(db))
    conn = open_store(db)
    report = import_bundle(conn, bundle, dry_run=True)
    conn.close()
    assert report.integrity.ok and report.counts["observations"].inserted == 1500
    assert (dump_tables(db), schema(db)) == before
