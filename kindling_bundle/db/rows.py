"""Mapping between database rows and records, in both directions, losing nothing.

JSON columns are decoded into values on the way out and written back as `JSON.stringify` would
on the way in, so a row Kindling wrote comes back byte for byte. The denormalized scope columns
are always derived from `scope_ids`, exactly as Kindling's store derives them.
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

import msgspec

from kindling_bundle.errors import RecordError
from kindling_bundle.kindling_json import jsjson
from kindling_bundle.records import (
    DENORMALIZED_SCOPE_KEYS,
    Capsule,
    Observation,
    Pin,
    Summary,
)

OBSERVATION_COLUMNS = (
    "id, kind, content, provenance, ts, scope_ids, redacted, session_id, repo_id, agent_id, user_id"
)
CAPSULE_COLUMNS = (
    "id, type, intent, status, opened_at, closed_at, scope_ids, session_id, repo_id, agent_id, "
    "user_id"
)
SUMMARY_COLUMNS = "id, capsule_id, content, confidence, created_at, evidence_refs"
PIN_COLUMNS = (
    "id, target_type, target_id, reason, created_at, expires_at, scope_ids, session_id, repo_id, "
    "agent_id, user_id"
)
LINK_COLUMNS = "capsule_id, observation_id, seq"

Row = tuple[Any, ...]
"""A row as sqlite3 returns it: what each column holds is up to the statement."""
Values = tuple[str | int | float | None, ...]
"""The parameters of one INSERT or UPDATE, in the order of one of the *_COLUMNS above."""

# The SELECT lists that `*_from_row` expects (the denormalized columns are not read back).
OBSERVATION_SELECT = "id, kind, content, provenance, ts, scope_ids, redacted"
CAPSULE_SELECT = "id, type, intent, status, opened_at, closed_at, scope_ids"
SUMMARY_SELECT = SUMMARY_COLUMNS
PIN_SELECT = "id, target_type, target_id, reason, created_at, expires_at, scope_ids"

CAPSULE_LINKS = (
    "(SELECT json_group_array(CASE WHEN typeof(observation_id) = 'text' THEN observation_id END) "
    "FROM (SELECT observation_id FROM capsule_observations WHERE capsule_id = c.id ORDER BY seq))"
)
"""The links of capsule `c`, in `seq` order, as one JSON array that SQLite builds from an index
seek (an aggregate over a subquery with ORDER BY, which SQLite never flattens, so the order
holds). A link whose id is not text (only a BLOB can be, in a TEXT column) becomes null, which
`capsule_with_links` refuses."""

_LINK_IDS = msgspec.json.Decoder(list[str])


def column_names(columns: str) -> tuple[str, ...]:
    """The names in a comma-separated list of columns (one of the *_COLUMNS or *_SELECT)."""
    return tuple(column.strip() for column in columns.split(","))


def prefixed(alias: str, columns: str) -> str:
    """`columns` (one of the *_SELECT lists) qualified by a table alias."""
    return ", ".join(f"{alias}.{column}" for column in column_names(columns))


def _json_column(text: str, entity: str, record_id: str, column: str) -> Any:
    try:
        return jsjson.loads(text)
    except ValueError as exc:
        raise RecordError(
            f"{entity} {record_id}: column {column} is not valid JSON ({exc})",
            entity=entity,
            record_id=record_id,
        ) from None


def _dumps(value: Any, entity: str, record_id: str, field: str) -> str:
    try:
        return jsjson.dumps(value)
    except (ValueError, TypeError) as exc:
        raise RecordError(
            f"{entity} {record_id}: field {field} cannot be stored as JSON ({exc})",
            entity=entity,
            record_id=record_id,
        ) from None


_SCOPE_KEYS = tuple(DENORMALIZED_SCOPE_KEYS)


def _scope_columns(scope_ids: dict[str, str]) -> tuple[str | None, ...]:
    return tuple(map(scope_ids.get, _SCOPE_KEYS))


def observation_from_row(row: Row) -> Observation:
    """A row of `SELECT {OBSERVATION_SELECT}` as a record."""
    oid = row[0]
    return Observation(
        id=oid,
        kind=row[1],
        content=row[2],
        provenance=_json_column(row[3], "observation", oid, "provenance"),
        ts=row[4],
        scope_ids=_json_column(row[5], "observation", oid, "scope_ids"),
        redacted=bool(row[6]),
    )


def observation_values(obs: Observation) -> Values:
    """Values for every column of `observations`, in OBSERVATION_COLUMNS order."""
    return (
        obs.id,
        obs.kind,
        obs.content,
        _dumps(obs.provenance, "observation", obs.id, "provenance"),
        obs.ts,
        _dumps(obs.scope_ids, "observation", obs.id, "scopeIds"),
        int(obs.redacted),
        *_scope_columns(obs.scope_ids),
    )


def capsule_from_row(row: Row, observation_ids: list[str]) -> Capsule:
    """A row of `SELECT {CAPSULE_SELECT}` and its ordered links as a record."""
    cid = row[0]
    return Capsule(
        id=cid,
        type=row[1],
        intent=row[2],
        status=row[3],
        opened_at=row[4],
        closed_at=row[5],
        scope_ids=_json_column(row[6], "capsule", cid, "scope_ids"),
        observation_ids=observation_ids,
    )


def capsule_with_links(row: Row) -> Capsule:
    """A row of `SELECT {CAPSULE_SELECT}, {CAPSULE_LINKS}` as a record."""
    try:
        observation_ids = _LINK_IDS.decode(row[-1])
    except msgspec.ValidationError:
        raise RecordError(
            f"capsule {row[0]}: a link in capsule_observations holds an observation id that is "
            "not text",
            entity="capsules",
            record_id=row[0],
        ) from None
    return capsule_from_row(row, observation_ids)


def capsule_values(capsule: Capsule) -> Values:
    """Values for every column of `capsules`, in CAPSULE_COLUMNS order."""
    return (
        capsule.id,
        capsule.type,
        capsule.intent,
        capsule.status,
        capsule.opened_at,
        capsule.closed_at,
        _dumps(capsule.scope_ids, "capsule", capsule.id, "scopeIds"),
        *_scope_columns(capsule.scope_ids),
    )


def link_values(capsules: Iterable[Capsule]) -> list[Values]:
    """Values for the `capsule_observations` rows of the capsules' links, in LINK_COLUMNS order:
    seq 0..n-1 in `observation_ids` order."""
    return [(c.id, oid, seq) for c in capsules for seq, oid in enumerate(c.observation_ids)]


def summary_from_row(row: Row) -> Summary:
    """A row of `SELECT {SUMMARY_SELECT}` as a record."""
    sid = row[0]
    return Summary(
        id=sid,
        capsule_id=row[1],
        content=row[2],
        confidence=row[3],
        created_at=row[4],
        evidence_refs=_json_column(row[5], "summary", sid, "evidence_refs"),
    )


def summary_values(summary: Summary) -> Values:
    """Values for every column of `summaries`, in SUMMARY_COLUMNS order."""
    return (
        summary.id,
        summary.capsule_id,
        summary.content,
        summary.confidence,
        summary.created_at,
        _dumps(summary.evidence_refs, "summary", summary.id, "evidenceRefs"),
    )


def pin_from_row(row: Row) -> Pin:
    """A row of `SELECT {PIN_SELECT}` as a record."""
    pid = row[0]
    return Pin(
        id=pid,
        target_type=row[1],
        target_id=row[2],
        reason=row[3],
        created_at=row[4],
        expires_at=row[5],
        scope_ids=_json_column(row[6], "pin", pid, "scope_ids"),
    )


def pin_values(pin: Pin) -> Values:
    """Values for every column of `pins`, in PIN_COLUMNS order."""
    return (
        pin.id,
        pin.target_type,
        pin.target_id,
        pin.reason,
        pin.created_at,
        pin.expires_at,
        _dumps(pin.scope_ids, "pin", pin.id, "scopeIds"),
        *_scope_columns(pin.scope_ids),
    )
