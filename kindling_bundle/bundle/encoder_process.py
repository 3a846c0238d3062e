"""Encoding the observations member in a second process, while this one reads SQLite.

An export is bound by Python work per record, on one core: at 200,000 observations, reading the
rows (SQLite and row tuples) took ~0.5 s and turning them into records, checking and encoding
them ~1.5 s more. Here this process only reads rows and hands them over, FRAME_RECORDS rows per
message, to a forked child, which makes the records, checks and encodes them exactly as
`FrameEncoder` does in-process (the same frames: batches have the same boundaries), writes the
frames into the spool and hashes them. On two cores both halves run at once.

The child is forked, so it shares the spool's file descriptor and needs no imports; it never
touches the SQLite connection (forked SQLite handles must not be used) and leaves through
`os._exit` (multiprocessing's fork start), so nothing of this process is finalized twice. It is
used on Linux only (fork elsewhere is unsafe or missing), for exports of at least
PARALLEL_MIN_ROWS observations; otherwise, and whenever `parallel` is off, encoding stays here.
A child that fails reports the error it met, raised here as it would have been in-process; a
child that dies is a BundleError; this process dying closes the pipe and the child exits.
"""

from __future__ import annotations

import hashlib
import multiprocessing
import os
import pickle
import sys
from collections.abc import Callable, Iterable
from typing import Any, BinaryIO

from kindling_bundle.bundle.format import FRAME_RECORDS
from kindling_bundle.bundle.frames import FrameEncoder
from kindling_bundle.errors import BundleError, RecordError
from kindling_bundle.store.rows import observation_from_row

PARALLEL_MIN_ROWS = 16 * FRAME_RECORDS
"""Below this many observations, starting a process costs more than it saves."""

_END = b""


def parallel_available() -> bool:
    return sys.platform.startswith("linux") and "fork" in multiprocessing.get_all_start_methods()


def encode_rows(
    spool: BinaryIO,
    rows: Iterable[tuple],
    on_error: Callable[[RecordError], RecordError],
    progress: Callable[[int, int], None],
) -> tuple[int, int, str]:
    """Encode observation rows in a child process into `spool`: (records, bytes, SHA-256).

    `on_error` names a row that is not a valid record (as the export stream would);
    `progress(records, bytes)` is called as the child reports frames written."""
    spool.flush()  # the child appends at the shared file offset
    context = multiprocessing.get_context("fork")
    child_rows, rows_in = context.Pipe(duplex=False)  # (receiving end, sending end)
    reports_in, child_reports = context.Pipe(duplex=False)
    child = context.Process(
        target=_child, args=(child_rows, child_reports, spool), name="kbundle-encoder", daemon=True
    )
    child.start()
    child_rows.close()
    child_reports.close()
    result: tuple[Any, ...] | None = None
    try:
        batch: list[tuple] = []
        for row in rows:
            batch.append(row)
            if len(batch) == FRAME_RECORDS:
                result = _send(rows_in, batch, reports_in, progress)
                if result is not None:
                    break
                batch = []
        if result is None:
            if batch:
                result = _send(rows_in, batch, reports_in, progress)
            if result is None:
                _send_bytes(rows_in, _END)
                result = _wait(reports_in, progress)
    finally:
        rows_in.close()
        if result is None or result[0] != "done":
            child.terminate()
        child.join()
        reports_in.close()
    spool.seek(0, os.SEEK_END)
    return _outcome(result, on_error)


def _send(
    rows_in: Any, batch: list[tuple], reports_in: Any, progress: Callable[[int, int], None]
) -> tuple[Any, ...] | None:
    """Hand one batch over; the child's final report if it has already stopped."""
    while reports_in.poll():  # drained before every send, so the child never blocks on reports
        report = _receive(reports_in)
        if report[0] != "progress":
            return report
        progress(report[1], report[2])
    if not _send_bytes(rows_in, pickle.dumps(batch, pickle.HIGHEST_PROTOCOL)):
        return _wait(reports_in, progress)
    return None


def _receive(reports_in: Any) -> tuple[Any, ...]:
    try:
        return reports_in.recv()
    except EOFError:  # the child is gone without a last report
        return ("died",)


def _send_bytes(rows_in: Any, data: bytes) -> bool:
    try:
        rows_in.send_bytes(data)
    except (BrokenPipeError, ConnectionResetError):  # the child stopped: its report says why
        return False
    return True


def _wait(reports_in: Any, progress: Callable[[int, int], None]) -> tuple[Any, ...]:
    """The child's final report, passing on its progress."""
    while True:
        report = _receive(reports_in)
        if report[0] != "progress":
            return report
        progress(report[1], report[2])


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
    raise BundleError(f"the encoding process failed: {detail[0]}")


def _child(rows_out: Any, reports_out: Any, spool: BinaryIO) -> None:
    """Make, check, encode and write records from the rows received, until the end marker
    (or until the parent is gone: then there is no one to report to)."""
    try:
        encoder = FrameEncoder("observations")
        sha256 = hashlib.sha256()
        count = size = 0
        while data := rows_out.recv_bytes():
            try:
                records = list(map(observation_from_row, pickle.loads(data)))
            except RecordError as exc:
                reports_out.send(("row", str(exc), exc.entity, exc.record_id))
                return
            for records_in_frame, frame in encoder.frames(records):
                sha256.update(frame)
                spool.write(frame)
                count += records_in_frame
                size += len(frame)
            reports_out.send(("progress", count, size))
        spool.flush()
        reports_out.send(("done", count, size, sha256.hexdigest()))
    except EOFError:
        return
    except RecordError as exc:
        reports_out.send(("record", str(exc), exc.entity, exc.record_id))
    except OSError as exc:
        reports_out.send(("os", exc.errno, exc.strerror))
    except BaseException as exc:
        reports_out.send(("failed", f"{type(exc).__name__}: {exc}"))
