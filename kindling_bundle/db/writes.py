"""The write path: each operation Kindling's store performs, each atomic on its own and safe to
compose inside a caller's transaction (they use savepoints, never COMMIT)."""

from __future__ import annotations

import sqlite3
from collections.abc import Iterable

from kindling_bundle.db.connection import savepoint
from kindling_bundle.db.rows import (
    CAPSULE_COLUMNS,
    LINK_COLUMNS,
    OBSERVATION_COLUMNS,
    PIN_COLUMNS,
    SUMMARY_COLUMNS,
    capsule_values,
    link_values,
    observation_values,
    pin_values,
    summary_values,
)
from kindling_bundle.errors import StoreError
from kindling_bundle.records import REDACTED_CONTENT, Capsule, Observation, Pin, Summary

INSERT_OBSERVATION = (
    f"INSERT INTO observations ({OBSERVATION_COLUMNS}) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)"
)
INSERT_CAPSULE = (
    f"INSERT INTO capsules ({CAPSULE_COLUMNS}) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)"
)
INSERT_LINK = f"INSERT INTO capsule_observations ({LINK_COLUMNS}) VALUES (?, ?, ?)"
INSERT_SUMMARY = f"INSERT INTO summaries ({SUMMARY_COLUMNS}) VALUES (?, ?, ?, ?, ?, ?)"
INSERT_PIN = f"INSERT INTO pins ({PIN_COLUMNS}) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)"


def insert_observation(conn: sqlite3.Connection, obs: Observation) -> None:
    """Insert one observation; the FTS trigger indexes it unless it is redacted."""
    conn.execute(INSERT_OBSERVATION, observation_values(obs))


def insert_observations(conn: sqlite3.Connection, observations: Iterable[Observation]) -> None:
    """Insert many observations with one prepared statement (the generator's bulk path)."""
    with savepoint(conn):
        conn.executemany(INSERT_OBSERVATION, (observation_values(o) for o in observations))


def create_capsule(conn: sqlite3.Connection, capsule: Capsule) -> None:
    """Insert a capsule and its links, seq 0..n-1 in `observation_ids` order, together."""
    with savepoint(conn):
        conn.execute(INSERT_CAPSULE, capsule_values(capsule))
        conn.executemany(INSERT_LINK, link_values([capsule]))


def close_capsule(conn: sqlite3.Connection, capsule_id: str, closed_at: int) -> None:
    """Mark an open capsule closed."""
    cursor = conn.execute(
        "UPDATE capsules SET status = 'closed', closed_at = ? WHERE id = ? AND status = 'open'",
        (closed_at, capsule_id),
    )
    if cursor.rowcount != 1:
        raise StoreError(f"capsule {capsule_id}: no such open capsule")


def attach_observation(conn: sqlite3.Connection, capsule_id: str, observation_id: str) -> int:
    """Append an observation to a capsule with the next `seq`; returns that seq."""
    with savepoint(conn):
        seq: int = conn.execute(
            "SELECT COALESCE(MAX(seq) + 1, 0) FROM capsule_observations WHERE capsule_id = ?",
            (capsule_id,),
        ).fetchone()[0]
        conn.execute(INSERT_LINK, (capsule_id, observation_id, seq))
    return seq


def insert_summary(conn: sqlite3.Connection, summary: Summary) -> None:
    """Insert the summary of a capsule (one per capsule)."""
    conn.execute(INSERT_SUMMARY, summary_values(summary))


def replace_summary(conn: sqlite3.Connection, summary: Summary) -> None:
    """Give a capsule a new summary in place of the one it has (a capsule has at most one):
    the old row and its FTS entry go, the new one is inserted, together."""
    with savepoint(conn):
        conn.execute("DELETE FROM summaries WHERE capsule_id = ?", (summary.capsule_id,))
        conn.execute(INSERT_SUMMARY, summary_values(summary))


def insert_pin(conn: sqlite3.Connection, pin: Pin) -> None:
    """Insert a pin. Pins have no foreign key: the caller checks that the target exists."""
    conn.execute(INSERT_PIN, pin_values(pin))


def delete_pin(conn: sqlite3.Connection, pin_id: str) -> bool:
    """Delete a pin; returns whether it existed."""
    return conn.execute("DELETE FROM pins WHERE id = ?", (pin_id,)).rowcount == 1


def redact_observation(conn: sqlite3.Connection, observation_id: str) -> None:
    """Replace an observation's content by the redaction marker. The row, its capsule links,
    summaries' evidence and pins all stay; the update trigger drops its FTS entry.

    Redacting twice is a no-op: updating a row that has no FTS entry would make Kindling's
    update trigger issue an FTS 'delete' for an entry that is not there, which silently
    corrupts the index statistics."""
    cursor = conn.execute(
        "UPDATE observations SET content = ?, redacted = 1 WHERE id = ? AND redacted = 0",
        (REDACTED_CONTENT, observation_id),
    )
    if cursor.rowcount == 1:
        return
    exists = conn.execute("SELECT 1 FROM observations WHERE id = ?", (observation_id,)).fetchone()
    if exists is None:
        raise StoreError(f"observation {observation_id}: no such observation")
