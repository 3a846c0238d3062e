"""Streaming export primitives: the ordered record streams a bundle (or any tool) is built from.

Each stream is a lazy generator over one SQL statement (capsules bring their links along as a
JSON array per capsule), so memory does not grow with the database, nothing runs until the first
record is asked for, and a stream is consistent with itself. Order is Kindling's own export
order, with the id as the tie break so it is total and deterministic:

- observations by (ts, id); capsules by (opened_at, id), each carrying all its observation ids in
  `seq` order; summaries and pins by (created_at, id).

Filters (`ExportStreamOptions`): `scope_ids` matches the denormalized scope columns (sessionId,
repoId, agentId, userId; every given key must match); `from_ts`/`to_ts` are inclusive epoch ms on
observations.ts, capsules.opened_at, summaries.created_at and pins.created_at. Summaries have no
scope of their own: they follow their capsule's scope. Redacted observations are always exported,
with `redacted=True` and their stored `[redacted]` content.

Consistency across streams: run all four inside one `snapshot(conn)`, which holds a single read
transaction, so a writer committing meanwhile cannot make the streams disagree. Outside a
snapshot, each stream sees the database as of its own first row.

Referential closure lives here, in SQL, so streams stay ordered and constant-memory. With a filter
and `include_references=True` the streams are:

- pins: the selected pins;
- summaries: the selected summaries, plus summaries targeted by selected pins;
- capsules: the selected capsules, plus the capsules of those summaries;
- observations: the selected observations, plus every observation linked from those capsules,
  the observation targets of selected pins and the evidence refs of those summaries.

References to rows that do not exist in the database (a dangling pin target or evidence ref) add
nothing. A capsule always lists all its links, so its observations come with it. Without a filter
every row is exported and the streams are closed by construction; with a filter and
`include_references=False` the streams hold exactly the selection and may reference rows outside it.

Exporting never writes: the streams and `snapshot` only read, and work on a connection opened
with `open_store(path, readonly=True)`.
"""

from __future__ import annotations

import sqlite3
from collections.abc import Callable, Generator, Iterator, Mapping
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any, TypeVar

from kindling_bundle.db.connection import describe_error
from kindling_bundle.db.rows import (
    CAPSULE_LINKS,
    CAPSULE_SELECT,
    OBSERVATION_SELECT,
    PIN_SELECT,
    SUMMARY_SELECT,
    Row,
    capsule_with_links,
    observation_from_row,
    pin_from_row,
    prefixed,
    summary_from_row,
)
from kindling_bundle.errors import RecordError, StoreError
from kindling_bundle.records import (
    DENORMALIZED_SCOPE_KEYS,
    Capsule,
    Observation,
    Pin,
    Record,
    Summary,
)

_INT64_MIN, _INT64_MAX = -(2**63), 2**63 - 1


@dataclass(frozen=True)
class ExportStreamOptions:
    """What to export: a scope, an inclusive time window, and whether to close references.

    An empty `scope_ids` mapping means no scope filter and is normalized to None.
    """

    scope_ids: Mapping[str, str] | None = None
    from_ts: int | None = None
    to_ts: int | None = None
    include_references: bool = False

    def __post_init__(self) -> None:
        if self.scope_ids is not None:
            scope = dict(self.scope_ids)
            for key, value in scope.items():
                if key not in DENORMALIZED_SCOPE_KEYS:
                    raise ValueError(
                        f"cannot filter on scope key {key!r}: only "
                        f"{', '.join(DENORMALIZED_SCOPE_KEYS)} have their own columns"
                    )
                if not isinstance(value, str):
                    raise ValueError(f"scope key {key!r}: value must be a string, got {value!r}")
            object.__setattr__(self, "scope_ids", scope or None)
        for name in ("from_ts", "to_ts"):
            value = getattr(self, name)
            if value is None:
                continue
            if isinstance(value, bool) or not isinstance(value, int):
                raise ValueError(f"{name} must be an integer (epoch ms), got {value!r}")
            if not _INT64_MIN <= value <= _INT64_MAX:
                raise ValueError(f"{name} {value} is outside the 64-bit range SQLite stores")
        if self.from_ts is not None and self.to_ts is not None and self.from_ts > self.to_ts:
            raise ValueError(f"from_ts {self.from_ts} is after to_ts {self.to_ts}")

    @property
    def filtered(self) -> bool:
        """Whether any filter is set (otherwise every row is exported)."""
        return self.scope_ids is not None or self.from_ts is not None or self.to_ts is not None


_ALL = ExportStreamOptions()


@contextmanager
def snapshot(conn: sqlite3.Connection) -> Iterator[sqlite3.Connection]:
    """Hold one read transaction, so every stream read inside sees the same committed state.

    BEGIN is deferred: the first read fixes the WAL snapshot, so it is done here, before any
    stream starts. The transaction is rolled back at exit (nothing was written). If the
    connection is already inside a transaction, that transaction is the snapshot and is left alone.
    """
    if conn.in_transaction:
        yield conn
        return
    try:
        conn.execute("BEGIN")
        conn.execute("SELECT count(*) FROM sqlite_master").fetchone()
    except sqlite3.Error as exc:
        if conn.in_transaction:
            conn.execute("ROLLBACK")
        raise StoreError(f"{_label(conn)}: cannot start a read snapshot: {exc}") from None
    try:
        yield conn
    finally:
        if conn.in_transaction:
            conn.execute("ROLLBACK")


def export_observations(
    conn: sqlite3.Connection, opts: ExportStreamOptions = _ALL
) -> Generator[Observation, None, None]:
    """Observations in (ts, id) order, redacted ones included and marked."""
    sql, params = _observations_query(opts)
    return _stream(conn, "observations", sql, params, observation_from_row)


SplitKey = tuple[int, str]
"""(ts, id) of an observation: where a whole export's observations are split in two."""


def observations_bound(conn: sqlite3.Connection) -> int:
    """An upper bound of the observations' count, read from the end of the table's b-tree
    (what `parallel.choose_workers` needs, without counting)."""
    try:
        last: int = conn.execute("SELECT coalesce(max(rowid), 0) FROM observations").fetchone()[0]
    except sqlite3.DatabaseError:  # the export stream meets it too, and says so in its words
        return 0
    return last


def observation_split(conn: sqlite3.Connection, index: int) -> SplitKey | None:
    """The key of the observation at `index` in export order ((ts, id)) of a whole export, or
    None past the end. Found with the ts index alone (no row is read) but for the ids of the
    observations that share its ts."""
    found = conn.execute(
        "SELECT ts FROM observations ORDER BY ts LIMIT 1 OFFSET ?", (index,)
    ).fetchone()
    if found is None:
        return None
    (ts,) = found
    (before,) = conn.execute("SELECT count(*) FROM observations WHERE ts < ?", (ts,)).fetchone()
    (oid,) = conn.execute(
        "SELECT id FROM observations WHERE ts = ? ORDER BY id LIMIT 1 OFFSET ?",
        (ts, index - before),
    ).fetchone()
    return ts, oid


def export_observations_before(conn: sqlite3.Connection, key: SplitKey) -> Iterator[Observation]:
    """A whole export's observations before `key` (export order)."""
    sql, params = _split_sql(key, "o.ts <= :split_ts AND (o.ts < :split_ts OR o.id < :split_id)")
    return _stream(conn, "observations", sql, params, observation_from_row)


def export_observations_from(
    conn: sqlite3.Connection, key: SplitKey
) -> Generator[Observation, None, None]:
    """A whole export's observations from `key` on (export order)."""
    sql, params = _split_sql(key, "o.ts >= :split_ts AND (o.ts > :split_ts OR o.id >= :split_id)")
    return _stream(conn, "observations", sql, params, observation_from_row)


def _split_sql(key: SplitKey, where: str) -> tuple[str, dict[str, Any]]:
    """Observations on one side of `key`, in export order (a range of the ts index)."""
    sql = (
        f"SELECT {prefixed('o', OBSERVATION_SELECT)} FROM observations o "
        f"WHERE {where} ORDER BY o.ts, o.id"
    )
    return sql, {"split_ts": key[0], "split_id": key[1]}


def _observations_query(opts: ExportStreamOptions) -> tuple[str, dict[str, Any]]:
    query = _Query(opts)
    sql = (
        f"{query.with_clause()}SELECT {prefixed('o', OBSERVATION_SELECT)} FROM observations o "
        f"WHERE {query.observation_where()} ORDER BY o.ts, o.id"
    )
    return sql, query.params


def export_capsules(
    conn: sqlite3.Connection, opts: ExportStreamOptions = _ALL
) -> Generator[Capsule, None, None]:
    """Capsules in (opened_at, id) order, each with all its observation ids in `seq` order.

    One statement: each capsule's links come back as one JSON array that SQLite builds from an
    index seek (an aggregate over a subquery with ORDER BY, which SQLite never flattens, so the
    order holds). That is faster than a Python row per link (b145d33 in bench/RESULTS.md).
    """
    query = _Query(opts)
    sql = (
        f"{query.with_clause()}SELECT {prefixed('c', CAPSULE_SELECT)}, {CAPSULE_LINKS} "
        f"FROM capsules c WHERE {query.capsule_where()} ORDER BY c.opened_at, c.id"
    )
    return _stream(conn, "capsules", sql, query.params, capsule_with_links)


def export_summaries(
    conn: sqlite3.Connection, opts: ExportStreamOptions = _ALL
) -> Generator[Summary, None, None]:
    """Summaries in (created_at, id) order; the scope filter applies through their capsule."""
    query = _Query(opts)
    sql = (
        f"{query.with_clause()}SELECT {prefixed('s', SUMMARY_SELECT)} FROM summaries s "
        f"WHERE {query.summary_where()} ORDER BY s.created_at, s.id"
    )
    return _stream(conn, "summaries", sql, query.params, summary_from_row)


def export_pins(
    conn: sqlite3.Connection, opts: ExportStreamOptions = _ALL
) -> Generator[Pin, None, None]:
    """Pins in (created_at, id) order, filtered on their own scope and created_at."""
    query = _Query(opts)
    sql = (
        f"SELECT {prefixed('p', PIN_SELECT)} FROM pins p "
        f"WHERE {query.pin_selected()} ORDER BY p.created_at, p.id"
    )
    return _stream(conn, "pins", sql, query.params, pin_from_row)


ENTITY_EXPORTS: dict[
    str, Callable[[sqlite3.Connection, ExportStreamOptions], Generator[Record, None, None]]
] = {
    "observations": export_observations,
    "capsules": export_capsules,
    "summaries": export_summaries,
    "pins": export_pins,
}
"""The export stream of each entity, in foreign-key order (the order of records.ENTITY_TYPES)."""


class _Query:
    """The WHERE clauses (and, for closure, the CTEs) that one set of options stands for.

    Parameters are named, so one dict binds every use of a filter value in a statement.
    """

    def __init__(self, opts: ExportStreamOptions):
        if not isinstance(opts, ExportStreamOptions):
            raise TypeError(f"opts must be ExportStreamOptions, got {type(opts).__name__}")
        self.opts = opts
        self.closure = opts.include_references and opts.filtered
        scope = opts.scope_ids or {}
        self.params: dict[str, Any] = {"from_ts": opts.from_ts, "to_ts": opts.to_ts}
        self._scope_columns: list[str] = []
        for key, value in scope.items():
            column = DENORMALIZED_SCOPE_KEYS[key]
            self._scope_columns.append(column)
            self.params[column] = value

    def _conditions(self, alias: str | None, time_column: str) -> list[str]:
        """Scope conditions on `alias` (None: no scope) and the window on `time_column`."""
        parts = [f"{alias}.{col} = :{col}" for col in self._scope_columns] if alias else []
        if self.opts.from_ts is not None:
            parts.append(f"{time_column} >= :from_ts")
        if self.opts.to_ts is not None:
            parts.append(f"{time_column} <= :to_ts")
        return parts

    def observation_selected(self) -> str:
        return _all_of(self._conditions("o", "o.ts"))

    def capsule_selected(self) -> str:
        return _all_of(self._conditions("c", "c.opened_at"))

    def summary_selected(self) -> str:
        parts = self._conditions(None, "s.created_at")
        if self._scope_columns:
            scope = " AND ".join(f"sc.{col} = :{col}" for col in self._scope_columns)
            parts.append(
                f"EXISTS (SELECT 1 FROM capsules sc WHERE sc.id = s.capsule_id AND {scope})"
            )
        return _all_of(parts)

    def pin_selected(self) -> str:
        return _all_of(self._conditions("p", "p.created_at"))

    def with_clause(self) -> str:
        """The closure sets as CTEs (empty unless closing references of a filtered export)."""
        if not self.closure:
            return ""
        return (
            "WITH sel_pins AS ("
            f"SELECT p.target_type, p.target_id FROM pins p WHERE {self.pin_selected()}), "
            "out_summaries AS ("
            f"SELECT s.id, s.capsule_id, s.evidence_refs FROM summaries s "
            f"WHERE ({self.summary_selected()}) OR s.id IN "
            "(SELECT target_id FROM sel_pins WHERE target_type = 'summary')), "
            "out_capsules AS ("
            f"SELECT c.id FROM capsules c WHERE {self.capsule_selected()} "
            "UNION SELECT capsule_id FROM out_summaries), "
            "ref_observations AS ("
            "SELECT observation_id FROM capsule_observations "
            "WHERE capsule_id IN (SELECT id FROM out_capsules) "
            "UNION SELECT target_id FROM sel_pins WHERE target_type = 'observation' "
            # A summary whose evidence_refs is not valid JSON fails later with a RecordError
            # naming it; here it only contributes nothing.
            "UNION SELECT j.value FROM out_summaries os, json_each(CASE WHEN "
            "json_valid(os.evidence_refs) THEN os.evidence_refs ELSE '[]' END) j "
            "WHERE j.type = 'text') "
        )

    def observation_where(self) -> str:
        if self.closure:
            return f"({self.observation_selected()}) OR o.id IN (SELECT * FROM ref_observations)"
        return self.observation_selected()

    def capsule_where(self) -> str:
        if self.closure:
            return "c.id IN (SELECT id FROM out_capsules)"
        return self.capsule_selected()

    def summary_where(self) -> str:
        if self.closure:
            return "s.id IN (SELECT id FROM out_summaries)"
        return self.summary_selected()


def _all_of(parts: list[str]) -> str:
    return " AND ".join(parts) if parts else "1"


T = TypeVar("T")


def _stream(
    conn: sqlite3.Connection,
    entity: str,
    sql: str,
    params: dict[str, Any],
    from_row: Callable[[Row], T],
) -> Generator[T, None, None]:
    return _records(conn, entity, sql, params, lambda cursor: map(from_row, cursor))


def _records(
    conn: sqlite3.Connection,
    entity: str,
    sql: str,
    params: dict[str, Any],
    produce: Callable[[sqlite3.Cursor], Iterator[T]],
) -> Generator[T, None, None]:
    """Run a statement lazily (once the first item is asked for), finalize it when the stream
    ends or is abandoned (a pending statement would pin its read snapshot), and turn database and
    row errors into one-line errors that name the file. `produce` reads the statement's cursor.
    """
    label = _label(conn)
    try:
        cursor = conn.execute(sql, params)
        try:
            yield from produce(cursor)
        finally:
            cursor.close()
    except RecordError as exc:
        raise label_error(conn, exc) from None
    except sqlite3.Error as exc:
        reason = describe_error(exc)
        if len(reason) > 200:  # SQLite may quote a whole damaged column value
            reason = reason[:200] + "..."
        raise StoreError(f"{label}: cannot export {entity}: {reason}") from None


def label_error(conn: sqlite3.Connection, exc: RecordError) -> RecordError:
    """A record the database holds that cannot be exported, named with the database."""
    return RecordError(f"{_label(conn)}: {exc}", entity=exc.entity, record_id=exc.record_id)


def _label(conn: sqlite3.Connection) -> str:
    return getattr(conn, "path", "") or "database"
