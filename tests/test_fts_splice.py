"""An import into a database in use builds its observations' full-text index beside the steps
and splices it in (`db.fts_splice`): search must then answer exactly as if Kindling's trigger
had indexed every row, and whenever splicing cannot be done safely the trigger does it."""

from __future__ import annotations

import shutil
import sqlite3
from pathlib import Path
from typing import Any

import pytest

from conftest import dump_contents
from kindling_bundle import Observation, generate_sample, import_bundle, open_store, write_bundle
from kindling_bundle.db import fts_splice, live, pacing
from kindling_bundle.db.fts_splice import Splicer, Structure, read_varint, write_varint
from kindling_bundle.db.fts_tuning import step_settings
from kindling_bundle.db.schema import TRIGGERS

FTS = "observations_fts"
QUERIES = ["error", "test", "file", "function", "import", "return", "module", "value", "run"]


@pytest.fixture(scope="module")
def template(tmp_path_factory: pytest.TempPathFactory) -> Path:
    path = tmp_path_factory.mktemp("template") / "memory.db"
    generate_sample(path, observations=1200, seed=31)
    return path


@pytest.fixture(scope="module")
def bundle(tmp_path_factory: pytest.TempPathFactory) -> Path:
    folder = tmp_path_factory.mktemp("bundle")
    generate_sample(folder / "teammate.db", observations=3000, seed=32)
    path = folder / "teammate.kbundle"
    with open_store(folder / "teammate.db", readonly=True) as conn:
        write_bundle(conn, path)
    return path


@pytest.fixture(scope="module")
def by_trigger(tmp_path_factory: pytest.TempPathFactory, template: Path, bundle: Path) -> Path:
    """The bundle merged with Kindling's trigger indexing every row (nothing spliced)."""
    path = tmp_path_factory.mktemp("trigger") / "merged.db"
    shutil.copy(template, path)
    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(Splicer, "attach", classmethod(lambda cls, conn: None))
        with open_store(path) as conn:
            import_bundle(conn, bundle)
    return path


@pytest.fixture
def spliced(monkeypatch: pytest.MonkeyPatch) -> list[int]:
    """How many segments the imports of the test spliced in."""
    calls: list[int] = []
    splice = Splicer.splice

    def spy(
        self: Splicer, conn: sqlite3.Connection, segment: fts_splice.Segment, room: Any
    ) -> None:
        calls.append(len(segment.sizes))
        splice(self, conn, segment, room)

    monkeypatch.setattr(Splicer, "splice", spy)
    return calls


def index_by_id(db: Path) -> dict[str, Any]:
    """What the observations' index holds, by observation id rather than rowid (a spliced
    import leaves rowids unused between its steps): every token instance, every row's token
    counts, the statistics record, and the bm25 ranks of some searches."""
    conn = sqlite3.connect(f"file:{db}?mode=ro", uri=True)
    conn.execute(f"CREATE VIRTUAL TABLE temp.v USING fts5vocab(main, {FTS}, instance)")
    ids = dict(conn.execute("SELECT rowid, id FROM observations").fetchall())
    held: dict[str, Any] = {
        "instances": sorted((t, ids[d], c, o) for t, d, c, o in conn.execute("SELECT * FROM v")),
        "sizes": sorted((ids[r], sz) for r, sz in conn.execute(f"SELECT * FROM {FTS}_docsize")),
        "stats": conn.execute(f"SELECT block FROM {FTS}_data WHERE id = 1").fetchone(),
    }
    for query in QUERIES:
        held[query] = [
            (ids[rowid], round(rank, 9))
            for rowid, rank in conn.execute(
                f"SELECT rowid, bm25({FTS}) FROM {FTS} WHERE {FTS} MATCH ? ORDER BY rank, rowid",
                (query,),
            )
        ]
    conn.close()
    return held


def rows_by_id(db: Path) -> list[tuple[Any, ...]]:
    conn = sqlite3.connect(f"file:{db}?mode=ro", uri=True)
    rows = sorted(conn.execute("SELECT * FROM observations").fetchall())
    conn.close()
    return rows


def schema(db: Path) -> list[tuple[Any, ...]]:
    conn = sqlite3.connect(f"file:{db}?mode=ro", uri=True)
    rows = sorted(conn.execute("SELECT type, name, tbl_name, sql FROM sqlite_master").fetchall())
    conn.close()
    return rows


def fts5_consistent(db: Path) -> None:
    """FTS5's own check of the index's inner consistency (0: not against the content table,
    which holds redacted rows the trigger leaves out on purpose)."""
    conn = sqlite3.connect(db, isolation_level=None)
    conn.execute(f"INSERT INTO {FTS}({FTS}, rank) VALUES ('integrity-check', 0)")
    conn.close()


def merge(template: Path, bundle: Path, into: Path) -> Path:
    shutil.copy(template, into)
    with open_store(into) as conn:
        import_bundle(conn, bundle)
    return into


def another_writer_first(db: Path, monkeypatch: pytest.MonkeyPatch) -> list[str]:
    """Another connection inserts an observation just before the import's first step (once its
    rowids are reserved: the next ones, as nobody else had written); the list names it."""
    segment = live.Writer._segment
    others: list[str] = []

    def with_a_writer_first(self: live.Writer, ahead: Any) -> Any:
        if not others:
            other = sqlite3.connect(db)
            other.execute(
                "INSERT INTO observations (id, kind, content, ts) VALUES ('other', 'message', "
                "'written meanwhile', 1)"
            )
            other.commit()
            other.close()
            others.append("other")
        return segment(self, ahead)

    monkeypatch.setattr(live.Writer, "_segment", with_a_writer_first)
    return others


@pytest.mark.parametrize(
    "value", [0, 1, 127, 128, 240, 16383, 16384, 2**32, 2**56 - 1, 2**56, 2**63, 2**64 - 1]
)
def test_varints_are_sqlites(value: int) -> None:
    data = write_varint(value)
    assert read_varint(data + b"\x00", 0) == (value, len(data))
    assert len(data) == next(n for n in range(1, 10) if value < 2 ** (7 * n) or n == 9)
    if value == 128:
        assert data == b"\x81\x00"


def test_structure_records_round_trip_and_version_2_is_refused(template: Path) -> None:
    conn = sqlite3.connect(f"file:{template}?mode=ro", uri=True)
    (block,) = conn.execute(f"SELECT block FROM {FTS}_data WHERE id = 10").fetchone()
    conn.close()
    structure = Structure.decode(block)
    assert structure is not None and structure.levels
    assert structure.encode() == block
    assert Structure.decode(block[:4] + b"\xff\x00\x00\x01" + block[4:]) is None
    assert Structure.decode(block[:-1]) is None


def test_a_spliced_merge_indexes_as_kindlings_trigger_does(
    tmp_path: Path, template: Path, bundle: Path, by_trigger: Path, spliced: list[int]
) -> None:
    db = merge(template, bundle, tmp_path / "merged.db")
    assert len(spliced) >= 2 and sum(spliced) > 2500  # most observations were spliced in
    # nobody else wrote: the rows took the rowids the trigger's import gives them, and the
    # index holds the same entries (by rowid), with the same statistics and ranks
    assert dump_contents(db) == dump_contents(by_trigger)
    assert index_by_id(db) == index_by_id(by_trigger)
    assert schema(db) == schema(template)  # Kindling's trigger is back, word for word
    fts5_consistent(db)


def test_a_connection_that_used_the_index_before_keeps_it_whole(
    tmp_path: Path, template: Path, bundle: Path, by_trigger: Path, spliced: list[int]
) -> None:
    """FTS5 keeps a copy of the index's structure per connection: after a splice, the same
    connection's own writes through the trigger must build on the spliced structure."""
    db = tmp_path / "memory.db"
    shutil.copy(template, db)
    insert = "INSERT INTO observations (id, kind, content, ts) VALUES (?, 'message', ?, 1)"
    with open_store(db) as conn:
        assert conn.execute(f"SELECT count(*) FROM {FTS} WHERE {FTS} MATCH 'error'").fetchone()
        conn.execute(insert, ("before-import", "zebracorn before"))
        conn.commit()
        import_bundle(conn, bundle)
        conn.execute(insert, ("after-import", "zebracorn after"))
        conn.commit()
    assert spliced
    fts5_consistent(db)
    conn = sqlite3.connect(db)
    found = conn.execute(f"SELECT count(*) FROM {FTS} WHERE {FTS} MATCH 'zebracorn'").fetchone()
    conn.execute("DELETE FROM observations WHERE id IN ('before-import', 'after-import')")
    conn.commit()
    conn.close()
    assert found == (2,)
    assert index_by_id(db) == index_by_id(by_trigger)


def test_rowids_taken_meanwhile_are_left_to_the_trigger_and_later_steps_reserve_above(
    tmp_path: Path,
    template: Path,
    bundle: Path,
    by_trigger: Path,
    spliced: list[int],
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """Another writer inserts a row after the first step's rowids were reserved (the next ones:
    nobody else had written): that step goes through the trigger; once the import has seen
    others write, steps reserve rowids with room to spare, and are spliced."""
    db = tmp_path / "memory.db"
    shutil.copy(template, db)
    free = Splicer.free
    taken: list[int] = []

    def counted(self: Splicer, conn: sqlite3.Connection, first: int) -> bool:
        found = free(self, conn, first)
        taken.extend([] if found else [first])
        return found

    others = another_writer_first(db, monkeypatch)
    monkeypatch.setattr(Splicer, "free", counted)
    with open_store(db) as conn:
        report = import_bundle(conn, bundle)
        conn.execute("DELETE FROM observations WHERE id = 'other'")
        conn.commit()
    assert report.counts["observations"].inserted == 3000
    assert others == ["other"] and taken and spliced
    assert index_by_id(db) == index_by_id(by_trigger)
    fts5_consistent(db)
    conn = sqlite3.connect(db)
    highest = conn.execute("SELECT max(rowid) FROM observations").fetchone()[0]
    conn.close()
    assert highest > 4200 + fts_splice.ROWID_SLACK  # rowids left unused between steps


def test_a_step_through_the_trigger_that_stops_early_leaves_no_index_misplaced(
    tmp_path: Path,
    template: Path,
    bundle: Path,
    by_trigger: Path,
    spliced: list[int],
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """The step whose rowids were taken goes through the trigger and, out of time, writes part
    of its chunk only, while the next chunk's index is being built at rowids of its own: the
    next step must not write the rest with that index."""
    db = tmp_path / "memory.db"
    shutil.copy(template, db)
    monkeypatch.setattr(pacing, "LIMIT_SECONDS", 0.0)  # no room after a step's first part
    write = live.Writer._write
    left: list[int] = []

    def counted(self: live.Writer, chunk: list[Any], *args: Any) -> Any:
        results = write(self, chunk, *args)
        if isinstance(chunk[0].record, Observation):
            left.append(len(chunk) - len(results))
        return results

    others = another_writer_first(db, monkeypatch)
    monkeypatch.setattr(live.Writer, "_write", counted)
    with open_store(db) as conn:
        report = import_bundle(conn, bundle)
        conn.execute("DELETE FROM observations WHERE id = 'other'")
        conn.commit()
    assert report.counts["observations"].inserted == 3000
    assert others == ["other"] and left and left[0] > 0  # the step stopped early
    assert spliced  # and later steps were spliced
    assert index_by_id(db) == index_by_id(by_trigger)
    fts5_consistent(db)


def test_a_row_refused_in_a_spliced_step_undoes_the_splice(
    tmp_path: Path,
    template: Path,
    bundle: Path,
    spliced: list[int],
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """An id stored by another writer after the planner decided "insert": the spliced step is
    rolled back whole and written the usual way, where the conflict rule skips the record."""
    db = tmp_path / "memory.db"
    shutil.copy(template, db)
    segment = live.Writer._segment
    taken: list[str] = []

    def with_a_conflict_first(self: live.Writer, ahead: Any) -> Any:
        if not taken and ahead is not None:
            record = self._pending[ahead.count - 1].record
            other = sqlite3.connect(db)
            other.execute(  # below the table's rowids: the reserved ones stay free
                "INSERT INTO observations (rowid, id, kind, content, ts) VALUES (-1, ?, "
                "'message', 'zebracorn stored first', 1)",
                (record.id,),
            )
            other.commit()
            other.close()
            taken.append(record.id)
        return segment(self, ahead)

    monkeypatch.setattr(live.Writer, "_segment", with_a_conflict_first)
    with open_store(db) as conn:
        report = import_bundle(conn, bundle)
    assert taken and spliced == []
    assert report.counts["observations"].inserted == 2999
    assert report.counts["observations"].skipped == 1
    assert schema(db) == schema(template)
    fts5_consistent(db)
    conn = sqlite3.connect(db)
    hits = conn.execute(
        f"SELECT o.id FROM {FTS} JOIN observations AS o ON o.rowid = {FTS}.rowid "
        f"WHERE {FTS} MATCH 'zebracorn'"
    ).fetchall()
    conn.close()
    assert hits == [(taken[0],)]


def test_a_segment_that_could_not_be_built_leaves_the_indexing_to_the_trigger(
    tmp_path: Path,
    template: Path,
    bundle: Path,
    by_trigger: Path,
    spliced: list[int],
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setattr(fts_splice, "_BUILD_HASH_BYTES", 1024)  # FTS5 then writes many segments
    build = live.build_segment
    refused: list[int] = []

    def counted(*args: Any) -> Any:
        try:
            return build(*args)
        except fts_splice.SpliceRefused:
            refused.append(len(args[2]))
            raise

    monkeypatch.setattr(live, "build_segment", counted)
    db = merge(template, bundle, tmp_path / "merged.db")
    assert refused and spliced == []
    assert index_by_id(db) == index_by_id(by_trigger)


def test_only_kindlings_own_trigger_is_set_aside(tmp_path: Path, template: Path) -> None:
    db = tmp_path / "memory.db"
    shutil.copy(template, db)
    conn = sqlite3.connect(db, isolation_level=None)
    assert Splicer.attach(conn) is not None
    conn.execute("DROP TRIGGER observations_fts_insert")
    laid_out_otherwise = " ".join(TRIGGERS["observations_fts_insert"].split()).lower()
    conn.execute(laid_out_otherwise.replace(" (", "(").replace(", ", ","))
    assert Splicer.attach(conn) is not None
    conn.execute("DROP TRIGGER observations_fts_insert")
    conn.execute(TRIGGERS["observations_fts_insert"].replace("NEW.redacted = 0", "1"))
    assert Splicer.attach(conn) is None
    conn.close()


def test_a_step_without_room_merges_only_a_level_about_to_be_merged_whole(
    tmp_path: Path, template: Path
) -> None:
    """Merging runs while the step has room: segments spliced by steps that had none wait on
    the index's newest level, until it holds one less than the count at which FTS5 would merge
    the level whole in whichever write comes next (maybe Kindling's): then the step merges
    whatever the time."""
    db = tmp_path / "memory.db"
    shutil.copy(template, db)
    conn = sqlite3.connect(db, isolation_level=None)
    splicer = Splicer.attach(conn)
    assert splicer is not None

    def newest_level() -> int:
        (block,) = conn.execute(f"SELECT block FROM {FTS}_data WHERE id = 10").fetchone()
        structure = Structure.decode(block)
        assert structure is not None
        return len(structure.levels[0][1])

    def step(k: int, room: bool) -> None:
        first = splicer.reserve(300, others_writing=False)
        rows = [(first + i, f"zebracorn{k} number {i} of step {k}") for i in range(300)]
        segment = fts_splice.build_segment(splicer.create_sql, splicer.pgsz, rows)
        assert segment is not None
        conn.execute("BEGIN IMMEDIATE")
        with step_settings(conn, FTS):
            splicer.splice(conn, segment, lambda seconds: room)
        conn.execute("COMMIT")

    start = newest_level()
    steps = fts_splice.CRISIS - 1 - start
    for k in range(steps):
        step(k, room=False)
    assert newest_level() == fts_splice.CRISIS - 1  # nothing merged
    step(steps, room=False)
    assert newest_level() < fts_splice.CROWDED  # merged, though the step had no room left
    fts5_consistent(db)
    for k in range(steps + 1):
        query = f"zebracorn{k}"
        count = conn.execute(f"SELECT count(*) FROM {FTS} WHERE {FTS} MATCH ?", (query,))
        assert count.fetchone() == (300,)
    conn.close()


def test_observations_without_a_word_are_counted_as_the_trigger_counts_them(
    tmp_path: Path, template: Path, spliced: list[int], monkeypatch: pytest.MonkeyPatch
) -> None:
    """FTS5 writes no segment for rows without a word, but counts them (their sizes, the
    statistics): a step of only such rows adds those, as the trigger would."""
    source = tmp_path / "wordless.db"
    generate_sample(source, observations=40, seed=33)
    conn = sqlite3.connect(source)
    conn.execute("UPDATE observations SET content = '... -- !!' WHERE redacted = 0")
    conn.commit()
    conn.close()
    bundle = tmp_path / "wordless.kbundle"
    with open_store(source, readonly=True) as store:
        write_bundle(store, bundle)
    db = merge(template, bundle, tmp_path / "spliced.db")
    assert spliced and all(rows > 0 for rows in spliced)
    monkeypatch.setattr(Splicer, "attach", classmethod(lambda cls, conn: None))
    expected = merge(template, bundle, tmp_path / "trigger.db")
    assert dump_contents(db) == dump_contents(expected)
    assert index_by_id(db) == index_by_id(expected)
    fts5_consistent(db)
