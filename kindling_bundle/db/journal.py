"""The undo journal: what an import into a database in use applied, so that it can be undone.

An import into a database that exists commits in many short transactions (`db.live`), so that
Kindling's own writers never wait long. To keep it all or nothing in effect, every row it
inserts, updates or deletes is recorded, in the same transaction, in two tables of our own
(spec/bundle-format.md, section 13.3):

- `kindling_bundle_import`: one row, the import in progress: its source, when it started, the
  process (pid, host, and on Linux the process's start time, so that a reused pid is not taken
  for it), and its state: `applying`, or `committed` once it succeeded.
- `kindling_bundle_undo`: one row per change, in order (`seq`): the table, the operation, the
  rowid, and the row's columns before (`b0`...) and after (`a0`...); an insert keeps only the
  row's key. The rows one statement inserts in bulk (a step's run of new records) are one
  entry, `inserts`: their first and last rowid (they run on from the table's last) and their
  keys; a new capsule's links are not journaled, as deleting the capsule deletes them.

TEMP triggers on the importing connection fill the journal (and `Journal.run` for runs), so
they see exactly this connection's writes and never another process's. Undo (`db.undo`) walks
the journal backwards in short transactions, each removing the entries it undid: an inserted
row is deleted (if it is still the one inserted: a row at its rowid with its key), an updated
row gets its old values back (only if nobody changed it since: a row another writer changed
afterwards is left as they left it, and counted), a deleted row is put back at its rowid.
Kindling's FTS triggers follow every step, so full-text search stays in sync. Rows another
writer added meanwhile are never touched, except those that reference a row the import
inserted (a capsule link to an imported observation): `ON DELETE CASCADE` takes them with it,
as it does for any delete in Kindling.

The tables are created when an import starts and dropped when it ends; if they exist, an import
did not end: `recover` undoes it (or, once `committed`, only removes the journal).
"""

from __future__ import annotations

import os
import socket
import sqlite3
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import UTC, datetime

from kindling_bundle.db.connection import (
    TransactionLost,
    last_rowid,
    savepoint,
    write_transaction,
)
from kindling_bundle.db.integrity import IntegrityProblem
from kindling_bundle.db.pacing import Pace
from kindling_bundle.db.undo import COLUMNS as _COLUMNS
from kindling_bundle.db.undo import KEYS as _KEYS
from kindling_bundle.db.undo import UNDO_TABLE, UndoCounts, table_exists, undo
from kindling_bundle.db.undo import WIDTH as _WIDTH
from kindling_bundle.errors import StoreError

__all__ = ["IMPORT_TABLE", "UNDO_TABLE", "Journal", "UndoCounts", "recover", "undo"]

IMPORT_TABLE = "kindling_bundle_import"
_RUN = "kindling_bundle_run"
"""A TEMP table that holds a row while `Journal.run` journals the rows being inserted as one
entry: the per-row insert triggers stand aside meanwhile."""
_LAST_ROWID = (1 << 63) - 1

_CREATE = [
    f"""CREATE TABLE {IMPORT_TABLE} (
  id INTEGER PRIMARY KEY CHECK (id = 1),
  source TEXT NOT NULL,
  started_at INTEGER NOT NULL,
  pid INTEGER NOT NULL,
  host TEXT NOT NULL,
  process TEXT,
  state TEXT NOT NULL CHECK (state IN ('applying', 'committed'))
)""",
    f"CREATE TABLE {UNDO_TABLE} (seq INTEGER PRIMARY KEY, tbl TEXT NOT NULL, op TEXT NOT NULL, "
    "row INTEGER NOT NULL, "
    + ", ".join(f"b{i}" for i in range(_WIDTH))
    + ", "
    + ", ".join(f"a{i}" for i in range(_WIDTH))
    + ")",
]


def _triggers() -> list[str]:
    statements = []
    for table, columns in _COLUMNS.items():
        n = len(columns)
        before = ", ".join(f"b{i}" for i in range(n))
        after = ", ".join(f"a{i}" for i in range(n))
        keys = _KEYS[table]
        name = f"{UNDO_TABLE}_{table}"
        insert = f"INSERT INTO {UNDO_TABLE} (tbl, op, row"
        statements += [
            f"CREATE TEMP TRIGGER {name}_insert AFTER INSERT ON main.{table} "
            f"WHEN NOT EXISTS (SELECT 1 FROM temp.{_RUN}) BEGIN "
            f"{insert}, {', '.join(f'a{i}' for i in range(len(keys)))}) VALUES ('{table}', "
            f"'insert', NEW.rowid, {', '.join(f'NEW.{k}' for k in keys)}); END",
            f"CREATE TEMP TRIGGER {name}_update AFTER UPDATE ON main.{table} BEGIN "
            f"{insert}, {before}, {after}) VALUES ('{table}', 'update', OLD.rowid, "
            f"{', '.join(f'OLD.{c}' for c in columns)}, {', '.join(f'NEW.{c}' for c in columns)});"
            " END",
            f"CREATE TEMP TRIGGER {name}_delete AFTER DELETE ON main.{table} BEGIN "
            f"{insert}, {before}) VALUES ('{table}', 'delete', OLD.rowid, "
            f"{', '.join(f'OLD.{c}' for c in columns)}); END",
        ]
    return statements


@dataclass(frozen=True)
class UnfinishedImport:
    """An import whose journal is still in the database: still running, or interrupted."""

    source: str
    started_at: int
    pid: int
    host: str
    committed: bool
    running: bool

    def describe(self) -> str:
        """One line for people: which import, and what to do."""
        started = datetime.fromtimestamp(self.started_at / 1000, tz=UTC).isoformat(
            timespec="seconds"
        )
        who = f"import of {self.source} (process {self.pid} on {self.host}, started {started})"
        if self.running:
            return f"an {who} is still running"
        if self.committed:
            return f"the {who} finished, but its undo journal is still there"
        return f"an {who} did not finish: the database holds part of it"


def _process_token(pid: int) -> str | None:
    """What tells this process from a later one with the same pid: boot id and start time."""
    try:
        with open(f"/proc/{pid}/stat") as stat:
            fields = stat.read().rsplit(")", 1)[1].split()
        with open("/proc/sys/kernel/random/boot_id") as boot:
            return f"{boot.read().strip()}:{fields[19]}"
    except (OSError, IndexError):
        return None


_ACTIVE: set[str] = set()
"""The databases (real paths) an import in this process is writing to right now."""


def _running(pid: int, host: str, token: str | None, path: str) -> bool:
    """Whether the importing process is alive. A process on another host cannot be asked: a
    database in WAL mode is not shared across hosts, so it is taken for gone."""
    if host != socket.gethostname():
        return False
    if pid == os.getpid():
        return path in _ACTIVE
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        pass
    try:
        with open(f"/proc/{pid}/stat") as stat:
            if stat.read().rsplit(")", 1)[1].split()[0] == "Z":
                return False  # exited, not yet reaped
    except (OSError, IndexError):
        pass
    return token is None or _process_token(pid) in (None, token)


def _path(conn: sqlite3.Connection) -> str:
    name = getattr(conn, "path", "") or conn.execute("PRAGMA database_list").fetchone()[2]
    return os.path.realpath(name) if name else ""


def _label(conn: sqlite3.Connection) -> str:
    return getattr(conn, "path", "") or "database"


def _has_journal(conn: sqlite3.Connection) -> bool:
    found = conn.execute(
        "SELECT count(*) FROM sqlite_master WHERE type = 'table' AND name IN (?, ?)",
        (IMPORT_TABLE, UNDO_TABLE),
    ).fetchone()[0]
    return bool(found)


def unfinished_import(conn: sqlite3.Connection) -> UnfinishedImport | None:
    """The import whose journal the database holds, or None. Reads only."""
    if not _has_journal(conn):
        return None
    try:
        row = conn.execute(
            f"SELECT source, started_at, pid, host, process, state FROM {IMPORT_TABLE}"
        ).fetchone()
    except sqlite3.OperationalError:  # one table without the other: a journal left half made
        row = None
    if row is None:
        return UnfinishedImport("an unknown source", 0, 0, "", committed=False, running=False)
    source, started_at, pid, host, token, state = row
    running = _running(pid, host, token, _path(conn))
    return UnfinishedImport(source, started_at, pid, host, state == "committed", running)


def unfinished_import_problem(conn: sqlite3.Connection, database: str) -> IntegrityProblem | None:
    """The integrity problem an unfinished import is (`check` reports it), naming `recover`."""
    found = unfinished_import(conn)
    if found is None:
        return None
    action = (
        "wait for it to end"
        if found.running
        else f"run `kindling-bundle recover --db {database}` to undo it"
        if not found.committed
        else f"run `kindling-bundle recover --db {database}` to remove the journal"
    )
    detail = f"{found.describe()}; {action}"
    return IntegrityProblem("unfinished_import", "database", database, detail)


def recover(conn: sqlite3.Connection) -> tuple[UnfinishedImport, UndoCounts] | None:
    """Undo an import that did not finish (its process is gone), in short transactions.

    Returns what was found and what undoing it did, or None if there was nothing to undo.
    Raises StoreError if the import is still running. Safe to run again after an interruption:
    each transaction removes the journal entries it undid."""
    found = unfinished_import(conn)
    if found is None:
        return None
    if found.running:
        raise StoreError(
            f"{_label(conn)}: {found.describe()}; wait for it to end before writing to this "
            "database"
        )
    counts = UndoCounts() if found.committed else undo(conn)
    drop(conn)
    return found, counts


class Journal:
    """The journal of the import running on `conn`: started by `begin`, ended by `commit` and
    `drop`, or by `undo` and `drop`."""

    def __init__(self, conn: sqlite3.Connection):
        self.conn = conn

    @classmethod
    def begin(cls, conn: sqlite3.Connection, source: str) -> Journal:
        """Create the journal and the triggers that fill it. The caller ran `recover` first."""
        with write_transaction(conn):
            if _has_journal(conn):
                found = unfinished_import(conn)
                assert found is not None
                raise StoreError(
                    f"{_label(conn)}: {found.describe()}"
                    + ("" if found.running else "; run `kindling-bundle recover` first")
                )
            for statement in _CREATE:
                conn.execute(statement)
            conn.execute(
                f"INSERT INTO {IMPORT_TABLE} (id, source, started_at, pid, host, process, state) "
                "VALUES (1, ?, ?, ?, ?, ?, 'applying')",
                (
                    source,
                    int(time.time() * 1000),
                    os.getpid(),
                    socket.gethostname(),
                    _process_token(os.getpid()),
                ),
            )
        conn.execute(f"CREATE TEMP TABLE IF NOT EXISTS {_RUN} (running)")
        for statement in _triggers():
            conn.execute(statement)
        _ACTIVE.add(_path(conn))
        return cls(conn)

    def inserted_since(self, seq: int) -> list[tuple[str, int, int]]:
        """(table, first rowid, last rowid) of the rows inserted after journal entry `seq`: each
        run journaled as one (`run`), and runs of consecutive rowids of those journaled one by
        one."""
        rows = self.conn.execute(
            f"SELECT tbl, row, a0 FROM {UNDO_TABLE} WHERE seq > ? AND op = 'inserts' UNION ALL "
            "SELECT tbl, min(row), max(row) FROM (SELECT tbl, row, "
            "row - row_number() OVER (PARTITION BY tbl ORDER BY row) AS run "
            f"FROM {UNDO_TABLE} WHERE seq > ? AND op = 'insert') GROUP BY tbl, run",
            (seq, seq),
        )
        return [(str(table), int(first), int(last)) for table, first, last in rows]

    @contextmanager
    def run(self, table: str, rows: int, first: int | None = None) -> Iterator[None]:
        """Journal the `rows` rows the block inserts into `table` (a table keyed by `id`) as one
        entry, instead of one entry a row: their rowids, the table's next ones (or, given,
        those from `first` on, above the table's last), and their ids.

        Inside a write transaction nobody else inserts, and a new row takes the rowid after the
        table's last, so the rows are exactly those after the last rowid before the block. The
        block may also insert rows that `ON DELETE CASCADE` ties to these (a capsule's links):
        unjournaled, they are deleted with them. Where rowids could not run on (the table's
        last is the largest there is), the triggers journal the rows one by one instead."""
        conn = self.conn
        before = last_rowid(conn, table) if first is None else first - 1
        if before + rows >= _LAST_ROWID:
            yield
            return
        with savepoint(conn, "kindling_journal_run"):
            conn.execute(f"INSERT INTO temp.{_RUN} VALUES (1)")
            try:
                yield
            finally:
                conn.execute(f"DELETE FROM temp.{_RUN}")
            if not conn.in_transaction:
                raise TransactionLost(
                    f"{_label(conn)}: SQLite rolled the write transaction back after an error "
                    "(a full disk, an I/O error or a corrupt database); nothing more is written"
                )
            conn.execute(
                f"INSERT INTO {UNDO_TABLE} (tbl, op, row, a0, a1) SELECT ?, 'inserts', ?, "
                f"max(rowid), json_group_array(id) FROM main.{table} WHERE rowid > ? "
                "HAVING count(*)",
                (table, before + 1, before),
            )

    def last_seq(self) -> int:
        """The newest journal entry (0 for none): entries after it are the ones to come."""
        newest = self.conn.execute(f"SELECT coalesce(max(seq), 0) FROM {UNDO_TABLE}")
        return int(newest.fetchone()[0])

    def commit(self) -> None:
        """The import succeeded: from here on, recovery only removes the journal."""
        _drop_triggers(self.conn)
        with write_transaction(self.conn):
            self.conn.execute(f"UPDATE {IMPORT_TABLE} SET state = 'committed'")

    def undo(self) -> UndoCounts:
        """Undo everything journaled (see the module docstring)."""
        _drop_triggers(self.conn)
        return undo(self.conn)

    def end(self) -> None:
        """Remove the journal (after `commit` or `undo`); this import is over."""
        try:
            drop(self.conn)
        finally:
            _ACTIVE.discard(_path(self.conn))


def _drop_triggers(conn: sqlite3.Connection) -> None:
    for (name,) in conn.execute(
        "SELECT name FROM temp.sqlite_master WHERE type = 'trigger' AND name LIKE ?",
        (f"{UNDO_TABLE}%",),
    ).fetchall():
        conn.execute(f'DROP TRIGGER temp."{name}"')
    conn.execute(f"DROP TABLE IF EXISTS temp.{_RUN}")


def drop(conn: sqlite3.Connection) -> None:
    """Remove the journal: its entries in short transactions, then the (small) tables."""
    _drop_triggers(conn)
    pace = Pace()
    while table_exists(conn, UNDO_TABLE):
        with pace.transaction(conn) as step:
            step.count = conn.execute(
                f"DELETE FROM {UNDO_TABLE} WHERE seq IN "
                f"(SELECT seq FROM {UNDO_TABLE} ORDER BY seq LIMIT ?)",
                (step.size,),
            ).rowcount
            if step.count < step.size:
                conn.execute(f"DROP TABLE {UNDO_TABLE}")
                conn.execute(f"DROP TABLE IF EXISTS {IMPORT_TABLE}")
    if table_exists(conn, IMPORT_TABLE):
        with write_transaction(conn):
            conn.execute(f"DROP TABLE IF EXISTS {IMPORT_TABLE}")
