"""Undoing what the undo journal (`db.journal`) recorded: newest entry first, in short steps.

The journal's table is described here, where it is read back. An entry is one row changed
(`insert`, `update`, `delete`), or a run of rows one statement inserted (`inserts`: its first
rowid in `row`, its last in `a0`, the rows' keys as a JSON array in `a1`). Undoing an entry is
done only where nobody changed the row since: an inserted row is deleted if it still has the
key inserted, an updated row gets its old values back if it still has the new ones, a deleted
row is put back at its rowid if nothing took its place. Undo runs in write transactions sized
by `Pace` (so Kindling's writers keep their turn), each removing the entries it undid, so an
interrupted undo is simply run again.
"""

from __future__ import annotations

import sqlite3
from dataclasses import dataclass
from typing import Any

from kindling_bundle.db.connection import savepoint
from kindling_bundle.db.importer import FTS_OF_TABLE, ensure_fts_entries, ensure_fts_entry
from kindling_bundle.db.pacing import Pace
from kindling_bundle.db.rows import (
    CAPSULE_COLUMNS,
    LINK_COLUMNS,
    OBSERVATION_COLUMNS,
    PIN_COLUMNS,
    SUMMARY_COLUMNS,
    column_names,
)
from kindling_bundle.errors import StoreError

UNDO_TABLE = "kindling_bundle_undo"
LINKS = "capsule_observations"

COLUMNS: dict[str, tuple[str, ...]] = {
    table: column_names(columns)
    for table, columns in (
        ("observations", OBSERVATION_COLUMNS),
        ("capsules", CAPSULE_COLUMNS),
        (LINKS, LINK_COLUMNS),
        ("summaries", SUMMARY_COLUMNS),
        ("pins", PIN_COLUMNS),
    )
}
KEYS: dict[str, tuple[str, ...]] = {
    table: ("capsule_id", "observation_id") if table == LINKS else ("id",) for table in COLUMNS
}
WIDTH = max(len(columns) for columns in COLUMNS.values())


@dataclass
class UndoCounts:
    """What undoing an import did."""

    removed: int = 0
    """Rows the import had inserted, deleted again."""
    restored: int = 0
    """Rows the import had updated or deleted, put back as they were."""
    kept: int = 0
    """Rows the import had updated that another writer changed since: left as they are."""


def table_exists(conn: sqlite3.Connection, name: str) -> bool:
    row = conn.execute("SELECT 1 FROM sqlite_master WHERE type = 'table' AND name = ?", (name,))
    return row.fetchone() is not None


def undo(conn: sqlite3.Connection) -> UndoCounts:
    """Undo the journaled changes, newest first, in short transactions; the journal entries go
    with the changes they undo. Leaves the (emptied) journal tables for `journal.drop`."""
    counts = UndoCounts()
    if not table_exists(conn, UNDO_TABLE):
        return counts
    pace = Pace()
    columns = [f"b{i}" for i in range(WIDTH)] + [f"a{i}" for i in range(WIDTH)]
    select = f"SELECT seq, tbl, op, row, {', '.join(columns)} FROM {UNDO_TABLE}"
    while True:
        with pace.transaction(conn) as step:
            entries = conn.execute(f"{select} ORDER BY seq DESC LIMIT ?", (step.size,)).fetchall()
            if not entries:
                return counts
            step.count = _undo_some(conn, entries, step.size, counts)


def _undo_some(
    conn: sqlite3.Connection, entries: list[tuple[Any, ...]], rows: int, counts: UndoCounts
) -> int:
    """Undo entries (newest first) up to about `rows` rows, and remove the entries undone; a
    run of inserted rows larger than what is left is undone from its end, and shortened."""
    done = start = 0
    while start < len(entries) and done < rows:
        if entries[start][2] == "inserts":
            undone, finished = _undo_run(conn, entries[start], rows - done, counts)
            done += undone
            if not finished:
                conn.execute(f"DELETE FROM {UNDO_TABLE} WHERE seq > ?", (entries[start][0],))
                return done
            start += 1
            continue
        end = start + 1
        while (
            end < len(entries)
            and entries[end][1:3] == entries[start][1:3]
            and done + end - start < rows
        ):
            end += 1
        _undo_entries(conn, entries[start:end], counts)
        done += end - start
        start = end
    conn.execute(f"DELETE FROM {UNDO_TABLE} WHERE seq >= ?", (entries[start - 1][0],))
    return done


def _undo_run(
    conn: sqlite3.Connection, entry: tuple[Any, ...], most: int, counts: UndoCounts
) -> tuple[int, bool]:
    """Undo the last `most` rows of a run of inserted rows (those still there with a key the
    run inserted); (rows looked at, whether the run is all undone)."""
    seq, table, first = entry[0], str(entry[1]), entry[3]
    last, keys = entry[4 + WIDTH], entry[5 + WIDTH]
    low = max(first, last - most + 1)
    (key,) = KEYS[table]
    ours = (
        f"SELECT t.rowid FROM {table} AS t WHERE t.rowid BETWEEN ? AND ? "
        f"AND t.{key} IN (SELECT value FROM json_each(?))"
    )
    arguments = (low, last, keys)
    ensure_fts_entries(conn, table, f"t.rowid IN ({ours})", arguments)
    if table == "capsules":  # their links were not journaled: they go with their capsule
        counts.removed += conn.execute(
            f"DELETE FROM {LINKS} WHERE capsule_id IN "
            f"(SELECT id FROM capsules WHERE rowid IN ({ours}))",
            arguments,
        ).rowcount
    counts.removed += conn.execute(
        f"DELETE FROM {table} WHERE rowid IN ({ours})", arguments
    ).rowcount
    if low > first:
        conn.execute(f"UPDATE {UNDO_TABLE} SET a0 = ? WHERE seq = ?", (low - 1, seq))
    return last - low + 1, low == first


def _undo_entries(
    conn: sqlite3.Connection, entries: list[tuple[Any, ...]], counts: UndoCounts
) -> None:
    """Undo entries of one table and operation, newest first."""
    table, op = str(entries[0][1]), entries[0][2]
    columns, keys = COLUMNS[table], KEYS[table]
    if op == "insert":
        ours = (
            f"SELECT u.row FROM {UNDO_TABLE} AS u JOIN {table} AS t ON t.rowid = u.row AND "
            + " AND ".join(f"t.{k} IS u.a{i}" for i, k in enumerate(keys))
            + " WHERE u.seq BETWEEN ? AND ?"
        )
        arguments = (entries[-1][0], entries[0][0])
        ensure_fts_entries(conn, table, f"t.rowid IN ({ours})", arguments)
        deleted = conn.execute(f"DELETE FROM {table} WHERE rowid IN ({ours})", arguments).rowcount
        counts.removed += deleted
        return
    n = len(columns)
    for entry in entries:
        rowid, before, after = entry[3], entry[4 : 4 + n], entry[4 + WIDTH : 4 + WIDTH + n]
        if op == "update":
            same = " AND ".join(f"{c} IS ?" for c in columns)
            current = conn.execute(
                f"SELECT rowid FROM {table} WHERE rowid = ? AND {same}", (rowid, *after)
            ).fetchone()
            if current is None:
                counts.kept += 1
                continue
            fts = FTS_OF_TABLE.get(table)
            if fts is not None:
                ensure_fts_entry(conn, fts, rowid, after[columns.index("content")])
            assigned = ", ".join(f"{c} = ?" for c in columns)
            conn.execute(f"UPDATE {table} SET {assigned} WHERE rowid = ?", (*before, rowid))
            counts.restored += 1
        elif op == "delete":
            free = " AND ".join(f"{k} IS ?" for k in keys)
            key_values = [before[columns.index(k)] for k in keys]
            taken = conn.execute(
                f"SELECT 1 FROM {table} WHERE rowid = ? OR ({free})", (rowid, *key_values)
            ).fetchone()
            if taken is not None:
                counts.kept += 1
                continue
            try:
                with savepoint(conn, "kindling_undo"):
                    conn.execute(
                        f"INSERT INTO {table} (rowid, {', '.join(columns)}) "
                        f"VALUES (?, {', '.join('?' * n)})",
                        (rowid, *before),
                    )
            except sqlite3.IntegrityError:  # what it referenced is gone since
                counts.kept += 1
                continue
            counts.restored += 1
        else:
            raise StoreError(
                f"{UNDO_TABLE}: entry {entry[0]} has an operation this version does not know "
                f"({op!r}): recover with the version of kindling-bundle that wrote it"
            )
