"""Restoring into a new database takes a faster path; its result must be the trigger path's.

The fast path (kindling_bundle.db.bulk.bulk_load, for a database nobody else can reach:
`create_store`'s, or any connection marked `private`) indexes the full-text tables once at the
end instead of through Kindling's per-row insert triggers. What the index holds (every token of
every indexed row at every position, and the per-row statistics) must be exactly what the
triggers give, the triggers must be back afterwards, and a failed import must leave the database
exactly as it was, schema included.
"""

from __future__ import annotations

import os
import signal
import sqlite3
import subprocess
import sys
import time
from pathlib import Path

import pytest

from conftest import dump_contents, dump_tables
from kindling_bundle import (
    BundleOptions,
    Capsule,
    Observation,
    Pin,
    Summary,
    import_batch,
    import_bundle,
    import_record,
    open_bundle,
    verify_import_integrity,
    write_bundle,
    write_bundle_from_records,
)
from kindling_bundle.db import bulk, fts_build
from kindling_bundle.db.bulk import bulk_load
from kindling_bundle.db.connection import create_store, open_store, write_transaction
from kindling_bundle.db.fts_build import PrebuiltIndex
from kindling_bundle.errors import BundleError, ImportConflictError
from kindling_bundle.parallel import forking
from kindling_bundle.records import Record, entity_of

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
    """The fast path: what `kindling-bundle import` does into a database that does not exist."""
    with create_store(db) as conn:
        report = import_bundle(conn, bundle, conflict=conflict)  # type: ignore[arg-type]
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
    """Every schema object with its SQL, in sqlite_master order (the order `.schema` shows)."""
    conn = sqlite3.connect(db)
    rows = conn.execute("SELECT type, name, tbl_name, sql FROM sqlite_master ORDER BY rowid")
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
    assert schema(fast) == schema(reference)  # triggers and indexes are back, as they were
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
    conn.private = True  # the one-transaction path: triggers and indexes dropped within it
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


def _frames_for_an_empty_database() -> list[list[Record]]:
    """Frames of records that an empty database cannot take as they come: every way a run
    inserted without lookups must be refused and redone record by record."""
    obs = [
        Observation(id=f"o{i}", kind="message", content=f"word{i} common", ts=i) for i in range(8)
    ]

    def capsule(cid: str, links: list[str]) -> Capsule:
        return Capsule(id=cid, type="session", intent=cid, opened_at=1, observation_ids=links)

    def summary(sid: str, cid: str) -> Summary:
        return Summary(id=sid, capsule_id=cid, content=f"{sid} text", confidence=0.5, created_at=1)

    return [
        obs[:5],
        [obs[5], Observation(id="o1", kind="error", content="o1 again", ts=9), obs[6]],
        [obs[1], obs[7]],  # unchanged, then new
        [capsule("c1", ["o1", "o2"]), capsule("c2", ["o3"])],
        [capsule("c3", ["o4", "missing"]), capsule("c4", [])],
        [capsule("c5", ["o5", "o5"]), capsule("c6", ["o6"])],
        [capsule("c1", ["o2", "o1"]), capsule("c7", ["o7"])],
        [summary("s1", "c1"), summary("s2", "c2")],
        [summary("s4", "c4"), summary("s3", "no-capsule"), summary("s8", "c6")],
        [summary("s5", "c1"), summary("s6", "c7")],  # c1 already has s1
        [summary("s2", "c2"), summary("s7", "c7")],
        [Pin(id="p1", target_type="summary", target_id="s1", created_at=1)],
        [Pin(id="p2", target_type="observation", target_id="ghost", created_at=1)],
    ]


@pytest.mark.parametrize("conflict", ["skip", "overwrite", "error"])
def test_inserting_first_into_an_empty_database_gives_the_per_record_results(
    tmp_path: Path, conflict: str
) -> None:
    frames = _frames_for_an_empty_database()
    fast, reference = tmp_path / "fast.db", tmp_path / "reference.db"
    conn = open_store(fast)
    with write_transaction(conn), bulk_load(conn) as insert_first:
        assert insert_first == {Observation, Capsule, Summary}
        results = [
            import_batch(conn, frame, conflict, insert_first=insert_first)  # type: ignore[arg-type]
            for frame in frames
        ]
    conn.close()
    conn = open_store(reference)
    with write_transaction(conn):
        expected = [
            [import_record(conn, record, conflict) for record in frame]  # type: ignore[arg-type]
            for frame in frames
        ]
    conn.close()
    assert results == expected
    outcomes = {r.outcome for frame in results for r in frame}
    assert "inserted" in outcomes and "unchanged" in outcomes
    assert sum(r.error is not None for frame in results for r in frame) >= 4
    assert data_tables(fast) == data_tables(reference)
    assert index_contents(fast) == index_contents(reference)


def test_nothing_is_inserted_first_into_a_database_that_holds_records(
    sample_copy: Path,
) -> None:
    conn = open_store(sample_copy)
    with write_transaction(conn), bulk_load(conn) as insert_first:
        assert insert_first == frozenset()
    conn.close()


def test_without_foreign_key_enforcement_links_are_still_looked_up(tmp_path: Path) -> None:
    conn = open_store(tmp_path / "loose.db")
    conn.execute("PRAGMA foreign_keys = OFF")
    with write_transaction(conn), bulk_load(conn) as insert_first:
        assert insert_first == {Observation}
        capsule = Capsule(id="c", type="session", intent="i", opened_at=1, observation_ids=["x"])
        (result,) = import_batch(conn, [capsule], "skip", insert_first=insert_first)
    conn.close()
    assert result.error == "capsule c: links to observation x, which does not exist"


def test_a_dangling_foreign_key_outside_kindling_tables_is_still_reported(
    sample_copy: Path,
) -> None:
    """The integrity report proves Kindling's own foreign keys sound with ordered scans; any
    other foreign key in the database is left to PRAGMA foreign_key_check, as before."""
    conn = sqlite3.connect(sample_copy)
    conn.execute("CREATE TABLE notes (id INTEGER PRIMARY KEY, obs TEXT REFERENCES observations)")
    conn.execute("INSERT INTO notes VALUES (7, 'no-such-observation')")
    conn.commit()
    conn.close()
    store = open_store(sample_copy, readonly=True)
    report = verify_import_integrity(store)
    store.close()
    assert [(p.kind, p.entity, p.id, p.detail) for p in report.problems] == [
        ("foreign_key", "notes", "7", "references a missing row of observations")
    ]


def _capsule(cid: str, *linked: str) -> Capsule:
    return Capsule(id=cid, type="session", intent="i", opened_at=1, observation_ids=list(linked))


DANGLING = [
    (
        [_capsule("c-b", "o1", "g1"), _capsule("c-a", "g2", "g3")],
        "capsules",
        "c-b",
        "capsules.msgpack: capsule c-b: links to observation g1, which does not exist",
    ),
    (
        [Summary(id="s9", capsule_id="nope", content="x", confidence=0.5, created_at=1)],
        "summaries",
        "s9",
        "summaries.msgpack: summary s9: capsule nope does not exist",
    ),
]


@pytest.mark.parametrize(("records", "entity", "record_id", "message"), DANGLING)
def test_a_missing_reference_fails_a_restore_into_an_empty_database_as_into_any_other(
    tmp_path: Path, records: list[Record], entity: str, record_id: str, message: str
) -> None:
    """Into an empty database nobody else can reach, foreign keys are checked once after the
    load, not row by row; the import must still fail on the same record with the same words
    as into a database in use, and change nothing."""
    observation = Observation(id="o1", kind="message", content="alpha", ts=1)
    bundle = tmp_path / "dangling.kbundle"
    streams: dict[str, list] = {"observations": [observation]}
    for record in records:
        streams.setdefault(entity_of(record), []).append(record)
    write_bundle_from_records(bundle, streams, BundleOptions(created_at=CREATED_AT))
    errors = []
    for name, seed in (("empty.db", []), ("holding.db", [observation])):
        db = tmp_path / name
        conn = open_store(db)
        conn.private = not seed
        with write_transaction(conn):
            import_batch(conn, seed)
        before = dump_contents(db)
        with pytest.raises(ImportConflictError) as caught:
            import_bundle(conn, bundle, conflict="skip")
        assert conn.execute("PRAGMA foreign_keys").fetchone()[0] == 1  # enforced again
        conn.close()
        assert dump_contents(db) == before
        errors.append((str(caught.value), caught.value.entity, caught.value.record_id))
    assert errors[0] == errors[1] == (f"{bundle}: {message}", entity, record_id)


# --- the observations' index built in a second process -----------------------------------------

needs_fork = pytest.mark.skipif(
    not forking.fork_is_safe(), reason="the indexing process needs fork (Linux, two CPUs)"
)


def copies_made(monkeypatch: pytest.MonkeyPatch) -> list[str]:
    """The prebuilt indexes `bulk_load` copies in (a list that fills as it happens)."""
    copied: list[str] = []
    original = bulk.copy_index

    def spy(conn: sqlite3.Connection, index: PrebuiltIndex) -> None:
        copied.append(index.fts)
        original(conn, index)

    monkeypatch.setattr(bulk, "copy_index", spy)
    return copied


def restore_with(bundle: Path, db: Path, workers: int | str) -> None:
    with create_store(db) as conn:
        report = import_bundle(conn, bundle, workers=workers)  # type: ignore[arg-type]
    assert report.integrity.ok, report.integrity.problems


def fts5_integrity_checks(db: Path) -> None:
    """FTS5's own check of each index's structure (rank 0: not against the content table,
    which holds the redacted observations Kindling leaves out on purpose)."""
    conn = sqlite3.connect(db)
    for fts in FTS_TABLES:
        conn.execute(f"INSERT INTO {fts}({fts}, rank) VALUES ('integrity-check', 0)")
    conn.close()


@needs_fork
@pytest.mark.parametrize("batch_bytes", [1 << 30, 2000])
def test_the_index_built_in_a_second_process_is_the_one_built_in_place(
    sample_db: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, batch_bytes: int
) -> None:
    """Both ways, and in one statement or many in the child, the database is the one Kindling's
    triggers make: same rows, schema, index entries and searches."""
    monkeypatch.setattr(fts_build, "_BATCH_BYTES", batch_bytes)  # the child is forked: it sees it
    copied = copies_made(monkeypatch)
    bundle = export(sample_db, tmp_path / "all.kbundle")
    two, one, reference = tmp_path / "two.db", tmp_path / "one.db", tmp_path / "reference.db"
    restore_with(bundle, two, workers=2)
    assert copied == ["observations_fts"]
    assert sorted(p.name for p in tmp_path.iterdir()) == ["all.kbundle", "two.db"]  # no spool
    restore_with(bundle, one, workers=1)
    assert copied == ["observations_fts"]  # one process: indexed in place
    restore_with_triggers(bundle, reference)
    for db in (two, one):
        assert index_contents(db) == index_contents(reference)
        assert data_tables(db) == data_tables(reference)
        assert schema(db) == schema(reference)
        fts5_integrity_checks(db)
        for fts, query in (("observations_fts", "capsule"), ("summaries_fts", "import")):
            assert search(db, fts, query) == search(reference, fts, query)


@needs_fork
def test_the_connection_that_copied_the_index_goes_on_indexing_correctly(
    sample_db: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """FTS5 caches an index's structure per connection: the copy must not leave the importing
    connection a stale one (a chain's increments are imported on it next)."""
    copied = copies_made(monkeypatch)
    bundle = export(sample_db, tmp_path / "all.kbundle")
    db = tmp_path / "two.db"
    with create_store(db) as conn:
        import_bundle(conn, bundle, workers=2)
        assert copied == ["observations_fts"]
        with write_transaction(conn):
            import_record(conn, Observation(id="late", kind="message", content="zanzibarite", ts=1))
    assert len(search(db, "observations_fts", "zanzibarite")) == 1
    assert len(search(db, "observations_fts", "capsule")) > 1
    fts5_integrity_checks(db)


@needs_fork
@pytest.mark.parametrize("how", ["raises", "dies"])
def test_a_child_that_fails_leaves_the_index_to_this_process(
    sample_db: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, how: str
) -> None:
    ran = tmp_path / "the child ran"

    def failure(*_args: object) -> None:  # only the child calls it
        ran.touch()
        if how == "dies":
            os._exit(3)
        raise sqlite3.OperationalError("disk I/O error")

    monkeypatch.setattr(fts_build.IndexBuilder, "add", failure)
    copied = copies_made(monkeypatch)
    bundle = export(sample_db, tmp_path / "all.kbundle")
    restore_with(bundle, tmp_path / "two.db", workers=2)
    restore_with_triggers(bundle, tmp_path / "reference.db")
    assert ran.exists()
    assert copied == []
    assert index_contents(tmp_path / "two.db") == index_contents(tmp_path / "reference.db")
    assert not list(tmp_path.glob(".kindling-fts-*"))


_KILLED_AFTER_ONE_FRAME = """
import os, signal, sys
from kindling_bundle.db.connection import create_store
from kindling_bundle.ops.restore import import_bundle
from kindling_bundle.parallel import fts

add = fts.IndexerChild.add
def add_then_die(self, observations):
    add(self, observations)
    os.kill(os.getpid(), signal.SIGKILL)
fts.IndexerChild.add = add_then_die
with create_store(sys.argv[2]) as conn:
    import_bundle(conn, sys.argv[1], workers=2)
"""


@needs_fork
def test_an_import_killed_beside_its_indexing_child_leaves_no_index_file(
    sample_db: Path, tmp_path: Path
) -> None:
    """The index file is named until it is copied in: once the import is gone, the child that
    was building it removes it (create_store's own file stays, as documented)."""
    bundle = export(sample_db, tmp_path / "all.kbundle")
    killed = subprocess.run(
        [sys.executable, "-c", _KILLED_AFTER_ONE_FRAME, str(bundle), str(tmp_path / "new.db")],
        capture_output=True,
        timeout=120,
    )
    assert killed.returncode == -signal.SIGKILL, killed.stderr
    deadline = time.monotonic() + 30
    while list(tmp_path.glob(".kindling-fts-*")) and time.monotonic() < deadline:
        time.sleep(0.05)
    assert not list(tmp_path.glob(".kindling-fts-*"))
    assert not (tmp_path / "new.db").exists()


def test_on_one_cpu_the_index_is_built_in_place(
    sample_db: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(os, "sched_getaffinity", lambda pid: {0})
    copied = copies_made(monkeypatch)
    bundle = export(sample_db, tmp_path / "all.kbundle")
    restore_with(bundle, tmp_path / "one.db", workers=2)
    restore_with_triggers(bundle, tmp_path / "reference.db")
    assert copied == []
    assert index_contents(tmp_path / "one.db") == index_contents(tmp_path / "reference.db")


def test_a_prebuilt_index_for_other_rows_is_not_taken(sample_db: Path, tmp_path: Path) -> None:
    """The copy stands in for indexing only the rows it was built for: rowids 1..n in order."""
    with open_bundle(export(sample_db, tmp_path / "all.kbundle")) as reader:
        records: list[Record] = list(reader.records())
    observations = [r for r in records if isinstance(r, Observation)]
    create_sql = (
        sqlite3.connect(sample_db)
        .execute("SELECT sql FROM sqlite_master WHERE name = 'observations_fts'")
        .fetchone()[0]
    )
    contents = [None if o.redacted else o.content for o in observations]
    builder = fts_build.IndexBuilder(str(tmp_path / "short.idx"), "observations_fts", create_sql)
    builder.add(1, contents[:-1])
    short = builder.finish()
    fast, reference = tmp_path / "fast.db", tmp_path / "reference.db"
    conn = open_store(fast)
    with write_transaction(conn), bulk_load(conn, prebuilt=lambda: short) as insert_first:
        import_batch(conn, records, "error", insert_first=insert_first)
    conn.close()
    restore_with_triggers(tmp_path / "all.kbundle", reference)
    assert index_contents(fast) == index_contents(reference)


def test_a_failed_restore_with_a_second_process_creates_nothing(
    sample_db: Path, tmp_path: Path
) -> None:
    bundle = export(sample_db, tmp_path / "all.kbundle")
    damaged = tmp_path / "damaged.kbundle"
    damaged.write_bytes(bundle.read_bytes()[:-64])  # the end of the stream is lost
    folder = tmp_path / "target"
    folder.mkdir()
    with pytest.raises(BundleError, match="truncated"), create_store(folder / "new.db") as conn:
        import_bundle(conn, damaged, workers=2)
    assert list(folder.iterdir()) == []


@needs_fork
def test_the_cli_import_takes_workers_and_gives_the_same_database(
    sample_db: Path, tmp_path: Path, run_cli
) -> None:
    """`import --workers 2` indexes beside the load, `--workers 1` in place: one database."""
    bundle = export(sample_db, tmp_path / "all.kbundle")
    made = {}
    for workers in ("1", "2"):
        db = tmp_path / f"workers-{workers}.db"
        done = run_cli("import", "--db", db, "--workers", workers, bundle)
        assert done.returncode == 0, done.stderr
        made[workers] = (index_contents(db), data_tables(db), schema(db))
    assert made["1"] == made["2"]
    refused = run_cli("import", "--db", tmp_path / "none.db", "--workers", "0", bundle)
    assert refused.returncode == 2 and not (tmp_path / "none.db").exists()
