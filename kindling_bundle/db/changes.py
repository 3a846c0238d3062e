"""What changed in a database since a snapshot, told by content: the database side of increments.

A record's *content hash* is a 64-bit BLAKE2b digest of its canonical encoding: the MessagePack
array of its fields in the order of spec section 6.2 (a capsule's observation ids in `seq` order
included), as a bundle's record decodes them. A row is hashed the same way: its JSON columns
decoded, its `redacted` flag a boolean. Neither timestamps nor rowids decide anything: merges and
imports add records with old timestamps, and VACUUM may renumber rowids. The denormalized scope
columns are not content: a restore derives them from `scopeIds`, as Kindling does.

Equal hashes mean equal records (up to a 2^-64 chance per record). A row a bundle could not carry
as it is (JSON text that does not decode the way Kindling's reader decodes it) hashes unlike any
record, so it counts as changed and travels again: never wrong, only larger. The *id hash* is the
same digest of the id alone; both are stable across processes and machines, so a snapshot's
hashes can be kept between runs (ops.state's cache).

`scan` reads one entity's rows once, in rowid order (no sort), and compares each with the
snapshot's hashes: memory is the snapshot's arrays, one flag per record of it, and the rowids of
the rows that changed. `changed_records` then reads those rows again, in export order, as
records, within the same read snapshot.
"""

from __future__ import annotations

import hashlib
import sqlite3
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from typing import Any, BinaryIO

import msgspec
import numpy as np
import numpy.typing as npt

from kindling_bundle.db.connection import describe_error
from kindling_bundle.db.rows import (
    CAPSULE_LINKS,
    CAPSULE_SELECT,
    OBSERVATION_SELECT,
    PIN_SELECT,
    SUMMARY_SELECT,
    capsule_with_links,
    observation_from_row,
    pin_from_row,
    prefixed,
    summary_from_row,
)
from kindling_bundle.errors import RecordError, StoreError
from kindling_bundle.records import Record

Hashes = npt.NDArray[np.uint64]

FETCH_ROWS = 1024

_encode = msgspec.msgpack.Encoder().encode
_blake2b = hashlib.blake2b


def digests(values: Sequence[bytes]) -> Hashes:
    """The 64-bit BLAKE2b digest of each value, as one array."""
    joined = b"".join([_blake2b(value, digest_size=8).digest() for value in values])
    return np.frombuffer(joined, dtype="<u8").astype(np.uint64, copy=False)


def id_hashes(ids: Sequence[str]) -> Hashes:
    """The id hash of each id."""
    return digests([value.encode("utf-8", "surrogatepass") for value in ids])


def row_hashes(rows: Sequence[tuple[Any, ...]]) -> Hashes:
    """The content hash of each record, given as its fields in spec order."""
    return digests([_encode(row) for row in rows])


RECORD_FIELDS: Callable[[Record], tuple[Any, ...]] = msgspec.structs.astuple
"""A record's fields in spec order: what its content hash is taken over."""


def record_hashes(records: Sequence[Record]) -> tuple[Hashes, Hashes]:
    """(id hashes, content hashes) of records."""
    fields = RECORD_FIELDS
    return id_hashes([r.id for r in records]), row_hashes([fields(r) for r in records])


_SCAN_SQL = {
    "observations": f"SELECT rowid, {OBSERVATION_SELECT} FROM observations",
    "capsules": f"SELECT c.rowid, {prefixed('c', CAPSULE_SELECT)}, {CAPSULE_LINKS} FROM capsules c",
    "summaries": f"SELECT rowid, {SUMMARY_SELECT} FROM summaries",
    "pins": f"SELECT rowid, {PIN_SELECT} FROM pins",
}


@dataclass
class EntityState:
    """One entity of a snapshot as hashes: id hashes in ascending order, and the content hash
    of the record with each id. Where the ids themselves are kept (ops.state's cache), `starts`
    and `lengths` say where each one's UTF-8 bytes are in `names`."""

    ids: Hashes
    contents: Hashes
    starts: npt.NDArray[np.int64] | None = None
    lengths: npt.NDArray[np.uint32] | None = None
    names: Any = None
    """A bytes-like object (a memory map) holding the ids."""

    def __len__(self) -> int:
        return len(self.ids)

    def name(self, index: int) -> str | None:
        """The id at `index`, where the ids are kept."""
        if self.starts is None or self.lengths is None or self.names is None:
            return None
        start = int(self.starts[index])
        return bytes(self.names[start : start + int(self.lengths[index])]).decode(
            "utf-8", "surrogatepass"
        )


@dataclass
class EntityChanges:
    """What `scan` found for one entity."""

    entity: str
    count: int
    """Records the database holds."""
    changed: npt.NDArray[np.int64]
    """Rowids of the rows that are new or differ from the snapshot."""
    deleted: Hashes
    """Id hashes of the snapshot's records the database no longer holds."""
    state: EntityState | None = None
    """With a `names` sink: every row's hashes (the database's own snapshot, for the next
    increment), `starts` and `lengths` locating each id in what was written to the sink."""


_json = msgspec.json.Decoder()


def _decoded(text: Any) -> Any:
    """A JSON column as a record holds it; anything else as it is (then it hashes unlike any
    record, and exporting the row says what is wrong with it)."""
    try:
        return _json.decode(text)
    except (msgspec.DecodeError, TypeError):
        return ("not JSON", text)


def _observation_fields(row: tuple[Any, ...]) -> tuple[Any, ...]:
    _, oid, kind, content, provenance, ts, scope, redacted = row
    return (oid, kind, content, _decoded(provenance), ts, _decoded(scope), bool(redacted))


def _capsule_fields(row: tuple[Any, ...]) -> tuple[Any, ...]:
    _, cid, kind, intent, status, opened, closed, scope, links = row
    return (cid, kind, intent, status, opened, closed, _decoded(scope), _decoded(links))


def _summary_fields(row: tuple[Any, ...]) -> tuple[Any, ...]:
    _, sid, capsule, content, confidence, created, evidence = row
    return (sid, capsule, content, confidence, created, _decoded(evidence))


def _pin_fields(row: tuple[Any, ...]) -> tuple[Any, ...]:
    _, pid, kind, target, reason, created, expires, scope = row
    return (pid, kind, target, reason, created, expires, _decoded(scope))


_ROW_FIELDS: dict[str, Callable[[tuple[Any, ...]], tuple[Any, ...]]] = {
    "observations": _observation_fields,
    "capsules": _capsule_fields,
    "summaries": _summary_fields,
    "pins": _pin_fields,
}
"""A scanned row (rowid first) as its record's fields in spec order."""


def match(base: EntityState, ids: Hashes, contents: Hashes, seen: npt.NDArray[np.bool_]) -> Any:
    """Which of these records the snapshot `base` holds exactly as they are; marks in `seen`
    (one flag a record of `base`) those it holds at all."""
    if not len(base):
        return np.zeros(len(ids), dtype=bool)
    at = np.minimum(np.searchsorted(base.ids, ids), len(base) - 1)
    found = base.ids[at] == ids
    seen[at[found]] = True
    return found & (base.contents[at] == contents)


def scan(
    conn: sqlite3.Connection,
    entity: str,
    base: EntityState | None,
    *,
    names: BinaryIO | None = None,
    names_at: int = 0,
) -> EntityChanges:
    """Compare every row of `entity` with the snapshot `base` as it is read (None: compare
    nothing, as for a full bundle). With `names` (a file, at offset `names_at`), also keep every
    row's hashes and write its id there: the database's own snapshot. Run it inside a read
    snapshot."""
    seen = np.zeros(len(base) if base is not None else 0, dtype=bool)
    changed: list[npt.NDArray[np.int64]] = []
    kept = _Kept(conn, entity, names_at, rowids=False) if names is not None else None
    count = 0
    for rows, encoded, ids, contents in _hashed_rows(conn, entity):
        count += len(rows)
        if base is not None:
            same = match(base, ids, contents, seen)
            if not same.all():
                rowids = np.fromiter((row[0] for row in rows), np.int64, len(rows))
                changed.append(rowids[~same])
        if kept is not None and names is not None:
            names.write(b"".join(encoded))
            kept.add(rows, ids, contents, encoded)
    result = EntityChanges(
        entity,
        count,
        np.concatenate(changed) if changed else np.empty(0, np.int64),
        base.ids[~seen] if base is not None else np.empty(0, np.uint64),
    )
    if kept is not None:
        result.state = kept.sorted(count)
    return result


def collect(
    conn: sqlite3.Connection, entity: str, *, names: BinaryIO | None = None, names_at: int = 0
) -> Collected:
    """Every row's hashes and rowid, to compare with a snapshot that is not at hand yet (being
    read in another process), in arrays sized once. With `names`, as `scan`, sorted by id hash
    (the cache's order); without, left in the order read: comparing needs only the snapshot
    sorted, and a sort would cost two more arrays of the table's size at the peak."""
    kept = _Kept(conn, entity, names_at, rowids=True, named=names is not None)
    count = 0
    for rows, encoded, ids, contents in _hashed_rows(conn, entity):
        count += len(rows)
        if names is not None:
            names.write(b"".join(encoded))
        kept.add(rows, ids, contents, encoded)
    state = kept.sorted(count) if names is not None else kept.state(count)
    assert kept.rowids is not None
    return Collected(entity, state, kept.rowids, names is not None)


COMPARE_ROWS = 1 << 16
"""Rows compared at a time: the comparison's temporaries stay this size, not the table's."""


@dataclass
class Collected:
    """What `collect` read of one entity: every row's hashes and rowid (sorted by id hash when
    named)."""

    entity: str
    state: EntityState
    rowids: npt.NDArray[np.int64]
    named: bool

    def compare(self, base: EntityState) -> EntityChanges:
        """What `scan` against `base` would have found."""
        seen = np.zeros(len(base), dtype=bool)
        ids, contents = self.state.ids, self.state.contents
        changed = []
        for start in range(0, len(ids), COMPARE_ROWS):
            end = start + COMPARE_ROWS
            same = match(base, ids[start:end], contents[start:end], seen)
            changed.append(self.rowids[start:end][~same])
        rowids = np.concatenate(changed) if changed else np.empty(0, np.int64)
        changes = EntityChanges(self.entity, len(self.state), rowids, base.ids[~seen])
        if self.named:
            changes.state = self.state
        return changes


def _hashed_rows(
    conn: sqlite3.Connection, entity: str
) -> Iterator[tuple[list[tuple[Any, ...]], list[bytes], Hashes, Hashes]]:
    """The entity's rows FETCH_ROWS at a time, with their ids' UTF-8 bytes, id hashes and content
    hashes; a database failure is a StoreError naming it."""
    label = getattr(conn, "path", "") or "database"
    values = _ROW_FIELDS[entity]
    try:
        cursor = conn.execute(_SCAN_SQL[entity])
        try:
            while rows := cursor.fetchmany(FETCH_ROWS):
                encoded = [row[1].encode("utf-8", "surrogatepass") for row in rows]
                yield rows, encoded, digests(encoded), row_hashes([values(row) for row in rows])
        finally:
            cursor.close()
    except sqlite3.Error as exc:
        raise StoreError(f"{label}: cannot read {entity}: {describe_error(exc)}") from None


class _Kept:
    """Every row's hashes (and on request where its id went, its rowid), in arrays sized once
    (the table's count, read in the same snapshot), then sorted by id hash an array at a time
    where the cache wants them: a few bytes a record."""

    def __init__(
        self,
        conn: sqlite3.Connection,
        entity: str,
        names_at: int,
        *,
        rowids: bool,
        named: bool = True,
    ):
        (rows,) = conn.execute(f"SELECT count(*) FROM {entity}").fetchone()
        self.ids = np.empty(rows, np.uint64)
        self.contents = np.empty(rows, np.uint64)
        self.lengths = np.empty(rows, np.uint32) if named else None
        self.rowids = np.empty(rows, np.int64) if rowids else None
        self.at = 0
        self.names_at = names_at

    def add(
        self, rows: list[tuple[Any, ...]], ids: Hashes, contents: Hashes, encoded: list[bytes]
    ) -> None:
        end = self.at + len(ids)
        if end > len(self.ids):  # cannot happen inside one read snapshot
            raise StoreError("the table grew while it was read")
        self.ids[self.at : end] = ids
        self.contents[self.at : end] = contents
        if self.lengths is not None:
            self.lengths[self.at : end] = np.fromiter(map(len, encoded), np.uint32, len(encoded))
        if self.rowids is not None:
            self.rowids[self.at : end] = np.fromiter((row[0] for row in rows), np.int64, len(rows))
        self.at = end

    def state(self, count: int) -> EntityState:
        """The hashes in the order read (no ids kept)."""
        if count != self.at or count != len(self.ids):
            raise StoreError("the table changed while it was read")
        return EntityState(self.ids, self.contents)

    def sorted(self, count: int) -> EntityState:
        """The hashes sorted by id hash, with where each id is (the rowids sorted along)."""
        self.state(count)
        assert self.lengths is not None
        starts = np.empty(count, np.int64)
        if count:
            starts[0] = self.names_at
            np.cumsum(self.lengths[:-1], out=starts[1:])
            starts[1:] += self.names_at
        order = np.argsort(self.ids, kind="stable")
        arrays = [self.ids, self.contents, starts, self.lengths]
        if self.rowids is not None:
            arrays.append(self.rowids)
        for array in arrays:
            array[:] = array[order]  # one temporary copy at a time
        return EntityState(self.ids, self.contents, starts, self.lengths)


_CHANGED_SQL = {
    "observations": (
        f"SELECT {prefixed('o', OBSERVATION_SELECT)} FROM observations o "
        "WHERE o.rowid IN (SELECT value FROM json_each(?)) ORDER BY o.ts, o.id"
    ),
    "capsules": (
        f"SELECT {prefixed('c', CAPSULE_SELECT)}, {CAPSULE_LINKS} FROM capsules c "
        "WHERE c.rowid IN (SELECT value FROM json_each(?)) ORDER BY c.opened_at, c.id"
    ),
    "summaries": (
        f"SELECT {prefixed('s', SUMMARY_SELECT)} FROM summaries s "
        "WHERE s.rowid IN (SELECT value FROM json_each(?)) ORDER BY s.created_at, s.id"
    ),
    "pins": (
        f"SELECT {prefixed('p', PIN_SELECT)} FROM pins p "
        "WHERE p.rowid IN (SELECT value FROM json_each(?)) ORDER BY p.created_at, p.id"
    ),
}


_FROM_ROW: dict[str, Callable[[tuple[Any, ...]], Record]] = {
    "observations": observation_from_row,
    "capsules": capsule_with_links,
    "summaries": summary_from_row,
    "pins": pin_from_row,
}


def changed_records(
    conn: sqlite3.Connection, entity: str, rowids: npt.NDArray[np.int64]
) -> Iterator[Record]:
    """The records of these rows, in export order (spec section 6.3), read lazily."""
    if not len(rowids):
        return
    label = getattr(conn, "path", "") or "database"
    from_row = _FROM_ROW[entity]
    wanted = msgspec.json.encode(rowids.tolist()).decode()
    try:
        cursor = conn.execute(_CHANGED_SQL[entity], (wanted,))
        try:
            while rows := cursor.fetchmany(FETCH_ROWS):
                for row in rows:
                    yield from_row(row)
        finally:
            cursor.close()
    except RecordError as exc:
        raise RecordError(f"{label}: {exc}", entity=exc.entity, record_id=exc.record_id) from None
    except sqlite3.Error as exc:
        raise StoreError(f"{label}: cannot export {entity}: {describe_error(exc)}") from None
