"""Incremental bundles (issue 21, spec section 16): what an increment holds, how it is applied,
and every way a chain can be wrong being refused before anything is written."""

from __future__ import annotations

import hashlib
import io
import sqlite3
from pathlib import Path

import pytest
from chain_steps import DAY, T0, copy_database, mutate, table_rows

from conftest import dump_tables
from kindling_bundle import open_bundle, open_store, read_manifest, verify_bundle
from kindling_bundle.db.connection import create_store, write_transaction
from kindling_bundle.db.writes import insert_observation, redact_observation
from kindling_bundle.errors import BundleError, ImportConflictError
from kindling_bundle.format.increment import (
    INCREMENT_VERSION,
    BaseInfo,
    IncrementHeader,
    IncrementManifest,
    StateCounts,
    file_sha256,
)
from kindling_bundle.ops.apply import apply_increments
from kindling_bundle.ops.chain_restore import restore_chain
from kindling_bundle.ops.convert import bundle_to_kindling_json
from kindling_bundle.ops.increment import write_full, write_increment
from kindling_bundle.ops.links import bundle_ref, verify_chain
from kindling_bundle.ops.restore import import_bundle
from kindling_bundle.ops.state import pending_cache
from kindling_bundle.ops.write import BundleOptions, write_bundle, write_bundle_from_records
from kindling_bundle.records import Observation, Pin, Tombstone


@pytest.fixture(autouse=True)
def _private_cache(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("KINDLING_BUNDLE_CACHE", str(tmp_path / "cache"))


def opts(step: int) -> BundleOptions:
    return BundleOptions(created_at=T0 + step * DAY + 5000)


def full_bundle(db: Path, dest: Path, step: int = 0) -> Path:
    with open_store(db, readonly=True) as conn:
        write_bundle(conn, dest, opts(step))
    return dest


def increment(db: Path, dest: Path, *chain: Path, step: int) -> IncrementManifest:
    with open_store(db, readonly=True) as conn:
        return write_increment(conn, dest, [bundle_ref(str(p)) for p in chain], opts(step))


def refs(*paths: Path) -> list:
    return [bundle_ref(str(p)) for p in paths]


@pytest.fixture
def chain(sample_copy: Path, tmp_path: Path) -> dict[str, Path]:
    """A full bundle and two increments of the sample, with a copy of the database at each."""
    paths = {"db": sample_copy}
    paths["full"] = full_bundle(sample_copy, tmp_path / "full.kbundle")
    paths["at0"] = copy_database(sample_copy, tmp_path / "at0.db")
    links = [paths["full"]]
    for step in (1, 2):
        mutate(sample_copy, step)
        paths[f"at{step}"] = copy_database(sample_copy, tmp_path / f"at{step}.db")
        paths[f"inc{step}"] = tmp_path / f"inc{step}.kbundle"
        increment(sample_copy, paths[f"inc{step}"], *links, step=step)
        links.append(paths[f"inc{step}"])
    return paths


# --- what an increment holds ------------------------------------------------------------------


def test_increment_holds_what_changed_and_tombstones_for_what_is_gone(
    sample_copy: Path, tmp_path: Path
) -> None:
    full = full_bundle(sample_copy, tmp_path / "full.kbundle")
    done = mutate(sample_copy, 1)
    manifest = increment(sample_copy, tmp_path / "inc.kbundle", full, step=1)

    assert manifest.format_version == INCREMENT_VERSION == "2.0"
    assert read_manifest(full).format_version == "1.0"  # full bundles are unchanged
    written = {entry.entity: entry.records for entry in manifest.entities}
    # 12 new observations and 3 redacted; a new capsule, the open one that got links and was
    # closed; the replacing summary and a new one; one new pin. Gone: a pin and a summary.
    assert written == {
        "tombstones": 2,
        "observations": done["inserted"] + done["redacted"],
        "capsules": 2,
        "summaries": 2,
        "pins": 1,
    }
    assert manifest.base.sha256 == manifest.base.full_sha256 == file_sha256(full)
    assert manifest.base.created_at == read_manifest(full).created_at
    assert manifest.base.depth == 1
    with open_store(sample_copy, readonly=True) as conn:
        counts = {
            e: conn.execute(f"SELECT count(*) FROM {e}").fetchone()[0]
            for e in ("observations", "capsules", "summaries", "pins")
        }
    assert manifest.state.as_dict() == counts
    with open_bundle(tmp_path / "inc.kbundle") as reader:
        batches = list(reader.batches(increments=True))
    tombstones = [t for entity, records in batches if entity == "tombstones" for t in records]
    assert [t.entity for t in tombstones] == ["pins", "summaries"]  # deletion order


def test_change_is_told_by_content_not_by_time_or_rowid(sample_copy: Path, tmp_path: Path) -> None:
    """An old-timestamped record is found; VACUUM renumbering rowids changes nothing."""
    full = full_bundle(sample_copy, tmp_path / "full.kbundle")
    conn = open_store(sample_copy)
    with write_transaction(conn):
        conn.execute("DELETE FROM pins WHERE id = (SELECT min(id) FROM pins)")
        insert_observation(
            conn, Observation(id="from-a-merge", kind="message", content="old", ts=1000)
        )
    conn.execute("VACUUM")
    conn.close()
    manifest = increment(sample_copy, tmp_path / "inc.kbundle", full, step=1)
    written = {entry.entity: entry.records for entry in manifest.entities}
    assert written == {"tombstones": 1, "observations": 1, "capsules": 0, "summaries": 0, "pins": 0}

    # The same state again: an increment on the increment is empty.
    first = tmp_path / "inc.kbundle"
    empty = increment(sample_copy, tmp_path / "inc2.kbundle", full, first, step=2)
    assert empty.total_records == 0
    assert empty.base.depth == 2 and empty.base.sha256 == file_sha256(tmp_path / "inc.kbundle")


def test_the_cache_gives_the_same_increment_as_reading_the_chain(
    sample_copy: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    full = tmp_path / "full.kbundle"
    cache = pending_cache()
    assert cache is not None
    with open_store(sample_copy, readonly=True) as conn:
        manifest = write_full(conn, full, opts(0), cache=cache)
    cache.keep(file_sha256(full), manifest, file_sha256(full))
    mutate(sample_copy, 1)

    with open_store(sample_copy, readonly=True) as conn:
        # Known by its SHA-256 and cached: the bundle itself is never opened.
        cached_ref = bundle_ref(str(tmp_path / "gone.kbundle"), sha256=file_sha256(full))
        write_increment(conn, tmp_path / "cached.kbundle", [cached_ref], opts(1))
    monkeypatch.setenv("KINDLING_BUNDLE_CACHE", "off")
    increment(sample_copy, tmp_path / "read.kbundle", full, step=1)
    cached = (tmp_path / "cached.kbundle").read_bytes()
    assert cached == (tmp_path / "read.kbundle").read_bytes()


def test_a_filtered_increment_is_refused(sample_copy: Path, tmp_path: Path) -> None:
    from kindling_bundle.db.export import ExportStreamOptions

    full = full_bundle(sample_copy, tmp_path / "full.kbundle")
    with (
        open_store(sample_copy, readonly=True) as conn,
        pytest.raises(ValueError, match="whole database"),
    ):
        write_increment(
            conn,
            tmp_path / "inc.kbundle",
            refs(full),
            BundleOptions(filter=ExportStreamOptions(from_ts=1)),
        )


# --- applying increments ----------------------------------------------------------------------


def test_chain_restores_each_snapshot_row_for_row(chain: dict[str, Path], tmp_path: Path) -> None:
    links = [chain["full"], chain["inc1"], chain["inc2"]]
    for step in range(3):
        target = tmp_path / f"restored{step}.db"
        with create_store(target) as conn:
            report = restore_chain(conn, refs(*links[: step + 1]))
        assert report.integrity.ok
        assert table_rows(target) == table_rows(chain[f"at{step}"])


def test_increments_apply_onto_the_database_of_their_base(
    chain: dict[str, Path], tmp_path: Path
) -> None:
    db = copy_database(chain["at0"], tmp_path / "live.db")
    with open_store(db) as conn:
        report = apply_increments(conn, refs(chain["inc1"]))
    assert report.counts["pins"].deleted == 1 and report.counts["summaries"].deleted == 1
    assert table_rows(db) == table_rows(chain["at1"])
    with open_store(db) as conn:
        apply_increments(conn, refs(chain["inc2"]))
    assert table_rows(db) == table_rows(chain["at2"])


def test_deleted_redacted_observation_leaves_the_index_consistent(
    sample_copy: Path, tmp_path: Path
) -> None:
    conn = open_store(sample_copy)
    with write_transaction(conn):
        insert_observation(conn, Observation(id="secret", kind="message", content="k", ts=5))
        redact_observation(conn, "secret")
    conn.close()
    full = full_bundle(sample_copy, tmp_path / "full.kbundle")
    conn = open_store(sample_copy)
    with write_transaction(conn):
        conn.execute("DELETE FROM observations WHERE id = 'secret'")
    conn.close()
    increment(sample_copy, tmp_path / "inc.kbundle", full, step=1)
    with create_store(tmp_path / "r.db") as conn:
        report = restore_chain(conn, refs(full, tmp_path / "inc.kbundle"))
    assert report.counts["observations"].deleted == 1
    assert report.integrity.ok
    assert table_rows(tmp_path / "r.db") == table_rows(sample_copy)
    with sqlite3.connect(tmp_path / "r.db") as check:  # FTS5's own view of its statistics
        check.execute("INSERT INTO observations_fts(observations_fts) VALUES ('integrity-check')")


# --- refused before anything is written -------------------------------------------------------


def _refused_restore(tmp_path: Path, links: list[Path], match: str) -> None:
    target = tmp_path / "never.db"
    with pytest.raises(BundleError, match=match), create_store(target) as conn:
        restore_chain(conn, refs(*links))
    assert not target.exists()


def test_missing_link_is_refused_naming_it(chain: dict[str, Path], tmp_path: Path) -> None:
    _refused_restore(
        tmp_path,
        [chain["full"], chain["inc2"]],
        r"^link 2, .*inc2\.kbundle \(increment 2, .*\): is increment 2 of the chain but follows "
        r"the full bundle: 1 link missing before it",
    )


def test_reordered_links_are_refused(chain: dict[str, Path], tmp_path: Path) -> None:
    _refused_restore(
        tmp_path,
        [chain["inc1"], chain["full"], chain["inc2"]],
        r"^link 1, .*inc1\.kbundle .*: is an increment on .*; a chain starts with its full bundle",
    )
    _refused_restore(
        tmp_path,
        [chain["full"], chain["inc1"], chain["inc2"], chain["inc1"]],
        r"^link 4, .*inc1\.kbundle .*: is increment 1 of the chain but comes after increment 2: "
        "out of order",
    )
    _refused_restore(
        tmp_path,
        [chain["full"], chain["full"]],
        r"^link 2, .*full\.kbundle \(full bundle, .*: is a full bundle; only the first link",
    )


def test_foreign_links_are_refused(chain: dict[str, Path], tmp_path: Path) -> None:
    # Another chain of the same database, started later: its increment is foreign to this one.
    other_full = full_bundle(chain["db"], tmp_path / "other-full.kbundle", step=5)
    mutate(chain["db"], 6)
    other = tmp_path / "other-inc.kbundle"
    increment(chain["db"], other, other_full, step=6)
    _refused_restore(
        tmp_path,
        [chain["full"], other],
        r"^link 2, .*other-inc\.kbundle .*: belongs to another chain \(its full bundle is "
        r"[0-9a-f]{12}, this chain's is [0-9a-f]{12}\): a foreign link",
    )
    # A second increment on the same full bundle: a branch, not the link after inc1.
    branch = tmp_path / "branch.kbundle"
    increment(chain["db"], branch, chain["full"], step=7)
    _refused_restore(
        tmp_path,
        [chain["full"], chain["inc1"], branch],
        r"^link 3, .*branch\.kbundle .*: is increment 1 of the chain but comes after increment 1",
    )


def test_a_damaged_link_is_refused_before_anything_is_written(
    chain: dict[str, Path], tmp_path: Path
) -> None:
    inc1 = chain["inc1"]
    data = bytearray(inc1.read_bytes())
    data[-5] ^= 0xFF  # the last byte of compressed data
    inc1.write_bytes(bytes(data))
    _refused_restore(
        tmp_path, [chain["full"], inc1, chain["inc2"]], r"^link 2, .*inc1\.kbundle: damaged"
    )


def test_a_full_bundle_that_is_not_the_one_its_name_says_leaves_the_database_as_it_was(
    chain: dict[str, Path], tmp_path: Path
) -> None:
    # an archive names each snapshot by its SHA-256: a file replaced since is refused, and the
    # database (opened by the caller, not made by create_store) holds nothing of it afterwards
    db = tmp_path / "empty.db"
    with open_store(db):
        pass
    before = dump_tables(db)
    named = bundle_ref(str(chain["full"]), sha256="0" * 64)
    with open_store(db) as conn, pytest.raises(BundleError, match="replaced or damaged"):
        restore_chain(conn, [named])
    assert dump_tables(db) == before


def test_increment_onto_a_database_without_its_base_is_refused(
    chain: dict[str, Path], tmp_path: Path
) -> None:
    db = copy_database(chain["at0"], tmp_path / "live.db")
    before = dump_tables(db)
    with open_store(db) as conn, pytest.raises(BundleError, match="does not hold this incre"):
        apply_increments(conn, refs(chain["inc2"]))  # its base is inc1's snapshot
    assert dump_tables(db) == before


def test_an_increment_applied_twice_is_refused(chain: dict[str, Path], tmp_path: Path) -> None:
    db = copy_database(chain["at0"], tmp_path / "live.db")
    with open_store(db) as conn:
        apply_increments(conn, refs(chain["inc1"]))
    after_once = dump_tables(db)
    with open_store(db) as conn, pytest.raises(BundleError, match="does not hold this incre"):
        apply_increments(conn, refs(chain["inc1"]))
    assert dump_tables(db) == after_once


def test_a_database_that_diverged_is_refused_and_left_as_it_was(
    chain: dict[str, Path], tmp_path: Path
) -> None:
    """Same counts as the base, other content: caught record by record, rolled back."""
    db = copy_database(chain["at0"], tmp_path / "live.db")
    with open_store(db) as conn, write_transaction(conn):
        (pid,) = conn.execute(
            "SELECT id FROM pins ORDER BY id LIMIT 1"  # the pin inc1 deletes
        ).fetchone()
        conn.execute("UPDATE pins SET id = 'renamed' WHERE id = ?", (pid,))
    before = dump_tables(db)
    with open_store(db) as conn, pytest.raises(ImportConflictError, match="tombstone for pin"):
        apply_increments(conn, refs(chain["inc1"]))
    assert dump_tables(db) == before


def test_damage_late_in_an_increment_rolls_everything_back(
    chain: dict[str, Path], tmp_path: Path
) -> None:
    db = copy_database(chain["at0"], tmp_path / "live.db")
    before = dump_tables(db)
    data = bytearray(chain["inc1"].read_bytes())
    data[-5] ^= 0xFF
    damaged = tmp_path / "damaged.kbundle"
    damaged.write_bytes(bytes(data))
    with open_store(db) as conn, pytest.raises(BundleError):
        apply_increments(conn, refs(damaged))
    assert dump_tables(db) == before


def test_readers_of_whole_bundles_refuse_an_increment(chain: dict[str, Path], tmp_path: Path):
    """Import, conversion and merge take bundles as whole databases: they refuse an increment
    (a 1.x reader refuses it by its major version, spec section 8)."""
    inc = chain["inc1"]
    assert read_manifest(inc).format_version.split(".")[0] == "2"
    message = r"is an incremental bundle \(the changes since bundle [0-9a-f]{12}\)"
    with open_store(tmp_path / "t.db") as conn, pytest.raises(BundleError, match=message):
        import_bundle(conn, inc)
    with pytest.raises(BundleError, match=message):
        bundle_to_kindling_json(inc, io.BytesIO())
    # A chain may not be restored into a database that already holds records.
    with open_store(chain["db"]) as conn, pytest.raises(Exception, match="needs an empty"):
        restore_chain(conn, refs(chain["full"], inc))


# --- verify -----------------------------------------------------------------------------------


def test_verify_checks_an_increment_alone_and_a_chain_with_its_links(
    chain: dict[str, Path],
) -> None:
    report = verify_bundle(chain["inc2"])
    assert report.ok, report.problems
    assert report.records["tombstones"] == 2

    good = verify_chain(refs(chain["full"], chain["inc1"], chain["inc2"]))
    assert good.ok, (good.link_problems, [r.problems for r in good.reports])
    assert good.digests == [file_sha256(chain[k]) for k in ("full", "inc1", "inc2")]

    broken = verify_chain(refs(chain["full"], chain["inc2"]))
    assert all(r.ok for r in broken.reports)
    assert len(broken.link_problems) == 1
    problem = broken.link_problems[0]
    assert problem.kind == "chain-link"
    assert problem.source == str(chain["inc2"])
    assert problem.detail.startswith("link 2, ")
    assert "1 link missing before it" in problem.detail


def _handmade_increment(tombstones: list[Tombstone], observations: list[Observation]) -> bytes:
    sha = hashlib.sha256(b"base").hexdigest()
    base = BaseInfo(sha256=sha, created_at=1, full_sha256=sha, depth=1, records=StateCounts.of({}))
    out = io.BytesIO()
    write_bundle_from_records(
        out,
        {"tombstones": tombstones, "observations": observations},
        BundleOptions(created_at=T0),
        increment=IncrementHeader(base, {}),
    )
    return out.getvalue()


def test_verify_reports_tombstones_out_of_order_repeated_or_also_written() -> None:
    obs = Observation(id="o1", kind="message", content="x", ts=1)
    data = _handmade_increment(
        [
            Tombstone(entity="observations", id="o2"),
            Tombstone(entity="pins", id="p1"),  # pins come first
            Tombstone(entity="pins", id="p1"),
            Tombstone(entity="observations", id="o1"),
        ],
        [obs],
    )
    report = verify_bundle(io.BytesIO(data))
    assert [p.kind for p in report.problems] == ["order", "repeated-id", "deleted-and-written"]
    assert report.messages == [
        "<stream>: tombstones.msgpack: tombstone for pin p1 is out of order (tombstones go by "
        "entity: pins, summaries, capsules, observations, then by id)",
        "<stream>: tombstones.msgpack: tombstone for pin p1 appears more than once",
        "<stream>: observations.msgpack: observation o1 is both deleted (a tombstone) and "
        "written by the bundle",
    ]


def test_an_increment_may_refer_to_records_of_its_base() -> None:
    """Its references are not resolved inside it (they are checked on import)."""
    pin = Pin(id="p", target_type="observation", target_id="in-the-base", created_at=1)
    data = _handmade_increment([], [])
    assert verify_bundle(io.BytesIO(data)).ok
    sha = hashlib.sha256(b"base").hexdigest()
    base = BaseInfo(sha256=sha, created_at=1, full_sha256=sha, depth=1, records=StateCounts.of({}))
    out = io.BytesIO()
    write_bundle_from_records(
        out, {"pins": [pin]}, BundleOptions(created_at=T0), increment=IncrementHeader(base, {})
    )
    assert verify_bundle(io.BytesIO(out.getvalue())).ok


def test_the_chain_read_beside_the_scan_gives_the_same_increment_and_errors(
    chain: dict[str, Path], tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Without a cache, a second process reads the base's chain while the database is scanned
    (for chains of FORK_MIN_BYTES or more; here every chain)."""
    from kindling_bundle.ops import state

    monkeypatch.setenv("KINDLING_BUNDLE_CACHE", "off")
    links = [chain["full"], chain["inc1"], chain["inc2"]]
    mutate(chain["db"], 3)
    inline, forked = tmp_path / "inline.kbundle", tmp_path / "forked.kbundle"
    monkeypatch.setattr(state, "FORK_MIN_BYTES", 1 << 60)
    increment(chain["db"], inline, *links, step=3)
    monkeypatch.setattr(state, "FORK_MIN_BYTES", 0)
    increment(chain["db"], forked, *links, step=3)
    assert forked.read_bytes() == inline.read_bytes()

    with pytest.raises(BundleError, match=r"^link 2, .*inc2\.kbundle .*1 link missing"):
        increment(chain["db"], tmp_path / "never.kbundle", chain["full"], chain["inc2"], step=3)
    assert not (tmp_path / "never.kbundle").exists()
