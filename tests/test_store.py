"""The store creates, accepts and refuses databases exactly as `shared/kindling-schema.md` says,
and each write-path operation does what Kindling's store does."""

from __future__ import annotations

import hashlib
import re
import sqlite3
from pathlib import Path

import pytest

from conftest import make_v4_database
from kindling_bundle import Capsule, Observation, Pin, StoreError, Summary
from kindling_bundle.db.connection import create_store, open_store
from kindling_bundle.db.integrity import verify_import_integrity
from kindling_bundle.db.writes import (
    attach_observation,
    close_capsule,
    create_capsule,
    delete_pin,
    insert_observation,
    insert_pin,
    insert_summary,
    redact_observation,
)

# The facts of shared/kindling-schema.md, written out independently of our DDL:
# (name, declared type, not null, default, primary key position)
EXPECTED_COLUMNS = {
    "schema_migrations": [
        ("version", "INTEGER", 0, None, 1),
        ("name", "TEXT", 1, None, 0),
        ("applied_at", "INTEGER", 1, None, 0),
    ],
    "observations": [
        ("id", "TEXT", 0, None, 1),
        ("kind", "TEXT", 1, None, 0),
        ("content", "TEXT", 1, None, 0),
        ("provenance", "TEXT", 1, "'{}'", 0),
        ("ts", "INTEGER", 1, None, 0),
        ("scope_ids", "TEXT", 1, "'{}'", 0),
        ("redacted", "INTEGER", 1, "0", 0),
        ("session_id", "TEXT", 0, None, 0),
        ("repo_id", "TEXT", 0, None, 0),
        ("agent_id", "TEXT", 0, None, 0),
        ("user_id", "TEXT", 0, None, 0),
    ],
    "capsules": [
        ("id", "TEXT", 0, None, 1),
        ("type", "TEXT", 1, None, 0),
        ("intent", "TEXT", 1, None, 0),
        ("status", "TEXT", 1, "'open'", 0),
        ("opened_at", "INTEGER", 1, None, 0),
        ("closed_at", "INTEGER", 0, None, 0),
        ("scope_ids", "TEXT", 1, "'{}'", 0),
        ("session_id", "TEXT", 0, None, 0),
        ("repo_id", "TEXT", 0, None, 0),
        ("agent_id", "TEXT", 0, None, 0),
        ("user_id", "TEXT", 0, None, 0),
    ],
    "capsule_observations": [
        ("capsule_id", "TEXT", 1, None, 1),
        ("observation_id", "TEXT", 1, None, 2),
        ("seq", "INTEGER", 1, None, 0),
    ],
    "summaries": [
        ("id", "TEXT", 0, None, 1),
        ("capsule_id", "TEXT", 1, None, 0),
        ("content", "TEXT", 1, None, 0),
        ("confidence", "REAL", 1, None, 0),
        ("created_at", "INTEGER", 1, None, 0),
        ("evidence_refs", "TEXT", 1, "'[]'", 0),
    ],
    "pins": [
        ("id", "TEXT", 0, None, 1),
        ("target_type", "TEXT", 1, None, 0),
        ("target_id", "TEXT", 1, None, 0),
        ("reason", "TEXT", 0, None, 0),
        ("created_at", "INTEGER", 1, None, 0),
        ("expires_at", "INTEGER", 0, None, 0),
        ("scope_ids", "TEXT", 1, "'{}'", 0),
        ("session_id", "TEXT", 0, None, 0),
        ("repo_id", "TEXT", 0, None, 0),
        ("agent_id", "TEXT", 0, None, 0),
        ("user_id", "TEXT", 0, None, 0),
    ],
}

EXPECTED_INDEXES = {
    "idx_observations_ts": ("observations", [("ts", 1)], None),
    "idx_observations_kind": ("observations", [("kind", 0)], None),
    "idx_obs_session_ts": ("observations", [("session_id", 0), ("ts", 1)], "session_id"),
    "idx_obs_repo_ts": ("observations", [("repo_id", 0), ("ts", 1)], "repo_id"),
    "idx_capsules_opened_at": ("capsules", [("opened_at", 1)], None),
    "idx_caps_status_session": ("capsules", [("status", 0), ("session_id", 0)], "session_id"),
    "idx_caps_repo": ("capsules", [("repo_id", 0)], "repo_id"),
    "idx_capsule_observations_capsule": (
        "capsule_observations",
        [("capsule_id", 0), ("seq", 0)],
        None,
    ),
    "idx_capsule_observations_observation": (
        "capsule_observations",
        [("observation_id", 0)],
        None,
    ),
    "idx_summaries_capsule": ("summaries", [("capsule_id", 0)], None),
    "idx_summaries_created_at": ("summaries", [("created_at", 1)], None),
    "idx_pins_expires_at": ("pins", [("expires_at", 0)], "expires_at"),
    "idx_pins_target": ("pins", [("target_type", 0), ("target_id", 0)], None),
    "idx_pins_session_id": ("pins", [("session_id", 0)], "session_id"),
    "idx_pins_repo_id": ("pins", [("repo_id", 0)], "repo_id"),
}

EXPECTED_TRIGGERS = {
    "observations_fts_insert": ("observations", "INSERT"),
    "observations_fts_update": ("observations", "UPDATE"),
    "observations_fts_delete": ("observations", "DELETE"),
    "summaries_fts_insert": ("summaries", "INSERT"),
    "summaries_fts_update": ("summaries", "UPDATE"),
    "summaries_fts_delete": ("summaries", "DELETE"),
}


def _obs(oid: str, ts: int = 1000, **kw) -> Observation:
    fields = {"kind": "message", "content": f"content of {oid}", "scope_ids": {"sessionId": "s1"}}
    fields.update(kw)
    return Observation(id=oid, ts=ts, **fields)


def test_new_database_has_exactly_the_v5_schema(db_path: Path) -> None:
    open_store(db_path).close()
    conn = sqlite3.connect(db_path)
    for table, columns in EXPECTED_COLUMNS.items():
        info = conn.execute(f"PRAGMA table_info({table})").fetchall()
        got = [(name, ctype, notnull, default, pk) for _, name, ctype, notnull, default, pk in info]
        assert got == columns, table
    tables = {r[0] for r in conn.execute("SELECT name FROM sqlite_master WHERE type='table'")}
    assert set(EXPECTED_COLUMNS) | {"observations_fts", "summaries_fts"} <= tables

    indexes = {
        r[0]: r[1]
        for r in conn.execute(
            "SELECT name, tbl_name FROM sqlite_master WHERE type='index' AND sql IS NOT NULL"
        )
    }
    assert set(indexes) == set(EXPECTED_INDEXES)
    for name, (table, columns, partial_on) in EXPECTED_INDEXES.items():
        assert indexes[name] == table
        keys = conn.execute(f"PRAGMA index_xinfo({name})").fetchall()
        got = [(row[2], row[3]) for row in keys if row[5]]  # key columns: (name, desc)
        assert got == columns, name
        sql = conn.execute("SELECT sql FROM sqlite_master WHERE name=?", (name,)).fetchone()[0]
        where = re.search(r"WHERE\s+(\w+)\s+IS NOT NULL", sql)
        assert (where.group(1) if where else None) == partial_on, name

    triggers = {
        r[0]: (r[1], r[2])
        for r in conn.execute("SELECT name, tbl_name, sql FROM sqlite_master WHERE type='trigger'")
    }
    assert set(triggers) == set(EXPECTED_TRIGGERS)
    for name, (table, event) in EXPECTED_TRIGGERS.items():
        assert triggers[name][0] == table
        assert re.search(rf"AFTER\s+{event}\s+ON\s+{table}", triggers[name][1])
    assert "WHEN NEW.redacted = 0" in triggers["observations_fts_insert"][1]

    for fts, source in (("observations_fts", "observations"), ("summaries_fts", "summaries")):
        sql = conn.execute("SELECT sql FROM sqlite_master WHERE name=?", (fts,)).fetchone()[0]
        assert "fts5" in sql
        assert f"content='{source}'" in sql
        assert "content_rowid='rowid'" in sql
        assert "tokenize='porter unicode61'" in sql
        assert [r[1] for r in conn.execute(f"PRAGMA table_info({fts})")] == ["content"]

    fks = conn.execute("PRAGMA foreign_key_list(capsule_observations)").fetchall()
    assert sorted((r[2], r[3], r[4], r[6]) for r in fks) == [
        ("capsules", "capsule_id", "id", "CASCADE"),
        ("observations", "observation_id", "id", "CASCADE"),
    ]
    fks = conn.execute("PRAGMA foreign_key_list(summaries)").fetchall()
    assert [(r[2], r[3], r[4], r[6]) for r in fks] == [("capsules", "capsule_id", "id", "CASCADE")]
    assert conn.execute("PRAGMA foreign_key_list(pins)").fetchall() == []
    unique = [r for r in conn.execute("PRAGMA index_list(summaries)") if r[2] and r[3] == "u"]
    assert len(unique) == 1

    assert conn.execute("PRAGMA user_version").fetchone()[0] == 5
    assert conn.execute("PRAGMA journal_mode").fetchone()[0] == "wal"
    rows = conn.execute("SELECT version, name FROM schema_migrations ORDER BY version").fetchall()
    assert rows == [
        (1, "001_init"),
        (2, "002_fts"),
        (3, "003_indexes"),
        (4, "004_denormalize_scopes"),
        (5, "005_pragma_user_version"),
    ]


@pytest.mark.parametrize(
    ("statement", "message"),
    [
        ("INSERT INTO observations (id, kind, content, ts) VALUES ('x', 'bogus', '', 1)", "CHECK"),
        ("INSERT INTO capsules (id, type, intent, opened_at) VALUES ('c', 'x', '', 1)", "CHECK"),
        (
            "INSERT INTO capsules (id, type, intent, status, opened_at) "
            "VALUES ('c', 'session', '', 'gone', 1)",
            "CHECK",
        ),
        (
            "INSERT INTO pins (id, target_type, target_id, created_at) VALUES ('p', 'x', 't', 1)",
            "CHECK",
        ),
        (
            "INSERT INTO capsule_observations VALUES ('nope', 'nope', 0)",
            "FOREIGN KEY",
        ),
    ],
)
def test_constraints_are_enforced(new_store, statement: str, message: str) -> None:
    with pytest.raises(sqlite3.IntegrityError, match=message):
        new_store.execute(statement)


def test_connection_settings(new_store) -> None:
    assert new_store.execute("PRAGMA foreign_keys").fetchone()[0] == 1
    assert new_store.execute("PRAGMA busy_timeout").fetchone()[0] == 5000
    assert new_store.execute("PRAGMA synchronous").fetchone()[0] == 1  # NORMAL
    assert new_store.generation == 5


def test_v4_database_opens_read_only_without_changing_a_byte(tmp_path: Path) -> None:
    path = tmp_path / "v4.db"
    make_v4_database(path)
    conn = open_store(path)
    insert_observation(conn, _obs("o1"))
    conn.close()
    before = hashlib.sha256(path.read_bytes()).hexdigest()
    siblings = sorted(p.name for p in tmp_path.iterdir())

    ro = open_store(path, readonly=True)
    assert ro.generation == 4
    assert ro.execute("SELECT id FROM observations").fetchall() == [("o1",)]
    with pytest.raises(sqlite3.OperationalError):
        ro.execute("DELETE FROM observations")
    ro.close()

    assert hashlib.sha256(path.read_bytes()).hexdigest() == before
    # SQLite lets a reader of a WAL database create the -wal/-shm side files; nothing is written
    # into the log, so the next writer sees exactly the same database.
    assert siblings == ["v4.db"]
    wal = tmp_path / "v4.db-wal"
    assert not wal.exists() or wal.stat().st_size == 0
    conn = sqlite3.connect(path)
    assert conn.execute("PRAGMA user_version").fetchone()[0] == 0
    assert conn.execute("SELECT count(*) FROM schema_migrations").fetchone()[0] == 4


def test_read_only_open_of_missing_file_is_refused_and_creates_nothing(tmp_path: Path) -> None:
    with pytest.raises(StoreError, match="no such database"):
        open_store(tmp_path / "absent.db", readonly=True)
    assert not (tmp_path / "absent.db").exists()


def test_refuses_a_file_that_is_not_sqlite(tmp_path: Path) -> None:
    path = tmp_path / "notes.txt"
    path.write_text("hello, I am not a database\n" * 10)
    with pytest.raises(StoreError, match=r"notes\.txt: not a SQLite database"):
        open_store(path)
    assert path.read_text().startswith("hello")


def test_refuses_a_sqlite_database_without_kindling_tables(tmp_path: Path) -> None:
    path = tmp_path / "other.db"
    conn = sqlite3.connect(path)
    conn.execute("CREATE TABLE things (x)")
    conn.commit()
    conn.close()
    with pytest.raises(StoreError, match="not a Kindling database"):
        open_store(path)


def test_refuses_a_newer_schema(db_path: Path) -> None:
    open_store(db_path).close()
    conn = sqlite3.connect(db_path)
    conn.execute("PRAGMA user_version = 6")
    conn.close()
    with pytest.raises(StoreError, match="schema version 6 is newer"):
        open_store(db_path)


def test_refuses_a_corrupt_database(db_path: Path) -> None:
    conn = open_store(db_path)
    conn.execute("PRAGMA wal_checkpoint(TRUNCATE)")
    conn.close()
    data = bytearray(db_path.read_bytes())
    data[100:4096] = b"\xff" * (4096 - 100)  # wreck the schema page after the header
    db_path.write_bytes(bytes(data))
    with pytest.raises(StoreError, match=r"kindling\.db"):
        open_store(db_path)


def _fts_rowids(conn, table: str) -> set[int]:
    return {
        r[0]
        for r in conn.execute(
            f"SELECT rowid FROM {table}_fts WHERE {table}_fts MATCH ?", ("content",)
        )
    }


def test_insert_observation_fills_scope_columns_and_fts(new_store) -> None:
    obs = _obs(
        "o1",
        provenance={"tool": "Bash", "nested": {"a": [1, 2.5, None, True]}, "score": 1e21},
        scope_ids={"sessionId": "s", "repoId": "r", "agentId": "a", "userId": "u", "taskId": "t"},
    )
    insert_observation(new_store, obs)
    row = new_store.execute(
        "SELECT provenance, scope_ids, session_id, repo_id, agent_id, user_id FROM observations"
    ).fetchone()
    assert row == (
        '{"tool":"Bash","nested":{"a":[1,2.5,null,true]},"score":1e+21}',
        '{"sessionId":"s","repoId":"r","agentId":"a","userId":"u","taskId":"t"}',
        "s",
        "r",
        "a",
        "u",
    )
    assert len(_fts_rowids(new_store, "observations")) == 1


def test_redacted_observation_is_never_indexed(new_store) -> None:
    insert_observation(new_store, _obs("o1", content="[redacted]", redacted=True))
    assert new_store.execute("SELECT count(*) FROM observations_fts_docsize").fetchone()[0] == 0


def test_capsule_lifecycle_attach_and_close(new_store) -> None:
    for i in range(3):
        insert_observation(new_store, _obs(f"o{i}", ts=i))
    create_capsule(
        new_store,
        Capsule(id="c1", type="session", intent="fix bug", opened_at=0, observation_ids=["o0"]),
    )
    assert attach_observation(new_store, "c1", "o1") == 1
    assert attach_observation(new_store, "c1", "o2") == 2
    close_capsule(new_store, "c1", 99)
    assert new_store.execute("SELECT status, closed_at FROM capsules").fetchone() == ("closed", 99)
    links = new_store.execute(
        "SELECT observation_id, seq FROM capsule_observations ORDER BY seq"
    ).fetchall()
    assert links == [("o0", 0), ("o1", 1), ("o2", 2)]
    with pytest.raises(StoreError, match="no such open capsule"):
        close_capsule(new_store, "c1", 100)


def test_create_capsule_is_atomic(new_store) -> None:
    insert_observation(new_store, _obs("o1"))
    capsule = Capsule(
        id="c1", type="session", intent="x", opened_at=0, observation_ids=["o1", "missing"]
    )
    with pytest.raises(sqlite3.IntegrityError):
        create_capsule(new_store, capsule)
    assert new_store.execute("SELECT count(*) FROM capsules").fetchone()[0] == 0
    assert new_store.execute("SELECT count(*) FROM capsule_observations").fetchone()[0] == 0


def test_summary_and_pins(new_store) -> None:
    insert_observation(new_store, _obs("o1"))
    create_capsule(
        new_store, Capsule(id="c1", type="session", intent="x", opened_at=0, observation_ids=["o1"])
    )
    insert_summary(
        new_store,
        Summary(
            id="s1",
            capsule_id="c1",
            content="summary content",
            confidence=0.5,
            created_at=5,
            evidence_refs=["o1"],
        ),
    )
    assert new_store.execute("SELECT evidence_refs FROM summaries").fetchone() == ('["o1"]',)
    assert len(_fts_rowids(new_store, "summaries")) == 1
    with pytest.raises(sqlite3.IntegrityError):  # one summary per capsule
        insert_summary(
            new_store,
            Summary(id="s2", capsule_id="c1", content="again", confidence=0.5, created_at=6),
        )
    insert_pin(
        new_store,
        Pin(
            id="p1",
            target_type="summary",
            target_id="s1",
            created_at=7,
            expires_at=100,
            scope_ids={"repoId": "r"},
        ),
    )
    assert new_store.execute("SELECT repo_id, reason FROM pins").fetchone() == ("r", None)
    assert delete_pin(new_store, "p1") is True
    assert delete_pin(new_store, "p1") is False


def test_redaction_removes_fts_entry_and_keeps_every_reference(new_store) -> None:
    insert_observation(new_store, _obs("o1", content="secret token value"))
    create_capsule(
        new_store, Capsule(id="c1", type="session", intent="x", opened_at=0, observation_ids=["o1"])
    )
    insert_pin(new_store, Pin(id="p1", target_type="observation", target_id="o1", created_at=1))
    assert (
        new_store.execute(
            "SELECT count(*) FROM observations_fts WHERE observations_fts MATCH 'secret'"
        ).fetchone()[0]
        == 1
    )

    redact_observation(new_store, "o1")

    assert new_store.execute("SELECT content, redacted FROM observations").fetchone() == (
        "[redacted]",
        1,
    )
    assert (
        new_store.execute(
            "SELECT count(*) FROM observations_fts WHERE observations_fts MATCH 'secret'"
        ).fetchone()[0]
        == 0
    )
    assert new_store.execute("SELECT count(*) FROM observations_fts_docsize").fetchone()[0] == 0
    assert new_store.execute("SELECT observation_id, seq FROM capsule_observations").fetchall() == [
        ("o1", 0)
    ]
    assert new_store.execute("SELECT target_id FROM pins").fetchall() == [("o1",)]
    with pytest.raises(StoreError, match="no such observation"):
        redact_observation(new_store, "missing")


def test_redacting_twice_is_harmless_to_the_index(new_store) -> None:
    insert_observation(new_store, _obs("o1", content="secret token value"))
    insert_observation(new_store, _obs("o2", content="other words here"))
    redact_observation(new_store, "o1")
    redact_observation(new_store, "o1")
    report = verify_import_integrity(new_store)
    assert report.ok, report.problems
    assert (
        new_store.execute(
            "SELECT count(*) FROM observations_fts WHERE observations_fts MATCH 'other'"
        ).fetchone()[0]
        == 1
    )


def _file_header_and_mode(path: Path) -> tuple[bytes, int]:
    with path.open("rb") as handle:
        header = handle.read(100)
    return header[18:20], path.stat().st_mode & 0o777  # write/read version: 2 means WAL


def test_create_store_publishes_a_database_like_open_store_makes(tmp_path: Path) -> None:
    made, reference = tmp_path / "made.db", tmp_path / "reference.db"
    with create_store(made) as conn:
        assert not made.exists()  # nothing at the path until the block is done
        insert_observation(conn, _obs("o1"))
        assert conn.path == str(made)
    open_store(reference).close()
    assert _file_header_and_mode(made) == _file_header_and_mode(reference)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["made.db", "reference.db"]
    conn = open_store(made)
    assert conn.execute("PRAGMA journal_mode").fetchone()[0] == "wal"
    assert conn.execute("SELECT id FROM observations").fetchall() == [("o1",)]
    assert verify_import_integrity(conn).ok
    conn.close()


def test_create_store_leaves_nothing_when_the_block_fails(tmp_path: Path) -> None:
    path = tmp_path / "new.db"
    with pytest.raises(RuntimeError, match="boom"), create_store(path) as conn:
        insert_observation(conn, _obs("o1"))
        raise RuntimeError("boom")
    assert list(tmp_path.iterdir()) == []


def test_create_store_never_replaces_a_file(tmp_path: Path) -> None:
    path = tmp_path / "new.db"
    path.write_bytes(b"precious")
    with pytest.raises(StoreError, match="already exists"), create_store(path):
        pass
    late = tmp_path / "late.db"
    with pytest.raises(StoreError, match="another program created this file"), create_store(late):
        late.write_bytes(b"theirs")
    assert late.read_bytes() == b"theirs"
    assert path.read_bytes() == b"precious"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["late.db", "new.db"]
