"""Typed records for Kindling's four entities.

Field names on the wire are Kindling's own camelCase export names, so a record encodes to the
same JSON object Kindling's export writes, and to a MessagePack map with the same keys in bundles.
Decoding validates enums, ranges and types; the error message names the field at fault.
"""

from __future__ import annotations

from typing import Annotated, Any, Literal, get_args

import msgspec

ObservationKind = Literal[
    "tool_call",
    "command",
    "file_diff",
    "error",
    "message",
    "node_start",
    "node_end",
    "node_output",
    "node_error",
]
CapsuleType = Literal["session", "pocketflow_node"]
CapsuleStatus = Literal["open", "closed"]
PinTargetType = Literal["observation", "summary"]
EntityName = Literal["observations", "capsules", "summaries", "pins"]
ConflictStrategy = Literal["skip", "overwrite", "error"]
"""What an import does with a record whose id is stored with other content (db/importer.py)."""
CONFLICT_STRATEGIES: tuple[str, ...] = get_args(ConflictStrategy)

# SQLite INTEGER is a signed 64-bit value: anything wider could not be stored back.
EpochMs = Annotated[int, msgspec.Meta(ge=-(2**63), le=2**63 - 1)]
Confidence = Annotated[float, msgspec.Meta(ge=0.0, le=1.0)]

# Scope ids stay an ordered mapping: Kindling stores them as JSON text whose key order we must
# reproduce byte for byte, and keys beyond the four denormalized ones (taskId, ...) must survive.
ScopeIds = dict[str, str]

# The keys of scope ids that Kindling copies into their own columns, and those column names.
DENORMALIZED_SCOPE_KEYS: dict[str, str] = {
    "sessionId": "session_id",
    "repoId": "repo_id",
    "agentId": "agent_id",
    "userId": "user_id",
}

REDACTED_CONTENT = "[redacted]"


class Observation(msgspec.Struct, kw_only=True, rename="camel", gc=False):
    """An atomic record of something that happened (tool call, command, diff, error, ...)."""

    id: str
    kind: ObservationKind
    content: str
    provenance: dict[str, Any] = {}
    ts: EpochMs
    scope_ids: ScopeIds = {}
    redacted: bool = False


class Capsule(msgspec.Struct, kw_only=True, rename="camel", gc=False):
    """A session or workflow node; carries its observation ids in `seq` order."""

    id: str
    type: CapsuleType
    intent: str
    status: CapsuleStatus = "open"
    opened_at: EpochMs
    closed_at: EpochMs | None = None
    scope_ids: ScopeIds = {}
    observation_ids: list[str] = []


class Summary(msgspec.Struct, kw_only=True, rename="camel", gc=False):
    """The one summary of a capsule, with the observation ids it cites as evidence."""

    id: str
    capsule_id: str
    content: str
    confidence: Confidence
    created_at: EpochMs
    evidence_refs: list[str] = []


class Pin(msgspec.Struct, kw_only=True, rename="camel", gc=False):
    """A mark on an observation or a summary, optionally expiring."""

    id: str
    target_type: PinTargetType
    target_id: str
    reason: str | None = None
    created_at: EpochMs
    expires_at: EpochMs | None = None
    scope_ids: ScopeIds = {}


Record = Observation | Capsule | Summary | Pin


class Tombstone(msgspec.Struct, kw_only=True, gc=False):
    """A record an incremental bundle deletes (spec section 16): which entity, which id."""

    entity: EntityName
    id: str


TOMBSTONES = "tombstones"
"""The name of an increment's tombstone member's records, beside the four entities."""

# Entity names in foreign-key order: a reader replays them in this order.
ENTITY_TYPES: dict[str, type[Observation] | type[Capsule] | type[Summary] | type[Pin]] = {
    "observations": Observation,
    "capsules": Capsule,
    "summaries": Summary,
    "pins": Pin,
}


# How messages name one record of each entity.
SINGULAR: dict[str, str] = {
    "observations": "observation",
    "capsules": "capsule",
    "summaries": "summary",
    "pins": "pin",
}


def entity_of(record: Record) -> str:
    """The entity name ("observations", ...) of a record."""
    return _ENTITY_BY_TYPE[type(record)]


_ENTITY_BY_TYPE = {cls: name for name, cls in ENTITY_TYPES.items()}
