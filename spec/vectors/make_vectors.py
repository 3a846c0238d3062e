"""Build the golden test vectors of the bundle format from a small hand-written dataset.

    .venv/bin/python spec/vectors/make_vectors.py          # rewrite the vectors (on purpose!)

For each vector NAME this writes NAME.kbundle (the bundle), NAME.manifest.json (its first member)
and NAME.records.json (every record of the bundle as JSON, in bundle order, for implementers
checking their decoder); for a signed vector also NAME.manifest.sig (its signature member).
tests/test_golden.py rebuilds them and requires the same bytes, so a change to the writer that
changes bundles cannot pass unnoticed. Regenerate only when the format changes intentionally,
and say so in the commit and the changelog.

The dataset exercises every entity type and relationship: a capsule whose observation order is
not time order, a workflow-node capsule, an open capsule, summaries (with and without
evidence), pins on an observation and on a summary (one expiring, one without a reason), a
redacted observation, equal timestamps (ordered by id), unicode, floats, nested provenance and
a `taskId` scope.

The `signed` vector is `full` signed (format 1.1) with test-signing-key, an ed25519 key made for
this purpose and published here: it proves nothing about anyone, and no allowed_signers file
outside the tests should ever list it. ed25519 signatures are deterministic, so the vector is
reproducible; `allowed_signers` here lists the key, for checking the vector with
`ssh-keygen -Y verify -f allowed_signers -I test-vector@kindling-bundle.invalid -n kindling-bundle`.
"""

from __future__ import annotations

import io
import json
import sys
import tarfile
import tempfile
from pathlib import Path
from unittest import mock

import msgspec
import zstandard

import kindling_bundle
from kindling_bundle import (
    BundleOptions,
    Capsule,
    ExportStreamOptions,
    Observation,
    Pin,
    Summary,
    load_signing_key,
    open_bundle,
    open_store,
    write_bundle,
)
from kindling_bundle.db.connection import write_transaction
from kindling_bundle.db.writes import (
    create_capsule,
    insert_observation,
    insert_pin,
    insert_summary,
)

HERE = Path(__file__).resolve().parent
TEST_SIGNING_KEY = HERE / "test-signing-key"  # a published TEST key: never trust it
CREATED_AT = 1_767_225_600_000  # 2026-01-01T00:00:00Z
TOOL_VERSION = "0.1.0"  # the tool version the vectors' manifests name, whatever the package's is

T = 1_767_000_000_000
S1 = {"sessionId": "sess-1", "repoId": "repo-a", "agentId": "claude-code", "taskId": "task-42"}
S2 = {"sessionId": "sess-2", "repoId": "repo-b", "userId": "alice"}

OBSERVATIONS = [
    Observation(
        id="obs-01",
        kind="message",
        content="Café ✓ — 日本語のテキスト 🚀",
        provenance={"source": "claude-code", "v": 1, "score": 0.5},
        ts=T,
        scope_ids=S1,
    ),
    Observation(
        id="obs-03",
        kind="tool_call",
        content="Read(src/parser.ts) → found the failing case",
        provenance={"tool": "Read", "args": {"path": "src/parser.ts", "lines": [1, 40]}},
        ts=T + 1000,
        scope_ids=S1,
    ),
    Observation(  # same ts as obs-03: ordered by id
        id="obs-02",
        kind="command",
        content="$ pytest -q\n3 passed\nexit code 0",
        provenance={"exitCode": 0, "durationMs": 1250},
        ts=T + 1000,
        scope_ids=S1,
    ),
    Observation(
        id="obs-04",
        kind="error",
        content="[redacted]",
        provenance={"source": "claude-code"},
        ts=T + 2000,
        scope_ids=S1,
        redacted=True,
    ),
    Observation(
        id="obs-05", kind="node_start", content="node start: plan", ts=T + 3000, scope_ids=S1
    ),
    Observation(
        id="obs-06",
        kind="node_end",
        content="node end: plan",
        provenance={"ratio": 1e-07, "big": 1e21},
        ts=T + 4000,
        scope_ids=S1,
    ),
    Observation(id="obs-07", kind="message", content="second session", ts=T + 90_000, scope_ids=S2),
]

CAPSULES = [
    Capsule(
        id="cap-1",
        type="session",
        intent="Fix the parser",
        status="closed",
        opened_at=T - 500,
        closed_at=T + 5000,
        scope_ids=S1,
        observation_ids=["obs-03", "obs-01", "obs-02", "obs-04"],  # not time order, on purpose
    ),
    Capsule(
        id="cap-2",
        type="pocketflow_node",
        intent="plan",
        status="closed",
        opened_at=T + 3000,
        closed_at=T + 4000,
        scope_ids=S1,
        observation_ids=["obs-05", "obs-06"],
    ),
    Capsule(
        id="cap-3",
        type="session",
        intent="Open session",
        opened_at=T + 89_000,
        scope_ids=S2,
        observation_ids=["obs-07"],
    ),
]

SUMMARIES = [
    Summary(
        id="sum-1",
        capsule_id="cap-1",
        content="Parser fixed; tests pass ✓",
        confidence=0.875,
        created_at=T + 6000,
        evidence_refs=["obs-02", "obs-01"],
    ),
    Summary(
        id="sum-2", capsule_id="cap-2", content="Planned.", confidence=1.0, created_at=T + 6000
    ),
]

PINS = [
    Pin(
        id="pin-1",
        target_type="observation",
        target_id="obs-01",
        reason="keep: root cause",
        created_at=T + 7000,
        scope_ids=S1,
    ),
    Pin(
        id="pin-2",
        target_type="summary",
        target_id="sum-1",
        created_at=T + 7000,
        expires_at=T + 7000 + 7 * 86_400_000,
        scope_ids=S1,
    ),
    Pin(
        id="pin-3",
        target_type="observation",
        target_id="obs-07",
        reason="todo",
        created_at=T + 91_000,
        scope_ids=S2,
    ),
]

VECTORS: dict[str, tuple[bool, ExportStreamOptions, bool]] = {
    # name: (fill the database with the dataset?, export filter, signed with the test key?)
    "full": (True, ExportStreamOptions(), False),
    "filtered": (
        True,
        ExportStreamOptions(
            scope_ids={"sessionId": "sess-1"}, from_ts=T + 2500, include_references=True
        ),
        False,
    ),
    "empty": (False, ExportStreamOptions(), False),
    "signed": (True, ExportStreamOptions(), True),
}


def fill(path: Path) -> None:
    """Write the dataset into a new Kindling database at `path` through the store's write path."""
    conn = open_store(path)
    try:
        with write_transaction(conn):
            for obs in OBSERVATIONS:
                insert_observation(conn, obs)
            for capsule in CAPSULES:
                create_capsule(conn, capsule)
            for summary in SUMMARIES:
                insert_summary(conn, summary)
            for pin in PINS:
                insert_pin(conn, pin)
    finally:
        conn.close()


def build(name: str, dest: Path) -> None:
    """Write vector `name` as a bundle at `dest`, exactly as the stored vector was made."""
    filled, export_filter, signed = VECTORS[name]
    sign_key = load_signing_key(TEST_SIGNING_KEY) if signed else None
    with tempfile.TemporaryDirectory() as tmp:
        db = Path(tmp) / "vector.db"
        if filled:
            fill(db)
        else:
            open_store(db).close()
        conn = open_store(db, readonly=True)
        try:
            with mock.patch.object(kindling_bundle, "__version__", TOOL_VERSION):
                opts = BundleOptions(filter=export_filter, created_at=CREATED_AT, sign_key=sign_key)
                write_bundle(conn, dest, opts)
        finally:
            conn.close()


def records_json(bundle: Path) -> bytes:
    """Every record of a bundle as JSON: {"observations": [...], ...} in bundle order."""
    out: dict[str, list] = {"observations": [], "capsules": [], "summaries": [], "pins": []}
    with open_bundle(bundle) as reader:
        for entity, records in reader.batches():
            out[entity].extend(msgspec.to_builtins(records))
    return json.dumps(out, indent=2, ensure_ascii=False).encode() + b"\n"


def member_bytes(bundle: Path, member: str) -> bytes:
    """A member's exact bytes (read with tarfile and zstandard)."""
    tar_bytes = zstandard.ZstdDecompressor().decompressobj().decompress(bundle.read_bytes())
    with tarfile.open(fileobj=io.BytesIO(tar_bytes), mode="r:") as tar:
        return tar.extractfile(member).read()


def main() -> int:
    for name in VECTORS:
        bundle = HERE / f"{name}.kbundle"
        build(name, bundle)
        (HERE / f"{name}.manifest.json").write_bytes(member_bytes(bundle, "manifest.json"))
        if VECTORS[name][2]:
            (HERE / f"{name}.manifest.sig").write_bytes(member_bytes(bundle, "manifest.sig"))
        (HERE / f"{name}.records.json").write_bytes(records_json(bundle))
        print(f"wrote {bundle.relative_to(HERE.parent.parent)} ({bundle.stat().st_size} bytes)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
