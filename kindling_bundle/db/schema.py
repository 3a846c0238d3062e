"""The Kindling schema contract: the DDL of a v5 database and how to tell a v4 from a v5.

The statements follow `shared/kindling-schema.md` item by item (columns in order, CHECKs,
defaults, foreign keys, FTS5 tables and tokenizer, triggers, index names), so that a database
we create cannot be told apart from one Kindling's TypeScript store created.
"""

from __future__ import annotations

import sqlite3
import time

from kindling_bundle.errors import StoreError

CURRENT_GENERATION = 5

MIGRATIONS: list[tuple[int, str]] = [
    (1, "001_init"),
    (2, "002_fts"),
    (3, "003_indexes"),
    (4, "004_denormalize_scopes"),
    (5, "005_pragma_user_version"),
]

KINDLING_TABLES = (
    "schema_migrations",
    "observations",
    "capsules",
    "capsule_observations",
    "summaries",
    "pins",
    "observations_fts",
    "summaries_fts",
)

TABLES = [
    """CREATE TABLE schema_migrations (
  version INTEGER PRIMARY KEY,
  name TEXT NOT NULL,
  applied_at INTEGER NOT NULL
)""",
    """CREATE TABLE observations (
  id TEXT PRIMARY KEY,
  kind TEXT NOT NULL CHECK(kind IN ('tool_call', 'command', 'file_diff', 'error', 'message',
    'node_start', 'node_end', 'node_output', 'node_error')),
  content TEXT NOT NULL,
  provenance TEXT NOT NULL DEFAULT '{}',
  ts INTEGER NOT NULL,
  scope_ids TEXT NOT NULL DEFAULT '{}',
  redacted INTEGER NOT NULL DEFAULT 0 CHECK(redacted IN (0, 1)),
  session_id TEXT,
  repo_id TEXT,
  agent_id TEXT,
  user_id TEXT
)""",
    """CREATE TABLE capsules (
  id TEXT PRIMARY KEY,
  type TEXT NOT NULL CHECK(type IN ('session', 'pocketflow_node')),
  intent TEXT NOT NULL,
  status TEXT NOT NULL DEFAULT 'open' CHECK(status IN ('open', 'closed')),
  opened_at INTEGER NOT NULL,
  closed_at INTEGER,
  scope_ids TEXT NOT NULL DEFAULT '{}',
  session_id TEXT,
  repo_id TEXT,
  agent_id TEXT,
  user_id TEXT
)""",
    """CREATE TABLE capsule_observations (
  capsule_id TEXT NOT NULL,
  observation_id TEXT NOT NULL,
  seq INTEGER NOT NULL,
  PRIMARY KEY (capsule_id, observation_id),
  FOREIGN KEY (capsule_id) REFERENCES capsules(id) ON DELETE CASCADE,
  FOREIGN KEY (observation_id) REFERENCES observations(id) ON DELETE CASCADE
)""",
    """CREATE TABLE summaries (
  id TEXT PRIMARY KEY,
  capsule_id TEXT NOT NULL UNIQUE,
  content TEXT NOT NULL,
  confidence REAL NOT NULL CHECK(confidence >= 0.0 AND confidence <= 1.0),
  created_at INTEGER NOT NULL,
  evidence_refs TEXT NOT NULL DEFAULT '[]',
  FOREIGN KEY (capsule_id) REFERENCES capsules(id) ON DELETE CASCADE
)""",
    """CREATE TABLE pins (
  id TEXT PRIMARY KEY,
  target_type TEXT NOT NULL CHECK(target_type IN ('observation', 'summary')),
  target_id TEXT NOT NULL,
  reason TEXT,
  created_at INTEGER NOT NULL,
  expires_at INTEGER,
  scope_ids TEXT NOT NULL DEFAULT '{}',
  session_id TEXT,
  repo_id TEXT,
  agent_id TEXT,
  user_id TEXT
)""",
]

FTS_TABLES = [
    "CREATE VIRTUAL TABLE observations_fts USING fts5(content, content='observations', "
    "content_rowid='rowid', tokenize='porter unicode61')",
    "CREATE VIRTUAL TABLE summaries_fts USING fts5(content, content='summaries', "
    "content_rowid='rowid', tokenize='porter unicode61')",
]

# Trigger bodies are kept apart from their CREATE lines so a fast bulk load can drop and
# re-create exactly the same triggers.
TRIGGERS: dict[str, str] = {
    "observations_fts_insert": """CREATE TRIGGER observations_fts_insert
AFTER INSERT ON observations
WHEN NEW.redacted = 0
BEGIN
  INSERT INTO observations_fts(rowid, content) VALUES (NEW.rowid, NEW.content);
END""",
    "observations_fts_update": """CREATE TRIGGER observations_fts_update
AFTER UPDATE ON observations
BEGIN
  INSERT INTO observations_fts(observations_fts, rowid, content)
    VALUES ('delete', OLD.rowid, OLD.content);
  INSERT INTO observations_fts(rowid, content)
    SELECT NEW.rowid, NEW.content WHERE NEW.redacted = 0;
END""",
    "observations_fts_delete": """CREATE TRIGGER observations_fts_delete
AFTER DELETE ON observations
BEGIN
  INSERT INTO observations_fts(observations_fts, rowid, content)
    VALUES ('delete', OLD.rowid, OLD.content);
END""",
    "summaries_fts_insert": """CREATE TRIGGER summaries_fts_insert
AFTER INSERT ON summaries
BEGIN
  INSERT INTO summaries_fts(rowid, content) VALUES (NEW.rowid, NEW.content);
END""",
    "summaries_fts_update": """CREATE TRIGGER summaries_fts_update
AFTER UPDATE ON summaries
BEGIN
  INSERT INTO summaries_fts(summaries_fts, rowid, content)
    VALUES ('delete', OLD.rowid, OLD.content);
  INSERT INTO summaries_fts(rowid, content) VALUES (NEW.rowid, NEW.content);
END""",
    "summaries_fts_delete": """CREATE TRIGGER summaries_fts_delete
AFTER DELETE ON summaries
BEGIN
  INSERT INTO summaries_fts(summaries_fts, rowid, content)
    VALUES ('delete', OLD.rowid, OLD.content);
END""",
}

INDEXES = [
    "CREATE INDEX idx_observations_ts ON observations(ts DESC)",
    "CREATE INDEX idx_observations_kind ON observations(kind)",
    "CREATE INDEX idx_obs_session_ts ON observations(session_id, ts DESC) "
    "WHERE session_id IS NOT NULL",
    "CREATE INDEX idx_obs_repo_ts ON observations(repo_id, ts DESC) WHERE repo_id IS NOT NULL",
    "CREATE INDEX idx_capsules_opened_at ON capsules(opened_at DESC)",
    "CREATE INDEX idx_caps_status_session ON capsules(status, session_id) "
    "WHERE session_id IS NOT NULL",
    "CREATE INDEX idx_caps_repo ON capsules(repo_id) WHERE repo_id IS NOT NULL",
    "CREATE INDEX idx_capsule_observations_capsule ON capsule_observations(capsule_id, seq)",
    "CREATE INDEX idx_capsule_observations_observation ON capsule_observations(observation_id)",
    "CREATE INDEX idx_summaries_capsule ON summaries(capsule_id)",
    "CREATE INDEX idx_summaries_created_at ON summaries(created_at DESC)",
    "CREATE INDEX idx_pins_expires_at ON pins(expires_at) WHERE expires_at IS NOT NULL",
    "CREATE INDEX idx_pins_target ON pins(target_type, target_id)",
    "CREATE INDEX idx_pins_session_id ON pins(session_id) WHERE session_id IS NOT NULL",
    "CREATE INDEX idx_pins_repo_id ON pins(repo_id) WHERE repo_id IS NOT NULL",
]


def create_schema(conn: sqlite3.Connection, *, generation: int = CURRENT_GENERATION) -> None:
    """Create Kindling's schema in an empty database, inside the caller's open transaction.

    `generation=4` writes what the published 0.1.2 store wrote (no user_version, four
    migration rows); it exists so tests and tools can make the older databases found in the wild.
    """
    if generation not in (4, 5):
        raise ValueError(f"unknown schema generation {generation}")
    for statement in [*TABLES, *FTS_TABLES, *TRIGGERS.values(), *INDEXES]:
        conn.execute(statement)
    now = int(time.time() * 1000)
    conn.executemany(
        "INSERT INTO schema_migrations (version, name, applied_at) VALUES (?, ?, ?)",
        [(version, name, now) for version, name in MIGRATIONS[:generation]],
    )
    if generation >= 5:
        conn.execute(f"PRAGMA user_version = {generation}")


def detect_generation(conn: sqlite3.Connection, label: str) -> int:
    """Return 4 or 5 for a Kindling database; raise StoreError for anything else."""
    names = {row[0] for row in conn.execute("SELECT name FROM sqlite_master")}
    missing = [t for t in KINDLING_TABLES if t not in names]
    if missing:
        raise StoreError(f"{label}: not a Kindling database (missing tables: {', '.join(missing)})")
    user_version = conn.execute("PRAGMA user_version").fetchone()[0]
    if user_version > CURRENT_GENERATION:
        raise StoreError(
            f"{label}: schema version {user_version} is newer than this tool understands "
            f"(up to {CURRENT_GENERATION}); upgrade kindling-bundle"
        )
    versions = [row[0] for row in conn.execute("SELECT version FROM schema_migrations")]
    newest = max(versions, default=0)
    if newest > CURRENT_GENERATION:
        raise StoreError(
            f"{label}: migration {newest} is newer than this tool understands "
            f"(up to {CURRENT_GENERATION}); upgrade kindling-bundle"
        )
    if user_version == 5 and newest == 5:
        return 5
    if user_version == 0 and newest == 4:
        return 4
    raise StoreError(
        f"{label}: unrecognised Kindling schema (user_version {user_version}, "
        f"newest migration {newest}); expected v4 or v5"
    )
