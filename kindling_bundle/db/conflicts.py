"""The import conflict rules, stated once: what happens to a record, given what the database holds.

Every import path (one record at a time, the batch path, the empty-database bulk load, and the
live import in short transactions) looks up what the database holds for a record, and asks
`decide` for the outcome. The rules, per record, in the order they are checked:

| what the database holds                                    | skip      | overwrite   | error     |
|------------------------------------------------------------|-----------|-------------|-----------|
| a reference of the record that resolves nowhere            | error     | error       | error     |
| no row with its id (a summary: nor another for its capsule)| inserted  | inserted    | inserted  |
| a summary's capsule has another summary (another id)       | skipped*  | overwritten | error     |
| a row equal, column for column, to what the record writes  | unchanged | unchanged   | unchanged |
| a row that differs                                         | skipped   | overwritten | error     |

(*) references to the skipped summary should go to the one kept (`kept_id`), when no row has
the skipped summary's own id. "Equal" includes a capsule's observation ids, in order; so
importing the same data twice is a harmless no-op. An error names the record and either the
missing reference, the fields that differ, or the capsule's other summary.

Missing references: a capsule link to an absent observation (or the same observation listed
twice), a summary of an absent capsule, a pin on an absent target. Summary evidence refs are not
checked (Kindling keeps them across deletions; the integrity report warns about them).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Literal

import msgspec

from kindling_bundle.db.rows import (
    CAPSULE_COLUMNS,
    OBSERVATION_COLUMNS,
    PIN_COLUMNS,
    SUMMARY_COLUMNS,
    column_names,
)
from kindling_bundle.records import (
    CONFLICT_STRATEGIES,
    DENORMALIZED_SCOPE_KEYS,
    SINGULAR,
    Capsule,
    ConflictStrategy,
    Observation,
    Pin,
    Summary,
)

Outcome = Literal["inserted", "overwritten", "skipped", "unchanged"]
Write = Literal["insert", "update", "none"]
"""What the outcome asks of the database: insert the record, update stored rows, or nothing."""

LINKS_FIELD = "observationIds"
_MISSING_LISTED = 5


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


@dataclass(frozen=True)
class Found:
    """What the database holds that decides one record's fate (the left column of the table)."""

    differing: Sequence[str] | None = None
    """None: no row has the record's id; empty: the row is equal; else the fields that differ."""
    missing: str | None = None
    """Why a reference of the record resolves nowhere, or None."""
    missing_ids: tuple[str, ...] = ()
    """With `missing`: the ids that resolve nowhere."""
    holder: tuple[str, str] | None = None
    """For a summary whose capsule has another summary (another id): (capsule id, that id)."""


def check_strategy(conflict: str) -> None:
    """Refuse a conflict strategy that is not one of CONFLICT_STRATEGIES (ValueError)."""
    if conflict not in CONFLICT_STRATEGIES:
        raise ValueError(
            f"unknown conflict strategy {conflict!r} (expected one of: "
            f"{', '.join(CONFLICT_STRATEGIES)})"
        )


def decide(
    entity: str, record_id: str, found: Found, conflict: ConflictStrategy
) -> tuple[ImportEntityResult, Write]:
    """The rule table above: the record's result, and the write it asks for."""
    if found.missing is not None:
        return failed(entity, record_id, found.missing, found.missing_ids), "none"
    if found.holder is not None:
        capsule, other = found.holder
        if conflict == "error":
            reason = f"capsule {capsule} already has a different summary {other}"
            return failed(entity, record_id, reason), "none"
        if conflict == "skip":
            kept = other if found.differing is None else None
            return ImportEntityResult(entity, record_id, "skipped", kept_id=kept), "none"
        return ImportEntityResult(entity, record_id, "overwritten"), "update"
    if found.differing is None:
        return ImportEntityResult(entity, record_id, "inserted"), "insert"
    if not found.differing:
        return ImportEntityResult(entity, record_id, "unchanged"), "none"
    if conflict == "skip":
        return ImportEntityResult(entity, record_id, "skipped"), "none"
    if conflict == "error":
        reason = f"conflicts with the stored row (fields: {', '.join(found.differing)})"
        return failed(entity, record_id, reason), "none"
    return ImportEntityResult(entity, record_id, "overwritten"), "update"


def failed(
    entity: str, record_id: str, reason: str, missing: Sequence[str] = ()
) -> ImportEntityResult:
    """An error result naming the record (and the missing ids, if that is why)."""
    message = f"{SINGULAR[entity]} {record_id}: {reason}"
    return ImportEntityResult(entity, record_id, None, message, tuple(missing))


def differing(
    fields: Sequence[str], stored: Sequence[object], incoming: Sequence[object]
) -> list[str]:
    """The wire names of the fields whose columns differ, each once, in column order."""
    names: list[str] = []
    for name, old, new in zip(fields, stored, incoming, strict=True):
        if old != new and name not in names:
            names.append(name)
    return names


def missing_links(missing: Sequence[str]) -> str:
    """Why a capsule's links cannot be written: the observations that do not exist."""
    if len(missing) == 1:
        return f"links to observation {missing[0]}, which does not exist"
    listed = ", ".join(missing[:_MISSING_LISTED])
    more = len(missing) - _MISSING_LISTED
    suffix = f" (and {more} more)" if more > 0 else ""
    return f"links to observations {listed}{suffix}, which do not exist"


def _field_names(columns: str, record_type: type) -> tuple[str, ...]:
    """The wire name of the record field behind each column (for conflict messages)."""
    wire = {f.name: f.encode_name for f in msgspec.structs.fields(record_type)}
    scope = set(DENORMALIZED_SCOPE_KEYS.values())
    return tuple(wire["scope_ids"] if c in scope else wire[c] for c in column_names(columns))


FIELDS: dict[str, tuple[str, ...]] = {
    "observations": _field_names(OBSERVATION_COLUMNS, Observation),
    "capsules": _field_names(CAPSULE_COLUMNS, Capsule),
    "summaries": _field_names(SUMMARY_COLUMNS, Summary),
    "pins": _field_names(PIN_COLUMNS, Pin),
}
"""Per entity, the wire name of the field behind each stored column, in column order."""
