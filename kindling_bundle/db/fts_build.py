"""A full-text index built apart from its database, then copied into it in one statement per
shadow table.

Indexing is the largest part of loading realistic memory into an empty database (tokenizing
every observation's text). `IndexBuilder` builds the index of a table's rows into a private
database file of its own, from the rows' content as it is loaded (in a second process:
`parallel.fts`), while the loading connection writes the rows themselves; `copy_index` then
replaces the loading database's empty index with it. The index is the one indexing those rows in
place gives: Kindling's full-text tables are external-content FTS5 tables, whose index holds
only terms, positions and per-row statistics keyed by rowid, so an index built elsewhere from
the same (rowid, content) pairs, with the same table definition, holds the same entries (its
segments may be laid out differently).
"""

from __future__ import annotations

import sqlite3
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass

FTS_HASH_BYTES = 16 << 20
"""FTS5's pending index while indexing a load (default 1 MiB; at every fill it is written out as
a segment, and segments are merged again and again)."""
SHADOW_TABLES = ("data", "idx", "docsize")
"""The shadow tables that hold an external-content FTS5 index (`_config` holds its settings,
the same in both databases)."""
_BATCH_BYTES = 4 << 20
"""Content gathered before it is indexed in one statement: FTS5 writes its pending index out
at the start of every statement, so one statement per frame would write many small segments;
larger batches make fewer, but hold the builder longer between frames (parallel.fts)."""
_BUILD_CACHE_KIB = 2 << 10
"""The builder's page cache (SQLite's default): it appends segments, and the merges read recent
ones back from the OS's page cache; each MiB here adds to the memory of the whole import."""
_ATTACHED = "kindling_prebuilt"


@dataclass(frozen=True)
class PrebuiltIndex:
    """An index of `fts`, built in the database file at `path`, of a table whose rows are
    rowids 1..`rows` in load order."""

    path: str
    fts: str
    rows: int


@contextmanager
def fts_hash_size(conn: sqlite3.Connection, fts: str) -> Iterator[None]:
    """A larger pending index while indexing a load. FTS5 stores the setting in the index's
    config table; the row is deleted afterwards, so the database holds no setting that
    Kindling's own databases do not (one someone set on purpose is left alone)."""
    config = f"{fts}_config"
    if conn.execute(f"SELECT 1 FROM {config} WHERE k = 'hashsize'").fetchone() is not None:
        yield
        return
    conn.execute(f"INSERT INTO {fts}({fts}, rank) VALUES ('hashsize', {FTS_HASH_BYTES})")
    yield
    conn.execute(f"DELETE FROM {config} WHERE k = 'hashsize'")


class IndexBuilder:
    """Builds the index of `fts` (created by `create_sql`, the loading database's own statement)
    into a new private database file at `path`, from (rowid, content) rows added in rowid order;
    a content of None (a redacted observation) is left out, as Kindling's triggers leave it.

    The file is written without a journal and without syncing: it is thrown away after the
    copy, and on any failure the load indexes in place instead."""

    def __init__(self, path: str, fts: str, create_sql: str) -> None:
        self.fts = fts
        self.rows = 0
        self._pending_bytes = 0
        self._conn = sqlite3.connect(path, isolation_level=None)
        conn = self._conn
        conn.execute("PRAGMA journal_mode = OFF")
        conn.execute("PRAGMA synchronous = OFF")
        conn.execute("PRAGMA temp_store = MEMORY")
        conn.execute(f"PRAGMA cache_size = -{_BUILD_CACHE_KIB}")
        conn.execute("BEGIN")
        conn.execute(create_sql)
        conn.execute("CREATE TEMP TABLE pending(rowid INTEGER PRIMARY KEY, content TEXT)")
        self._hash_size = fts_hash_size(conn, fts)
        self._hash_size.__enter__()

    def add(self, first_rowid: int, contents: Sequence[str | None]) -> None:
        """Rows `first_rowid`, `first_rowid + 1`, ... with these contents."""
        if first_rowid != self.rows + 1:
            raise ValueError(f"rows out of order: {first_rowid} after {self.rows}")
        self.rows += len(contents)
        rows = [(first_rowid + i, c) for i, c in enumerate(contents) if c is not None]
        self._conn.executemany("INSERT INTO temp.pending(rowid, content) VALUES (?, ?)", rows)
        self._pending_bytes += sum(len(content) for _, content in rows)
        if self._pending_bytes >= _BATCH_BYTES:
            self._flush()

    def finish(self) -> PrebuiltIndex:
        """Index what is pending, commit and close the file."""
        self._flush()
        self._hash_size.__exit__(None, None, None)
        self._conn.execute("COMMIT")
        path = self._conn.execute("PRAGMA database_list").fetchone()[2]
        self._conn.close()
        return PrebuiltIndex(path, self.fts, self.rows)

    def close(self) -> None:
        """Give up (the file is the caller's to remove)."""
        self._conn.close()

    def _flush(self) -> None:
        self._conn.execute(
            f"INSERT INTO {self.fts}(rowid, content) SELECT rowid, content FROM temp.pending "
            "ORDER BY rowid"
        )
        self._conn.execute("DELETE FROM temp.pending")
        self._pending_bytes = 0


def fits(conn: sqlite3.Connection, index: PrebuiltIndex, table: str) -> bool:
    """True if `table` holds exactly rowids 1..index.rows (the rows the index was built for, in
    the order they were loaded) and its index is empty, so that the copy stands in for indexing
    them here."""
    count, highest = conn.execute(
        f"SELECT count(*), coalesce(max(rowid), 0) FROM {table}"
    ).fetchone()
    empty = conn.execute(f"SELECT 1 FROM {index.fts}_docsize LIMIT 1").fetchone() is None
    return bool(empty and count == highest == index.rows)


def copy_index(conn: sqlite3.Connection, index: PrebuiltIndex) -> None:
    """Replace `index.fts`'s (empty) index with the prebuilt one, inside the caller's
    transaction. The prebuilt file stays attached until `detach_prebuilt` (SQLite detaches a
    database only outside a transaction)."""
    conn.execute(f"ATTACH DATABASE ? AS {_ATTACHED}", (index.path,))
    for shadow in SHADOW_TABLES:
        table = f"{index.fts}_{shadow}"
        conn.execute(f"DELETE FROM main.{table}")
        conn.execute(f"INSERT INTO main.{table} SELECT * FROM {_ATTACHED}.{table}")


def detach_prebuilt(conn: sqlite3.Connection) -> None:
    """Detach what `copy_index` attached, if it is attached (call it outside a transaction)."""
    names = {row[1] for row in conn.execute("PRAGMA database_list")}
    if _ATTACHED in names:
        conn.execute(f"DETACH DATABASE {_ATTACHED}")
