"""The sample generator writes realistic, deterministic memory."""

from __future__ import annotations

from pathlib import Path

import pytest

from conftest import dump_tables
from kindling_bundle import StoreError, generate_sample
from kindling_bundle.store import open_store


def test_same_seed_same_content_other_seed_other_content(tmp_path: Path) -> None:
    for name, seed in (("a.db", 3), ("b.db", 3), ("c.db", 4)):
        generate_sample(tmp_path / name, observations=400, seed=seed)
    a, b, c = (dump_tables(tmp_path / n) for n in ("a.db", "b.db", "c.db"))
    a.pop("schema_migrations"), b.pop("schema_migrations"), c.pop("schema_migrations")
    assert a == b
    assert a["observations"] != c["observations"]


def test_sample_has_the_realistic_mix(sample_db: Path) -> None:
    conn = open_store(sample_db, readonly=True)
    one = lambda sql: conn.execute(sql).fetchone()[0]  # noqa: E731
    assert one("SELECT count(*) FROM observations") == 1500
    assert one("SELECT count(DISTINCT kind) FROM observations") == 9
    assert one("SELECT max(length(content)) FROM observations WHERE kind = 'file_diff'") > 2000
    assert one("SELECT count(*) FROM observations WHERE content GLOB '*[^ -~]*'") > 0  # unicode
    assert 0 < one("SELECT count(*) FROM observations WHERE redacted = 1") < 60
    assert one("SELECT count(*) FROM capsules WHERE status = 'open'") > 0
    assert one("SELECT count(DISTINCT type) FROM capsules") == 2
    assert one("SELECT count(*) FROM summaries") > 0
    assert one("SELECT count(DISTINCT target_type) FROM pins") == 2
    assert one("SELECT count(*) FROM pins WHERE expires_at IS NOT NULL") > 0
    assert one("SELECT count(DISTINCT session_id) FROM observations") > 3
    assert one("SELECT count(*) FROM observations WHERE scope_ids LIKE '%taskId%'") > 0
    conn.close()


def test_refuses_to_overwrite_an_existing_file(tmp_path: Path) -> None:
    path = tmp_path / "exists.db"
    path.write_text("precious")
    with pytest.raises(StoreError, match="already exists"):
        generate_sample(path, observations=10)
    assert path.read_text() == "precious"
