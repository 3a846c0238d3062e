"""Reading and deciding an import's records outside the write lock, ahead of the writer.

An import into a database in use (`db.live`) decides each frame of records by the conflict
rules in a read transaction of its own, which never blocks a writer (`plan`), in a thread of its
own (`PlanAhead`), while the writer's thread writes what was decided before. Which decisions are
written as taken, and which are taken again inside the write transaction, is `db.live`'s rule.
"""

from __future__ import annotations

import contextlib
import queue
import sqlite3
import threading
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

from kindling_bundle.db.conflicts import ImportEntityResult, decide
from kindling_bundle.db.connection import BUSY_TIMEOUT_MS
from kindling_bundle.db.lookup import independent_prefix, look_up
from kindling_bundle.records import Capsule, ConflictStrategy, Record, entity_of


@dataclass
class Planned:
    """A record and what to do with it, decided outside the write lock."""

    record: Record
    write: Literal["insert", "exact", "none"]
    """insert: write `values` as a new row (`result`, made by the planner, says what happened
    once it is in); exact: import it inside the transaction; none: `result` says what happened
    (nothing to write)."""
    result: ImportEntityResult | None = None
    values: tuple[Any, ...] = ()
    rows: int = field(init=False)
    """The rows the record writes, the unit steps are sized in (a capsule's row is the capsule
    and its links): counted once here, in the planner's thread, as the writer's thread adds
    and slices these lists at every step."""

    def __post_init__(self) -> None:
        assert self.write != "insert" or self.result is not None, "an insert's result is made here"
        record = self.record
        self.rows = 1 + len(record.observation_ids) if isinstance(record, Capsule) else 1


def plan(
    conn: sqlite3.Connection, records: Sequence[Record], conflict: ConflictStrategy
) -> list[Planned]:
    """Decide a run of records of one type from one look-up (one read snapshot: it never
    blocks a writer). See the module docstring for which decisions are kept."""
    independent = independent_prefix(records)
    conn.execute("BEGIN")
    try:
        held = look_up(conn, records[:independent])
    finally:
        conn.execute("COMMIT")
    planned: list[Planned] = []
    for record, found in zip(records, held, strict=False):
        result, write = decide(entity_of(record), record.id, found.found, conflict)
        if write == "none":
            planned.append(Planned(record, "none", result))
        elif write == "insert":
            planned.append(Planned(record, "insert", result, found.values))
        else:
            planned.append(Planned(record, "exact"))
        if found.holder is not None:  # replacing it changes what later summaries meet
            break
    planned.extend(Planned(record, "exact") for record in records[len(planned) :])
    return planned


class _Cancelled(Exception):
    """The writer stopped: the planning thread ends."""


Item = (
    tuple[Literal["frame"], str, list[Planned]]
    | tuple[Literal["entity done"], str]
    | tuple[Literal["failed"], str, BaseException, bool]
    | tuple[Literal["end"]]
)


class PlanAhead:
    """Reads and decides records in a thread of its own, ahead of the writer.

    The thread consumes `frames` (for a bundle: decompressing, decoding and checking it), passes
    each through `prepare` and decides it by `plan` on its own read-only connection to the
    database at `path`, while the writer's thread writes what was decided before: the writer's
    SQLite work runs without Python's global lock. At each new entity it stops until
    `entity_done()`: an entity's records are decided against what the ones before wrote.
    `items()` yields, in order: ("frame", entity, planned), ("entity done", entity) before each
    new entity, ("failed", entity, exception, while_deciding) for what the thread met (damage,
    an invalid record; `while_deciding` if deciding raised it, not reading), or ("end",) after
    the last frame. Up to `ahead` frames wait decided: a step takes several at once (a realistic
    one, about eight), so a shorter queue leaves the writer waiting whenever this thread has
    lost its turn at the processor or at Python's lock."""

    def __init__(
        self,
        path: str,
        frames: Iterator[tuple[str, list[Record]]],
        conflict: ConflictStrategy,
        prepare: Callable[[list[Record]], list[Record]],
        *,
        busy_timeout_ms: int = BUSY_TIMEOUT_MS,
        ahead: int = 24,
    ):
        self._busy_timeout_ms = busy_timeout_ms
        self._queue: queue.Queue[Item] = queue.Queue(maxsize=ahead)
        self._resume = threading.Event()
        self._cancel = threading.Event()
        self._may_run = threading.Event()
        self._may_run.set()
        self._thread = threading.Thread(
            target=self._run, args=(path, frames, conflict, prepare), name="kindling-plan"
        )
        self._thread.start()

    def items(self) -> Iterator[Item]:
        """What the thread produced, in order, up to and including "end" or "failed"."""
        while True:
            item = self._queue.get()
            yield item
            if item[0] in ("end", "failed"):
                return

    def entity_done(self) -> None:
        """Everything of the entity before is written: decide the next one."""
        self._resume.set()

    @contextlib.contextmanager
    def paused(self) -> Iterator[None]:
        """The thread starts no new frame while the block runs: the writer's Python work (binding
        a step's values) then has Python's lock to itself instead of waiting for it at each of
        its SQLite calls. The thread is up to `ahead` frames ahead; it catches up afterwards."""
        self._may_run.clear()
        try:
            yield
        finally:
            self._may_run.set()

    def close(self) -> None:
        """Stop the thread (wherever it is) and wait for it."""
        self._cancel.set()
        self._resume.set()
        self._may_run.set()
        while self._thread.is_alive():
            with contextlib.suppress(queue.Empty):
                self._queue.get(timeout=0.05)
        self._thread.join()

    def _put(self, item: Item) -> None:
        while not self._cancel.is_set():
            with contextlib.suppress(queue.Full):
                self._queue.put(item, timeout=0.05)
                return
        raise _Cancelled

    def _when_not_paused(
        self, frames: Iterator[tuple[str, list[Record]]]
    ) -> Iterator[tuple[str, list[Record]]]:
        while True:
            self._may_run.wait()
            if self._cancel.is_set():
                raise _Cancelled
            try:
                item = next(frames)
            except StopIteration:
                return
            yield item

    def _run(
        self,
        path: str,
        frames: Iterator[tuple[str, list[Record]]],
        conflict: ConflictStrategy,
        prepare: Callable[[list[Record]], list[Record]],
    ) -> None:
        entity = ""
        deciding = False
        try:
            conn = sqlite3.connect(f"{Path(path).resolve().as_uri()}?mode=ro", uri=True)
        except sqlite3.Error as exc:
            with contextlib.suppress(_Cancelled):
                self._put(("failed", entity, exc, True))
            return
        try:
            conn.isolation_level = None
            conn.execute(f"PRAGMA busy_timeout = {self._busy_timeout_ms}")
            for next_entity, records in self._when_not_paused(frames):
                if next_entity != entity:
                    if entity:
                        self._put(("entity done", entity))
                        self._resume.wait()
                        self._resume.clear()
                        if self._cancel.is_set():
                            raise _Cancelled
                    entity = next_entity
                deciding = True
                planned = plan(conn, prepare(records), conflict)
                deciding = False
                self._put(("frame", entity, planned))
            self._put(("end",))
        except _Cancelled:
            pass
        except BaseException as exc:  # handed to the writer, which raises it in order
            with contextlib.suppress(_Cancelled):
                self._put(("failed", entity, exc, deciding))
        finally:
            conn.close()
