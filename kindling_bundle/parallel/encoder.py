"""Encoding the observations member in a second process, while this one does the rest.

A whole export (no filter) splits the observations (ReadingChild, at the end of this module): a
child with its own connection, on the same snapshot, reads and encodes the first part while this
process encodes the rest and the other members; reading rows is no longer this process's alone.
Otherwise (a filtered export, or when something was committed as the child started, so it
could not share the snapshot) ChildEncoder is used, as described next.

An export is bound by Python work per record, on one core: reading the rows (SQLite and row
tuples), then, for about twice as long, turning them into records, checking and encoding them
(bench/RESULTS.md). Here this process reads rows and hands them over, FRAME_RECORDS rows per
message, to a forked child, which makes the records, checks and encodes them exactly as
`FrameEncoder` does in-process (the same frames: batches have the same boundaries), writes the
frames into the spool and hashes them. On two cores both halves run at once.

The child has more to do per row than this process, so whenever it has no room for the next
batch this process does something useful instead of waiting: a step of the `spare` work it was
given (the writer encodes the other members, one frame a step), or, with none left, that batch
itself, handing over the finished frames, which the child only hashes and writes in their place.

The child is forked, so it shares the spool's file descriptor and needs no imports; it never
touches the SQLite connection (forked SQLite handles must not be used) and leaves through
`os._exit` (multiprocessing's fork start), so nothing of this process is finalized twice. A
SealedSpool (an encrypted export's) is written through the child's copy, which holds the same
in-memory key; the child seals the last chunk before it reports, and the size it reports is
the member's (a SealedSpool cannot seek to its end). It is used on Linux only (fork elsewhere
is unsafe or missing), for exports of at least forking.PARALLEL_MIN_ROWS observations;
otherwise, and whenever `parallel` is off, encoding stays here.
A child that fails reports the error it met, raised here as it would have been in-process (and
before an error of a later row met here); a child that dies is a BundleError; this process dying
closes the pipe and the child exits.
"""

from __future__ import annotations

import contextlib
import gc
import hashlib
import multiprocessing
import os
import sqlite3
from collections.abc import Callable, Iterable, Iterator
from typing import Any, BinaryIO

import msgspec

from kindling_bundle.db.rows import observation_from_row
from kindling_bundle.errors import BundleError, RecordError, StoreError
from kindling_bundle.format.manifest import FRAME_RECORDS
from kindling_bundle.format.record_frames import FrameEncoder
from kindling_bundle.io.age import SealedSpool
from kindling_bundle.parallel.forking import pipe_has_room, widen_pipe

_ROWS = b"R"  # then a MessagePack array of rows
_FRAMES = b"F"  # then a 4-byte record count and the frames, encoded here
_END = b""


class _Child:
    """What both children share: the forked process, its reports (progress, then one last word)
    and what that last word means. Subclasses start `_child` with a pipe `_commands` to it."""

    _child: Any
    _commands: Any
    _reports_in: Any

    def __init__(
        self,
        spool: BinaryIO,
        on_error: Callable[[RecordError], RecordError],
        progress: Callable[[int, int], None],
    ):
        spool.flush()  # the child appends at the shared file offset
        self._spool = spool
        self._on_error = on_error
        self._progress = progress
        self._result: tuple[Any, ...] | None = None

    def pump(self) -> None:
        """Pass on the progress reported so far, without waiting."""
        while self._result is None and self._reports_in.poll():
            self._take(self._receive())

    def close(self) -> None:
        """Stop the child if it is still at work (after an error here, or if not started)."""
        self._commands.close()
        if self._result is None or self._result[0] != "done":
            self._child.terminate()
        self._child.join()
        self._reports_in.close()

    def _last_word(self) -> tuple[int, int, str]:
        """Wait for the child's last report: (records, bytes, SHA-256), or the error it met."""
        while self._result is None:
            self._take(self._receive())
        self._child.join()
        return _outcome(self._result, self._on_error)

    def _receive(self) -> tuple[Any, ...]:
        try:
            return self._reports_in.recv()
        except EOFError:  # the child is gone without a last report
            return ("died",)

    def _take(self, report: tuple[Any, ...]) -> None:
        if report[0] == "progress":
            self._progress(report[1], report[2])
        else:
            self._result = report


class ChildEncoder(_Child):
    """Observation rows in, the observations member out: encoded by a forked child into the
    spool (at the shared file offset, so nothing else may write to it until `finish`).

    `send` hands the rows over (see the module docstring for `spare`); `pump` passes on the
    child's progress without waiting; `finish` waits for the child's last word: (records, bytes,
    SHA-256), or the error it met. `on_error` names a row that is not a valid record (as the
    export stream would); `progress(records, bytes)` is called with the member's running totals.
    """

    def __init__(
        self,
        spool: BinaryIO,
        on_error: Callable[[RecordError], RecordError],
        progress: Callable[[int, int], None],
    ):
        super().__init__(spool, on_error, progress)
        context = multiprocessing.get_context("fork")
        child_rows, self._commands = context.Pipe(duplex=False)  # (receiving end, sending end)
        self._reports_in, child_reports = context.Pipe(duplex=False)
        self._child = context.Process(
            target=_child,
            args=(child_rows, child_reports, spool),
            name="kbundle-encoder",
            daemon=True,
        )
        self._child.start()
        child_rows.close()
        child_reports.close()
        self._pipe_bytes = widen_pipe(self._commands.fileno())  # room for a batch of rows or two
        self._rows = msgspec.msgpack.Encoder()
        self._frames = FrameEncoder("observations")

    def send(self, batches: Iterable[list[tuple]], spare: Iterator[object]) -> None:
        """Hand every batch of rows over (FRAME_RECORDS rows each, the last maybe fewer: the
        child frames each batch alone, so the frames are those of one FrameEncoder pass), then
        the end marker; stops early if the child has stopped. While the child has no room for a
        batch, take a step of `spare`, or with none left encode the batch here. A bad row met
        here raises its error once the child has had its say about the rows before it."""
        for batch in batches:
            if not self._hand_over(batch, spare):
                return
        self._send(_END)

    def raise_if_stopped(self) -> None:
        """Raise the error the child stopped with, if it has stopped already."""
        self.pump()
        if self._result is not None:
            _outcome(self._result, self._on_error)

    def finish(self) -> tuple[int, int, str]:
        """Wait for the child's last word: (records, bytes, SHA-256) of the member written."""
        return self._last_word()

    def _hand_over(self, batch: list[tuple], spare: Iterator[object]) -> bool:
        data = _ROWS + self._rows.encode(batch)
        while not pipe_has_room(self._commands.fileno(), self._pipe_bytes, len(data)):
            if next(spare, _END) is _END:
                data = self._encoded_here(batch)
                break
        return self._send(data)

    def _encoded_here(self, batch: list[tuple]) -> bytes:
        try:
            records = list(map(observation_from_row, batch))
        except RecordError as exc:
            raise self._after_the_child(self._on_error(exc)) from None
        try:
            frames = list(self._frames.frames(records))
        except RecordError as exc:
            raise self._after_the_child(exc) from None
        count = sum(records_in_frame for records_in_frame, _ in frames)
        return b"".join([_FRAMES, count.to_bytes(4, "big"), *(frame for _, frame in frames)])

    def _after_the_child(self, error: RecordError) -> RecordError:
        """`error`, met here, once the child has written the rows before it: its own error, if it
        met one, is raised instead (it comes first in the member)."""
        self._send(_END)
        self.finish()
        return error

    def _send(self, data: bytes) -> bool:
        self.pump()  # drained before every send, so the child never blocks on reports
        if self._result is not None:
            return False
        try:
            self._commands.send_bytes(data)
        except (BrokenPipeError, ConnectionResetError):  # the child stopped: its report says why
            return False
        return True


def _outcome(
    result: tuple[Any, ...] | None, on_error: Callable[[RecordError], RecordError]
) -> tuple[int, int, str]:
    if result is None or result[0] == "died":
        raise BundleError("the encoding process ended without a word (killed?)")
    kind, *detail = result
    if kind == "done":
        return detail[0], detail[1], detail[2]
    if kind in ("row", "record"):
        message, entity, record_id = detail
        error = RecordError(message, entity=entity, record_id=record_id)
        raise on_error(error) if kind == "row" else error
    if kind == "os":
        raise OSError(*detail)
    if kind == "store":
        raise StoreError(detail[0])
    raise BundleError(f"the encoding process failed: {detail[0]}")


class _Written:
    """The member as a child writes it: frames into the spool, hashed and counted, each batch
    reported to the parent."""

    def __init__(self, spool: BinaryIO, reports_out: Any):
        self._spool = spool
        self._reports_out = reports_out
        self._encoder = FrameEncoder("observations")
        self.sha256 = hashlib.sha256()
        self.count = self.size = 0

    def rows(self, rows: list[Any]) -> bool:
        """Make, check, encode and write the records of these rows; False if a row is not a
        valid record (reported: the child stops there, as the export stream would)."""
        try:
            records = list(map(observation_from_row, rows))
        except RecordError as exc:
            self._reports_out.send(("row", str(exc), exc.entity, exc.record_id))
            return False
        for records_in_frame, frame in self._encoder.frames(records):
            self.frames(frame, records_in_frame, report=False)
        self._reports_out.send(("progress", self.count, self.size))
        return True

    def frames(self, frames: bytes | memoryview, records: int, *, report: bool = True) -> None:
        self.sha256.update(frames)
        self._spool.write(frames)
        self.count += records
        self.size += len(frames)
        if report:
            self._reports_out.send(("progress", self.count, self.size))

    def done(self) -> None:
        _end_writing(self._spool)
        self._reports_out.send(("done", self.count, self.size, self.sha256.hexdigest()))


def _end_writing(spool: BinaryIO) -> None:
    """Make what this process wrote to `spool` readable by the other: flushed, and for a
    SealedSpool its last chunk sealed (it is in the writer's memory until then)."""
    if isinstance(spool, SealedSpool):
        spool.finish()
    else:
        spool.flush()


def _reader(spool: BinaryIO) -> Callable[[int], bytes]:
    """Reads what the other process wrote to `spool`, from its start, without moving the file
    position both share: by offset (pread), or through a SealedSpool's own reading (which
    decrypts, by offset too, and leaves this process's stale copy of the writer alone)."""
    if isinstance(spool, SealedSpool):
        return spool.written_elsewhere().read
    fd, at = spool.fileno(), 0

    def pread(size: int) -> bytes:
        nonlocal at
        data = os.pread(fd, size, at)
        at += len(data)
        return data

    return pread


def _failure(exc: BaseException, path: str = "") -> tuple[Any, ...]:
    """A child's last report for an error that stopped it (see `_outcome`)."""
    if isinstance(exc, RecordError):
        return ("record", str(exc), exc.entity, exc.record_id)
    if isinstance(exc, OSError):
        return ("os", exc.errno, exc.strerror)
    if isinstance(exc, sqlite3.Error):  # in the words of export._records
        from kindling_bundle.db.connection import describe_error

        reason = describe_error(exc)
        reason = reason[:200] + "..." if len(reason) > 200 else reason
        return ("store", f"{path}: cannot export observations: {reason}")
    return ("failed", f"{type(exc).__name__}: {exc}")


def _child(rows_out: Any, reports_out: Any, spool: BinaryIO) -> None:
    """Make, check, encode and write records from the rows received (or write the frames
    received), until the end marker (or until the parent is gone: then there is no one to
    report to)."""
    try:
        gc.disable()  # rows and records hold no cycles, and each batch is dropped after use
        written = _Written(spool, reports_out)
        rows = msgspec.msgpack.Decoder()
        while data := rows_out.recv_bytes():
            if data[:1] == _FRAMES:
                written.frames(memoryview(data)[5:], int.from_bytes(data[1:5], "big"))
            elif not written.rows(rows.decode(memoryview(data)[1:])):
                return
        written.done()
    except EOFError:
        return
    except BaseException as exc:
        reports_out.send(_failure(exc))


class ReadingChild(_Child):
    """The first part of a whole export's observations, read and encoded by a forked child with
    a connection of its own, while this process encodes the rest and the other members.

    Reading SQLite rows was half of this process's work, so the child reads its part itself:
    `sql` and `params` select it (export.observations_before_sql). Its connection must see the
    same snapshot as this process's: the child opens its statement and reports `ready`; the
    caller then checks that nothing was committed meanwhile and says `start` (or `stop`). Frames
    go into `spool` as ChildEncoder's do; `finish(side_bytes)` has the child hash the rest of the
    member too (the first `side_bytes` of `side`, written here), for the member's SHA-256."""

    def __init__(
        self,
        path: str,
        sql: str,
        params: dict[str, Any],
        spool: BinaryIO,
        side: BinaryIO,
        on_error: Callable[[RecordError], RecordError],
        progress: Callable[[int, int], None],
    ):
        super().__init__(spool, on_error, progress)
        context = multiprocessing.get_context("fork")
        child_commands, self._commands = context.Pipe(duplex=False)
        self._reports_in, child_reports = context.Pipe(duplex=False)
        self._child = context.Process(
            target=_reading_child,
            args=(path, sql, params, spool, side, child_commands, child_reports),
            name="kbundle-reader",
            daemon=True,
        )
        self._child.start()
        child_commands.close()
        child_reports.close()
        self._side = side

    def ready(self) -> bool:
        """Wait until the child's statement has its snapshot: True; False if it stopped."""
        report = self._receive()
        if report[0] == "ready":
            return True
        self._result = report
        return False

    def start(self) -> None:
        self._commands.send("start")

    def finish(self, side_bytes: int) -> tuple[int, int, str]:
        """(records, bytes of its part, SHA-256 of the whole member), or the error it met.
        Nothing may be written to `side` after this."""
        _end_writing(self._side)
        with contextlib.suppress(OSError):  # a child that stopped early reads nothing more
            self._commands.send(side_bytes)
        return self._last_word()


def _reading_child(
    path: str,
    sql: str,
    params: dict[str, Any],
    spool: BinaryIO,
    side: BinaryIO,
    commands: Any,
    reports_out: Any,
) -> None:
    """Open a connection, read and encode the rows `sql` selects, then hash the rest of the
    member from `side` when told how long it is."""
    from kindling_bundle.db.connection import open_store

    try:
        gc.disable()  # rows and records hold no cycles, and each batch is dropped after use
        conn = open_store(path, readonly=True)
        conn.execute("BEGIN")
        cursor = conn.execute(sql, params)
        batch = cursor.fetchmany(FRAME_RECORDS)  # the snapshot is fixed by the first read
        reports_out.send(("ready",))
        if commands.recv() != "start":
            return
        written = _Written(spool, reports_out)
        while batch:
            if not written.rows(batch):
                return
            batch = cursor.fetchmany(FRAME_RECORDS)
        spool.flush()
        remaining = commands.recv()
        read = _reader(side)
        offset = 0
        while offset < remaining:
            chunk = read(min(remaining - offset, 1 << 20))
            if not chunk:
                raise OSError(5, "the second spool file ended early")
            written.sha256.update(chunk)
            offset += len(chunk)
        written.done()
    except EOFError:
        return
    except BaseException as exc:
        reports_out.send(_failure(exc, path))
