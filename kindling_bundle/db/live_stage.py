"""The staging file of an import into a database in use: new rows, bound by the planner's thread.

Binding every value of a row is Python work, a tenth of what the writer's thread did. So the
thread that plans the records (`live.PlanAhead`) binds the rows of records decided new into a
staging file, on a connection of its own, while the writer's thread writes the steps planned
before: on another core. The importing connection attaches the file read-only and moves a run of
staged rows with one INSERT ... SELECT (Kindling's FTS trigger fills one pending index for the
whole statement). The staging tables have no column types, so the values reach the real tables
exactly as if bound to them.

The file is in WAL mode: there a reader never blocks a writer, and a step's BEGIN IMMEDIATE takes
only a read snapshot of a database attached read-only, so the planner's thread adds rows while a
step reads those staged before; a step sees every row of the records it writes, as the planner
commits a frame's rows before handing the frame on. Where SQLite takes no URI in ATTACH (neither
the connection nor the library allows it), the file is attached read-write: each step then
holds its write lock too, and the planner's thread waits for steps to end before it stages.

The file holds nothing a crash could need (the undo journal is in the database): it lives in a
private temporary folder, removed when the import ends (a killed process leaves the folder in
the temporary directory). Rows the writer is done with are deleted as the import goes on.
"""

from __future__ import annotations

import contextlib
import shutil
import sqlite3
import tempfile
from collections.abc import Sequence
from pathlib import Path
from typing import Any

SCHEMA = "kindling_stage"
"""The name the staging file is attached under."""
FORGET_ROWS = 16_384
"""Rows the writer is done with that a table may keep before the planner's thread deletes them."""
_WAIT_MS = 60_000
"""How long the planner's thread waits for a step that holds the file's write lock (read-write
attachment only; a step holds it about a second)."""


class StageFile:
    """The staging file: its tables (`widths`: table name -> number of columns) and folder."""

    def __init__(self, widths: dict[str, int]):
        self.folder = Path(tempfile.mkdtemp(prefix="kindling-stage-"))
        self.path = self.folder / "stage.db"
        self.widths = widths
        self.consumed: dict[str, int] = dict.fromkeys(widths, 0)
        """By table, the last rowid the writer is done with (set by the writer's thread)."""
        self._keeper: sqlite3.Connection | None = None
        try:
            keeper = sqlite3.connect(self.path, isolation_level=None, check_same_thread=False)
            self._keeper = keeper  # keeps the log files while others come and go
            keeper.execute("PRAGMA journal_mode = WAL")
            for table, width in widths.items():
                columns = ", ".join(f"c{i}" for i in range(width))
                keeper.execute(
                    f"CREATE TABLE {table} (n INTEGER PRIMARY KEY AUTOINCREMENT, {columns})"
                )
        except BaseException:
            self.remove()
            raise

    def attach(self, conn: sqlite3.Connection) -> None:
        """Attach the file to the importing connection (outside a transaction), read-only."""
        conn.execute(f"ATTACH DATABASE ? AS {SCHEMA}", (self._read_only(),))
        attached = conn.execute(
            "SELECT file FROM pragma_database_list WHERE name = ?", (SCHEMA,)
        ).fetchone()[0]
        if Path(attached) != self.path.resolve():  # the URI was taken for a file name
            conn.execute(f"DETACH DATABASE {SCHEMA}")
            Path(attached).unlink(missing_ok=True)
            conn.execute(f"ATTACH DATABASE ? AS {SCHEMA}", (str(self.path),))

    def _read_only(self) -> str:
        """The file's name as a URI that opens it read-only."""
        return f"{self.path.resolve().as_uri()}?mode=ro"

    def detach(self, conn: sqlite3.Connection) -> None:
        """Detach it again (outside a transaction); nothing if it is not attached."""
        names = {name for (_, name, _) in conn.execute("PRAGMA database_list")}
        if SCHEMA in names:
            conn.execute(f"DETACH DATABASE {SCHEMA}")

    def remove(self) -> None:
        """Close and delete the file and its folder."""
        if self._keeper is not None:
            self._keeper.close()
            self._keeper = None
        shutil.rmtree(self.folder, ignore_errors=True)


class Stager:
    """The planner's side: adds rows, one frame's in one transaction, and deletes the rows the
    writer is done with. Used by one thread, which opens it."""

    def __init__(self, stage: StageFile):
        self._stage = stage
        self._conn = sqlite3.connect(stage.path, isolation_level=None)
        self._conn.execute(f"PRAGMA busy_timeout = {_WAIT_MS}")
        self._conn.execute("PRAGMA synchronous = OFF")  # nothing here outlives the import
        self._forgotten = dict.fromkeys(stage.widths, 0)

    def begin(self) -> None:
        """Start a frame's transaction, after deleting rows the writer is done with."""
        self._conn.execute("BEGIN IMMEDIATE")
        for table, done in self._stage.consumed.items():
            if done - self._forgotten[table] >= FORGET_ROWS:
                self._conn.execute(f"DELETE FROM {table} WHERE rowid <= ?", (done,))
                self._forgotten[table] = done

    def put(self, table: str, rows: Sequence[tuple[Any, ...]]) -> int:
        """Stage rows (in the frame's transaction); the rowid of the first (the rest follow)."""
        width = self._stage.widths[table]
        columns = ", ".join(f"c{i}" for i in range(width))
        last = self._conn.execute("SELECT seq FROM sqlite_sequence WHERE name = ?", (table,))
        first = int((last.fetchone() or (0,))[0]) + 1  # AUTOINCREMENT: never an old rowid again
        self._conn.executemany(
            f"INSERT INTO {table} ({columns}) VALUES ({', '.join('?' * width)})", rows
        )
        return first

    def commit(self) -> None:
        """End the frame's transaction: the writer's next step sees its rows."""
        self._conn.execute("COMMIT")

    def close(self) -> None:
        with contextlib.suppress(sqlite3.Error):
            if self._conn.in_transaction:
                self._conn.execute("ROLLBACK")
        self._conn.close()


def move(conn: sqlite3.Connection, table: str, columns: str, low: int, high: int) -> None:
    """Insert staged rows `low`..`high` of `table` into the real table of that name, in order,
    with one statement."""
    width = len(columns.split(","))
    values = ", ".join(f"c{i}" for i in range(width))
    conn.execute(
        f"INSERT INTO main.{table} ({columns}) SELECT {values} "
        f"FROM {SCHEMA}.{table} WHERE rowid BETWEEN ? AND ? ORDER BY rowid",
        (low, high),
    )
