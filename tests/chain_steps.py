"""What happens to a Kindling database between two backups, through the store's write path
(kindling_bundle.db.writes), for the tests of increments and archives; and exact copies and
comparisons of databases."""

from __future__ import annotations

import random
import sqlite3
from pathlib import Path

from kindling_bundle.db.connection import open_store, write_transaction
from kindling_bundle.db.writes import (
    attach_observation,
    close_capsule,
    create_capsule,
    delete_pin,
    insert_observation,
    insert_pin,
    insert_summary,
    redact_observation,
    replace_summary,
)
from kindling_bundle.records import Capsule, Observation, Pin, Summary

DAY = 86_400_000
T0 = 1_770_000_000_000  # 2026-02-02: after the sample's records


def mutate(db: Path, step: int) -> dict[str, int]:
    """Step `step` of a working day: new observations (some with old timestamps, as an import
    or merge brings them), links to an open capsule and a new capsule, redactions, a capsule
    closed, a summary replaced and one added, a pin deleted and one added. What was done, by
    kind (every kind happens at every step, so each increment carries each kind of change)."""
    rng = random.Random(step)
    now = T0 + step * DAY
    done = dict.fromkeys(
        ("inserted", "redacted", "closed", "replaced", "summarised", "unpinned", "pinned"), 0
    )
    conn = open_store(db)
    try:
        with write_transaction(conn):
            new_ids = []
            for i in range(12):
                ts = now + i if i % 4 else now - 300 * DAY  # every fourth one with an old time
                oid = f"obs-{step}-{i}"
                kind = rng.choice(["message", "tool_call", "command", "error"])
                insert_observation(
                    conn,
                    Observation(
                        id=oid,
                        kind=kind,
                        content=f"step {step} observation {i}: " + "ünïcode " * rng.randint(1, 9),
                        provenance={"step": step, "score": rng.random(), "nested": {"i": i}},
                        ts=ts,
                        scope_ids={"sessionId": f"step-{step}", "taskId": "t"},
                    ),
                )
                new_ids.append(oid)
            done["inserted"] = len(new_ids)
            open_capsule = conn.execute(
                "SELECT id FROM capsules WHERE status = 'open' ORDER BY id LIMIT 1"
            ).fetchone()
            if open_capsule is not None:
                for oid in new_ids[:3]:
                    attach_observation(conn, open_capsule[0], oid)
            create_capsule(
                conn,
                Capsule(
                    id=f"cap-{step}",
                    type="session",
                    intent=f"work of step {step}",
                    opened_at=now,
                    scope_ids={"sessionId": f"step-{step}"},
                    observation_ids=new_ids[3:8],
                ),
            )
            for (oid,) in conn.execute(
                "SELECT id FROM observations WHERE redacted = 0 ORDER BY id LIMIT 3 OFFSET ?",
                (step * 7,),
            ).fetchall():
                redact_observation(conn, oid)
                done["redacted"] += 1
            if open_capsule is not None:
                close_capsule(conn, open_capsule[0], now + 1000)
                done["closed"] = 1
            (sid, capsule_id) = conn.execute(  # one no pin names: a pin would dangle
                "SELECT id, capsule_id FROM summaries AS s WHERE NOT EXISTS (SELECT 1 FROM pins "
                "WHERE target_type = 'summary' AND target_id = s.id) ORDER BY id LIMIT 1 OFFSET ?",
                (step,),
            ).fetchone()
            replace_summary(
                conn,
                Summary(
                    id=f"sum-{step}-replacing-{sid[:8]}",
                    capsule_id=capsule_id,
                    content=f"a better summary, written at step {step}",
                    confidence=0.75,
                    created_at=now + 2000,
                    evidence_refs=new_ids[:2],
                ),
            )
            done["replaced"] = 1
            insert_summary(
                conn,
                Summary(
                    id=f"sum-of-cap-{step}",
                    capsule_id=f"cap-{step}",
                    content=f"what step {step} did",
                    confidence=0.5,
                    created_at=now + 3000,
                ),
            )
            done["summarised"] = 1
            (pid,) = conn.execute("SELECT id FROM pins ORDER BY id LIMIT 1").fetchone()
            assert delete_pin(conn, pid)
            done["unpinned"] = 1
            insert_pin(
                conn,
                Pin(
                    id=f"pin-{step}",
                    target_type="observation",
                    target_id=new_ids[0],
                    reason="remember this",
                    created_at=now + 4000,
                    scope_ids={"sessionId": f"step-{step}"},
                ),
            )
            done["pinned"] = 1
    finally:
        conn.close()
    return done


def copy_database(source: Path, dest: Path) -> Path:
    """An exact copy of a database as it is now (SQLite's backup API: the write-ahead log
    included)."""
    src = sqlite3.connect(f"file:{source}?mode=ro", uri=True)
    dst = sqlite3.connect(dest)
    try:
        src.backup(dst)
    finally:
        src.close()
        dst.close()
    return dest


# Every table's rows in primary-key order, every column (rowids aside: they are not data, and a
# source's rowids follow its insertion history, not the export order).
DATA_TABLES = {
    "observations": "id",
    "capsules": "id",
    "capsule_observations": "capsule_id, seq",
    "summaries": "id",
    "pins": "id",
}


def table_rows(path: Path) -> dict[str, list[tuple]]:
    """Every row of a database, for row-for-row comparisons, and what its full-text indexes
    hold (each indexed row by id, with the text it was indexed with)."""
    conn = sqlite3.connect(f"file:{path}?mode=ro", uri=True)
    try:
        rows = {
            table: conn.execute(f"SELECT * FROM {table} ORDER BY {key}").fetchall()
            for table, key in DATA_TABLES.items()
        }
        rows["schema_migrations"] = conn.execute(
            "SELECT version, name FROM schema_migrations ORDER BY version"
        ).fetchall()
        rows["user_version"] = conn.execute("PRAGMA user_version").fetchall()
        rows["observations_fts"] = conn.execute(
            "SELECT o.id, o.content FROM observations_fts_docsize d "
            "JOIN observations o ON o.rowid = d.id ORDER BY o.id"
        ).fetchall()
        rows["summaries_fts"] = conn.execute(
            "SELECT s.id, s.content FROM summaries_fts_docsize d "
            "JOIN summaries s ON s.rowid = d.id ORDER BY s.id"
        ).fetchall()
    finally:
        conn.close()
    return rows
