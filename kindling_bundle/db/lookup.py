"""What the database holds for a run of records: the facts the conflict rules decide on.

`look_up` answers for a whole run of records of one type in a few indexed queries (each a
`json_each` join), however long the run: the stored row with each record's id, the references
that resolve nowhere, a capsule's stored links, a summary's capsule's other summary. Decisions
taken from one look-up hold for every record of a run only while no record of it changes what
another meets (`independent_prefix`).
"""

from __future__ import annotations

import sqlite3
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

import msgspec

from kindling_bundle.db.conflicts import FIELDS, LINKS_FIELD, Found, differing, missing_links
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
from kindling_bundle.errors import RecordError
from kindling_bundle.format.stream_rules import first_repeated
from kindling_bundle.records import Capsule, Observation, Pin, Record, Summary

_PIN_TARGET_TABLES = {"observation": "observations", "summary": "summaries"}


@dataclass
class Held:
    """What the database holds for one record: enough to decide it and to write it."""

    values: tuple[Any, ...]
    """The record's column values (computed once: converting JSON columns is not free)."""
    found: Found = field(default_factory=Found)
    stored: tuple[Any, ...] | None = None
    """The stored row with the record's id: (rowid, *columns), or None."""
    holder: tuple[Any, ...] | None = None
    """A summary's capsule's other summary: (rowid, *columns), or None."""
    same_links: bool = True
    """A stored capsule links exactly the record's observation ids, in order."""


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


def absent_observations(conn: sqlite3.Connection, ids: Sequence[str]) -> list[str]:
    """Those of `ids` that are not stored observations, in list order."""
    if not ids:
        return []
    sql = (
        "SELECT j.value FROM json_each(?) AS j "
        "WHERE NOT EXISTS (SELECT 1 FROM observations AS o WHERE o.id = j.value) ORDER BY j.key"
    )
    return [value for (value,) in conn.execute(sql, (_json_list(ids),))]


def _rows(
    conn: sqlite3.Connection, table: str, columns: str, values: Sequence[str], key: str = "id"
) -> dict[str, tuple[Any, ...]]:
    """Rows (rowid, *columns) whose `key` is one of `values`, by that key."""
    if not values:
        return {}
    sql = (
        f"SELECT t.{key}, t.rowid, {', '.join(f't.{c.strip()}' for c in columns.split(','))} "
        f"FROM json_each(?) AS j JOIN {table} AS t ON t.{key} = j.value"
    )
    return {row[0]: row[1:] for row in conn.execute(sql, (_json_list(values),))}


_VALUES: dict[type, Callable[[Any], tuple[Any, ...]]] = {
    Observation: observation_values,
    Capsule: capsule_values,
    Summary: summary_values,
    Pin: pin_values,
}


def record_values(record: Record) -> tuple[Any, ...]:
    """The record's values for every column of its table, in the table's column order."""
    return _VALUES[type(record)](record)


def _found(entity: str, values: tuple[Any, ...], stored: tuple[Any, ...] | None) -> Found:
    if stored is None:
        return Found()
    return Found(differing(FIELDS[entity], stored[1:], values))


def _observations(conn: sqlite3.Connection, run: Sequence[Observation]) -> list[Held]:
    values = [observation_values(o) for o in run]
    stored = _rows(conn, "observations", OBSERVATION_COLUMNS, [o.id for o in run])
    return [
        Held(v, _found("observations", v, stored.get(o.id)), stored.get(o.id))
        for o, v in zip(run, values, strict=True)
    ]


def _capsules(conn: sqlite3.Connection, run: Sequence[Capsule]) -> list[Held]:
    stored = _rows(conn, "capsules", CAPSULE_COLUMNS, [c.id for c in run])
    twice = {c.id: first_repeated(c.observation_ids) for c in run}
    linked = [oid for c in run if twice[c.id] is None for oid in c.observation_ids]
    absent = set(absent_observations(conn, linked))
    links: dict[str, list[tuple[str, int]]] = {cid: [] for cid in stored}
    if stored:
        for cid, oid, seq in conn.execute(
            "SELECT l.capsule_id, l.observation_id, l.seq FROM json_each(?) AS j "
            "JOIN capsule_observations AS l ON l.capsule_id = j.value ORDER BY l.capsule_id, l.seq",
            (_json_list(list(stored)),),
        ):
            links[cid].append((oid, seq))
    held = []
    for capsule in run:
        values = capsule_values(capsule)
        row = stored.get(capsule.id)
        missing: list[str] = []
        if twice[capsule.id] is not None:
            problem: str | None = f"lists observation {twice[capsule.id]} more than once"
        else:
            missing = [oid for oid in capsule.observation_ids if oid in absent]
            problem = missing_links(missing) if missing else None
        if row is None:
            held.append(Held(values, Found(missing=problem, missing_ids=tuple(missing))))
            continue
        same = links[capsule.id] == [(oid, seq) for seq, oid in enumerate(capsule.observation_ids)]
        fields = differing(FIELDS["capsules"], row[1:], values)
        if not same:
            fields.append(LINKS_FIELD)
        found = Found(fields, missing=problem, missing_ids=tuple(missing))
        held.append(Held(values, found, row, same_links=same))
    return held


def _summaries(conn: sqlite3.Connection, run: Sequence[Summary]) -> list[Held]:
    capsule_ids = [s.capsule_id for s in run]
    capsules = _present(conn, "capsules", capsule_ids)
    stored = _rows(conn, "summaries", SUMMARY_COLUMNS, [s.id for s in run])
    by_capsule = _rows(conn, "summaries", SUMMARY_COLUMNS, capsule_ids, key="capsule_id")
    held = []
    for summary in run:
        values = summary_values(summary)
        row = stored.get(summary.id)
        if summary.capsule_id not in capsules:
            problem = f"capsule {summary.capsule_id} does not exist"
            lost = (summary.capsule_id,)
            held.append(Held(values, Found(missing=problem, missing_ids=lost), row))
            continue
        other = by_capsule.get(summary.capsule_id)
        if other is not None and other[1] == summary.id:
            other = None
        found = _found("summaries", values, row)
        if other is not None:
            found = Found(found.differing, holder=(summary.capsule_id, other[1]))
        held.append(Held(values, found, row, holder=other))
    return held


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


def present_targets(conn: sqlite3.Connection, pins: Sequence[Pin]) -> set[tuple[str, str]]:
    """(target type, target id) of the pins' targets that exist (no foreign key checks them)."""
    tables = [_target_table(p) for p in pins]
    found: set[tuple[str, str]] = set()
    for kind, table in _PIN_TARGET_TABLES.items():
        wanted = [p.target_id for p, t in zip(pins, tables, strict=True) if t == table]
        found.update((kind, target) for target in _present(conn, table, wanted))
    return found


def _pins(conn: sqlite3.Connection, run: Sequence[Pin]) -> list[Held]:
    values = [pin_values(p) for p in run]
    there = present_targets(conn, run)
    stored = _rows(conn, "pins", PIN_COLUMNS, [p.id for p in run])
    held = []
    for pin, v in zip(run, values, strict=True):
        if (pin.target_type, pin.target_id) not in there:
            problem = f"target {pin.target_type} {pin.target_id} does not exist"
            held.append(Held(v, Found(missing=problem, missing_ids=(pin.target_id,))))
        else:
            held.append(Held(v, _found("pins", v, stored.get(pin.id)), stored.get(pin.id)))
    return held


_LOOK_UP: dict[type, Callable[[sqlite3.Connection, Any], list[Held]]] = {
    Observation: _observations,
    Capsule: _capsules,
    Summary: _summaries,
    Pin: _pins,
}


def look_up(conn: sqlite3.Connection, run: Sequence[Record]) -> list[Held]:
    """What the database holds for each record of a run of one type, in a few queries.

    Decisions taken from one look-up hold for the whole run only if no record of it changes
    what another one meets: see `independent_prefix`."""
    look = _LOOK_UP.get(type(run[0]))
    if look is None:
        raise TypeError(f"not a Kindling record: {type(run[0]).__name__}")
    return look(conn, run)


def independent_prefix(run: Sequence[Record]) -> int:
    """How many records from the start of a run of one type may be decided from one look-up:
    up to (not including) the first id seen twice, or a capsule's second summary."""
    ids: set[str] = set()
    capsules: set[str] = set()
    for n, record in enumerate(run):
        capsule = record.capsule_id if isinstance(record, Summary) else None
        if record.id in ids or capsule in capsules:
            return n
        ids.add(record.id)
        if capsule is not None:
            capsules.add(capsule)
    return len(run)
