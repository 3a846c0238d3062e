"""Importing records into a live database: every conflict strategy on every entity, overwrite in
place (links, pins and summaries survive), missing references, FK order, all-or-nothing
transactions, and the batch path giving exactly the per-record results."""

from __future__ import annotations

import shutil
import sqlite3
from pathlib import Path

import pytest
from msgspec.structs import replace

from conftest import dump_tables
from kindling_bundle import (
    Capsule,
    ImportConflictError,
    Observation,
    Pin,
    RecordError,
    Summary,
    import_batch,
    import_capsule,
    import_observation,
    import_pin,
    import_record,
    import_summary,
    verify_import_integrity,
)
from kindling_bundle.db.connection import open_store, write_transaction
from kindling_bundle.db.rows import (
    CAPSULE_SELECT,
    OBSERVATION_SELECT,
    PIN_SELECT,
    SUMMARY_SELECT,
    capsule_from_row,
    observation_from_row,
    pin_from_row,
    summary_from_row,
)
from kindling_bundle.records import Record

STRATEGIES = ["skip", "overwrite", "error"]

OBS = [
    Observation(
        id="o1",
        kind="message",
        content="alpha bravo charlie",
        provenance={"source": "claude-code", "v": 1},
        ts=1000,
        scope_ids={"sessionId": "sess-1", "repoId": "repo-a"},
    ),
    Observation(id="o2", kind="tool_call", content="delta echo", ts=1001),
    Observation(id="o3", kind="error", content="[redacted]", ts=1002, redacted=True),
]
CAPSULE = Capsule(
    id="c1",
    type="session",
    intent="fix the parser",
    opened_at=900,
    scope_ids={"sessionId": "sess-1"},
    observation_ids=["o1", "o2", "o3"],
)
SUMMARY = Summary(
    id="s1",
    capsule_id="c1",
    content="parser fixed foxtrot",
    confidence=0.8,
    created_at=2000,
    evidence_refs=["o1"],
)
PINS = [
    Pin(id="p1", target_type="observation", target_id="o1", created_at=2100),
    Pin(id="p2", target_type="summary", target_id="s1", reason="key", created_at=2200),
]
BASE: list[Record] = [*OBS, CAPSULE, SUMMARY, *PINS]

# entity -> (stored record, a conflicting version of it, the fields that differ)
CHANGES = {
    "observations": (OBS[0], replace(OBS[0], content="alpha golf", ts=1500), "content, ts"),
    "capsules": (
        CAPSULE,
        replace(CAPSULE, intent="fix the lexer", observation_ids=["o2", "o1"]),
        "intent, observationIds",
    ),
    "summaries": (
        SUMMARY,
        replace(SUMMARY, content="lexer fixed", confidence=0.9),
        "content, confidence",
    ),
    "pins": (PINS[0], replace(PINS[0], reason="why", expires_at=9000), "reason, expiresAt"),
}
SINGULAR = {
    "observations": "observation",
    "capsules": "capsule",
    "summaries": "summary",
    "pins": "pin",
}


def stored(conn: sqlite3.Connection, entity: str, record_id: str) -> Record | None:
    """The stored record with this id, read back through the row mapping."""
    select = {
        "observations": OBSERVATION_SELECT,
        "capsules": CAPSULE_SELECT,
        "summaries": SUMMARY_SELECT,
        "pins": PIN_SELECT,
    }[entity]
    row = conn.execute(f"SELECT {select} FROM {entity} WHERE id = ?", (record_id,)).fetchone()
    if row is None:
        return None
    if entity == "observations":
        return observation_from_row(row)
    if entity == "summaries":
        return summary_from_row(row)
    if entity == "pins":
        return pin_from_row(row)
    links = conn.execute(
        "SELECT observation_id FROM capsule_observations WHERE capsule_id = ? ORDER BY seq",
        (record_id,),
    )
    return capsule_from_row(row, [oid for (oid,) in links])


def all_records(path: Path) -> list[Record]:
    """Every record of a database in rowid order (so a re-import gets the same rowids)."""
    conn = open_store(path, readonly=True)
    records: list[Record] = []
    for entity in ("observations", "capsules", "summaries", "pins"):
        ids = [rid for (rid,) in conn.execute(f"SELECT id FROM {entity} ORDER BY rowid")]
        records += [stored(conn, entity, rid) for rid in ids]
    conn.close()
    return records


def search(conn: sqlite3.Connection, fts: str, word: str) -> list[str]:
    table = fts.removesuffix("_fts")
    return [
        rid
        for (rid,) in conn.execute(
            f"SELECT t.id FROM {fts} JOIN {table} AS t ON t.rowid = {fts}.rowid "
            f"WHERE {fts} MATCH ?",
            (word,),
        )
    ]


def import_all(conn: sqlite3.Connection, records: list[Record], conflict: str) -> None:
    """What a restore does: one transaction, rolled back at the first record that fails."""
    with write_transaction(conn):
        for record in records:
            result = import_record(conn, record, conflict)
            if result.error:
                raise ImportConflictError(result.error, entity=result.entity, record_id=result.id)


@pytest.fixture
def store(new_store):
    results = [import_record(new_store, record, "error") for record in BASE]
    assert [r.outcome for r in results] == ["inserted"] * len(BASE)
    return new_store


@pytest.mark.parametrize("conflict", STRATEGIES)
def test_identical_records_are_unchanged_under_every_strategy(store, db_path, conflict):
    before = dump_tables(db_path)
    results = [import_record(store, record, conflict) for record in BASE]
    assert [(r.outcome, r.error, r.imported, r.skipped) for r in results] == [
        ("unchanged", None, False, False)
    ] * len(BASE)
    assert dump_tables(db_path) == before


@pytest.mark.parametrize("conflict", STRATEGIES)
@pytest.mark.parametrize("entity", CHANGES)
def test_conflict_strategies_on_every_entity(store, db_path, entity, conflict):
    original, changed, fields = CHANGES[entity]
    before = dump_tables(db_path)
    result = import_record(store, changed, conflict)
    assert (result.entity, result.id) == (entity, original.id)
    if conflict == "skip":
        assert (result.outcome, result.skipped, result.imported) == ("skipped", True, False)
        assert dump_tables(db_path) == before
        assert stored(store, entity, original.id) == original
    elif conflict == "error":
        assert result.outcome is None
        assert result.error == (
            f"{SINGULAR[entity]} {original.id}: conflicts with the stored row (fields: {fields})"
        )
        assert dump_tables(db_path) == before
    else:
        assert (result.outcome, result.imported, result.error) == ("overwritten", True, None)
        assert stored(store, entity, original.id) == changed
        assert verify_import_integrity(store).problems == []


def test_per_entity_functions_match_import_record(store):
    pairs = [
        (import_observation, CHANGES["observations"][1]),
        (import_capsule, CHANGES["capsules"][1]),
        (import_summary, CHANGES["summaries"][1]),
        (import_pin, CHANGES["pins"][1]),
    ]
    assert [fn(store, record, "skip").outcome for fn, record in pairs] == ["skipped"] * 4
    assert [fn(store, record).outcome for fn, record in pairs] == ["skipped"] * 4  # the default
    assert [fn(store, record, "overwrite").outcome for fn, record in pairs] == ["overwritten"] * 4


def test_overwriting_a_linked_pinned_observation_keeps_links_pin_and_summary(store):
    new = replace(OBS[0], kind="command", content="zulu yankee", ts=5000)
    assert import_observation(store, new, "overwrite").outcome == "overwritten"
    links = store.execute(
        "SELECT observation_id, seq FROM capsule_observations WHERE capsule_id = 'c1' ORDER BY seq"
    ).fetchall()
    assert links == [("o1", 0), ("o2", 1), ("o3", 2)]
    assert stored(store, "pins", "p1") == PINS[0]
    assert stored(store, "summaries", "s1") == SUMMARY
    assert stored(store, "observations", "o1") == new
    assert search(store, "observations_fts", "zulu") == ["o1"]
    assert search(store, "observations_fts", "alpha") == []
    assert verify_import_integrity(store).problems == []


def test_overwriting_a_capsule_keeps_its_summary_and_the_pins_on_it(store):
    closed = replace(CAPSULE, status="closed", closed_at=3000)
    assert import_capsule(store, closed, "overwrite").outcome == "overwritten"
    assert stored(store, "capsules", "c1") == closed
    assert stored(store, "summaries", "s1") == SUMMARY
    assert stored(store, "pins", "p2") == PINS[1]


def test_an_incoming_redacted_observation_leaves_no_fts_entry(store):
    redacted = replace(OBS[0], content="[redacted]", redacted=True)
    assert import_observation(store, redacted, "overwrite").outcome == "overwritten"
    rowid = store.execute("SELECT rowid FROM observations WHERE id = 'o1'").fetchone()[0]
    indexed = store.execute("SELECT 1 FROM observations_fts_docsize WHERE id = ?", (rowid,))
    assert indexed.fetchone() is None
    assert search(store, "observations_fts", "alpha") == []
    assert stored(store, "pins", "p1") == PINS[0]
    assert verify_import_integrity(store).problems == []


def test_overwriting_a_redacted_observation_keeps_the_fts_index_sound(store):
    # o3 is redacted, so it has no FTS entry; Kindling's update trigger still issues an FTS
    # 'delete' for it, which would corrupt the index statistics without the importer's care.
    assert import_observation(store, replace(OBS[2], ts=7000), "overwrite").outcome == "overwritten"
    assert verify_import_integrity(store).problems == []
    restored = replace(OBS[2], content="hotel india", redacted=False)
    assert import_observation(store, restored, "overwrite").outcome == "overwritten"
    assert search(store, "observations_fts", "hotel") == ["o3"]
    assert verify_import_integrity(store).problems == []
    # FTS5's own check agrees once no row is left unindexed on purpose:
    store.execute(
        "INSERT INTO observations_fts(observations_fts, rank) VALUES ('integrity-check', 1)"
    )


def test_overwriting_a_capsule_sets_exactly_the_incoming_links(store):
    fewer = replace(CAPSULE, observation_ids=["o3", "o1"])
    assert import_capsule(store, fewer, "overwrite").outcome == "overwritten"
    links = store.execute(
        "SELECT observation_id, seq FROM capsule_observations WHERE capsule_id = 'c1' ORDER BY seq"
    ).fetchall()
    assert links == [("o3", 0), ("o1", 1)]
    assert stored(store, "observations", "o2") == OBS[1]  # unlinked, not deleted


@pytest.mark.parametrize("conflict", STRATEGIES)
def test_a_summary_for_a_capsule_that_has_another_summary(store, db_path, conflict):
    other = Summary(id="s2", capsule_id="c1", content="kilo lima", confidence=0.5, created_at=3000)
    before = dump_tables(db_path)
    result = import_summary(store, other, conflict)
    if conflict == "skip":
        assert result.outcome == "skipped"
        assert dump_tables(db_path) == before
    elif conflict == "error":
        assert result.error == "summary s2: capsule c1 already has a different summary s1"
        assert dump_tables(db_path) == before
    else:
        assert result.outcome == "overwritten"
        assert store.execute("SELECT id FROM summaries").fetchall() == [("s2",)]
        assert stored(store, "summaries", "s2") == other
        assert stored(store, "pins", "p2") == replace(PINS[1], target_id="s2")  # follows it
        assert search(store, "summaries_fts", "kilo") == ["s2"]
        assert search(store, "summaries_fts", "foxtrot") == []
        assert verify_import_integrity(store).problems == []


def test_overwrite_moves_a_summary_onto_a_capsule_that_has_another(store):
    import_capsule(store, Capsule(id="c2", type="session", intent="other", opened_at=950))
    moved = Summary(id="s2", capsule_id="c2", content="mike november", confidence=0.4, created_at=1)
    assert import_summary(store, moved).outcome == "inserted"
    incoming = replace(moved, capsule_id="c1")  # s2 is stored for c2, and c1 has s1
    assert import_summary(store, incoming, "overwrite").outcome == "overwritten"
    rows = store.execute("SELECT id, capsule_id FROM summaries ORDER BY id").fetchall()
    assert rows == [("s2", "c1")]
    assert stored(store, "pins", "p2").target_id == "s2"
    assert search(store, "summaries_fts", "mike") == ["s2"]
    assert search(store, "summaries_fts", "foxtrot") == []
    assert verify_import_integrity(store).problems == []


MISSING = [
    (
        Capsule(id="c9", type="session", intent="x", opened_at=1, observation_ids=["o1", "gh"]),
        "capsule c9: links to observation gh, which does not exist",
    ),
    (
        replace(CAPSULE, observation_ids=["o1", "gh1", "gh2"]),
        "capsule c1: links to observations gh1, gh2, which do not exist",
    ),
    (
        Capsule(id="c9", type="session", intent="x", opened_at=1, observation_ids=["o1", "o1"]),
        "capsule c9: lists observation o1 more than once",
    ),
    (
        Summary(id="s9", capsule_id="nope", content="x", confidence=0.1, created_at=1),
        "summary s9: capsule nope does not exist",
    ),
    (
        Pin(id="p9", target_type="observation", target_id="gh", created_at=1),
        "pin p9: target observation gh does not exist",
    ),
    (
        replace(PINS[1], target_id="gh"),
        "pin p2: target summary gh does not exist",
    ),
]


@pytest.mark.parametrize("conflict", STRATEGIES)
@pytest.mark.parametrize(("record", "message"), MISSING, ids=lambda v: getattr(v, "id", ""))
def test_missing_references_are_errors_under_every_strategy(
    store, db_path, record, message, conflict
):
    before = dump_tables(db_path)
    result = import_record(store, record, conflict)
    assert (result.outcome, result.error, result.imported) == (None, message, False)
    assert dump_tables(db_path) == before


def test_many_missing_links_are_counted_not_all_listed(store):
    capsule = replace(CAPSULE, id="c9", observation_ids=[f"gh{i}" for i in range(8)])
    assert import_capsule(store, capsule).error == (
        "capsule c9: links to observations gh0, gh1, gh2, gh3, gh4 (and 3 more), which do not exist"
    )


def test_observations_before_capsules_imports(new_store):
    with write_transaction(new_store):
        results = import_batch(new_store, BASE, "error")
    assert [r.outcome for r in results] == ["inserted"] * len(BASE)
    assert stored(new_store, "capsules", "c1") == CAPSULE


def test_a_capsule_before_its_observations_fails_cleanly(new_store, db_path):
    before = dump_tables(db_path)
    with pytest.raises(ImportConflictError) as caught:
        import_all(new_store, [CAPSULE, *OBS], "skip")
    assert str(caught.value) == "capsule c1: links to observations o1, o2, o3, which do not exist"
    assert (caught.value.entity, caught.value.record_id) == ("capsules", "c1")
    assert dump_tables(db_path) == before


def test_a_failure_part_way_leaves_the_database_exactly_as_it_was(sample_copy):
    before = dump_tables(sample_copy)
    conn = open_store(sample_copy)
    existing = all_records(sample_copy)
    first_obs = next(r for r in existing if isinstance(r, Observation))
    first_capsule = next(r for r in existing if isinstance(r, Capsule))
    first_summary = next(r for r in existing if isinstance(r, Summary))
    fresh = [
        Observation(id=f"new-{i}", kind="message", content=f"new text {i}", ts=i) for i in range(50)
    ]
    records = [
        *fresh,
        replace(first_obs, content="overwritten quebec", redacted=False),
        Capsule(id="new-cap", type="session", intent="n", opened_at=1, observation_ids=["new-1"]),
        replace(first_capsule, intent="changed", observation_ids=["new-2", "new-3"]),
        replace(first_summary, content="romeo"),
        Pin(id="new-pin", target_type="summary", target_id=first_summary.id, created_at=1),
        Pin(id="bad-pin", target_type="observation", target_id="ghost", created_at=1),
    ]
    with pytest.raises(ImportConflictError, match="pin bad-pin: target observation ghost"):
        import_all(conn, records, "overwrite")
    conn.close()
    assert dump_tables(sample_copy) == before


def test_a_record_the_database_rejects_raises_and_writes_nothing(store, db_path):
    bad = Observation(id="o9", kind="telepathy", content="x", ts=1)  # type: ignore[arg-type]
    before = dump_tables(db_path)
    records = [Observation(id="o8", kind="message", content="fine", ts=1), bad]
    rejected = r"^observation o9: rejected by the database \(CHECK constraint failed"
    with pytest.raises(RecordError, match=rejected), write_transaction(store):
        for record in records:
            import_record(store, record, "error")
    assert dump_tables(db_path) == before
    with pytest.raises(RecordError, match=rejected), write_transaction(store):
        import_batch(store, records, "error")
    assert dump_tables(db_path) == before


def test_unknown_strategy_and_record_type_are_refused(store):
    with pytest.raises(ValueError, match="unknown conflict strategy 'merge'"):
        import_observation(store, OBS[0], "merge")  # type: ignore[arg-type]
    with pytest.raises(TypeError, match="not a Kindling record: dict"):
        import_record(store, {"id": "x"}, "skip")  # type: ignore[arg-type]


def _mixed_records(sample: Path) -> list[Record]:
    """New, identical, conflicting, duplicated and dangling records of every entity."""
    existing = all_records(sample)
    obs = [r for r in existing if isinstance(r, Observation)]
    caps = [r for r in existing if isinstance(r, Capsule)]
    sums = [r for r in existing if isinstance(r, Summary)]
    pins = [r for r in existing if isinstance(r, Pin)]
    fresh = [
        Observation(id=f"new-{i}", kind="command", content=f"fresh sierra {i}", ts=10 + i)
        for i in range(40)
    ]
    redacted = next(o for o in obs if o.redacted)
    new_caps = [
        Capsule(
            id="new-cap",
            type="pocketflow_node",
            intent="tango",
            opened_at=5,
            observation_ids=["new-1", obs[0].id, "new-2"],
        ),
        Capsule(id="dangling", type="session", intent="u", opened_at=6, observation_ids=["zz"]),
        replace(caps[1], intent="victor", observation_ids=caps[1].observation_ids[::-1]),
    ]
    summarised = {s.capsule_id for s in sums}
    bare = next(c for c in caps if c.id not in summarised)
    return [
        *obs[:30],
        *fresh[:20],
        replace(obs[30], content="whiskey xray", ts=3),
        replace(redacted, ts=4),
        *fresh[20:],
        replace(fresh[5], content="a second copy, differing"),
        *caps[:3],
        *new_caps,
        sums[0],
        Summary(id="new-sum", capsule_id="new-cap", content="yankee", confidence=1.0, created_at=7),
        Summary(
            id="rival", capsule_id=sums[1].capsule_id, content="zulu", confidence=0, created_at=8
        ),
        Summary(id="for-bare", capsule_id=bare.id, content="bare", confidence=0.5, created_at=9),
        replace(sums[2], confidence=0.01),
        Summary(
            id="orphan", capsule_id="no-such-capsule", content="o", confidence=0.5, created_at=9
        ),
        *pins[:3],
        replace(pins[3], reason="changed"),
        Pin(id="new-pin", target_type="summary", target_id="new-sum", created_at=1),
        Pin(id="lost-pin", target_type="observation", target_id="ghost", created_at=1),
        Pin(id="sum-pin", target_type="summary", target_id="rival", created_at=2),
        *fresh[30:35],  # a second run of observations, all already imported above
    ]


@pytest.mark.parametrize("conflict", STRATEGIES)
def test_batch_gives_exactly_the_per_record_results(sample_db, tmp_path, conflict):
    records = _mixed_records(sample_db)
    one_path, batch_path = tmp_path / "one.db", tmp_path / "batch.db"
    shutil.copy(sample_db, one_path)
    shutil.copy(sample_db, batch_path)
    one, batch = open_store(one_path), open_store(batch_path)
    with write_transaction(one):
        expected = [import_record(one, record, conflict) for record in records]
    with write_transaction(batch):
        results = import_batch(batch, records, conflict)
    assert results == expected
    outcomes = {r.outcome for r in results}
    assert {"inserted", "unchanged"} <= outcomes
    assert sum(r.error is not None for r in results) >= 3
    one.close(), batch.close()
    assert dump_tables(batch_path) == dump_tables(one_path)


def test_batch_into_an_empty_database_reproduces_every_row(sample_db, tmp_path):
    records = all_records(sample_db)
    conn = open_store(tmp_path / "restored.db")
    with write_transaction(conn):
        results = import_batch(conn, records, "error")
    assert {r.outcome for r in results} == {"inserted"}
    report = verify_import_integrity(conn)
    assert (report.problems, report.warnings) == ([], [])
    with write_transaction(conn):
        again = import_batch(conn, records, "error")
    assert {r.outcome for r in again} == {"unchanged"}
    conn.close()
    original, restored = dump_tables(sample_db), dump_tables(tmp_path / "restored.db")
    for table in ("observations", "capsules", "capsule_observations", "summaries", "pins"):
        assert restored[table] == original[table], table
