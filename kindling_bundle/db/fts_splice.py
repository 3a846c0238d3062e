"""Observations' full-text index built beside a live import, and spliced in under the lock.

Kindling's insert trigger tokenizes every new observation into `observations_fts` while the row
is inserted: inside the write transaction, on the thread that holds the lock. For an import
into a database in use that was half of each step. Here a step's index is built before the
step, from the rows it will insert, by FTS5 itself in a private in-memory database
(`build_segment`, on a thread of its own), and the step copies it in as one new segment,
inserting its rows with the trigger set aside. The index that results answers every query as
the trigger's would, with the same statistics (bm25 ranks), and FTS5 maintains it as its own.

Terms (FTS5's, ext/fts5/fts5_index.c): an external-content FTS5 index is kept in shadow tables.
`_data` holds, by rowid, the averages record (1: rows indexed and tokens per column, varints),
the structure record (10: which segments make up the index, by level, oldest first) and every
segment's pages (rowid `segid << 37` plus the page number, and the doclist-index pages above
them); `_idx` holds (segid, first term of a leaf, page); `_docsize` each row's token counts. A
segment's pages name no segment id, so a segment built elsewhere is moved in by renumbering
its rowids. The rows' rowids must be known when the segment is built: the import gives its new
observations explicit rowids, each step a run reserved after the last one: the next rowids,
the very ones the rows would take anyway, or, while other connections write, ROWID_SLACK past
them, room for those writers' rows meanwhile (`Splicer.reserve`); a step whose run has been
taken meanwhile is written the usual way (`Splicer.free`).

Only a table the way Kindling makes it is spliced (`Splicer.attach`): Kindling's trigger (but
for spacing and letter case), a structure record of the first version (FTS5 writes the second
only for contentless-delete tables), and settings known not to change a segment's layout,
`pgsz` copied. FTS5 keeps a copy of the structure record per connection, refreshed when another
connection commits: after writing it, the step makes FTS5 read it again (a savepoint rolled
back over a write to the table), then lets FTS5 merge about as much as its own automerge would
have after writing those pages (`Splicer._merge`), and checks the segment is where it was put
or merged away.
"""

from __future__ import annotations

import sqlite3
import time
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass

from kindling_bundle.db.connection import last_rowid
from kindling_bundle.db.importer import insert_rows
from kindling_bundle.db.schema import TRIGGERS

FTS = "observations_fts"
TRIGGER = "observations_fts_insert"
ROWID_SLACK = 256
"""Rowids left free below each run reserved while others write: room for that many rows they
insert between the reservation and the step (at Kindling's pace, many seconds' worth)."""
SEGMENT_SHIFT = 37
"""A segment's pages are at rowids `segid << 37` on (FTS5_SEGMENT_ROWID)."""
MAX_SEGMENTS = 2000
"""FTS5_MAX_SEGMENT: segment ids run from 1 to this."""
MOST_ROWS = 8_000
"""Rows a segment is built from at most (a spliced step's observations): they go to FTS5 in
one statement, two values a row (SQLite takes up to 32,766), and what a step holds in memory
(its records, staged rows, the pending index being built, the segment) grows with them."""
_PER_STATEMENT = 4096
"""Rows to an INSERT statement where the segment is copied in."""
MERGE_PAGES = 256
"""Pages one 'merge' command writes at most: between two, the step looks at the clock."""
CROWDED = 12
"""Segments on one level that make a step merge, while it has room, whatever it owes: FTS5
merges a level of 16 (`crisismerge`) all at once, in the write that adds the sixteenth, which
could be Kindling's."""
CRISIS = 15
"""Segments on one level that make a step merge even past its time."""
_AVERAGES = 1
_STRUCTURE = 10
_READ_STRUCTURE = f"SELECT block FROM main.{FTS}_data WHERE id = {_STRUCTURE}"
_READ_AVERAGES = f"SELECT block FROM main.{FTS}_data WHERE id = {_AVERAGES}"
_V2 = b"\xff\x00\x00\x01"
_SETTINGS = frozenset(
    {
        "version",
        "pgsz",
        "automerge",
        "crisismerge",
        "usermerge",
        "hashsize",
        "deletemerge",
        "rank",
        "secure-delete",
    }
)
"""FTS5 settings a segment built apart may meet (`pgsz` is copied into the build); any other
means a table this module was not written for."""
_BUILD_HASH_BYTES = 1 << 30
"""The build's pending index: large enough that FTS5 writes a step's rows as one segment."""


class SpliceRefused(Exception):
    """This index cannot take the segment as this module would add it: the step's rows are
    indexed by Kindling's trigger instead (nothing spliced is kept)."""


def read_varint(data: bytes, at: int) -> tuple[int, int]:
    """SQLite's varint at `at`: its value and where the next begins."""
    value = 0
    for index in range(8):
        byte = data[at + index]
        value = (value << 7) | (byte & 0x7F)
        if not byte & 0x80:
            return value, at + index + 1
    return (value << 8) | data[at + 8], at + 9


def write_varint(value: int) -> bytes:
    """SQLite's varint of `value` (0 to 2**64 - 1)."""
    if value >> 56:
        tail = [value & 0xFF]
        value >>= 8
        head = [((value >> (7 * i)) & 0x7F) | 0x80 for i in range(8)]
        return bytes(reversed(head)) + bytes(tail)
    out = [value & 0x7F]
    value >>= 7
    while value:
        out.append((value & 0x7F) | 0x80)
        value >>= 7
    return bytes(reversed(out))


def _varints(data: bytes) -> list[int]:
    values: list[int] = []
    at = 0
    while at < len(data):
        value, at = read_varint(data, at)
        values.append(value)
    return values


@dataclass
class Structure:
    """FTS5's structure record (version 1): levels of segments [segid, first page, last page],
    each level with how many of its oldest segments an unfinished merge is reading."""

    cookie: bytes
    write_counter: int
    levels: list[tuple[int, list[list[int]]]]

    @classmethod
    def decode(cls, data: bytes) -> Structure | None:
        """None for a record of another version or one that does not parse."""
        if len(data) < 5 or data[4:8] == _V2:
            return None
        try:
            levels_count, at = read_varint(data, 4)
            segments_count, at = read_varint(data, at)
            counter, at = read_varint(data, at)
            levels: list[tuple[int, list[list[int]]]] = []
            for _ in range(levels_count):
                merging, at = read_varint(data, at)
                count, at = read_varint(data, at)
                segments: list[list[int]] = []
                for _ in range(count):
                    segment = []
                    for _ in range(3):
                        value, at = read_varint(data, at)
                        segment.append(value)
                    segments.append(segment)
                levels.append((merging, segments))
        except IndexError:
            return None
        if at != len(data) or segments_count != sum(len(s) for _, s in levels):
            return None
        return cls(data[:4], counter, levels)

    def encode(self) -> bytes:
        out = bytearray(self.cookie)
        out += write_varint(len(self.levels))
        out += write_varint(sum(len(segments) for _, segments in self.levels))
        out += write_varint(self.write_counter)
        for merging, segments in self.levels:
            out += write_varint(merging) + write_varint(len(segments))
            for segment in segments:
                out += b"".join(map(write_varint, segment))
        return bytes(out)

    def segment_ids(self) -> set[int]:
        return {segment[0] for _, segments in self.levels for segment in segments}


@dataclass(frozen=True)
class Segment:
    """One segment of an index of some rows, built apart: its pages by rowid less the segment's
    base, its `_idx` entries (term, page), the rows' `_docsize` entries, and the averages
    record's values (rows, then tokens per column). Rows without a word make no segment: no
    pages, only sizes and totals."""

    first_page: int
    last_page: int
    pages: list[tuple[int, bytes]]
    terms: list[tuple[bytes, int]]
    sizes: list[tuple[int, bytes]]
    totals: list[int]


def build_segment(
    create_sql: str, pgsz: int | None, rows: Sequence[tuple[int, str]]
) -> Segment | None:
    """The index of (rowid, content) rows (at most MOST_ROWS) in ascending rowid order, as one
    segment, built by FTS5 in a private in-memory database from the table's own CREATE
    statement; None without rows. SpliceRefused if FTS5 did not write them as one segment (a
    SQLite that takes fewer values a statement)."""
    if not rows:
        return None
    conn = sqlite3.connect(":memory:", isolation_level=None, check_same_thread=False)
    try:
        conn.execute(create_sql)
        conn.execute("BEGIN")
        if pgsz is not None:
            conn.execute(f"INSERT INTO {FTS}({FTS}, rank) VALUES ('pgsz', ?)", (pgsz,))
        conn.execute(f"INSERT INTO {FTS}({FTS}, rank) VALUES ('hashsize', ?)", (_BUILD_HASH_BYTES,))
        # one statement: FTS5 writes a segment at the start of every statement of many rows
        # (and Python's lock is let go once, not for each row, while FTS5 indexes them)
        insert_rows(conn, f"INSERT INTO {FTS}(rowid, content) VALUES (?, ?)", rows, len(rows))
        conn.execute("COMMIT")
        sizes = conn.execute(f"SELECT id, sz FROM {FTS}_docsize").fetchall()
        totals = _varints(conn.execute(_READ_AVERAGES).fetchone()[0])
        segments = [s for _, level in _structure(conn).levels for s in level]
        if not segments:  # rows without a word: counted, nothing to find
            return Segment(0, -1, [], [], sizes, totals)
        if len(segments) > 1:
            raise SpliceRefused(f"{FTS}: FTS5 wrote a step's rows as {len(segments)} segments")
        [[segid, first, last]] = segments
        base = segid << SEGMENT_SHIFT
        pages = conn.execute(
            f"SELECT id - ?, block FROM {FTS}_data WHERE id BETWEEN ? AND ?",
            (base, base, base + (1 << SEGMENT_SHIFT) - 1),
        ).fetchall()
        terms = conn.execute(f"SELECT term, pgno FROM {FTS}_idx WHERE segid = ?", (segid,))
        return Segment(first, last, pages, terms.fetchall(), sizes, totals)
    finally:
        conn.close()


def _structure(conn: sqlite3.Connection) -> Structure:
    row = conn.execute(_READ_STRUCTURE).fetchone()
    structure = Structure.decode(row[0]) if row is not None else None
    if structure is None:
        raise SpliceRefused(f"{FTS}: its structure record is not one this import can add to")
    return structure


def _kindlings(sql: str | None) -> bool:
    """Whether a trigger's statement is Kindling's, however its spacing and letter case."""
    return sql is not None and _normal(sql) == _normal(TRIGGERS[TRIGGER])


def _normal(sql: str) -> str:
    return "".join(sql.split()).lower()


class Splicer:
    """Splices built segments into one connection's `observations_fts`, for one import."""

    def __init__(self, create_sql: str, pgsz: int | None, next_rowid: int):
        self.create_sql = create_sql
        self.pgsz = pgsz
        self._next = next_rowid
        self._taken = False
        """Whether a reserved run was taken: others write, whatever the steps could tell."""
        self._owed = 0
        """Pages of merging owed to the index (`_merge`)."""

    @classmethod
    def attach(cls, conn: sqlite3.Connection) -> Splicer | None:
        """A splicer if the database's table and trigger are Kindling's (module docstring),
        else None: its observations are indexed by the trigger."""
        schema = dict(
            conn.execute(
                "SELECT name, sql FROM sqlite_master WHERE name IN (?, ?)", (FTS, TRIGGER)
            ).fetchall()
        )
        if not _kindlings(schema.get(TRIGGER)):
            return None
        settings = dict(conn.execute(f"SELECT k, v FROM {FTS}_config").fetchall())
        if settings.get("version") != 4 or not set(settings) <= _SETTINGS:
            return None
        try:
            _structure(conn)
        except SpliceRefused:
            return None
        pgsz = settings.get("pgsz")
        next_rowid = last_rowid(conn, "observations") + 1
        return cls(schema[FTS], None if pgsz is None else int(pgsz), next_rowid)

    def reserve(self, count: int, *, others_writing: bool) -> int:
        """The first of `count` rowids for a step's new observations, above every reserved so
        far: the next ones, or ROWID_SLACK past them while other connections write (or once they
        took a run)."""
        first = self._next + (ROWID_SLACK if others_writing or self._taken else 0)
        self._next = first + count
        return first

    def after_unspliced(self, conn: sqlite3.Connection) -> None:
        """After a step written through the trigger (its rows took the table's next rowids):
        reservations go on above them."""
        self._next = max(self._next, last_rowid(conn, "observations") + 1)

    def free(self, conn: sqlite3.Connection, first: int) -> bool:
        """Inside the step: nothing has taken a rowid from `first` on (every row above the
        table's last would be). If something has, others write: reservations leave room."""
        if last_rowid(conn, "observations") < first:
            return True
        self._taken = True
        return False

    @staticmethod
    @contextmanager
    def untriggered(conn: sqlite3.Connection) -> Iterator[None]:
        """Inside a write transaction: the block's inserts are not indexed by Kindling's
        trigger. Other connections never see it gone: it is back before the block ends, the
        same statement (its row in sqlite_master is a new one); on an exception the caller
        rolls the transaction back, which brings it back too."""
        row = conn.execute("SELECT sql FROM main.sqlite_master WHERE name = ?", (TRIGGER,))
        sql = row.fetchone()
        if sql is None or not _kindlings(sql[0]):
            raise SpliceRefused(f"{TRIGGER}: no longer Kindling's trigger")
        conn.execute(f"DROP TRIGGER main.{TRIGGER}")
        yield
        conn.execute(sql[0])

    def splice(
        self, conn: sqlite3.Connection, segment: Segment, room: Callable[[float], bool]
    ) -> None:
        """Inside the step's write transaction: add `segment` to the index as its newest, and
        merge as FTS5 would have, as far as `room` (`pacing.Step.room`) allows. Nothing may
        have gone through FTS5 itself in the step's rows before: it would write its own copy
        of the averages record back at the next savepoint."""
        sizes = f"INSERT INTO main.{FTS}_docsize (id, sz) VALUES (?, ?)"
        insert_rows(conn, sizes, segment.sizes, _PER_STATEMENT)
        held = conn.execute(_READ_AVERAGES).fetchone()
        try:  # an index that never held a row has an empty record
            totals = (
                _varints(held[0]) if held is not None and held[0] else [0] * len(segment.totals)
            )
        except IndexError:  # cut short
            totals = []
        if len(totals) != len(segment.totals):
            raise SpliceRefused(f"{FTS}: its averages record does not have the expected columns")
        averages = b"".join(
            write_varint(a + b) for a, b in zip(totals, segment.totals, strict=True)
        )
        conn.execute(
            f"INSERT OR REPLACE INTO main.{FTS}_data (id, block) VALUES ({_AVERAGES}, ?)",
            (averages,),
        )
        if not segment.pages:
            return
        structure = _structure(conn)
        segid = _free_segment_id(conn, structure)
        base = segid << SEGMENT_SHIFT
        pages = [(base + offset, block) for offset, block in segment.pages]
        terms = [(segid, term, page) for term, page in segment.terms]
        data = f"INSERT INTO main.{FTS}_data (id, block) VALUES (?, ?)"
        insert_rows(conn, data, pages, _PER_STATEMENT)
        idx = f"INSERT INTO main.{FTS}_idx (segid, term, pgno) VALUES (?, ?, ?)"
        insert_rows(conn, idx, terms, _PER_STATEMENT)
        if not structure.levels:
            structure.levels.append((0, []))
        structure.levels[0][1].append([segid, segment.first_page, segment.last_page])
        leaves = segment.last_page - segment.first_page + 1
        structure.write_counter += leaves
        conn.execute(
            f"UPDATE main.{FTS}_data SET block = ? WHERE id = {_STRUCTURE}",
            (structure.encode(),),
        )
        self._owed += leaves * len(structure.levels)
        self._reread(conn)
        self._merge(conn, room)
        if segid in _structure(conn).segment_ids():
            return
        left = conn.execute(
            f"SELECT 1 FROM main.{FTS}_data WHERE id BETWEEN ? AND ? LIMIT 1",
            (base, base + (1 << SEGMENT_SHIFT) - 1),
        ).fetchone()
        if left is not None:  # merged away would have taken its pages with it
            raise SpliceRefused(f"{FTS}: FTS5 lost track of a segment the import added to it")

    @staticmethod
    def _reread(conn: sqlite3.Connection) -> None:
        """FTS5 drops its copy of the structure record when a savepoint it took part in is
        rolled back: it then reads the one written here."""
        conn.execute("SAVEPOINT kindling_fts_reread")
        conn.execute(f"INSERT INTO main.{FTS}({FTS}, rank) VALUES ('usermerge', 4)")
        conn.execute("ROLLBACK TO kindling_fts_reread")
        conn.execute("RELEASE kindling_fts_reread")

    def _merge(self, conn: sqlite3.Connection, room: Callable[[float], bool]) -> None:
        """Merge about what FTS5's automerge would have after writing the spliced pages
        (`_owed`, pages), and more while a level holds CROWDED segments, MERGE_PAGES at a time
        while the step has room for one more as long as the longest so far; what is left, the
        next steps merge. Whatever the time, while a level holds CRISIS segments: the next
        one there would make FTS5 merge the level whole, in whichever write adds it (maybe
        Kindling's). Once FTS5 finds nothing to merge, nothing is owed."""
        longest = 0.0
        while True:
            most = _most_segments(conn)
            if (most < CRISIS and not room(longest)) or (self._owed <= 0 and most < CROWDED):
                return
            before = conn.execute(_READ_STRUCTURE).fetchone()
            began = time.perf_counter()
            pages = MERGE_PAGES
            conn.execute(f"INSERT INTO main.{FTS}({FTS}, rank) VALUES ('merge', ?)", (pages,))
            longest = max(longest, time.perf_counter() - began)
            self._owed -= pages
            if conn.execute(_READ_STRUCTURE).fetchone() == before:
                self._owed = 0
                return


def _most_segments(conn: sqlite3.Connection) -> int:
    return max((len(segments) for _, segments in _structure(conn).levels), default=0)


def _free_segment_id(conn: sqlite3.Connection, structure: Structure) -> int:
    """The highest segment id neither listed nor holding pages or terms. FTS5 takes the lowest
    for its own: one working from a stale copy of the structure would write its segment
    elsewhere and leave this one unlisted, which `Splicer.splice` then finds."""
    used = structure.segment_ids()
    for segid in range(MAX_SEGMENTS, 0, -1):
        if segid in used:
            continue
        base = segid << SEGMENT_SHIFT
        taken = conn.execute(
            f"SELECT 1 FROM main.{FTS}_data WHERE id BETWEEN ? AND ? "
            f"UNION ALL SELECT 1 FROM main.{FTS}_idx WHERE segid = ? LIMIT 1",
            (base, base + (1 << SEGMENT_SHIFT) - 1, segid),
        ).fetchone()
        if taken is None:
            return segid
    raise SpliceRefused(f"{FTS}: it has {MAX_SEGMENTS} segments, FTS5's limit")
