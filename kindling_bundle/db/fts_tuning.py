"""FTS5 settings for one write transaction of an import, put back before it commits.

Kindling's triggers index every row an import writes in the FTS5 index at once. FTS5 writes its
pending entries out as a new segment at every statement of the transaction, at its commit, and
whenever they pass `hashsize` (default 1 MiB); after each, it merges segments a little, four
at a time (`automerge`), so each entry is rewritten once per level of a deep tree. Inside a
step the index keeps more pending (fewer, larger segments) and merges eight segments at a time
(a shallower tree: fewer rewrites). Merging stays incremental, a bounded amount after each
write, so a step's time stays bounded: turning it off (`automerge` 0) would let segments pile
up until FTS5's crisis merge (16 on one level) merges them all at once, holding the write lock
all that while. Both
settings are put back as they were before the step commits.

FTS5 keeps its settings in the index's `_config` table, read by every connection: a setting
changed and put back inside one transaction is never seen by another connection, and a step
that fails or is killed rolls it back with everything else, so the database never holds a
setting the user did not make.
"""

from __future__ import annotations

import sqlite3
from collections.abc import Iterator
from contextlib import contextmanager

from kindling_bundle.db.fts_build import FTS_HASH_BYTES

_STEP: dict[str, object] = {"automerge": 8, "usermerge": 8, "hashsize": FTS_HASH_BYTES}
"""What a step sets: merges of eight segments (after its writes, and by its 'merge' commands:
`db.fts_splice`); 16 MiB pending before a segment is written."""
_FTS5_DEFAULTS: dict[str, object] = {"automerge": 4, "usermerge": 4, "hashsize": 1 << 20}
"""FTS5's own value of each setting, in force when the `_config` table has no row for it."""


@contextmanager
def step_settings(conn: sqlite3.Connection, fts: str) -> Iterator[None]:
    """Inside a write transaction: `fts` (an FTS5 table) writes fewer, larger segments and
    merges more at a time until the block ends, then has its settings back. On an exception
    nothing is put back here: the caller rolls the transaction back."""
    config = f"{fts}_config"
    saved: dict[str, object] = {}
    for key, value in _STEP.items():
        row = conn.execute(f"SELECT v FROM {config} WHERE k = ?", (key,)).fetchone()
        saved[key] = None if row is None else row[0]
        _set(conn, fts, key, value)
    yield
    for key, previous in saved.items():
        _set(conn, fts, key, _FTS5_DEFAULTS[key] if previous is None else previous)
        if previous is None:  # a row FTS5 reads as its default: remove it again
            conn.execute(f"DELETE FROM {config} WHERE k = ?", (key,))


def _set(conn: sqlite3.Connection, fts: str, key: str, value: object) -> None:
    """Through FTS5 itself, so that this connection's copy of the settings follows too."""
    conn.execute(f"INSERT INTO {fts}({fts}, rank) VALUES (?, ?)", (key, value))
