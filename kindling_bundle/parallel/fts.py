"""Indexing observations for full-text search in a forked child while a new database is loaded.

Tokenizing every observation is the largest single part of restoring realistic memory into an
empty database, and it needs nothing from the database but each row's content and rowid. So
while this process inserts the rows, `IndexerChild` hands each frame's contents to a child that
builds the index into a private file beside the database (`db.fts_build.IndexBuilder`); once
the rows and their indexes are in, `bulk_load` copies the finished index in (`db.bulk`). The
database is the same as indexing in place would make it (tests/test_fast_import.py compares
the two by their fts5vocab contents).

Rowids: into an empty table, the i-th observation loaded gets rowid i; this process says which
rowids each frame's contents are for, and `bulk_load` takes the index only if the table holds
exactly rowids 1..n. A child that fails or dies costs only time: the load indexes in place.

This process never waits for the child until the end: the observations come first in a bundle,
and the child may tokenize them more slowly than they are inserted, while the rest of the load
leaves it time to catch up. So the contents go to a spool file (unlinked, beside the database:
the page cache holds what the child has not read yet, not either process), and the pipe
carries only where each frame is.
"""

from __future__ import annotations

import contextlib
import gc
import os
import tempfile
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import msgspec

from kindling_bundle.db.fts_build import IndexBuilder, PrebuiltIndex
from kindling_bundle.parallel.forking import ChildFailed, pipe, start_child
from kindling_bundle.records import Observation


class _Rows(msgspec.Struct, array_like=True):
    """In the spool: the contents of rowids first, first + 1, ...; None for a row left out of
    the index (a redacted observation)."""

    first: int
    contents: list[str | None]


class _Where(msgspec.Struct, array_like=True):
    """To the child: the next frame's place in the spool."""

    offset: int
    size: int


class _Built(msgspec.Struct, tag=True):
    """From the child: the index is complete in its file, for rowids 1..rows."""

    rows: int


class IndexerChild:
    """A forked child indexing observations' contents into a private file in `folder`."""

    def __init__(self, folder: Path, fts: str, create_sql: str) -> None:
        """Raises OSError if the files or the child cannot be made (nothing is left then)."""
        fd, self.path = tempfile.mkstemp(dir=folder, prefix=".kindling-fts-", suffix=".tmp")
        os.close(fd)
        self.fts = fts
        self._rows = 0
        self._offset = 0
        self._encoder = msgspec.msgpack.Encoder()
        with contextlib.ExitStack() as undo:
            undo.callback(os.unlink, self.path)
            # unlinked at once: nothing is left behind, even by a process that is killed
            self._spool = undo.enter_context(
                tempfile.TemporaryFile(dir=folder, prefix=".kindling-fts-")
            )
            child_where, self._send = pipe()
            undo.callback(child_where.close)
            undo.callback(self._send.close)
            self._answers, child_answers = pipe()
            undo.callback(self._answers.close)
            undo.callback(child_answers.close)
            self._child = start_child(
                _child,
                (child_where, child_answers, self._spool.fileno(), self.path, fts, create_sql),
                "kbundle-indexer",
                parent_ends=(self._send, self._answers),
            )
            undo.pop_all()
        child_where.close()
        child_answers.close()
        self._alive = True

    def add(self, observations: Sequence[Observation]) -> None:
        """The next observations loaded, in load order."""
        contents = [None if o.redacted else o.content for o in observations]
        first = self._rows + 1
        self._rows += len(contents)
        if not self._alive:
            return
        try:
            data = self._encoder.encode(_Rows(first, contents))
            os.pwrite(self._spool.fileno(), data, self._offset)
            # a few bytes a frame: this process waits on the child only when it lags by more
            # frames than the pipe's buffer holds announcements of
            self._send.send_bytes(self._encoder.encode(_Where(self._offset, len(data))))
            self._offset += len(data)
        except OSError:  # the child died, or the spool's disk is full: the load indexes in place
            self._alive = False

    def finish(self) -> PrebuiltIndex | None:
        """Wait for the index of every observation added; None if the child could not build
        it (then the load indexes in place)."""
        self._send.close()
        answer: _Built | ChildFailed | None = None
        if self._alive:
            with contextlib.suppress(EOFError, OSError, msgspec.DecodeError):
                answer = msgspec.msgpack.decode(
                    self._answers.recv_bytes(), type=_Built | ChildFailed
                )
        self._alive = False
        if isinstance(answer, _Built) and answer.rows == self._rows:
            return PrebuiltIndex(self.path, self.fts, self._rows)
        return None

    def close(self) -> None:
        """Stop the child (if it still runs) and remove its files."""
        self._send.close()
        self._child.join(timeout=0 if self._alive else 5)
        if self._child.exitcode is None:
            self._child.terminate()
            self._child.join()
        self._answers.close()
        self._spool.close()
        _remove(self.path)


def _child(where: Any, answers: Any, spool: int, path: str, fts: str, create_sql: str) -> None:
    """Index every frame announced until the end, then say so (or say what stopped it). A
    parent that is gone (killed) will neither take the index nor remove its file: this child
    removes it."""
    gc.disable()  # nothing here holds a cycle
    parent = os.getppid()
    where_of = msgspec.msgpack.Decoder(_Where)
    rows_of = msgspec.msgpack.Decoder(_Rows)
    try:
        builder = IndexBuilder(path, fts, create_sql)
        try:
            with contextlib.suppress(EOFError):  # the end (or the parent is gone)
                while True:
                    at = where_of.decode(where.recv_bytes())
                    frame = rows_of.decode(os.pread(spool, at.size, at.offset))
                    builder.add(frame.first, frame.contents)
            if os.getppid() != parent:
                raise BrokenPipeError("the import ended before its last observation")
            built = builder.finish()
        except BaseException:
            builder.close()
            raise
        answer: _Built | ChildFailed = _Built(built.rows)
    except Exception as exc:  # reported to the parent, which then indexes in place
        answer = ChildFailed.of(exc, "indexing")
    try:
        answers.send_bytes(msgspec.msgpack.encode(answer))
    except OSError:  # nobody reads the answer: the parent is gone
        _remove(path)
    else:
        if os.getppid() != parent:
            _remove(path)


def _remove(path: str) -> None:
    for leftover in (path, path + "-journal"):
        with contextlib.suppress(FileNotFoundError):
            os.unlink(leftover)
