"""The integrity report: clean databases give an empty report, and each fault injected on purpose
is caught and named by kind, entity and id."""

from __future__ import annotations

import json
import sqlite3
from pathlib import Path

import pytest

from conftest import make_v4_database
from kindling_bundle import (
    Capsule,
    IntegrityReport,
    Observation,
    import_capsule,
    import_observation,
    verify_import_integrity,
)
from kindling_bundle.db import integrity as integrity_module
from kindling_bundle.db.connection import open_store
from kindling_bundle.db.integrity import check_apart, fts_query


def kinds(report: IntegrityReport) -> set[tuple[str, str, str]]:
    return {(p.kind, p.entity, p.id) for p in [*report.problems, *report.warnings]}


def report_for(path: Path, **kwargs) -> IntegrityReport:
    conn = open_store(path, readonly=True)
    try:
        return verify_import_integrity(conn, **kwargs)
    finally:
        conn.close()


@pytest.fixture
def broken(sample_copy: Path):
    """A writable raw connection to a copy of the sample, foreign keys off, to inject faults."""
    conn = sqlite3.connect(sample_copy, isolation_level=None)
    yield conn
    conn.close()


def one(conn: sqlite3.Connection, sql: str, *args) -> tuple:
    return conn.execute(sql, args).fetchone()


def test_empty_databases_give_an_empty_report(new_store, tmp_path):
    report = verify_import_integrity(new_store)
    assert (report.problems, report.warnings, report.ok) == ([], [], True)
    v4 = tmp_path / "v4.db"
    make_v4_database(v4)
    report = report_for(v4)
    assert (report.problems, report.warnings, report.ok) == ([], [], True)


def test_the_sample_database_gives_a_clean_report_and_says_what_it_sampled(sample_db):
    report = report_for(sample_db)
    assert (report.problems, report.warnings, report.ok) == ([], [], True)
    observations = report.sampled["observations"]
    assert observations["sample_size"] == 200
    assert observations["searched"] == len(observations["searched_ids"]) == 200
    assert len(set(observations["searched_ids"])) == 200
    conn = sqlite3.connect(sample_db)
    indexable = one(conn, "SELECT count(*) FROM observations WHERE redacted = 0")[0]
    summaries = one(conn, "SELECT count(*) FROM summaries")[0]
    conn.close()
    assert observations["indexable"] == indexable
    # fewer summaries than the sample size: every one of them is searched
    assert report.sampled["summaries"]["searched"] == summaries
    assert report_for(sample_db).sampled == report.sampled  # deterministic
    json.dumps(report.to_dict())


def test_a_dangling_capsule_link_is_caught(broken, sample_copy):
    capsule_id, count = one(
        broken,
        "SELECT capsule_id, count(*) FROM capsule_observations GROUP BY capsule_id LIMIT 1",
    )
    broken.execute("PRAGMA foreign_keys = OFF")
    broken.execute(
        "INSERT INTO capsule_observations VALUES (?, 'no-such-observation', ?)", (capsule_id, count)
    )
    report = report_for(sample_copy)
    assert not report.ok
    [problem] = report.problems
    assert (problem.kind, problem.entity, problem.id) == ("foreign_key", "capsules", capsule_id)
    assert "observation no-such-observation" in problem.detail
    assert "does not exist" in problem.detail


def test_a_summary_of_a_missing_capsule_is_caught(broken, sample_copy):
    summary_id = one(broken, "SELECT id FROM summaries LIMIT 1")[0]
    broken.execute("PRAGMA foreign_keys = OFF")
    broken.execute("UPDATE summaries SET capsule_id = 'gone' WHERE id = ?", (summary_id,))
    assert kinds(report_for(sample_copy)) == {("foreign_key", "summaries", summary_id)}


def test_a_pin_to_a_missing_target_is_caught(broken, sample_copy):
    pin_id = one(broken, "SELECT id FROM pins WHERE target_type = 'summary' LIMIT 1")[0]
    broken.execute("UPDATE pins SET target_id = 'vanished' WHERE id = ?", (pin_id,))
    report = report_for(sample_copy)
    [problem] = report.problems
    assert (problem.kind, problem.entity, problem.id) == ("pin_target_missing", "pins", pin_id)
    assert problem.detail == "target summary vanished does not exist"


def test_an_observation_missing_from_fts_is_caught(broken, sample_copy):
    rowid, oid, content = one(
        broken, "SELECT rowid, id, content FROM observations WHERE redacted = 0 LIMIT 1 OFFSET 7"
    )
    broken.execute(
        "INSERT INTO observations_fts(observations_fts, rowid, content) VALUES ('delete', ?, ?)",
        (rowid, content),
    )
    assert kinds(report_for(sample_copy)) >= {
        ("fts_missing", "observations", oid),
        ("fts_count", "observations", ""),
    }


def test_a_redacted_observation_left_in_fts_is_caught(broken, sample_copy):
    rowid, oid = one(broken, "SELECT rowid, id FROM observations WHERE redacted = 1 LIMIT 1")
    broken.execute(
        "INSERT INTO observations_fts(rowid, content) VALUES (?, ?)", (rowid, "leaked secret")
    )
    assert kinds(report_for(sample_copy)) == {
        ("fts_redacted", "observations", oid),
        ("fts_count", "observations", ""),
    }


def test_an_fts_count_mismatch_is_caught(broken, sample_copy):
    broken.execute("INSERT INTO summaries_fts(rowid, content) VALUES (987654, 'ghost entry')")
    report = report_for(sample_copy)
    assert kinds(report) == {
        ("fts_count", "summaries", ""),
        ("fts_orphan", "summaries", "rowid 987654"),
    }
    count = next(p for p in report.problems if p.kind == "fts_count")
    summaries = one(broken, "SELECT count(*) FROM summaries")[0]
    assert count.detail == (
        f"summaries_fts indexes {summaries + 1} rows, but {summaries} summaries should be indexed"
    )


def test_a_seq_gap_is_caught(broken, sample_copy):
    capsule_id, last = one(
        broken,
        "SELECT capsule_id, max(seq) FROM capsule_observations GROUP BY capsule_id "
        "HAVING count(*) > 2 LIMIT 1",
    )
    broken.execute(
        "UPDATE capsule_observations SET seq = seq + 5 WHERE capsule_id = ? AND seq = ?",
        (capsule_id, last),
    )
    report = report_for(sample_copy)
    [problem] = report.problems
    assert (problem.kind, problem.entity, problem.id) == ("seq_gap", "capsules", capsule_id)
    assert f"seq 0..{last + 5}" in problem.detail


def test_stale_fts_content_is_caught_by_the_sample_search(broken, sample_copy):
    oid = report_for(sample_copy).sampled["observations"]["searched_ids"][3]
    broken.execute("DROP TRIGGER observations_fts_update")  # content changes behind the index
    broken.execute("UPDATE observations SET content = 'quux plugh xyzzy' WHERE id = ?", (oid,))
    report = report_for(sample_copy)
    [problem] = report.problems
    assert (problem.kind, problem.entity, problem.id) == ("fts_not_found", "observations", oid)
    assert problem.detail == 'a search for "quux" "plugh" "xyzzy" does not find it'


def test_an_fts_delete_of_an_unindexed_row_is_caught(broken, sample_copy):
    # What Kindling's update trigger does to a redacted row if it is updated naively.
    rowid = one(broken, "SELECT rowid FROM observations WHERE redacted = 1 LIMIT 1")[0]
    broken.execute(
        "INSERT INTO observations_fts(observations_fts, rowid, content) "
        "VALUES ('delete', ?, '[redacted]')",
        (rowid,),
    )
    assert kinds(report_for(sample_copy)) == {("fts_stats", "observations", "")}


def test_unresolved_evidence_is_a_warning_and_bad_json_an_error(broken, sample_copy):
    first, second = [row[0] for row in broken.execute("SELECT id FROM summaries LIMIT 2")]
    broken.execute("UPDATE summaries SET evidence_refs = '[\"not-there\"]' WHERE id = ?", (first,))
    report = report_for(sample_copy)
    assert report.ok and report.problems == []
    [warning] = report.warnings
    assert (warning.kind, warning.id, warning.severity) == ("evidence_missing", first, "warning")
    assert warning.detail == "evidence ref not-there is not a stored observation"
    broken.execute("UPDATE summaries SET evidence_refs = '[oops' WHERE id = ?", (second,))
    assert ("evidence_invalid", "summaries", second) in kinds(report_for(sample_copy))


def test_long_lists_of_one_kind_are_cut_short(broken, sample_copy, monkeypatch):
    monkeypatch.setattr(integrity_module, "PROBLEMS_PER_KIND", 2)
    broken.execute("UPDATE pins SET target_id = 'vanished'")
    problems = report_for(sample_copy).problems
    assert [p.kind for p in problems] == ["pin_target_missing"] * 3
    assert problems[-1].id == "*"
    assert problems[-1].detail == "more pin_target_missing problems; only the first 2 are listed"


def report_apart(path: Path) -> IntegrityReport:
    """The report as an import into a database in use makes it: the observations' and the
    capsules' parts checked apart (`check_apart`, each on a connection of its own), the rest
    after."""
    parts = []
    for part in ("observations", "capsules"):
        conn = open_store(path, readonly=True)
        parts.append(check_apart(conn, part))
        conn.close()
    conn = open_store(path, readonly=True)
    try:
        return verify_import_integrity(conn, checked=parts)
    finally:
        conn.close()


def test_parts_checked_apart_give_the_report_of_one_pass(broken, sample_copy, monkeypatch):
    """Problems in the same order, the per-kind limit counted across the parts."""
    monkeypatch.setattr(integrity_module, "PROBLEMS_PER_KIND", 2)
    assert report_apart(sample_copy) == report_for(sample_copy)
    broken.execute("DROP TRIGGER observations_fts_update")  # content changes behind the index
    broken.execute("DROP TRIGGER summaries_fts_update")
    broken.execute("UPDATE observations SET content = 'quux plugh' WHERE redacted = 0")
    broken.execute("UPDATE summaries SET content = 'xyzzy frotz'")
    broken.execute("INSERT INTO summaries_fts(rowid, content) VALUES (987654, 'ghost entry')")
    whole = report_for(sample_copy)
    assert report_apart(sample_copy) == whole
    assert [p.kind for p in whole.problems] == [
        *["fts_not_found"] * 3,  # the observations' two, the placeholder line, ...
        "fts_count",
        "fts_orphan",  # ... and the summaries' own come after: one kind, one limit
    ]
    assert whole.problems[2].id == "*"
    capsule_id = one(broken, "SELECT id FROM capsules LIMIT 1")[0]
    broken.execute("UPDATE summaries SET capsule_id = 'gone' WHERE rowid = 1")  # not the links'
    whole = report_for(sample_copy)
    assert ("foreign_key", "summaries") in {(p.kind, p.entity) for p in whole.problems}
    assert report_apart(sample_copy) == whole
    broken.execute(
        "UPDATE capsule_observations SET observation_id = 'gone', seq = seq + 9 "
        "WHERE capsule_id = ? AND seq = 0",
        (capsule_id,),
    )
    whole = report_for(sample_copy)
    assert {("foreign_key", capsule_id), ("seq_gap", capsule_id)} <= {
        (p.kind, p.id) for p in whole.problems
    }
    assert report_apart(sample_copy) == whole


TRICKY = [
    'He said "quote" and (paren) then NEAR(a b) OR NOT x AND y*',
    "column:filter ^start -minus +plus {braces} [brackets]",
    "café naïve Größe 日本語のテキスト данные ελληνικά",
    "🚀 — ½ ✓ done",
    "snake_case_name path/to/file.py:42 a.b.c",
    'trailing quote"',
]


def test_sample_queries_are_safe_and_find_their_own_row(new_store):
    for i, content in enumerate(TRICKY):
        import_observation(
            new_store, Observation(id=f"t{i}", kind="message", content=content, ts=i)
        )
    only_symbols = Observation(id="sym", kind="message", content="→ — !!! ...", ts=99)
    import_observation(new_store, only_symbols)
    report = verify_import_integrity(new_store)
    assert report.problems == []
    assert report.sampled["observations"]["searched"] == len(TRICKY)
    assert report.sampled["observations"]["skipped_no_word"] == ["sym"]
    for i, content in enumerate(TRICKY):
        found = new_store.execute(
            "SELECT o.id FROM observations_fts JOIN observations AS o ON o.rowid = "
            "observations_fts.rowid WHERE observations_fts MATCH ?",
            (fts_query(content),),
        ).fetchall()
        assert (f"t{i}",) in found


def test_fts_query_quotes_words_and_skips_symbols():
    assert fts_query('say "hi" now please, friend') == '"say" """hi""" "now" "please,"'
    assert fts_query("— → 🚀") is None
    assert fts_query("x" * 101 + " short") == '"short"'


def test_a_clean_import_verifies_inside_the_open_transaction(new_store):
    new_store.execute("BEGIN IMMEDIATE")
    import_observation(new_store, Observation(id="a", kind="message", content="abc", ts=1))
    import_capsule(
        new_store, Capsule(id="c", type="session", intent="i", opened_at=1, observation_ids=["a"])
    )
    assert (
        verify_import_integrity(new_store, sample_size=0).sampled["observations"]["searched"] == 0
    )
    assert verify_import_integrity(new_store).ok
    new_store.execute("ROLLBACK")
