"""The integrity report: proof that a Kindling database is sound after an import.

Every check is set-based SQL, so it stays fast on millions of rows. FTS5's own 'integrity-check'
cannot be used here: Kindling leaves redacted observations out of the index on purpose, and the
check reports each of them as a mismatch. Instead we check what Kindling's triggers promise:
- the index holds exactly the rows that should be indexed (non-redacted observations; all
  summaries): counts match, no such row is missing, no redacted observation and no row that no
  longer exists is indexed, and the index's own row statistics agree with what it holds;
- a deterministic, evenly spread sample of indexed rows is found by a search for their own
  content (a phrase query built from the first few words, each quoted).
Beside the index: `PRAGMA quick_check`, `PRAGMA foreign_key_check`, every pin's target exists,
capsule link `seq` values are 0..n-1 per capsule, and summary evidence refs resolve (warnings
only: Kindling keeps a summary's evidence list when an observation is deleted).

Problem kinds: quick_check, foreign_key, pin_target_missing, seq_gap, evidence_invalid,
evidence_missing (warning), fts_count, fts_missing, fts_redacted, fts_orphan, fts_stats,
fts_not_found. Each kind lists at most PROBLEMS_PER_KIND problems, then one line saying more
were left out.
"""

from __future__ import annotations

import sqlite3
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from typing import Any, Literal

from kindling_bundle.db.connection import describe_error
from kindling_bundle.db.fts_splice import read_varint
from kindling_bundle.errors import StoreError

Severity = Literal["error", "warning"]

PROBLEMS_PER_KIND = 1000
_QUERY_WORDS = 4  # words of a row's content that make its sample search
_LONGEST_WORD = 100  # longer runs (blobs, hashes) make unwieldy phrases; use other words


@dataclass(frozen=True)
class IntegrityProblem:
    """One problem: what kind, on which record (entity and id), and what exactly is wrong."""

    kind: str
    entity: str
    id: str
    detail: str
    severity: Severity = "error"


@dataclass(frozen=True)
class IntegrityReport:
    """Errors (`problems`), `warnings`, and what the FTS search sample covered (`sampled`)."""

    problems: list[IntegrityProblem] = field(default_factory=list)
    warnings: list[IntegrityProblem] = field(default_factory=list)
    sampled: dict[str, Any] = field(default_factory=dict)

    @property
    def ok(self) -> bool:
        """No errors (warnings allowed)."""
        return not self.problems

    def to_dict(self) -> dict[str, Any]:
        """A JSON-ready form, for the CLI's --json."""
        return {
            "ok": self.ok,
            "problems": [asdict(p) for p in self.problems],
            "warnings": [asdict(w) for w in self.warnings],
            "sampled": self.sampled,
        }


class _Collector:
    """Collects problems, at most PROBLEMS_PER_KIND listed per kind."""

    def __init__(self) -> None:
        self.found: list[IntegrityProblem] = []
        self.counts: dict[str, int] = {}

    def add(
        self, kind: str, entity: str, record_id: str, detail: str, severity: Severity = "error"
    ) -> None:
        count = self.counts.get(kind, 0)
        self.counts[kind] = count + 1
        if count < PROBLEMS_PER_KIND:
            self.found.append(IntegrityProblem(kind, entity, record_id, detail, severity))
        elif count == PROBLEMS_PER_KIND:
            self.found.append(
                IntegrityProblem(
                    kind,
                    entity,
                    "*",
                    f"more {kind} problems; only the first {PROBLEMS_PER_KIND} are listed",
                    severity,
                )
            )


class _Recorder(_Collector):
    """Records every problem, for a collector to list later (`check_apart`): each detailed
    query asks for at most PROBLEMS_PER_KIND + 1 rows, so the list stays bounded."""

    def __init__(self) -> None:
        super().__init__()
        self.calls: list[tuple[str, str, str, str, Severity]] = []

    def add(
        self, kind: str, entity: str, record_id: str, detail: str, severity: Severity = "error"
    ) -> None:
        self.calls.append((kind, entity, record_id, detail, severity))


def verify_import_integrity(
    conn: sqlite3.Connection,
    *,
    sample_size: int = 200,
    quick_check: bool = True,
    checked: Sequence[CheckedApart] = (),
) -> IntegrityReport:
    """Check a Kindling database and report every problem found (see the module docstring).

    Read-only: safe on a read-only connection and inside a caller's open transaction (to check
    an import before committing it). `quick_check=False` leaves out SQLite's pass over every
    page, for a caller that ran it just before writing (an import into a database in use).
    `checked`: parts already checked by `check_apart`, reported in their place instead of
    checked again."""
    if sample_size < 0:
        raise ValueError("sample_size must be 0 or more")
    try:
        return _verify(conn, sample_size, quick_check, checked)
    except sqlite3.DatabaseError as exc:
        raise StoreError(_cannot_check(conn, exc)) from None


@dataclass(frozen=True)
class CheckedApart:
    """Checks made apart (`check_apart`): what they found, in order (by part), the full-text
    samples (by entity), and the foreign keys proven free of violations."""

    found: dict[str, list[tuple[str, str, str, str, Severity]]]
    sampled: dict[str, dict[str, Any]]
    proven: frozenset[tuple[str, str, str, str]] = frozenset()


def check_apart(
    conn: sqlite3.Connection, part: Literal["observations", "capsules"], *, sample_size: int = 200
) -> CheckedApart:
    """The checks that are final once an import has written an entity, made alone for a
    report made later (`verify_import_integrity(checked=...)`): an import into a database in
    use makes them beside its later steps, which never write that entity again. "observations":
    their full-text index; "capsules": their links' foreign keys (when none is violated: else
    the report looks again, with the rest) and seq values. Read-only, as the report."""
    found = _Recorder()
    sampled: dict[str, dict[str, Any]] = {}
    proven: frozenset[tuple[str, str, str, str]] = frozenset()
    try:
        if part == "observations":
            sampled[part] = _index(conn, found, part, sample_size)
        else:
            links = frozenset(k for k in _KINDLING_FOREIGN_KEYS if k[0] == "capsule_observations")
            if _certainly_no_foreign_key_violations(conn, links):
                proven = links
            _capsule_seqs(conn, found)
    except sqlite3.DatabaseError as exc:
        raise StoreError(_cannot_check(conn, exc)) from None
    return CheckedApart({part: found.calls}, sampled, proven)


def _cannot_check(conn: sqlite3.Connection, exc: sqlite3.DatabaseError) -> str:
    label = getattr(conn, "path", "") or "database"
    return f"{label}: cannot check integrity: {describe_error(exc)}"


_INDEXED = {
    "observations": ("observations_fts", "redacted = 0"),
    "summaries": ("summaries_fts", "1"),
}
"""By entity: its FTS5 table, and which of its rows Kindling's triggers index."""


def _verify(
    conn: sqlite3.Connection,
    sample_size: int,
    quick_check: bool,
    checked: Sequence[CheckedApart],
) -> IntegrityReport:
    found = _Collector()
    recorded = {name: calls for apart in checked for name, calls in apart.found.items()}
    sampled: dict[str, Any] = {k: v for apart in checked for k, v in apart.sampled.items()}

    def replayed(name: str) -> bool:
        for call in recorded.get(name, ()):
            found.add(*call)
        return name in recorded

    if quick_check:
        _quick_check(conn, found)
    _foreign_keys(conn, found, frozenset().union(*(apart.proven for apart in checked)))
    _pin_targets(conn, found)
    if not replayed("capsules"):
        _capsule_seqs(conn, found)
    _evidence(conn, found)
    for entity in _INDEXED:
        if not replayed(entity):
            sampled[entity] = _index(conn, found, entity, sample_size)
    return IntegrityReport(
        problems=[p for p in found.found if p.severity == "error"],
        warnings=[p for p in found.found if p.severity == "warning"],
        sampled={entity: sampled[entity] for entity in _INDEXED},
    )


def _index(
    conn: sqlite3.Connection, found: _Collector, entity: str, sample_size: int
) -> dict[str, Any]:
    fts, indexed = _INDEXED[entity]
    expected, low, high = _fts_sync(conn, found, entity, fts, indexed)
    rows = _sample_rows(conn, entity, indexed, expected, low, high, sample_size)
    return _fts_sample(conn, found, entity, fts, rows, expected, sample_size)


def _quick_check(conn: sqlite3.Connection, found: _Collector) -> None:
    for (message,) in conn.execute(f"PRAGMA quick_check({PROBLEMS_PER_KIND})"):
        if message != "ok":
            found.add("quick_check", "database", "", message)


# Kindling's foreign keys: (child table, child column, parent table, parent key).
_KINDLING_FOREIGN_KEYS = frozenset(
    {
        ("capsule_observations", "capsule_id", "capsules", "id"),
        ("capsule_observations", "observation_id", "observations", "id"),
        ("summaries", "capsule_id", "capsules", "id"),
    }
)


def _certainly_no_foreign_key_violations(
    conn: sqlite3.Connection, only: frozenset[tuple[str, str, str, str]] | None = None
) -> bool:
    """A fast proof that `PRAGMA foreign_key_check` would report nothing, when the foreign keys
    are Kindling's own. The pragma looks up each child row's parents in rowid order: a random
    lookup of a UUID for every link row (bench/RESULTS.md, 4d6f9c9). Here each child
    column is read from an index that orders it, so the parent lookups walk the parent key in
    order. False means "maybe": the pragma then runs and says what exactly is wrong. `only`:
    prove these keys alone (the others were proven already)."""
    tables = [
        name for (name,) in conn.execute("SELECT name FROM sqlite_master WHERE type = 'table'")
    ]
    keys = {
        (table, child, parent, key)
        for table in tables
        for parent, child, key in conn.execute(
            'SELECT "table", "from", "to" FROM pragma_foreign_key_list(?)', (table,)
        )
    }
    if keys != _KINDLING_FOREIGN_KEYS:
        return False
    for table, child, parent, key in sorted(keys if only is None else only):
        violation = conn.execute(
            f"SELECT 1 FROM {table} AS c WHERE c.{child} IS NOT NULL "
            f"AND NOT EXISTS (SELECT 1 FROM {parent} AS p WHERE p.{key} = c.{child}) LIMIT 1"
        ).fetchone()
        if violation is not None:
            return False
    return True


def _foreign_keys(
    conn: sqlite3.Connection, found: _Collector, proven: frozenset[tuple[str, str, str, str]]
) -> None:
    if _certainly_no_foreign_key_violations(conn, _KINDLING_FOREIGN_KEYS - proven):
        return
    cursor = conn.execute("PRAGMA foreign_key_check")
    for table, rowid, parent, _fkid in cursor:
        if found.counts.get("foreign_key", 0) > PROBLEMS_PER_KIND:
            break
        if table == "capsule_observations":
            capsule_id, observation_id, seq = conn.execute(
                "SELECT capsule_id, observation_id, seq FROM capsule_observations WHERE rowid = ?",
                (rowid,),
            ).fetchone()
            missing = (
                f"capsule {capsule_id}" if parent == "capsules" else f"observation {observation_id}"
            )
            found.add(
                "foreign_key",
                "capsules",
                capsule_id,
                f"link to observation {observation_id} (seq {seq}): {missing} does not exist",
            )
        elif table == "summaries":
            summary_id, capsule_id = conn.execute(
                "SELECT id, capsule_id FROM summaries WHERE rowid = ?", (rowid,)
            ).fetchone()
            found.add(
                "foreign_key", "summaries", summary_id, f"capsule {capsule_id} does not exist"
            )
        else:
            found.add("foreign_key", table, str(rowid), f"references a missing row of {parent}")


def _pin_targets(conn: sqlite3.Connection, found: _Collector) -> None:
    rows = conn.execute(
        """SELECT id, target_type, target_id FROM pins AS p
        WHERE (target_type = 'observation'
               AND NOT EXISTS (SELECT 1 FROM observations AS o WHERE o.id = p.target_id))
           OR (target_type = 'summary'
               AND NOT EXISTS (SELECT 1 FROM summaries AS s WHERE s.id = p.target_id))
        ORDER BY id LIMIT ?""",
        (PROBLEMS_PER_KIND + 1,),
    )
    for pin_id, target_type, target_id in rows:
        found.add(
            "pin_target_missing", "pins", pin_id, f"target {target_type} {target_id} does not exist"
        )


def _capsule_seqs(conn: sqlite3.Connection, found: _Collector) -> None:
    rows = conn.execute(
        """SELECT capsule_id, count(*), min(seq), max(seq), count(DISTINCT seq)
        FROM capsule_observations GROUP BY capsule_id
        HAVING min(seq) != 0 OR max(seq) != count(*) - 1 OR count(DISTINCT seq) != count(*)
        LIMIT ?""",
        (PROBLEMS_PER_KIND + 1,),
    )
    for capsule_id, links, low, high, distinct in rows:
        found.add(
            "seq_gap",
            "capsules",
            capsule_id,
            f"link seq values are not 0..{links - 1}: {links} links, seq {low}..{high}, "
            f"{distinct} distinct",
        )


# The evidence refs of summary `s` when they are a JSON array, else NULL. Nested CASEs, because
# json_type() raises on malformed JSON and SQLite does not promise to short-circuit AND.
_EVIDENCE_ARRAY = (
    "CASE WHEN json_valid(s.evidence_refs) THEN "
    "CASE WHEN json_type(s.evidence_refs) = 'array' THEN s.evidence_refs END END"
)


def _evidence(conn: sqlite3.Connection, found: _Collector) -> None:
    limit = (PROBLEMS_PER_KIND + 1,)
    invalid = conn.execute(
        f"SELECT s.id FROM summaries AS s WHERE {_EVIDENCE_ARRAY} IS NULL ORDER BY s.id LIMIT ?",
        limit,
    )
    for (summary_id,) in invalid:
        found.add("evidence_invalid", "summaries", summary_id, "evidence_refs is not a JSON array")
    unresolved = conn.execute(
        f"""SELECT s.id, j.value FROM summaries AS s, json_each({_EVIDENCE_ARRAY}) AS j
        WHERE NOT EXISTS (SELECT 1 FROM observations AS o WHERE o.id = j.value)
        ORDER BY s.id, j.key LIMIT ?""",
        limit,
    )
    for summary_id, ref in unresolved:
        found.add(
            "evidence_missing",
            "summaries",
            summary_id,
            f"evidence ref {ref} is not a stored observation",
            severity="warning",
        )


def _fts_sync(
    conn: sqlite3.Connection, found: _Collector, entity: str, fts: str, indexed: str
) -> tuple[int, int | None, int | None]:
    """Check the index holds exactly the rows it should. Returns how many that is, and the
    lowest and highest rowid among them (for the sample).

    One pass over the table, beside the index statistics in rowid order, counts what each
    detailed query below would find; a detailed query runs only when its count says it finds
    something (each full pass over a table of observations costs as much as reading it)."""
    expected, low, high, missing_count, unexpected_count, matched = conn.execute(
        f"""SELECT coalesce(sum(CASE WHEN {indexed} THEN 1 ELSE 0 END), 0),
            min(CASE WHEN {indexed} THEN t.rowid END), max(CASE WHEN {indexed} THEN t.rowid END),
            coalesce(sum(CASE WHEN {indexed} AND d.id IS NULL THEN 1 ELSE 0 END), 0),
            coalesce(sum(CASE WHEN NOT ({indexed}) AND d.id IS NOT NULL THEN 1 ELSE 0 END), 0),
            count(d.id)
        FROM {entity} AS t LEFT JOIN {fts}_docsize AS d ON d.id = t.rowid"""
    ).fetchone()
    held = conn.execute(f"SELECT count(*) FROM {fts}_docsize").fetchone()[0]
    if held != expected:
        found.add(
            "fts_count",
            entity,
            "",
            f"{fts} indexes {held} rows, but {expected} {entity} should be indexed",
        )
    limit = (PROBLEMS_PER_KIND + 1,)
    if missing_count:
        missing = conn.execute(
            f"""SELECT id FROM {entity} AS t WHERE {indexed}
            AND NOT EXISTS (SELECT 1 FROM {fts}_docsize AS d WHERE d.id = t.rowid) LIMIT ?""",
            limit,
        )
        for (record_id,) in missing:
            found.add("fts_missing", entity, record_id, f"not in {fts}: a search will not find it")
    if entity == "observations" and unexpected_count:
        redacted = conn.execute(
            """SELECT o.id FROM observations AS o
            JOIN observations_fts_docsize AS d ON d.id = o.rowid WHERE o.redacted = 1 LIMIT ?""",
            limit,
        )
        for (record_id,) in redacted:
            found.add("fts_redacted", entity, record_id, f"redacted, but still in {fts}")
    if held != matched:
        orphans = conn.execute(
            f"""SELECT d.id FROM {fts}_docsize AS d
            WHERE NOT EXISTS (SELECT 1 FROM {entity} AS t WHERE t.rowid = d.id) LIMIT ?""",
            limit,
        )
        for (rowid,) in orphans:
            found.add(
                "fts_orphan", entity, f"rowid {rowid}", f"{fts} indexes a row that does not exist"
            )
    stats = conn.execute(f"SELECT block FROM {fts}_data WHERE id = 1").fetchone()
    # its first varint is the row count; padded, as FTS5 pads what it reads, for a short record
    counted = read_varint(stats[0] + bytes(9), 0)[0] if stats is not None and stats[0] else 0
    if counted != held:
        found.add(
            "fts_stats",
            entity,
            "",
            f"{fts} statistics count {counted} rows but it indexes {held} (an FTS 'delete' of an "
            "entry that was not there?); search ranking is skewed",
        )
    return expected, low, high


def fts_query(content: str) -> str | None:
    """A safe FTS5 query that the row with this content must match, or None if it has no word.

    Each of the first few whitespace-separated words with a letter or digit becomes a quoted
    phrase; the FTS tokenizer splits it exactly as it split the stored text, so the phrase's
    tokens are adjacent in the row. Quotes are the only syntax inside a phrase, and are doubled."""
    phrases: list[str] = []
    for word in content.split():
        if len(word) <= _LONGEST_WORD and any(ch.isalnum() for ch in word):
            phrases.append('"' + word.replace('"', '""') + '"')
            if len(phrases) == _QUERY_WORDS:
                break
    return " ".join(phrases) or None


def _fts_sample(
    conn: sqlite3.Connection,
    found: _Collector,
    entity: str,
    fts: str,
    rows: list[tuple[int, str, str]],
    expected: int,
    sample_size: int,
) -> dict[str, Any]:
    """Search the sampled rows by their own content; say what was sampled."""
    searched: list[str] = []
    no_word: list[str] = []
    for rowid, record_id, content in rows:
        query = fts_query(content)
        if query is None:
            no_word.append(record_id)
            continue
        searched.append(record_id)
        hit = conn.execute(
            f"SELECT 1 FROM {fts} WHERE {fts} MATCH ? AND rowid = ?", (query, rowid)
        ).fetchone()
        if hit is None:
            found.add("fts_not_found", entity, record_id, f"a search for {query} does not find it")
    return {
        "indexable": expected,
        "sample_size": sample_size,
        "searched": len(searched),
        "searched_ids": searched,
        "skipped_no_word": no_word,
    }


def _sample_rows(
    conn: sqlite3.Connection,
    entity: str,
    indexed: str,
    expected: int,
    low: int | None,
    high: int | None,
    sample_size: int,
) -> list[tuple[int, str, str]]:
    """Up to `sample_size` indexable rows, spread evenly over their rowid range from `low` to
    `high` (all of them if fewer)."""
    select = f"SELECT rowid, id, content FROM {entity} WHERE {indexed}"
    if sample_size == 0 or expected == 0 or low is None or high is None:
        return []
    if expected <= sample_size:
        return conn.execute(f"{select} ORDER BY rowid").fetchall()
    step = (high - low) / sample_size
    rows: dict[int, tuple[int, str, str]] = {}
    for i in range(sample_size):
        row = conn.execute(
            f"{select} AND rowid >= ? ORDER BY rowid LIMIT 1", (low + int(i * step),)
        ).fetchone()
        rows.setdefault(row[0], row)
    return list(rows.values())
