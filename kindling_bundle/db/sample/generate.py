"""Writing a sample database: sessions, capsules, summaries, pins and redactions around the
observations a text profile makes, in one import-style transaction."""

from __future__ import annotations

import random
import uuid
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol

from kindling_bundle.db.connection import KindlingConnection, create_store, write_transaction
from kindling_bundle.db.importer import bulk_load
from kindling_bundle.db.sample.realistic import RealisticText
from kindling_bundle.db.sample.small_vocabulary import SmallVocabularyText
from kindling_bundle.db.writes import (
    create_capsule,
    insert_observations,
    insert_pin,
    insert_summary,
    redact_observation,
)
from kindling_bundle.errors import StoreError
from kindling_bundle.records import (
    Capsule,
    CapsuleType,
    Observation,
    ObservationKind,
    Pin,
    Summary,
)

START_MS = 1_767_225_600_000  # 2026-01-01T00:00:00Z: fixed, so a seed fully determines content
_KIND_WEIGHTS: dict[ObservationKind, int] = {
    "message": 30,
    "tool_call": 28,
    "command": 14,
    "file_diff": 8,
    "error": 4,
    "node_start": 4,
    "node_end": 4,
    "node_output": 6,
    "node_error": 2,
}
"""How often a coding agent records each kind; every text profile writes the same mix."""
_KINDS = list(_KIND_WEIGHTS)
_WEIGHTS = list(_KIND_WEIGHTS.values())


@dataclass
class SampleStats:
    """What the generator wrote, for the CLI's summary."""

    observations: int = 0
    capsules: int = 0
    summaries: int = 0
    pins: int = 0
    redacted: int = 0
    sessions: list[str] = field(default_factory=list)


TEXT_PROFILES = ("realistic", "small-vocabulary")


class _SampleText(Protocol):
    """What the generator asks of a text profile."""

    repos: list[str]
    agents: list[str]
    users: list[str]

    def begin_session(self, scope: dict[str, str]) -> None: ...
    def observation(self, kind: str) -> tuple[str, dict[str, Any]]: ...
    def intent(self, capsule_type: str) -> str: ...
    def summary(self, capsule_type: str, intent: str) -> str: ...


def generate_sample(
    path: str | Path, *, observations: int = 2000, seed: int = 0, text: str = "realistic"
) -> SampleStats:
    """Write a new sample database at `path` (which must not exist yet).

    `text` is one of TEXT_PROFILES. The rows go in as an import into a new database does
    (`bulk_load`: full-text index built once, indexes after), which a million rows of real
    text need to be written in minutes."""
    path = Path(path)
    if path.exists():
        raise StoreError(f"{path}: already exists; the sample generator only writes new files")
    if text not in TEXT_PROFILES:
        raise StoreError(f"unknown sample text {text!r}: choose one of {', '.join(TEXT_PROFILES)}")
    rng = random.Random(seed)
    profile: _SampleText = RealisticText(rng) if text == "realistic" else SmallVocabularyText(rng)
    with create_store(path) as conn, write_transaction(conn):
        with bulk_load(conn):
            stats = _fill(conn, rng, profile, observations)
        _redact_some(conn, rng, stats)
    return stats


def _uid(rng: random.Random) -> str:
    return str(uuid.UUID(int=rng.getrandbits(128), version=4))


def _fill(
    conn: KindlingConnection, rng: random.Random, text: _SampleText, total: int
) -> SampleStats:
    stats = SampleStats()
    ts = START_MS
    pinnable_obs: list[str] = []
    batch: list[Observation] = []

    def flush() -> None:
        insert_observations(conn, batch)
        batch.clear()

    while stats.observations < total:
        session_id = _uid(rng)
        stats.sessions.append(session_id)
        scope = {"sessionId": session_id, "repoId": rng.choice(text.repos)}
        if rng.random() < 0.9:
            scope["agentId"] = rng.choice(text.agents)
        if rng.random() < 0.7:
            scope["userId"] = rng.choice(text.users)
        if rng.random() < 0.3:
            scope["taskId"] = f"task-{rng.randint(1, 500)}"
        capsules: list[Capsule] = []
        length = min(total - stats.observations, max(1, int(rng.expovariate(1 / 120))))
        text.begin_session(scope)
        session = _open_capsule(rng, text, "session", ts, scope)
        capsules.append(session)
        node: Capsule | None = None
        for _ in range(length):
            ts += rng.choice([0, 0, 1, 7, 150, 900, 4000, 30_000])  # equal timestamps happen
            kind = rng.choices(_KINDS, _WEIGHTS)[0]
            obs_id = _uid(rng)
            content, provenance = text.observation(kind)
            obs = Observation(
                id=obs_id,
                kind=kind,
                content=content,
                provenance=provenance,
                ts=ts,
                scope_ids=scope,
            )
            batch.append(obs)
            stats.observations += 1
            if rng.random() < 0.95:
                session.observation_ids.append(obs.id)
            if kind == "node_start":
                node = _open_capsule(rng, text, "pocketflow_node", ts, scope)
                capsules.append(node)
            if node is not None:
                node.observation_ids.append(obs.id)
                if kind in ("node_end", "node_error"):
                    node.status, node.closed_at, node = "closed", ts, None
            if rng.random() < 0.01:
                pinnable_obs.append(obs.id)
            if len(batch) >= 2000:
                flush()
        flush()
        if rng.random() < 0.9:
            session.status, session.closed_at = "closed", ts + rng.randint(1, 60_000)
        for capsule in capsules:
            create_capsule(conn, capsule)
            stats.capsules += 1
            if capsule.status == "closed" and capsule.observation_ids and rng.random() < 0.85:
                summary = Summary(
                    id=_uid(rng),
                    capsule_id=capsule.id,
                    content=text.summary(capsule.type, capsule.intent),
                    confidence=round(rng.uniform(0.35, 0.99), 3),
                    created_at=(capsule.closed_at or ts) + rng.randint(1, 5000),
                    evidence_refs=rng.sample(
                        capsule.observation_ids, min(len(capsule.observation_ids), 3)
                    ),
                )
                insert_summary(conn, summary)
                stats.summaries += 1
                if rng.random() < 0.05:
                    _pin(conn, rng, "summary", summary.id, summary.created_at, scope, stats)
        for oid in pinnable_obs:
            _pin(conn, rng, "observation", oid, ts, scope, stats)
        pinnable_obs.clear()
        ts += rng.randint(60_000, 3_600_000)
    return stats


def _open_capsule(
    rng: random.Random,
    text: _SampleText,
    capsule_type: CapsuleType,
    ts: int,
    scope: dict[str, str],
) -> Capsule:
    return Capsule(
        id=_uid(rng),
        type=capsule_type,
        intent=text.intent(capsule_type),
        opened_at=ts,
        scope_ids=scope,
    )


def _pin(
    conn: KindlingConnection,
    rng: random.Random,
    target_type: str,
    target_id: str,
    ts: int,
    scope: dict[str, str],
    stats: SampleStats,
) -> None:
    created = ts + rng.randint(1, 10_000)
    insert_pin(
        conn,
        Pin(
            id=_uid(rng),
            target_type=target_type,  # type: ignore[arg-type]
            target_id=target_id,
            reason=rng.choice([None, "important decision", "keep: root cause", "todo ✓"]),
            created_at=created,
            expires_at=created + 7 * 86_400_000 if rng.random() < 0.4 else None,
            scope_ids=scope,
        ),
    )
    stats.pins += 1


def _redact_some(conn: KindlingConnection, rng: random.Random, stats: SampleStats) -> None:
    ids: Iterator[tuple[str]] = conn.execute("SELECT id FROM observations ORDER BY rowid")
    chosen = [oid for (oid,) in ids if rng.random() < 0.01]
    for oid in chosen:
        redact_observation(conn, oid)
    stats.redacted = len(chosen)
