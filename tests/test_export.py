"""The export streams: exact records, documented order, filters, referential closure, a
consistent snapshot under a concurrent writer, flat memory, and a source that is never written."""

from __future__ import annotations

import hashlib
import sqlite3
import tracemalloc
from pathlib import Path

import msgspec
import pytest

from conftest import dump_tables
from kindling_bundle import (
    Capsule,
    ExportStreamOptions,
    Observation,
    Pin,
    RecordError,
    StoreError,
    Summary,
    export_capsules,
    export_observations,
    open_store,
    snapshot,
)
from kindling_bundle.db.connection import write_transaction
from kindling_bundle.db.export import ENTITY_EXPORTS
from kindling_bundle.db.schema import TRIGGERS
from kindling_bundle.db.writes import (
    INSERT_CAPSULE,
    INSERT_LINK,
    INSERT_OBSERVATION,
    INSERT_PIN,
    INSERT_SUMMARY,
    attach_observation,
    create_capsule,
    delete_pin,
    insert_observation,
    insert_pin,
    insert_summary,
    redact_observation,
)

T = 1_700_000_000_000
SCOPE_A = {"sessionId": "s1", "repoId": "r1", "agentId": "a1", "userId": "u1", "taskId": "t1"}
SCOPE_B = {"sessionId": "s2", "repoId": "r1", "agentId": "a2"}
SCOPE_C = {"sessionId": "s3", "repoId": "r2", "userId": "u1"}

# A small world whose every filter result can be worked out by hand (see the tables below).
OBSERVATIONS = [
    Observation(id="o1", kind="message", content="hello", ts=T, scope_ids=SCOPE_A),
    Observation(
        id="o2",
        kind="tool_call",
        content="Read(x) → ✓ café",
        provenance={"tool": "Read", "nested": {"n": [1, 2.5, None, True]}},
        ts=T + 10,
        scope_ids=SCOPE_A,
    ),
    Observation(id="o3", kind="command", content="$ ls", ts=T + 20, scope_ids=SCOPE_B),
    Observation(id="o4", kind="error", content="boom", ts=T + 20, scope_ids=SCOPE_C),
    Observation(id="o5", kind="file_diff", content="secret", ts=T + 30, scope_ids=SCOPE_A),
    Observation(id="o6", kind="node_start", content="start", ts=T + 40, scope_ids=SCOPE_B),
    Observation(id="o7", kind="message", content="unscoped", ts=T + 50),
    Observation(id="o8", kind="node_end", content="end", ts=T + 60, scope_ids=SCOPE_C),
]
CAPSULES = [
    Capsule(
        id="c1",
        type="session",
        intent="fix parser",
        status="closed",
        opened_at=T,
        closed_at=T + 31,
        scope_ids=SCOPE_A,
        observation_ids=["o5", "o1", "o2"],  # seq order differs from id and ts order
    ),
    Capsule(
        id="c2",
        type="pocketflow_node",
        intent="node",
        opened_at=T + 20,
        scope_ids=SCOPE_B,
        observation_ids=["o3", "o6"],
    ),
    Capsule(
        id="c3",
        type="session",
        intent="other repo",
        status="closed",
        opened_at=T + 20,
        closed_at=T + 61,
        scope_ids=SCOPE_C,
        observation_ids=["o4", "o8"],
    ),
    Capsule(id="c4", type="session", intent="empty", opened_at=T + 55, scope_ids=SCOPE_A),
]
SUMMARIES = [
    Summary(id="m1", capsule_id="c1", content="did it", confidence=0.9, created_at=T + 35,
            evidence_refs=["o2"]),
    Summary(id="m2", capsule_id="c2", content="node ok", confidence=0.5, created_at=T + 45,
            evidence_refs=["o6", "ghost"]),
    Summary(id="m3", capsule_id="c3", content="other", confidence=1.0, created_at=T + 65,
            evidence_refs=["o8", "o1"]),
]  # fmt: skip
PINS = [
    Pin(id="p1", target_type="observation", target_id="o7", reason="why", created_at=T + 50,
        scope_ids=SCOPE_A),
    Pin(id="p2", target_type="summary", target_id="m2", created_at=T + 60,
        expires_at=T + 1000, scope_ids=SCOPE_A),
    Pin(id="p3", target_type="observation", target_id="ghost-obs", created_at=T + 60,
        scope_ids=SCOPE_C),
    Pin(id="p4", target_type="observation", target_id="o3", created_at=T + 10, scope_ids=SCOPE_B),
]  # fmt: skip
REDACTED = "o5"


@pytest.fixture
def world(db_path: Path) -> Path:
    """The small world above, each table inserted in reverse order so that insertion (rowid)
    order never matches the export order; o5 is then redacted."""
    conn = open_store(db_path)
    with write_transaction(conn):
        for obs in reversed(OBSERVATIONS):
            insert_observation(conn, obs)
        for capsule in reversed(CAPSULES):
            create_capsule(conn, capsule)
        for summary in reversed(SUMMARIES):
            insert_summary(conn, summary)
        for pin in reversed(PINS):
            insert_pin(conn, pin)
        redact_observation(conn, REDACTED)
    conn.close()
    return db_path


def export_all(conn: sqlite3.Connection, opts: ExportStreamOptions | None = None) -> dict:
    """All four streams, read inside one snapshot."""
    opts = opts or ExportStreamOptions()
    with snapshot(conn):
        return {name: list(stream(conn, opts)) for name, stream in ENTITY_EXPORTS.items()}


def ids(exported: dict) -> dict[str, list[str]]:
    return {name: [record.id for record in records] for name, records in exported.items()}


def encoded(exported: dict) -> dict[str, list[bytes]]:
    return {
        name: [msgspec.msgpack.encode(r) for r in records] for name, records in exported.items()
    }


def order_keys(exported: dict) -> dict[str, list[tuple]]:
    return {
        "observations": [(r.ts, r.id) for r in exported["observations"]],
        "capsules": [(r.opened_at, r.id) for r in exported["capsules"]],
        "summaries": [(r.created_at, r.id) for r in exported["summaries"]],
        "pins": [(r.created_at, r.id) for r in exported["pins"]],
    }


def file_digest(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


# ---------------------------------------------------------------------------------------------
# exact records and order


def test_records_come_back_exactly_as_written(world: Path) -> None:
    conn = open_store(world, readonly=True)
    exported = export_all(conn)
    conn.close()
    redacted = next(o for o in OBSERVATIONS if o.id == REDACTED)
    expected_obs = [
        msgspec.structs.replace(o, content="[redacted]", redacted=True) if o is redacted else o
        for o in OBSERVATIONS
    ]
    assert exported["observations"] == expected_obs
    assert exported["capsules"] == CAPSULES
    assert exported["summaries"] == SUMMARIES
    assert exported["pins"] == sorted(PINS, key=lambda p: (p.created_at, p.id))
    # key order of scope ids survives (Kindling's JSON text is reproduced from it byte for byte)
    assert list(exported["observations"][0].scope_ids) == list(SCOPE_A)


def test_redacted_observations_are_exported_with_marker_and_stored_content(world: Path) -> None:
    conn = open_store(world, readonly=True)
    for opts in (ExportStreamOptions(), ExportStreamOptions(scope_ids={"sessionId": "s1"})):
        by_id = {o.id: o for o in export_observations(conn, opts)}
        assert by_id[REDACTED].redacted is True
        assert by_id[REDACTED].content == "[redacted]"
        assert [o.id for o in by_id.values() if o.redacted] == [REDACTED]
    # still linked from its capsule, as in the database
    assert REDACTED in next(c for c in export_capsules(conn) if c.id == "c1").observation_ids
    conn.close()


def test_order_is_deterministic_with_ties_and_out_of_order_inserts(new_store) -> None:
    conn = new_store
    # equal timestamps, ids inserted in descending order, earlier timestamps inserted last
    obs_rows = [("z", 5), ("m", 5), ("a", 5), ("late", 9), ("b", 1), ("0", 5)]
    with write_transaction(conn):
        for oid, ts in obs_rows:
            insert_observation(conn, Observation(id=oid, kind="message", content=oid, ts=ts))
        for cid, opened in [("cz", 3), ("ca", 3), ("c0", 1)]:
            conn.execute(INSERT_CAPSULE, (cid, "session", "i", "open", opened, None, "{}")
                         + (None,) * 4)  # fmt: skip
        # links whose seq order is neither insertion order nor id order
        for oid, seq in [("a", 2), ("z", 0), ("late", 3), ("b", 1)]:
            conn.execute(INSERT_LINK, ("ca", oid, seq))
        attach_observation(conn, "ca", "m")  # next seq: 4
        for sid, cid, created in [("sz", "cz", 7), ("sa", "ca", 7), ("s0", "c0", 2)]:
            insert_summary(
                conn, Summary(id=sid, capsule_id=cid, content="s", confidence=0.5,
                              created_at=created)
            )  # fmt: skip
        for pid, created in [("pz", 4), ("pa", 4), ("p0", 4), ("pb", 1)]:
            insert_pin(conn, Pin(id=pid, target_type="observation", target_id="a",
                                 created_at=created))  # fmt: skip

    first = export_all(conn)
    assert ids(first) == {
        "observations": ["b", "0", "a", "m", "z", "late"],
        "capsules": ["c0", "ca", "cz"],
        "summaries": ["s0", "sa", "sz"],
        "pins": ["pb", "p0", "pa", "pz"],
    }
    assert first["capsules"][1].observation_ids == ["z", "b", "a", "late", "m"]
    assert encoded(export_all(conn)) == encoded(first)


def test_sample_database_streams_are_sorted_and_repeatable(sample_db: Path) -> None:
    conn = open_store(sample_db, readonly=True)
    first = export_all(conn)
    second = export_all(conn)
    conn.close()
    assert encoded(first) == encoded(second)
    for name, keys in order_keys(first).items():
        assert keys == sorted(keys), name
        assert len(set(keys)) == len(keys), name
    # every row is exported, and the sample does have equal timestamps to order by id
    counts = {name: len(records) for name, records in first.items()}
    db = sqlite3.connect(f"file:{sample_db}?mode=ro", uri=True)
    assert counts == {t: db.execute(f"SELECT count(*) FROM {t}").fetchone()[0] for t in counts}
    links = db.execute("SELECT count(*) FROM capsule_observations").fetchone()[0]
    db.close()
    assert sum(len(c.observation_ids) for c in first["capsules"]) == links
    ts = [o.ts for o in first["observations"]]
    assert len(set(ts)) < len(ts)


# ---------------------------------------------------------------------------------------------
# filters

ALL_IDS = {
    "observations": ["o1", "o2", "o3", "o4", "o5", "o6", "o7", "o8"],
    "capsules": ["c1", "c2", "c3", "c4"],
    "summaries": ["m1", "m2", "m3"],
    "pins": ["p4", "p1", "p2", "p3"],
}
NOTHING: dict[str, list[str]] = {name: [] for name in ENTITY_EXPORTS}


def expect(obs: str, caps: str, sums: str, pins: str) -> dict[str, list[str]]:
    return {
        "observations": obs.split(),
        "capsules": caps.split(),
        "summaries": sums.split(),
        "pins": pins.split(),
    }


FILTER_CASES = [
    ({}, ALL_IDS),
    ({"scope_ids": {}}, ALL_IDS),
    ({"scope_ids": {"sessionId": "s1"}}, expect("o1 o2 o5", "c1 c4", "m1", "p1 p2")),
    ({"scope_ids": {"repoId": "r1"}}, expect("o1 o2 o3 o5 o6", "c1 c2 c4", "m1 m2", "p4 p1 p2")),
    ({"scope_ids": {"agentId": "a2"}}, expect("o3 o6", "c2", "m2", "p4")),
    ({"scope_ids": {"userId": "u1"}}, expect("o1 o2 o4 o5 o8", "c1 c3 c4", "m1 m3", "p1 p2 p3")),
    ({"scope_ids": {"repoId": "r1", "userId": "u1"}}, expect("o1 o2 o5", "c1 c4", "m1", "p1 p2")),
    ({"scope_ids": {"sessionId": "s1", "repoId": "r2"}}, NOTHING),
    ({"scope_ids": {"sessionId": "nope"}}, NOTHING),
    ({"from_ts": T + 20}, expect("o3 o4 o5 o6 o7 o8", "c2 c3 c4", "m1 m2 m3", "p1 p2 p3")),
    ({"to_ts": T + 20}, expect("o1 o2 o3 o4", "c1 c2 c3", "", "p4")),
    ({"from_ts": T + 20, "to_ts": T + 20}, expect("o3 o4", "c2 c3", "", "")),
    ({"from_ts": T + 21, "to_ts": T + 59}, expect("o5 o6 o7", "c4", "m1 m2", "p1")),
    (
        {"scope_ids": {"repoId": "r1"}, "from_ts": T + 20, "to_ts": T + 50},
        expect("o3 o5 o6", "c2", "m1 m2", "p1"),
    ),
    ({"scope_ids": {"userId": "u1"}, "from_ts": T + 60}, expect("o8", "", "m3", "p2 p3")),
]


@pytest.mark.parametrize(("kwargs", "expected"), FILTER_CASES)
def test_filters_select_exactly_the_expected_ids(world: Path, kwargs: dict, expected: dict) -> None:
    conn = open_store(world, readonly=True)
    assert ids(export_all(conn, ExportStreamOptions(**kwargs))) == expected
    conn.close()


CLOSURE_CASES = [
    # selected: o1 o2 o5 / c1 c4 / m1 / p1 p2. p2 pins m2 -> m2 and its capsule c2 -> c2's
    # links o3 o6; p1 pins o7; evidence refs o2, o6 and "ghost" (does not exist).
    ({"scope_ids": {"sessionId": "s1"}}, expect("o1 o2 o3 o5 o6 o7", "c1 c2 c4", "m1 m2", "p1 p2")),
    # selected: o1 o2 / c1 / - / p4. p4 pins o3; c1 also links o5 (outside the window).
    ({"to_ts": T + 10}, expect("o1 o2 o3 o5", "c1", "", "p4")),
    # selected: m3 only -> its capsule c3 -> links o4 o8; evidence o8 and o1.
    ({"from_ts": T + 61}, expect("o1 o4 o8", "c3", "m3", "")),
    # p3 pins an observation that does not exist: it adds nothing (and breaks nothing).
    ({"scope_ids": {"sessionId": "s3"}}, expect("o1 o4 o8", "c3", "m3", "p3")),
    # without a filter everything is exported anyway
    ({}, ALL_IDS),
]


@pytest.mark.parametrize(("kwargs", "expected"), CLOSURE_CASES)
def test_include_references_closes_filtered_exports(
    world: Path, kwargs: dict, expected: dict
) -> None:
    conn = open_store(world, readonly=True)
    exported = export_all(conn, ExportStreamOptions(**kwargs, include_references=True))
    conn.close()
    assert ids(exported) == expected
    assert_closed(exported, existing=set(ALL_IDS["observations"]) | set(ALL_IDS["summaries"]))


def assert_closed(exported: dict, existing: set[str]) -> None:
    """Every reference an importer must resolve points into the exported streams."""
    obs = {o.id for o in exported["observations"]}
    capsules = {c.id for c in exported["capsules"]}
    summaries = {s.id for s in exported["summaries"]}
    for capsule in exported["capsules"]:
        assert set(capsule.observation_ids) <= obs, capsule.id
    for summary in exported["summaries"]:
        assert summary.capsule_id in capsules, summary.id
        assert set(summary.evidence_refs) & existing <= obs, summary.id
    for pin in exported["pins"]:
        if pin.target_id in existing:
            assert pin.target_id in (obs if pin.target_type == "observation" else summaries)


def test_closure_on_the_sample_database(sample_db: Path) -> None:
    conn = open_store(sample_db, readonly=True)
    everything = export_all(conn)
    existing = {o.id for o in everything["observations"]} | {s.id for s in everything["summaries"]}
    ts = [o.ts for o in everything["observations"]]
    session = everything["capsules"][3].scope_ids["sessionId"]
    filters = [
        {"scope_ids": {"sessionId": session}},
        {"scope_ids": {"repoId": "repo-infra", "agentId": "codex"}},
        {"from_ts": ts[len(ts) // 3], "to_ts": ts[len(ts) // 2]},
        {"scope_ids": {"userId": "alice"}, "from_ts": ts[len(ts) // 2]},
    ]
    grew = []
    for kwargs in filters:
        plain = export_all(conn, ExportStreamOptions(**kwargs))
        closed = export_all(conn, ExportStreamOptions(**kwargs, include_references=True))
        assert_closed(closed, existing)
        for name in ENTITY_EXPORTS:
            assert set(ids(plain)[name]) <= set(ids(closed)[name])
        for name, keys in order_keys(closed).items():
            assert keys == sorted(keys), name
        assert ids(closed)["pins"] == ids(plain)["pins"]
        if ids(closed) != ids(plain):
            grew.append(kwargs)
    conn.close()
    # sessions are self-contained in the sample, but a time window cuts through capsules
    assert filters[2] in grew


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"scope_ids": {"taskId": "t1"}}, "'taskId'"),
        ({"scope_ids": {"sessionId": 5}}, "'sessionId'"),
        ({"from_ts": T + 1, "to_ts": T}, "from_ts"),
        ({"from_ts": "yesterday"}, "from_ts"),
        ({"to_ts": True}, "to_ts"),
        ({"to_ts": 2**63}, "to_ts"),
    ],
)
def test_bad_options_are_refused_by_name(kwargs: dict, message: str) -> None:
    with pytest.raises(ValueError, match=message):
        ExportStreamOptions(**kwargs)


# ---------------------------------------------------------------------------------------------
# snapshot and concurrency


def test_snapshot_is_not_changed_by_a_writer_committing_meanwhile(sample_copy: Path) -> None:
    reader = open_store(sample_copy, readonly=True)
    writer = open_store(sample_copy)
    before = encoded(export_all(reader))
    victim_capsule = next(c for c in export_all(reader)["capsules"] if c.observation_ids)

    def write_meanwhile() -> None:
        """Changes that touch every stream, including rows already streamed and rows ahead."""
        with write_transaction(writer):
            new = Observation(id="new-obs", kind="message", content="late", ts=0)
            insert_observation(writer, new)  # sorts first: before everything already read
            create_capsule(
                writer,
                Capsule(id="new-cap", type="session", intent="x", opened_at=0,
                        observation_ids=["new-obs", victim_capsule.observation_ids[0]]),
            )  # fmt: skip
            attach_observation(writer, victim_capsule.id, "new-obs")
            insert_summary(
                writer,
                Summary(id="new-sum", capsule_id="new-cap", content="s", confidence=0.1,
                        created_at=2**40, evidence_refs=["new-obs"]),
            )  # fmt: skip
            insert_pin(
                writer,
                Pin(id="new-pin", target_type="observation", target_id="new-obs", created_at=0),
            )
            delete_pin(writer, msgspec.msgpack.decode(before["pins"][-1], type=Pin).id)
            redact_observation(
                writer, msgspec.msgpack.decode(before["observations"][-1], type=Observation).id
            )

    with snapshot(reader):
        streams = {name: stream(reader) for name, stream in ENTITY_EXPORTS.items()}
        started = {name: [next(records)] for name, records in streams.items()}
        write_meanwhile()
        during = {name: started[name] + list(records) for name, records in streams.items()}
        # a stream started after the commit, still inside the snapshot
        late_start = list(export_capsules(reader))
    assert encoded(during) == before
    assert [msgspec.msgpack.encode(c) for c in late_start] == before["capsules"]

    # The writer really committed: a new export sees it, so the assertions above could fail.
    after = ids(export_all(reader))
    assert "new-obs" in after["observations"] and "new-cap" in after["capsules"]
    assert not reader.in_transaction
    writer.close()
    reader.close()


def test_capsule_stream_alone_is_consistent_outside_a_snapshot(sample_copy: Path) -> None:
    """A commit between reading the first capsule and the last one's links must not show up in
    the capsule stream, even outside a snapshot."""
    reader = open_store(sample_copy, readonly=True)
    writer = open_store(sample_copy)
    before = list(export_capsules(reader))
    last = before[-1]
    stream = export_capsules(reader)
    started = [next(stream)]
    with write_transaction(writer):
        insert_observation(writer, Observation(id="n", kind="message", content="n", ts=1))
        attach_observation(writer, last.id, "n")
        create_capsule(
            writer,
            Capsule(id="zz-late", type="session", intent="i", opened_at=last.opened_at,
                    observation_ids=["n"]),
        )  # fmt: skip
    assert started + list(stream) == before
    assert list(export_capsules(reader))[-1].id == "zz-late"  # the commit did happen
    writer.close()
    reader.close()


def test_without_a_snapshot_streams_can_disagree(sample_copy: Path) -> None:
    """The hazard snapshot() exists for: streams read one after another, unprotected."""
    reader = open_store(sample_copy, readonly=True)
    writer = open_store(sample_copy)
    observations = {o.id for o in export_observations(reader)}
    with write_transaction(writer):
        insert_observation(writer, Observation(id="n", kind="message", content="n", ts=1))
        create_capsule(
            writer, Capsule(id="nc", type="session", intent="i", opened_at=1, observation_ids=["n"])
        )
    capsules = list(export_capsules(reader))
    assert any(set(c.observation_ids) - observations for c in capsules)
    writer.close()
    reader.close()


def test_snapshot_ends_its_transaction_even_on_error_and_abandoned_streams(world: Path) -> None:
    conn = open_store(world, readonly=True)
    with pytest.raises(RuntimeError), snapshot(conn):
        next(export_observations(conn))
        assert conn.in_transaction
        raise RuntimeError("caller failed mid-export")
    assert not conn.in_transaction
    with snapshot(conn):
        for _ in export_capsules(conn):
            break  # abandon the stream mid-way
    assert not conn.in_transaction
    assert ids(export_all(conn)) == ALL_IDS  # the connection is still usable
    conn.close()


def test_snapshot_inside_a_callers_transaction_leaves_it_open(new_store) -> None:
    conn = new_store
    with write_transaction(conn):
        insert_observation(conn, Observation(id="x", kind="message", content="x", ts=1))
        with snapshot(conn):
            assert [o.id for o in export_observations(conn)] == ["x"]
        assert conn.in_transaction  # still the caller's to commit
    assert [o.id for o in export_observations(conn)] == ["x"]


# ---------------------------------------------------------------------------------------------
# read-only source and errors


def test_export_never_writes_to_the_source(sample_copy: Path) -> None:
    before_bytes = file_digest(sample_copy)
    before_rows = dump_tables(sample_copy)
    conn = open_store(sample_copy, readonly=True)
    export_all(conn)
    export_all(
        conn, ExportStreamOptions(scope_ids={"repoId": "repo-infra"}, include_references=True)
    )
    conn.close()
    assert file_digest(sample_copy) == before_bytes
    assert dump_tables(sample_copy) == before_rows


def test_a_bad_row_is_reported_with_file_entity_and_record(world: Path) -> None:
    raw = sqlite3.connect(world)
    raw.execute("UPDATE observations SET provenance = '{broken' WHERE id = 'o6'")
    raw.execute("UPDATE capsules SET scope_ids = 'nope' WHERE id = 'c3'")
    raw.commit()
    raw.close()
    conn = open_store(world, readonly=True)
    with pytest.raises(RecordError, match=r"kindling\.db: observation o6: column provenance") as e:
        list(export_observations(conn))
    assert (e.value.entity, e.value.record_id) == ("observation", "o6")
    with pytest.raises(RecordError, match=r"kindling\.db: capsule c3: column scope_ids"):
        list(export_capsules(conn))
    conn.close()


def test_a_link_that_is_not_text_is_reported_with_its_capsule(world: Path) -> None:
    raw = sqlite3.connect(world)
    (capsule_id,) = raw.execute("SELECT capsule_id FROM capsule_observations LIMIT 1").fetchone()
    raw.execute(
        "UPDATE capsule_observations SET observation_id = x'00ff' WHERE rowid = "
        "(SELECT min(rowid) FROM capsule_observations WHERE capsule_id = ?)",
        (capsule_id,),
    )
    raw.commit()
    raw.close()
    conn = open_store(world, readonly=True)
    with pytest.raises(RecordError, match=rf"kindling\.db: capsule {capsule_id}: a link") as e:
        list(export_capsules(conn))
    assert (e.value.entity, e.value.record_id) == ("capsules", capsule_id)
    conn.close()


def test_a_database_error_is_one_line_naming_the_file(world: Path) -> None:
    conn = open_store(world, readonly=True)
    stream = export_observations(conn)
    conn.close()
    with pytest.raises(StoreError, match=r"kindling\.db: cannot export observations"):
        next(stream)


# ---------------------------------------------------------------------------------------------
# memory


def fill_bulk(path: Path, n: int) -> None:
    """n observations (varied sizes, many equal timestamps), n/10 capsules of 10 links each,
    n/20 summaries and n/20 pins, written fast with executemany. Full-text indexing is switched
    off (export never reads it), which makes the fill several times faster."""
    conn = open_store(path)
    scope = '{"sessionId":"s","repoId":"r"}'
    with write_transaction(conn):
        for trigger in TRIGGERS:
            conn.execute(f"DROP TRIGGER {trigger}")
        conn.executemany(
            INSERT_OBSERVATION,
            (
                (f"obs-{i:07d}", "message", "x" * (i % 500), '{"v":1}', T + i // 3, scope, 0,
                 "s", "r", None, None)
                for i in range(n)
            ),
        )  # fmt: skip
        conn.executemany(
            INSERT_CAPSULE,
            ((f"cap-{c:07d}", "session", "i", "open", T + c, None, scope, "s", "r", None, None)
             for c in range(n // 10)),
        )  # fmt: skip
        conn.executemany(
            INSERT_LINK, ((f"cap-{i // 10:07d}", f"obs-{i:07d}", i % 10) for i in range(n))
        )
        conn.executemany(
            INSERT_SUMMARY,
            ((f"sum-{c:07d}", f"cap-{c:07d}", "s", 0.5, T + c, '["obs-0000000"]')
             for c in range(n // 20)),
        )  # fmt: skip
        conn.executemany(
            INSERT_PIN,
            ((f"pin-{p:07d}", "observation", "obs-0000000", None, T + p, None, scope, "s", "r",
              None, None)
             for p in range(n // 20)),
        )  # fmt: skip
    conn.close()


def peak_while_streaming(path: Path, opts: ExportStreamOptions) -> tuple[dict[str, int], int]:
    """Records streamed per entity and the Python heap's peak growth while streaming them."""
    conn = open_store(path, readonly=True)
    counts = dict.fromkeys(ENTITY_EXPORTS, 0)
    tracemalloc.start()
    try:
        baseline = tracemalloc.get_traced_memory()[0]
        with snapshot(conn):
            for name, stream in ENTITY_EXPORTS.items():
                for _ in stream(conn, opts):
                    counts[name] += 1
        peak = tracemalloc.get_traced_memory()[1] - baseline
    finally:
        tracemalloc.stop()
        conn.close()
    return counts, peak


@pytest.fixture(scope="module")
def bulk_databases(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    folder = tmp_path_factory.mktemp("bulk")
    small, large = folder / "small.db", folder / "large.db"
    fill_bulk(small, 20_000)
    fill_bulk(large, 200_000)
    return small, large


@pytest.mark.parametrize(
    "opts",
    [
        ExportStreamOptions(),
        ExportStreamOptions(scope_ids={"repoId": "r"}, include_references=True),
    ],
    ids=["everything", "closure"],
)
def test_memory_stays_flat_as_the_database_grows(
    bulk_databases: tuple[Path, Path], opts: ExportStreamOptions
) -> None:
    small, large = bulk_databases
    small_counts, small_peak = peak_while_streaming(small, opts)
    large_counts, large_peak = peak_while_streaming(large, opts)
    assert small_counts == {"observations": 20_000, "capsules": 2_000, "summaries": 1_000,
                            "pins": 1_000}  # fmt: skip
    assert large_counts == {"observations": 200_000, "capsules": 20_000, "summaries": 10_000,
                            "pins": 10_000}  # fmt: skip
    # Holding even the ids of 200,000 records would take several MiB; streaming takes ~10 KiB.
    assert large_peak < 256 * 1024, large_peak
    assert large_peak < small_peak + 64 * 1024, (small_peak, large_peak)
