"""Rows staged in the importing connection's TEMP tables before a step takes the write lock.

Binding every value of a step is Python work; done here, in the connection's own temporary
database (in memory), it is done without the write lock, and the step then moves each run of
new records with one INSERT ... SELECT (`db.live`). The TEMP tables have no column types, so
the values reach the real tables exactly as if bound to them.
"""

from __future__ import annotations

import sqlite3
from typing import Any

from kindling_bundle.db.importer import insert_rows
from kindling_bundle.db.rows import (
    CAPSULE_COLUMNS,
    LINK_COLUMNS,
    OBSERVATION_COLUMNS,
    PIN_COLUMNS,
    SUMMARY_COLUMNS,
    column_names,
    link_values,
)
from kindling_bundle.records import Capsule, Record, entity_of

STAGED_PER_STATEMENT = 500
"""Rows per INSERT statement into a staging table: each statement lets other threads take
Python's global lock, and one that runs Python long (the planner decoding a frame) holds it
until the interpreter asks it to let go, so one statement per row makes staging wait its turn
thousands of times a step."""


class Stage:
    """The staging tables of one connection (module docstring)."""

    def __init__(self, conn: sqlite3.Connection):
        self.conn = conn
        self._made: set[str] = set()

    def put(
        self, runs: dict[int, list[tuple[Record, tuple[Any, ...]]]]
    ) -> dict[int, tuple[int, int, int, int]]:
        """Stage runs of new records of one type, each given as (record, its column values) by
        a key of the caller's; by that key, the rowids its rows (and, for capsules, its links)
        take in the staging tables."""
        staged: dict[int, tuple[int, int, int, int]] = {}
        self.conn.execute("BEGIN")  # the temporary database only: no lock on the real one
        try:
            for start, run in runs.items():
                table = entity_of(run[0][0])  # the entity's name is its table's
                rows = self._put(table, [values for _, values in run])
                links = (0, -1)
                capsules = [record for record, _ in run if isinstance(record, Capsule)]
                if capsules:
                    links = self._put("capsule_observations", link_values(capsules))
                staged[start] = (*rows, *links)
        finally:
            self.conn.execute("COMMIT")
        return staged

    def _put(self, table: str, rows: list[tuple[Any, ...]]) -> tuple[int, int]:
        name = f"kindling_stage_{table}"
        width = len(column_names(_STAGED_COLUMNS[table]))
        if name not in self._made:
            columns = ", ".join(f"c{i}" for i in range(width))
            self.conn.execute(f"CREATE TEMP TABLE IF NOT EXISTS {name} ({columns})")
            self._made.add(name)
        first = self.conn.execute(f"SELECT coalesce(max(rowid), 0) + 1 FROM temp.{name}")
        low = int(first.fetchone()[0])
        sql = f"INSERT INTO temp.{name} VALUES ({', '.join('?' * width)})"
        insert_rows(self.conn, sql, rows, STAGED_PER_STATEMENT)
        return low, low + len(rows) - 1

    def insert(
        self, table: str, staged: tuple[int, int, int, int], first_rowid: int | None = None
    ) -> None:
        """Move one staged run into `table` (and a capsule's links into theirs): its rows take
        the table's next rowids, or those from `first_rowid` on."""
        self._move(table, staged[0], staged[1], first_rowid)
        if table == "capsules" and staged[3] >= staged[2]:
            self._move("capsule_observations", staged[2], staged[3], None)

    def _move(self, table: str, low: int, high: int, first_rowid: int | None) -> None:
        columns = _STAGED_COLUMNS[table]
        width = len(column_names(columns))
        values = ", ".join(f"c{i}" for i in range(width))
        select = f"FROM temp.kindling_stage_{table} WHERE rowid BETWEEN ? AND ? ORDER BY rowid"
        if first_rowid is None:
            self.conn.execute(
                f"INSERT INTO main.{table} ({columns}) SELECT {values} {select}", (low, high)
            )
            return
        self.conn.execute(
            f"INSERT INTO main.{table} (rowid, {columns}) SELECT ? + rowid - ?, {values} {select}",
            (first_rowid, low, low, high),
        )

    def clear(self) -> None:
        """Empty the staging tables (after a step)."""
        self.conn.execute("BEGIN")
        try:
            for name in self._made:
                self.conn.execute(f"DELETE FROM temp.{name}")
        finally:
            self.conn.execute("COMMIT")


_STAGED_COLUMNS = {
    "observations": OBSERVATION_COLUMNS,
    "capsules": CAPSULE_COLUMNS,
    "summaries": SUMMARY_COLUMNS,
    "pins": PIN_COLUMNS,
    "capsule_observations": LINK_COLUMNS,
}
