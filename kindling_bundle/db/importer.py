"""Import records into a Kindling database, by the conflict rules of `db.conflicts`.

Every path works the same three steps: look up what the database holds for a run of records (a
few queries however long the run), `decide` each record by the one rule table, then write what
the decisions ask for. `import_record` does it for one record, atomically (a savepoint);
`import_batch` for many, inserting the new ones with executemany, and gives exactly the results
of importing them one by one in order. Both compose inside a caller's transaction: a result
whose `error` is set means nothing of that record was written, and the caller rolls back.

Overwrite is an UPDATE in place, never INSERT OR REPLACE or delete-and-insert: the row keeps its
rowid, and `ON DELETE CASCADE` never fires, so an overwritten observation keeps its capsule links
and pins, and an overwritten capsule keeps its summary. Kindling's update triggers move the FTS
entry to the new content (none for a redacted observation). Before updating a row that has no
FTS entry (a redacted observation), we first give it the entry the trigger's FTS 'delete' expects:
a 'delete' of an entry that is not there silently corrupts the index statistics.

A summary overwriting its capsule's other summary replaces it: the other row is updated in place
to the incoming id and values (if the incoming id is itself stored for another capsule, that row
is the one updated and the displaced summary is deleted; nothing references a summary by foreign
key, and the FTS triggers follow). Pins on the replaced summary move to its replacement, so no
pin is left dangling and none is lost.

A record the database rejects (a CHECK constraint, JSON that cannot be stored) raises RecordError
naming the record; nothing of it is written.
"""

from __future__ import annotations

import sqlite3
from collections.abc import Collection, Iterator, Sequence
from contextlib import contextmanager
from typing import Any

from kindling_bundle.db.conflicts import (
    ImportEntityResult,
    Write,
    check_strategy,
    decide,
)
from kindling_bundle.db.connection import savepoint
from kindling_bundle.db.lookup import Held, independent_prefix, look_up
from kindling_bundle.db.rows import (
    CAPSULE_COLUMNS,
    OBSERVATION_COLUMNS,
    PIN_COLUMNS,
    SUMMARY_COLUMNS,
    column_names,
    link_values,
)
from kindling_bundle.db.writes import (
    INSERT_CAPSULE,
    INSERT_LINK,
    INSERT_OBSERVATION,
    INSERT_PIN,
    INSERT_SUMMARY,
)
from kindling_bundle.errors import RecordError
from kindling_bundle.records import (
    SINGULAR,
    Capsule,
    ConflictStrategy,
    Observation,
    Pin,
    Record,
    Summary,
    entity_of,
)

# --- writing what the decisions ask for --------------------------------------------------------


@contextmanager
def atomic(conn: sqlite3.Connection, entity: str, record_id: str) -> Iterator[None]:
    """A savepoint; a constraint the database enforces becomes a RecordError naming the record."""
    try:
        with savepoint(conn, "kindling_import"):
            yield
    except sqlite3.IntegrityError as exc:
        raise RecordError(
            f"{SINGULAR[entity]} {record_id}: rejected by the database ({exc})",
            entity=entity,
            record_id=record_id,
        ) from None


_INSERT: dict[type, str] = {
    Observation: INSERT_OBSERVATION,
    Capsule: INSERT_CAPSULE,
    Summary: INSERT_SUMMARY,
    Pin: INSERT_PIN,
}


def insert_held(
    conn: sqlite3.Connection,
    run: Sequence[Record],
    values: Sequence[tuple[Any, ...]],
    *,
    per_statement: int = 1,
) -> None:
    """Insert records of one type (capsules with their links) that are not stored.

    `per_statement` rows go in each INSERT statement: more than one makes Kindling's FTS insert
    trigger fill one pending index for the whole statement instead of flushing a tiny segment
    after every row, at the price of a statement journal."""
    insert_rows(conn, _INSERT[type(run[0])], values, per_statement)
    capsules = [c for c in run if isinstance(c, Capsule)]
    if capsules:
        insert_rows(conn, INSERT_LINK, link_values(capsules), per_statement)


def insert_rows(
    conn: sqlite3.Connection, sql: str, rows: Sequence[tuple[Any, ...]], per_statement: int
) -> None:
    """Run `sql` (an INSERT of one row's VALUES) for each of `rows`, `per_statement` rows to a
    statement, and the rest in statements of a quarter as many, and so on: the connection
    keeps every statement it ran prepared (128 of them), and one for many rows is large, so
    they come in a few sizes only."""
    if per_statement <= 1 or len(rows) <= 1:
        conn.executemany(sql, rows)
        return
    head, placeholders = sql.rsplit(" VALUES ", 1)
    start, size = 0, per_statement
    while start < len(rows):
        while size > len(rows) - start:
            size = max(1, size // 4)
        many = f"{head} VALUES {', '.join([placeholders] * size)}"
        while len(rows) - start >= size:
            conn.execute(many, [v for row in rows[start : start + size] for v in row])
            start += size


def ensure_fts_entry(conn: sqlite3.Connection, fts: str, rowid: int, content: str) -> None:
    """Index a row that the index lacks, so the update trigger's FTS 'delete' of its old content
    removes an entry that exists (a 'delete' of a missing entry corrupts FTS5's statistics)."""
    indexed = conn.execute(f"SELECT 1 FROM {fts}_docsize WHERE id = ?", (rowid,)).fetchone()
    if indexed is None:
        conn.execute(f"INSERT INTO {fts}(rowid, content) VALUES (?, ?)", (rowid, content))


FTS_OF_TABLE = {"observations": "observations_fts", "summaries": "summaries_fts"}
"""Kindling's full-text index of each table that has one."""


def ensure_fts_entries(
    conn: sqlite3.Connection, table: str, where: str, arguments: Sequence[Any]
) -> None:
    """Before deleting the rows of `table` (as `t`) that `where` selects: give those the index
    lacks (a redacted observation) the entry Kindling's delete trigger will 'delete' (a 'delete'
    of a missing entry corrupts FTS5's statistics)."""
    fts = FTS_OF_TABLE.get(table)
    if fts is not None:
        conn.execute(
            f"INSERT INTO {fts}(rowid, content) SELECT t.rowid, t.content FROM {table} AS t "
            f"WHERE {where} AND NOT EXISTS "
            f"(SELECT 1 FROM {fts}_docsize AS d WHERE d.id = t.rowid)",
            tuple(arguments),
        )


def _update_sql(table: str, columns: str, *, set_id: bool = False) -> str:
    """UPDATE every column (the id too when `set_id`) of the row whose id is the last parameter."""
    names = column_names(columns)
    assigned = names if set_id else names[1:]
    return f"UPDATE {table} SET {', '.join(f'{c} = ?' for c in assigned)} WHERE id = ?"


_UPDATE_OBSERVATION = _update_sql("observations", OBSERVATION_COLUMNS)
_UPDATE_CAPSULE = _update_sql("capsules", CAPSULE_COLUMNS)
_UPDATE_SUMMARY = _update_sql("summaries", SUMMARY_COLUMNS, set_id=True)
_UPDATE_PIN = _update_sql("pins", PIN_COLUMNS)


def write_update(conn: sqlite3.Connection, record: Record, held: Held) -> None:
    """Overwrite what `held` found with the record, in place (see the module docstring)."""
    values = held.values
    if isinstance(record, Observation):
        assert held.stored is not None
        ensure_fts_entry(conn, "observations_fts", held.stored[0], held.stored[3])
        conn.execute(_UPDATE_OBSERVATION, (*values[1:], record.id))
    elif isinstance(record, Capsule):
        conn.execute(_UPDATE_CAPSULE, (*values[1:], record.id))
        if not held.same_links:  # link rows carry nothing but the order: rewriting loses nothing
            conn.execute("DELETE FROM capsule_observations WHERE capsule_id = ?", (record.id,))
            _insert_links(conn, record)
    elif isinstance(record, Summary):
        _replace_summary(conn, record, held)
    else:
        conn.execute(_UPDATE_PIN, (*values[1:], record.id))


def _insert_links(conn: sqlite3.Connection, capsule: Capsule) -> None:
    conn.executemany(INSERT_LINK, link_values([capsule]))


def _replace_summary(conn: sqlite3.Connection, summary: Summary, held: Held) -> None:
    stored, holder = held.stored, held.holder
    if holder is not None and stored is not None:
        ensure_fts_entry(conn, "summaries_fts", holder[0], holder[3])
        conn.execute("DELETE FROM summaries WHERE id = ?", (holder[1],))
    target = stored if stored is not None else holder
    assert target is not None
    ensure_fts_entry(conn, "summaries_fts", target[0], target[3])
    conn.execute(_UPDATE_SUMMARY, (*held.values, target[1]))
    if holder is not None:
        conn.execute(
            "UPDATE pins SET target_id = ? WHERE target_type = 'summary' AND target_id = ?",
            (summary.id, holder[1]),
        )


# --- one record, many records --------------------------------------------------------------


def _decide(
    record: Record, held: Held, conflict: ConflictStrategy
) -> tuple[ImportEntityResult, Write]:
    return decide(entity_of(record), record.id, held.found, conflict)


def import_record(
    conn: sqlite3.Connection, record: Record, conflict: ConflictStrategy = "skip"
) -> ImportEntityResult:
    """Import any record, atomically: look it up, decide by the rules, write."""
    check_strategy(conflict)
    (held,) = look_up(conn, [record])
    result, write = _decide(record, held, conflict)
    if write != "none":
        with atomic(conn, result.entity, record.id):
            if write == "insert":
                insert_held(conn, [record], [held.values])
            else:
                write_update(conn, record, held)
    return result


def import_observation(
    conn: sqlite3.Connection, obs: Observation, conflict: ConflictStrategy = "skip"
) -> ImportEntityResult:
    """Import one observation; overwrite updates it in place, keeping its links and pins."""
    return import_record(conn, obs, conflict)


def import_capsule(
    conn: sqlite3.Connection, capsule: Capsule, conflict: ConflictStrategy = "skip"
) -> ImportEntityResult:
    """Import one capsule with its ordered observation links, together or not at all.

    Overwrite updates the capsule in place (keeping its summary) and sets its links to exactly
    the incoming observation ids, seq 0..n-1 in that order."""
    return import_record(conn, capsule, conflict)


def import_summary(
    conn: sqlite3.Connection, summary: Summary, conflict: ConflictStrategy = "skip"
) -> ImportEntityResult:
    """Import the summary of a capsule (see the module docstring for a capsule that already
    has a different summary)."""
    return import_record(conn, summary, conflict)


def import_pin(
    conn: sqlite3.Connection, pin: Pin, conflict: ConflictStrategy = "skip"
) -> ImportEntityResult:
    """Import one pin; its target must exist (pins have no foreign key to enforce it)."""
    return import_record(conn, pin, conflict)


def _insert_or_redo(
    conn: sqlite3.Connection,
    run: Sequence[Record],
    values: Sequence[tuple[Any, ...]],
    conflict: ConflictStrategy,
) -> list[ImportEntityResult]:
    """Insert records decided new in one go; if the database refuses the lot, redo them one by
    one, so that the culprit raises its own error naming it, as it would have."""
    try:
        with savepoint(conn, "kindling_batch"):
            insert_held(conn, run, values)
    except sqlite3.IntegrityError:
        return [import_record(conn, record, conflict) for record in run]
    entity = entity_of(run[0])
    return [ImportEntityResult(entity, r.id, "inserted") for r in run]


def import_run(
    conn: sqlite3.Connection, run: Sequence[Record], conflict: ConflictStrategy
) -> list[ImportEntityResult]:
    """Import records of one type with the results (and rowids) of importing them one by one."""
    results: list[ImportEntityResult] = []
    start = 0
    while start < len(run):
        part = run[start : start + max(1, independent_prefix(run[start:]))]
        held = look_up(conn, part)
        new: list[Record] = []
        new_values: list[tuple[Any, ...]] = []
        done = len(part)
        for n, (record, found) in enumerate(zip(part, held, strict=True)):
            result, write = _decide(record, found, conflict)
            if write == "insert":
                new.append(record)
                new_values.append(found.values)
                continue
            if new:
                results.extend(_insert_or_redo(conn, new, new_values, conflict))
                new, new_values = [], []
            if write == "update":
                with atomic(conn, result.entity, record.id):
                    write_update(conn, record, found)
            results.append(result)
            if write == "update" and found.holder is not None:
                done = n + 1  # other rows changed: what the rest meets must be looked up again
                break
        if new:
            results.extend(_insert_or_redo(conn, new, new_values, conflict))
        start += done
    return results


def runs(records: Sequence[Record]) -> Iterator[Sequence[Record]]:
    """Maximal runs of records of one type, in order."""
    start = 0
    while start < len(records):
        kind = type(records[start])
        end = start + 1
        while end < len(records) and type(records[end]) is kind:
            end += 1
        yield records[start:end]
        start = end


def import_batch(
    conn: sqlite3.Connection,
    records: Sequence[Record],
    conflict: ConflictStrategy = "skip",
    *,
    insert_first: Collection[type] = (),
) -> list[ImportEntityResult]:
    """Import many records with the results of `import_record` on each in order, but faster.

    Records may mix types (in foreign-key order, as bundles hold them). Not atomic as a whole:
    run it inside the caller's transaction, which rolls back if any result has an error.

    `insert_first` (from `db.bulk.bulk_load`) names record types whose runs skip the look-ups
    and are inserted straight away: the database's own constraints refuse a run that is not all
    new, and the rest of the run then goes the usual way, with the same results."""
    from kindling_bundle.db.bulk import insert_new

    check_strategy(conflict)
    results: list[ImportEntityResult] = []
    for run in runs(records):
        if type(run[0]) in insert_first:
            done = insert_new(conn, run)
            entity = entity_of(run[0])
            results.extend(ImportEntityResult(entity, r.id, "inserted") for r in run[:done])
            run = run[done:]
        if run:
            results.extend(import_run(conn, run, conflict))
    return results
