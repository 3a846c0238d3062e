"""Loading into an empty database: the same results as the rules' usual path, found faster.

Used only where nobody else can be using the database (`create_store`'s private file): it holds
one write transaction for the whole load. `bulk_load` drops Kindling's triggers and secondary
indexes for the load and rebuilds them once at its end; `insert_new` inserts a run without
looking its ids up, and leaves to the usual path whatever the database's constraints refuse;
`foreign_keys_checked_after` checks references once after the load. `tests/test_fast_import.py`
holds each of them to the results of importing record by record.
"""

from __future__ import annotations

import os
import sqlite3
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager

from kindling_bundle.db.conflicts import ImportEntityResult, failed, missing_links
from kindling_bundle.db.connection import savepoint
from kindling_bundle.db.fts_build import PrebuiltIndex, copy_index, fits, fts_hash_size
from kindling_bundle.db.importer import insert_held
from kindling_bundle.db.lookup import absent_observations, record_values
from kindling_bundle.db.schema import INDEXES, TRIGGERS
from kindling_bundle.format.stream_rules import first_repeated
from kindling_bundle.records import Capsule, Observation, Record, Summary

DATA_TABLES = ("observations", "capsules", "capsule_observations", "summaries", "pins")

# Each full-text index, the table it indexes and which of its rows Kindling's triggers index.
_FTS_INDEXED = {
    "observations_fts": ("observations", "redacted = 0"),
    "summaries_fts": ("summaries", "1"),
}

_PREBUILT_FTS = "observations_fts"
"""The index `bulk_load` may take prebuilt (summaries are few: indexed in place)."""

# Records whose run is one executemany into a rowid table: inserted without a savepoint.
_UNGUARDED_TABLES: dict[type, str] = {Observation: "observations", Summary: "summaries"}

_BULK_CACHE_KIB = 32 << 10
"""SQLite page cache while loading (the default is 2 MiB), so that the primary key indexes,
written in random order (UUID ids), are not re-read from the file for every insert; peak memory
grows with it (bench/RESULTS.md has the sizes tried)."""
_SORT_CACHE_KIB = 4 << 10
"""The page cache while the indexes are re-created: SQLite's sorter may buffer as much as the
page cache holds before it spills to a temporary file, so the two would otherwise add up."""
_SORT_THREADS = max(1, min(4, os.cpu_count() or 1))
"""Threads SQLite's sorter may use to re-create the indexes (PRAGMA threads; default none)."""


def _normalized(sql: str) -> str:
    return " ".join(sql.split())


_KINDLING_DDL = {_normalized(sql) for sql in (*TRIGGERS.values(), *INDEXES)}


def _empty(conn: sqlite3.Connection, table: str) -> bool:
    return conn.execute(f"SELECT 1 FROM {table} LIMIT 1").fetchone() is None


def _foreign_keys_enforced(conn: sqlite3.Connection) -> bool:
    """Whether every insert is checked against its foreign keys as it happens."""
    enforced = conn.execute("PRAGMA foreign_keys").fetchone()[0]
    deferred = conn.execute("PRAGMA defer_foreign_keys").fetchone()[0]
    return bool(enforced) and not deferred


def insert_new(conn: sqlite3.Connection, run: Sequence[Record]) -> int:
    """Insert a run of one type as if every record were new; how many of it are now stored.

    The database's constraints refuse a record that is not (a stored id, a missing reference, a
    capsule's second summary); the caller imports the rest of the run the usual way. A run that
    repeats an id is left to the usual path whole (its second copy meets the first).

    Observations and summaries go in with one executemany and no savepoint: a savepoint makes
    SQLite copy every page it changes that existed before (the primary key index, in random
    order) to a sub-journal. Without one, a row the database refuses is rolled back on its own,
    and those before it stay, exactly as importing them one by one would have stored them (the
    same rows and rowids). Any other failure (a full disk, an I/O error) propagates: SQLite may
    have rolled the whole transaction back."""
    if first_repeated([r.id for r in run]) is not None:
        return 0
    values = [record_values(record) for record in run]
    table = _UNGUARDED_TABLES.get(type(run[0]))
    if table is None:
        try:
            with savepoint(conn, "kindling_batch"):
                insert_held(conn, run, values)
        except sqlite3.IntegrityError:
            return 0
        return len(run)
    before = conn.execute(f"SELECT coalesce(max(rowid), 0) FROM {table}").fetchone()[0]
    try:
        insert_held(conn, run, values)
    except sqlite3.IntegrityError:
        stored = conn.execute(f"SELECT count(*) FROM {table} WHERE rowid > ?", (before,))
        return int(stored.fetchone()[0])
    return len(run)


@contextmanager
def foreign_keys_checked_after(conn: sqlite3.Connection) -> Iterator[bool]:
    """Into an empty database, check foreign keys once after the load instead of on every row.

    Yields True if it turned enforcement off (only outside a transaction, on a connection that
    enforces them, with every data table empty), and turns it back on at the end. Then pass
    `references_checked_after=True` to `bulk_load`, and before committing call
    `first_dangling_reference` whenever the integrity report is not clean: a missing reference
    fails the import with the message importing record by record would have given. The link
    rows' two look-ups each are a large part of a load; the integrity check proves the same keys
    with ordered index scans.
    """
    if (
        conn.in_transaction
        or not _foreign_keys_enforced(conn)
        or not all(_empty(conn, table) for table in DATA_TABLES)
    ):
        yield False
        return
    conn.execute("PRAGMA foreign_keys = OFF")
    try:
        yield True
    finally:
        conn.execute("PRAGMA foreign_keys = ON")


def first_dangling_reference(conn: sqlite3.Connection) -> ImportEntityResult | None:
    """The failure importing record by record (foreign keys enforced) would have met first: the
    first capsule, in the order stored, linking an observation that does not exist, else the
    first summary of a capsule that does not exist. None if there is neither."""
    capsule = conn.execute(
        "SELECT id FROM capsules AS c WHERE EXISTS (SELECT 1 FROM capsule_observations AS l "
        "WHERE l.capsule_id = c.id AND NOT EXISTS "
        "(SELECT 1 FROM observations AS o WHERE o.id = l.observation_id)) ORDER BY rowid LIMIT 1"
    ).fetchone()
    if capsule is not None:
        linked = conn.execute(
            "SELECT observation_id FROM capsule_observations WHERE capsule_id = ? ORDER BY seq",
            capsule,
        )
        missing = absent_observations(conn, [oid for (oid,) in linked])
        return failed("capsules", capsule[0], missing_links(missing), missing)
    summary = conn.execute(
        "SELECT id, capsule_id FROM summaries AS s WHERE NOT EXISTS "
        "(SELECT 1 FROM capsules AS c WHERE c.id = s.capsule_id) ORDER BY rowid LIMIT 1"
    ).fetchone()
    if summary is not None:
        return failed("summaries", summary[0], f"capsule {summary[1]} does not exist", [summary[1]])
    return None


@contextmanager
def bulk_load(
    conn: sqlite3.Connection,
    *,
    references_checked_after: bool = False,
    prebuilt: Callable[[], PrebuiltIndex | None] | None = None,
) -> Iterator[frozenset[type]]:
    """Load faster into tables that start empty, with exactly the results of the usual path.

    Yields the record types to pass to `import_batch(..., insert_first=...)`: those whose
    table is empty, so that a run is inserted without looking each id up first (observations;
    capsules and summaries too when foreign keys are enforced, as they are on every connection
    `open_store` makes: a missing reference, a repeated id or a second summary for a capsule is
    refused by a constraint, and the run is then redone the usual way), or when the caller
    checks them after the load (`foreign_keys_checked_after`). Pins always look up their
    targets, which no constraint checks.

    When the whole database is empty (no records, empty full-text indexes), Kindling's own
    triggers and secondary indexes are dropped for the load and re-created at its end, in their
    original order and from their own stored SQL, as a `.dump` restore does. Building an index
    by sorting once beats keeping it ordered through many random inserts, and Kindling's FTS
    insert triggers index one row per statement while FTS5 writes its pending index out at
    every statement's savepoint: a large load became many tiny segments merged again and again.
    Instead every row the triggers would have indexed (redacted observations left out) is
    indexed by one INSERT ... SELECT in rowid order, so the index holds the same entries as the
    trigger path (same rows, tokens, positions and statistics; segments may be laid out
    differently). Anything that reached an index during the load (a record overwritten within
    it) is cleared before that one rebuild. Triggers and indexes that are not Kindling's own
    are left in place (a UNIQUE index keeps enforcing).

    `prebuilt`, called once the rows and indexes are in, may hand over an index of observations
    built elsewhere from the rows' content as they were loaded (`db.fts_build`; None if there
    is none): it is copied in instead of indexing here, if the table holds exactly the rows it
    was built for (rowids 1..n in load order) and nothing reached the index meanwhile.

    Use it inside the caller's write transaction: on an exception nothing is re-created here,
    and the caller's rollback restores everything.
    """
    if not conn.in_transaction:
        raise ValueError("bulk_load needs an open write transaction")
    empty = {table for table in DATA_TABLES if _empty(conn, table)}
    constrained = references_checked_after or _foreign_keys_enforced(conn)
    insert_first: set[type] = {Observation} if "observations" in empty else set()
    if constrained and {"capsules", "capsule_observations"} <= empty:
        insert_first.add(Capsule)
    if constrained and "summaries" in empty:
        insert_first.add(Summary)
    deferred: list[str] = []
    fresh = not _has_segments(conn, _PREBUILT_FTS)
    if empty == set(DATA_TABLES) and _indexes_empty(conn):
        schema = conn.execute(
            "SELECT type, name, sql FROM sqlite_master WHERE type IN ('trigger', 'index') "
            "AND sql IS NOT NULL ORDER BY rowid"
        ).fetchall()
        for kind, name, sql in schema:
            if _normalized(sql) in _KINDLING_DDL:
                conn.execute(f'DROP {kind.upper()} "{name}"')
                deferred.append(sql)
    previous_cache = conn.execute("PRAGMA cache_size").fetchone()[0]
    previous_threads = conn.execute("PRAGMA threads").fetchone()[0]
    conn.execute(f"PRAGMA cache_size = -{_BULK_CACHE_KIB}")
    try:
        yield frozenset(insert_first)
        if deferred:
            later = _PREBUILT_FTS if prebuilt is not None and fresh else None
            for fts in _FTS_INDEXED:
                if fts != later:
                    _index_here(conn, fts)
            conn.execute(f"PRAGMA cache_size = -{_SORT_CACHE_KIB}")
            conn.execute(f"PRAGMA threads = {_SORT_THREADS}")
            for sql in deferred:
                conn.execute(sql)
            if later is not None:
                assert prebuilt is not None
                index = prebuilt()  # waits for it: the indexes above were built meanwhile
                table = _FTS_INDEXED[later][0]
                if index is not None and index.fts == later and fits(conn, index, table):
                    copy_index(conn, index)
                else:
                    _index_here(conn, later)
    finally:
        conn.execute(f"PRAGMA cache_size = {previous_cache}")
        conn.execute(f"PRAGMA threads = {previous_threads}")


def loads_everything(conn: sqlite3.Connection) -> bool:
    """Whether `bulk_load` would load the whole database (it holds no records and its
    full-text indexes are empty): then it indexes once at the end, and may take a prebuilt
    index of observations."""
    return all(_empty(conn, table) for table in DATA_TABLES) and _indexes_empty(conn)


def takes_prebuilt(conn: sqlite3.Connection) -> bool:
    """Whether `bulk_load` would take a prebuilt index of observations: it loads everything
    and that index never held segments (see `_has_segments`)."""
    return loads_everything(conn) and not _has_segments(conn, _PREBUILT_FTS)


def _indexes_empty(conn: sqlite3.Connection) -> bool:
    return all(_empty(conn, f"{fts}_docsize") for fts in _FTS_INDEXED)


def _index_here(conn: sqlite3.Connection, fts: str) -> None:
    """Index every row Kindling's triggers would have indexed, in one statement in rowid order,
    after clearing anything that reached the index during the load."""
    table, indexed = _FTS_INDEXED[fts]
    if not _empty(conn, f"{fts}_docsize"):
        conn.execute(f"INSERT INTO {fts}({fts}) VALUES ('delete-all')")
    with fts_hash_size(conn, fts):
        conn.execute(
            f"INSERT INTO {fts}(rowid, content) "
            f"SELECT rowid, content FROM {table} WHERE {indexed} ORDER BY rowid"
        )


def _has_segments(conn: sqlite3.Connection, fts: str) -> bool:
    """Whether the index holds segments (rows of `_data` beyond its averages, id 1, and
    structure, id 10). The copy replaces only an index that never held any: a structure a
    connection cached of one that did would contradict the copied one."""
    return conn.execute(f"SELECT 1 FROM {fts}_data WHERE id > 10 LIMIT 1").fetchone() is not None
