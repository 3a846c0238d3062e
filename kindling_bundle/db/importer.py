"""Import records into a live Kindling database, with a conflict strategy the caller chooses.

Each `import_*` function is atomic on its own (a savepoint) and composes inside a caller's
transaction. A result whose `error` is set means nothing of that record was written; the caller
(the bundle restore) turns it into ImportConflictError (MissingReferenceError when `missing` is
set) and rolls back its transaction.

Outcomes, per record:
- no stored row with that id: `inserted`;
- a stored row equal, column for column, to what the record would write (for a capsule, also
  the same observation ids in the same order): `unchanged` under every strategy, so importing
  the same data twice is a harmless no-op;
- otherwise a conflict: `skip` keeps the stored row (`skipped`), `error` returns an error naming
  the differing fields, `overwrite` replaces the row (`overwritten`).

Overwrite is an UPDATE in place, never INSERT OR REPLACE or delete-and-insert: the row keeps its
rowid, and `ON DELETE CASCADE` never fires, so an overwritten observation keeps its capsule links
and pins, and an overwritten capsule keeps its summary. Kindling's update triggers move the FTS
entry to the new content (none for a redacted observation). Before updating a row that has no
FTS entry (a redacted observation), we first give it the entry the trigger's FTS 'delete' expects:
a 'delete' of an entry that is not there silently corrupts the index statistics.

Missing references are errors under every strategy, naming the record and the missing id: a
capsule link to an absent observation (or the same observation listed twice), a summary for an
absent capsule, a pin to an absent target. Summary evidence refs are not checked here (Kindling
keeps them across deletions); `verify_import_integrity` reports unresolved ones as warnings.

A summary for a capsule that already has a summary with another id (a capsule has at most one):
`skip` keeps the stored one, `error` names both, and `overwrite` replaces it: the stored row is
updated in place to the incoming id and values (if the incoming id is itself stored for another
capsule, that row is the one updated and the displaced summary is deleted; nothing references a
summary by foreign key, and the FTS triggers follow). Pins on the replaced summary are moved to
its replacement, so no pin is left dangling and no pin is lost.

A record the database rejects (a CHECK constraint, JSON that cannot be stored) raises RecordError
naming the record; nothing of it is written.

`import_batch` gives the same results as importing the records one by one in order, but looks up
a whole run of records of one entity in a few queries and inserts the new ones with executemany.
"""

from __future__ import annotations

import os
import sqlite3
from collections.abc import Callable, Collection, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any, Literal

import msgspec

from kindling_bundle.db.connection import savepoint
from kindling_bundle.db.rows import (
    CAPSULE_COLUMNS,
    OBSERVATION_COLUMNS,
    PIN_COLUMNS,
    SUMMARY_COLUMNS,
    capsule_values,
    observation_values,
    pin_values,
    summary_values,
)
from kindling_bundle.db.schema import INDEXES, TRIGGERS
from kindling_bundle.db.writes import (
    INSERT_CAPSULE,
    INSERT_LINK,
    INSERT_OBSERVATION,
    INSERT_PIN,
    INSERT_SUMMARY,
)
from kindling_bundle.errors import RecordError
from kindling_bundle.format.stream_rules import first_repeated
from kindling_bundle.records import (
    CONFLICT_STRATEGIES,
    DENORMALIZED_SCOPE_KEYS,
    SINGULAR,
    Capsule,
    ConflictStrategy,
    Observation,
    Pin,
    Record,
    Summary,
    entity_of,
)

Outcome = Literal["inserted", "overwritten", "skipped", "unchanged"]


@dataclass(frozen=True)
class ImportEntityResult:
    """What happened to one record: an outcome, or an error (then nothing was written)."""

    entity: str  # "observations" | "capsules" | "summaries" | "pins"
    id: str
    outcome: Outcome | None  # None when error is set
    error: str | None = None
    missing: tuple[str, ...] = ()
    """With `error`: the ids of the missing records the record references, if that is why."""
    kept_id: str | None = None
    """Set when a record was skipped in favour of a stored record with another id (a capsule's
    other summary): references to this record should go to `kept_id` instead."""

    @property
    def imported(self) -> bool:
        """The record's data is now the stored row (inserted or overwritten)."""
        return self.outcome in ("inserted", "overwritten")

    @property
    def skipped(self) -> bool:
        """A conflicting stored row was kept under the `skip` strategy."""
        return self.outcome == "skipped"


def _columns(columns: str) -> list[str]:
    return [name.strip() for name in columns.split(",")]


def _field_names(columns: str, record_type: type) -> tuple[str, ...]:
    """The wire name of the record field behind each column (for conflict messages)."""
    wire = {f.name: f.encode_name for f in msgspec.structs.fields(record_type)}
    scope = set(DENORMALIZED_SCOPE_KEYS.values())
    return tuple(wire["scope_ids"] if c in scope else wire[c] for c in _columns(columns))


def _update_sql(table: str, columns: str, *, set_id: bool = False) -> str:
    """UPDATE every column (the id too when `set_id`) of the row whose id is the last parameter."""
    names = _columns(columns)
    assigned = names if set_id else names[1:]
    return f"UPDATE {table} SET {', '.join(f'{c} = ?' for c in assigned)} WHERE id = ?"


_OBSERVATION_FIELDS = _field_names(OBSERVATION_COLUMNS, Observation)
_CAPSULE_FIELDS = _field_names(CAPSULE_COLUMNS, Capsule)
_SUMMARY_FIELDS = _field_names(SUMMARY_COLUMNS, Summary)
_PIN_FIELDS = _field_names(PIN_COLUMNS, Pin)
_LINKS_FIELD = "observationIds"

_UPDATE_OBSERVATION = _update_sql("observations", OBSERVATION_COLUMNS)
_UPDATE_CAPSULE = _update_sql("capsules", CAPSULE_COLUMNS)
_UPDATE_SUMMARY = _update_sql("summaries", SUMMARY_COLUMNS, set_id=True)
_UPDATE_PIN = _update_sql("pins", PIN_COLUMNS)

_PIN_TARGET_TABLES = {"observation": "observations", "summary": "summaries"}
_MISSING_LISTED = 5


def check_strategy(conflict: str) -> None:
    """Refuse a conflict strategy that is not one of CONFLICT_STRATEGIES (ValueError)."""
    if conflict not in CONFLICT_STRATEGIES:
        raise ValueError(
            f"unknown conflict strategy {conflict!r} (expected one of: "
            f"{', '.join(CONFLICT_STRATEGIES)})"
        )


def _differing(fields: Sequence[str], stored: Sequence[Any], incoming: Sequence[Any]) -> list[str]:
    names: list[str] = []
    for name, old, new in zip(fields, stored, incoming, strict=True):
        if old != new and name not in names:
            names.append(name)
    return names


def _conflict(entity: str, record_id: str, fields: Sequence[str]) -> ImportEntityResult:
    message = (
        f"{SINGULAR[entity]} {record_id}: conflicts with the stored row "
        f"(fields: {', '.join(fields)})"
    )
    return ImportEntityResult(entity, record_id, None, message)


def _settled(
    entity: str, record_id: str, fields: Sequence[str], conflict: ConflictStrategy
) -> ImportEntityResult | None:
    """The outcome for a stored row differing from the record in `fields` (none: identical),
    or None when the record is to overwrite it."""
    if not fields:
        return ImportEntityResult(entity, record_id, "unchanged")
    if conflict == "skip":
        return ImportEntityResult(entity, record_id, "skipped")
    if conflict == "error":
        return _conflict(entity, record_id, fields)
    return None


def _failed(
    entity: str, record_id: str, reason: str, missing: Sequence[str] = ()
) -> ImportEntityResult:
    message = f"{SINGULAR[entity]} {record_id}: {reason}"
    return ImportEntityResult(entity, record_id, None, message, tuple(missing))


@contextmanager
def _atomic(conn: sqlite3.Connection, entity: str, record_id: str) -> Iterator[None]:
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


def _json_list(values: Sequence[str]) -> str:
    return msgspec.json.encode(list(values)).decode()


def _present(
    conn: sqlite3.Connection, table: str, values: Sequence[str], column: str = "id"
) -> set[str]:
    """Those of `values` found in `table.column`, in one indexed query however many there are."""
    if not values:
        return set()
    sql = (
        f"SELECT j.value FROM json_each(?) AS j "
        f"WHERE EXISTS (SELECT 1 FROM {table} AS t WHERE t.{column} = j.value)"
    )
    return {value for (value,) in conn.execute(sql, (_json_list(values),))}


def _absent_observations(conn: sqlite3.Connection, ids: Sequence[str]) -> list[str]:
    """Those of `ids` that are not stored observations, in list order."""
    if not ids:
        return []
    sql = (
        "SELECT j.value FROM json_each(?) AS j "
        "WHERE NOT EXISTS (SELECT 1 FROM observations AS o WHERE o.id = j.value) ORDER BY j.key"
    )
    return [value for (value,) in conn.execute(sql, (_json_list(ids),))]


def _ensure_fts_entry(conn: sqlite3.Connection, fts: str, rowid: int, content: str) -> None:
    """Index a row that the index lacks, so the update trigger's FTS 'delete' of its old content
    removes an entry that exists (a 'delete' of a missing entry corrupts FTS5's statistics)."""
    indexed = conn.execute(f"SELECT 1 FROM {fts}_docsize WHERE id = ?", (rowid,)).fetchone()
    if indexed is None:
        conn.execute(f"INSERT INTO {fts}(rowid, content) VALUES (?, ?)", (rowid, content))


def import_observation(
    conn: sqlite3.Connection, obs: Observation, conflict: ConflictStrategy = "skip"
) -> ImportEntityResult:
    """Import one observation; overwrite updates it in place, keeping its links and pins."""
    check_strategy(conflict)
    values = observation_values(obs)
    stored = conn.execute(
        f"SELECT rowid, {OBSERVATION_COLUMNS} FROM observations WHERE id = ?", (obs.id,)
    ).fetchone()
    if stored is None:
        with _atomic(conn, "observations", obs.id):
            conn.execute(INSERT_OBSERVATION, values)
        return ImportEntityResult("observations", obs.id, "inserted")
    fields = _differing(_OBSERVATION_FIELDS, stored[1:], values)
    settled = _settled("observations", obs.id, fields, conflict)
    if settled is not None:
        return settled
    with _atomic(conn, "observations", obs.id):
        _ensure_fts_entry(conn, "observations_fts", stored[0], stored[3])
        conn.execute(_UPDATE_OBSERVATION, (*values[1:], obs.id))
    return ImportEntityResult("observations", obs.id, "overwritten")


def _link_problem(conn: sqlite3.Connection, capsule: Capsule) -> ImportEntityResult | None:
    """Why the capsule's links cannot be written, or None."""
    twice = first_repeated(capsule.observation_ids)
    if twice is not None:
        return _failed("capsules", capsule.id, f"lists observation {twice} more than once")
    missing = _absent_observations(conn, capsule.observation_ids)
    if missing:
        return _failed("capsules", capsule.id, _missing_links_problem(missing), missing)
    return None


def _missing_links_problem(missing: Sequence[str]) -> str:
    if len(missing) == 1:
        return f"links to observation {missing[0]}, which does not exist"
    listed = ", ".join(missing[:_MISSING_LISTED])
    more = len(missing) - _MISSING_LISTED
    suffix = f" (and {more} more)" if more > 0 else ""
    return f"links to observations {listed}{suffix}, which do not exist"


def _insert_links(conn: sqlite3.Connection, capsule: Capsule) -> None:
    conn.executemany(
        INSERT_LINK, ((capsule.id, oid, seq) for seq, oid in enumerate(capsule.observation_ids))
    )


def import_capsule(
    conn: sqlite3.Connection, capsule: Capsule, conflict: ConflictStrategy = "skip"
) -> ImportEntityResult:
    """Import one capsule with its ordered observation links, together or not at all.

    Overwrite updates the capsule in place (keeping its summary) and sets its links to exactly
    the incoming observation ids, seq 0..n-1 in that order."""
    check_strategy(conflict)
    values = capsule_values(capsule)
    problem = _link_problem(conn, capsule)
    if problem is not None:
        return problem
    stored = conn.execute(
        f"SELECT {CAPSULE_COLUMNS} FROM capsules WHERE id = ?", (capsule.id,)
    ).fetchone()
    if stored is None:
        with _atomic(conn, "capsules", capsule.id):
            conn.execute(INSERT_CAPSULE, values)
            _insert_links(conn, capsule)
        return ImportEntityResult("capsules", capsule.id, "inserted")
    links = conn.execute(
        "SELECT observation_id, seq FROM capsule_observations WHERE capsule_id = ? ORDER BY seq",
        (capsule.id,),
    ).fetchall()
    fields = _differing(_CAPSULE_FIELDS, stored, values)
    same_links = links == [(oid, seq) for seq, oid in enumerate(capsule.observation_ids)]
    if not same_links:
        fields.append(_LINKS_FIELD)
    settled = _settled("capsules", capsule.id, fields, conflict)
    if settled is not None:
        return settled
    with _atomic(conn, "capsules", capsule.id):
        conn.execute(_UPDATE_CAPSULE, (*values[1:], capsule.id))
        if not same_links:  # link rows carry nothing but the order: rewriting them loses nothing
            conn.execute("DELETE FROM capsule_observations WHERE capsule_id = ?", (capsule.id,))
            _insert_links(conn, capsule)
    return ImportEntityResult("capsules", capsule.id, "overwritten")


def import_summary(
    conn: sqlite3.Connection, summary: Summary, conflict: ConflictStrategy = "skip"
) -> ImportEntityResult:
    """Import the summary of a capsule (see the module docstring for a capsule that already
    has a different summary)."""
    check_strategy(conflict)
    values = summary_values(summary)
    sid, cid = summary.id, summary.capsule_id
    if conn.execute("SELECT 1 FROM capsules WHERE id = ?", (cid,)).fetchone() is None:
        return _failed("summaries", sid, f"capsule {cid} does not exist", [cid])
    select = f"SELECT rowid, {SUMMARY_COLUMNS} FROM summaries"
    stored = conn.execute(f"{select} WHERE id = ?", (sid,)).fetchone()
    holder = conn.execute(f"{select} WHERE capsule_id = ? AND id != ?", (cid, sid)).fetchone()
    if stored is None and holder is None:
        with _atomic(conn, "summaries", sid):
            conn.execute(INSERT_SUMMARY, values)
        return ImportEntityResult("summaries", sid, "inserted")
    if holder is None:
        fields = _differing(_SUMMARY_FIELDS, stored[1:], values)
        if not fields:
            return ImportEntityResult("summaries", sid, "unchanged")
        if conflict == "error":
            return _conflict("summaries", sid, fields)
    elif conflict == "error":
        return _failed(
            "summaries", sid, f"capsule {cid} already has a different summary {holder[1]}"
        )
    if conflict == "skip":
        kept = holder[1] if holder is not None and stored is None else None
        return ImportEntityResult("summaries", sid, "skipped", kept_id=kept)
    with _atomic(conn, "summaries", sid):
        if holder is not None and stored is not None:
            _ensure_fts_entry(conn, "summaries_fts", holder[0], holder[3])
            conn.execute("DELETE FROM summaries WHERE id = ?", (holder[1],))
        target = stored if stored is not None else holder
        _ensure_fts_entry(conn, "summaries_fts", target[0], target[3])
        conn.execute(_UPDATE_SUMMARY, (*values, target[1]))
        if holder is not None:
            conn.execute(
                "UPDATE pins SET target_id = ? WHERE target_type = 'summary' AND target_id = ?",
                (sid, holder[1]),
            )
    return ImportEntityResult("summaries", sid, "overwritten")


def _target_table(pin: Pin) -> str:
    table = _PIN_TARGET_TABLES.get(pin.target_type)
    if table is None:
        raise RecordError(
            f"pin {pin.id}: field targetType must be one of "
            f"{', '.join(_PIN_TARGET_TABLES)}, got {pin.target_type!r}",
            entity="pins",
            record_id=pin.id,
        )
    return table


def import_pin(
    conn: sqlite3.Connection, pin: Pin, conflict: ConflictStrategy = "skip"
) -> ImportEntityResult:
    """Import one pin; its target must exist (pins have no foreign key to enforce it)."""
    check_strategy(conflict)
    values = pin_values(pin)
    table = _target_table(pin)
    if conn.execute(f"SELECT 1 FROM {table} WHERE id = ?", (pin.target_id,)).fetchone() is None:
        target = f"{pin.target_type} {pin.target_id}"
        return _failed("pins", pin.id, f"target {target} does not exist", [pin.target_id])
    stored = conn.execute(f"SELECT {PIN_COLUMNS} FROM pins WHERE id = ?", (pin.id,)).fetchone()
    if stored is None:
        with _atomic(conn, "pins", pin.id):
            conn.execute(INSERT_PIN, values)
        return ImportEntityResult("pins", pin.id, "inserted")
    fields = _differing(_PIN_FIELDS, stored, values)
    settled = _settled("pins", pin.id, fields, conflict)
    if settled is not None:
        return settled
    with _atomic(conn, "pins", pin.id):
        conn.execute(_UPDATE_PIN, (*values[1:], pin.id))
    return ImportEntityResult("pins", pin.id, "overwritten")


_IMPORTERS: dict[type, Callable[..., ImportEntityResult]] = {
    Observation: import_observation,
    Capsule: import_capsule,
    Summary: import_summary,
    Pin: import_pin,
}


def _importer(record: object) -> Callable[..., ImportEntityResult]:
    importer = _IMPORTERS.get(type(record))
    if importer is None:
        raise TypeError(f"not a Kindling record: {type(record).__name__}")
    return importer


def import_record(
    conn: sqlite3.Connection, record: Record, conflict: ConflictStrategy = "skip"
) -> ImportEntityResult:
    """Import any record, dispatching on its type."""
    return _importer(record)(conn, record, conflict)


# --- the batch path -------------------------------------------------------------------------


def _fast_observations(conn: sqlite3.Connection, run: Sequence[Observation]) -> list[bool]:
    stored = _present(conn, "observations", [o.id for o in run])
    return [o.id not in stored for o in run]


def _fast_capsules(conn: sqlite3.Connection, run: Sequence[Capsule]) -> list[bool]:
    stored = _present(conn, "capsules", [c.id for c in run])
    fresh = [c.id not in stored and first_repeated(c.observation_ids) is None for c in run]
    linked = [oid for c, ok in zip(run, fresh, strict=True) if ok for oid in c.observation_ids]
    missing = set(_absent_observations(conn, linked))
    if not missing:
        return fresh
    return [ok and missing.isdisjoint(c.observation_ids) for c, ok in zip(run, fresh, strict=True)]


def _fast_summaries(conn: sqlite3.Connection, run: Sequence[Summary]) -> list[bool]:
    capsule_ids = [s.capsule_id for s in run]
    if first_repeated(capsule_ids) is not None:  # the second one meets the first: go one by one
        return [False] * len(run)
    stored = _present(conn, "summaries", [s.id for s in run])
    summarised = _present(conn, "summaries", capsule_ids, column="capsule_id")
    capsules = _present(conn, "capsules", capsule_ids)
    return [
        s.id not in stored and s.capsule_id in capsules and s.capsule_id not in summarised
        for s in run
    ]


def _fast_pins(conn: sqlite3.Connection, run: Sequence[Pin]) -> list[bool]:
    stored = _present(conn, "pins", [p.id for p in run])
    targets = {
        kind: _present(conn, table, [p.target_id for p in run if p.target_type == kind])
        for kind, table in _PIN_TARGET_TABLES.items()
    }
    return [p.id not in stored and p.target_id in targets.get(p.target_type, ()) for p in run]


def _insert_observations(conn: sqlite3.Connection, run: Sequence[Observation]) -> None:
    conn.executemany(INSERT_OBSERVATION, [observation_values(o) for o in run])


def _insert_capsules(conn: sqlite3.Connection, run: Sequence[Capsule]) -> None:
    conn.executemany(INSERT_CAPSULE, [capsule_values(c) for c in run])
    conn.executemany(
        INSERT_LINK,
        [(c.id, oid, seq) for c in run for seq, oid in enumerate(c.observation_ids)],
    )


def _insert_summaries(conn: sqlite3.Connection, run: Sequence[Summary]) -> None:
    conn.executemany(INSERT_SUMMARY, [summary_values(s) for s in run])


def _insert_pins(conn: sqlite3.Connection, run: Sequence[Pin]) -> None:
    conn.executemany(INSERT_PIN, [pin_values(p) for p in run])


_BATCH: dict[type, tuple[Callable[..., list[bool]], Callable[..., None]]] = {
    Observation: (_fast_observations, _insert_observations),
    Capsule: (_fast_capsules, _insert_capsules),
    Summary: (_fast_summaries, _insert_summaries),
    Pin: (_fast_pins, _insert_pins),
}


# Records whose batch insert is one executemany into a rowid table: inserted first without a
# savepoint (see _insert_unguarded).
_UNGUARDED_TABLES: dict[type, str] = {Observation: "observations", Summary: "summaries"}


def _insert_unguarded(
    conn: sqlite3.Connection,
    insert: Callable[[sqlite3.Connection, Sequence[Record]], None],
    table: str,
    pending: Sequence[Record],
) -> int:
    """Insert a run with one executemany and no savepoint; how many of it are now stored.

    A savepoint makes SQLite copy every page it changes that existed before (the primary key
    index, in random order) to a sub-journal: a third of the time spent inserting observations.
    Only a refused row (a constraint) is retried that way; any other failure (a full disk, an
    I/O error) propagates, since SQLite may have rolled the whole transaction back.
    Without one, a row the database refuses is rolled back on its own, and those before it stay,
    exactly as importing them one by one would have stored them (the same rows and rowids, new
    rowids being the largest plus one); the caller redoes the rest one by one."""
    before = conn.execute(f"SELECT coalesce(max(rowid), 0) FROM {table}").fetchone()[0]
    try:
        insert(conn, pending)
    except (sqlite3.IntegrityError, RecordError):
        stored = conn.execute(f"SELECT count(*) FROM {table} WHERE rowid > ?", (before,))
        count: int = stored.fetchone()[0]
        return count
    return len(pending)


def _all_new(conn: sqlite3.Connection, run: Sequence[Record]) -> list[bool]:
    """Classify nothing: try the whole run as new; the database refuses it if it is not."""
    return [True] * len(run)


def _import_run(
    conn: sqlite3.Connection,
    run: Sequence[Record],
    conflict: ConflictStrategy,
    insert_first: Collection[type],
) -> list[ImportEntityResult]:
    """Import records of one type: the new ones with executemany, the others one by one, in
    order, so the results (and rowids) are those of importing them one by one."""
    single = _importer(run[0])
    if first_repeated([r.id for r in run]) is not None:  # a later copy meets an earlier one
        return [single(conn, record, conflict) for record in run]
    classify, insert = _BATCH[type(run[0])]
    table = _UNGUARDED_TABLES.get(type(run[0])) if type(run[0]) in insert_first else None
    if type(run[0]) in insert_first:
        classify = _all_new
    entity = entity_of(run[0])
    results: list[ImportEntityResult] = []
    pending: list[Record] = []

    def flush() -> None:
        if table is not None:
            done = _insert_unguarded(conn, insert, table, pending)
        else:
            try:
                with savepoint(conn, "kindling_batch"):
                    insert(conn, pending)
                done = len(pending)
            except (sqlite3.IntegrityError, RecordError):
                done = 0
        results.extend(ImportEntityResult(entity, r.id, "inserted") for r in pending[:done])
        # Redo the rest one by one: the culprit raises its own error naming it, as it would have.
        results.extend(single(conn, record, conflict) for record in pending[done:])
        pending.clear()

    for record, fast in zip(run, classify(conn, run), strict=True):
        if fast:
            pending.append(record)
            continue
        if pending:
            flush()
        results.append(single(conn, record, conflict))
    if pending:
        flush()
    return results


def import_batch(
    conn: sqlite3.Connection,
    records: Sequence[Record],
    conflict: ConflictStrategy = "skip",
    *,
    insert_first: Collection[type] = (),
) -> list[ImportEntityResult]:
    """Import many records with the results of `import_record` on each in order, but faster.

    Records may mix types (in foreign-key order, as bundles hold them). Each run of one type is
    looked up in a few queries; the new records are inserted with executemany, the rest go
    through the per-record functions. Not atomic as a whole: run it inside the caller's
    transaction, which rolls back if any result has an error.

    `insert_first` (from `bulk_load`) names record types whose runs skip the lookups and are
    inserted straight away: the database's own constraints refuse a run that is not all new,
    and the run is then redone one record at a time, with the same results."""
    check_strategy(conflict)
    results: list[ImportEntityResult] = []
    start = 0
    while start < len(records):
        kind = type(records[start])
        end = start + 1
        while end < len(records) and type(records[end]) is kind:
            end += 1
        results.extend(_import_run(conn, records[start:end], conflict, insert_first))
        start = end
    return results


# --- loading into an empty database ----------------------------------------------------------

DATA_TABLES = ("observations", "capsules", "capsule_observations", "summaries", "pins")

# Each full-text index, the table it indexes and which of its rows Kindling's triggers index.
_FTS_INDEXED = {
    "observations_fts": ("observations", "redacted = 0"),
    "summaries_fts": ("summaries", "1"),
}

_BULK_CACHE_KIB = 32 << 10
"""SQLite page cache while loading (the default is 2 MiB), so that the primary key indexes,
written in random order (UUID ids), are not re-read from the file for every insert. Larger was
no faster, smaller slower (bench/RESULTS.md); peak memory grows with it."""
_SORT_CACHE_KIB = 4 << 10
"""The page cache while the indexes are re-created: SQLite's sorter may buffer as much as the
page cache holds before it spills to a temporary file, so the two would otherwise add up."""


_FTS_HASH_BYTES = 16 << 20
"""FTS5's pending index while indexing a load (default 1 MiB; at every fill it is written out as
a segment, and segments are merged again and again); larger saved a little more time for much
more memory (bench/RESULTS.md)."""
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


@contextmanager
def foreign_keys_checked_after(conn: sqlite3.Connection) -> Iterator[bool]:
    """Into an empty database, check foreign keys once after the load instead of on every row.

    Yields True if it turned enforcement off (only outside a transaction, on a connection that
    enforces them, with every data table empty), and turns it back on at the end. Then pass
    `references_checked_after=True` to `bulk_load`, and before committing call
    `first_dangling_reference` whenever the integrity report is not clean: a missing reference
    fails the import with the message importing record by record would have given. The link
    rows' two lookups each were a large part of a big import (3013920 in bench/RESULTS.md); the
    integrity check proves the same keys with ordered index scans in a fraction of that.
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
        missing = _absent_observations(conn, [oid for (oid,) in linked])
        return _failed("capsules", capsule[0], _missing_links_problem(missing), missing)
    summary = conn.execute(
        "SELECT id, capsule_id FROM summaries AS s WHERE NOT EXISTS "
        "(SELECT 1 FROM capsules AS c WHERE c.id = s.capsule_id) ORDER BY rowid LIMIT 1"
    ).fetchone()
    if summary is not None:
        return _failed(
            "summaries", summary[0], f"capsule {summary[1]} does not exist", [summary[1]]
        )
    return None


@contextmanager
def bulk_load(
    conn: sqlite3.Connection, *, references_checked_after: bool = False
) -> Iterator[frozenset[type]]:
    """Load faster into tables that start empty, with exactly the results of the usual path.

    Yields the record types to pass to `import_batch(..., insert_first=...)`: those whose
    table is empty, so that a run is inserted without looking each id up first (observations;
    capsules and summaries too when foreign keys are enforced, as they are on every connection
    `open_store` makes: a missing reference, a repeated id or a second summary for a capsule is
    refused by a constraint, and the run is then redone record by record), or when the caller
    checks them after the load (`foreign_keys_checked_after`). Pins always look up their
    targets, which no constraint checks.

    When the whole database is empty (no records, empty full-text indexes), Kindling's own
    triggers and secondary indexes are dropped for the load and re-created at its end, in their
    original order and from their own stored SQL, as a `.dump` restore does. Building an index
    by sorting once beats keeping it ordered through a million random inserts, and Kindling's
    FTS insert triggers index one row per statement while FTS5 writes its pending index out at
    every statement's savepoint: a large load became many tiny segments merged again and again
    (d9a0714 in bench/RESULTS.md). Instead every row the triggers would have
    indexed (redacted observations left out) is indexed by one INSERT ... SELECT in rowid order,
    so the index holds the same entries as the trigger path (same rows, tokens, positions and
    statistics; segments may be laid out differently). Anything that reached an index during
    the load (a record overwritten within it) is cleared before that one rebuild. Triggers and
    indexes that are not Kindling's own are left in place (a UNIQUE index keeps enforcing).

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
    if empty == set(DATA_TABLES) and all(_empty(conn, f"{fts}_docsize") for fts in _FTS_INDEXED):
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
            for fts, (table, indexed) in _FTS_INDEXED.items():
                if not _empty(conn, f"{fts}_docsize"):
                    conn.execute(f"INSERT INTO {fts}({fts}) VALUES ('delete-all')")
                with _fts_hash_size(conn, fts):
                    conn.execute(
                        f"INSERT INTO {fts}(rowid, content) "
                        f"SELECT rowid, content FROM {table} WHERE {indexed} ORDER BY rowid"
                    )
            conn.execute(f"PRAGMA cache_size = -{_SORT_CACHE_KIB}")
            conn.execute(f"PRAGMA threads = {_SORT_THREADS}")
            for sql in deferred:
                conn.execute(sql)
    finally:
        conn.execute(f"PRAGMA cache_size = {previous_cache}")
        conn.execute(f"PRAGMA threads = {previous_threads}")


@contextmanager
def _fts_hash_size(conn: sqlite3.Connection, fts: str) -> Iterator[None]:
    """A larger pending index for one bulk indexing statement. FTS5 stores the setting in the
    index's config table; the row is deleted afterwards, so the database holds no setting that
    Kindling's own databases do not (one someone set on purpose is left alone)."""
    config = f"{fts}_config"
    if conn.execute(f"SELECT 1 FROM {config} WHERE k = 'hashsize'").fetchone() is not None:
        yield
        return
    conn.execute(f"INSERT INTO {fts}({fts}, rank) VALUES ('hashsize', {_FTS_HASH_BYTES})")
    yield
    conn.execute(f"DELETE FROM {config} WHERE k = 'hashsize'")
