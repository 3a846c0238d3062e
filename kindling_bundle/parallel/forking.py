"""Forking a worker process, in one place: when it is safe, how, how the error that stopped
one reaches this process (`ChildFailed`), and the handle on a child that shares this process's
snapshot (`WorkerChild`, with the child's end `ToParent`).

A forked child starts as a copy of this process with one thread, the one that forked. Any other
thread's locks (fsspec's I/O thread of an `s3://` session, a caller's thread, our own SHA-256 or
zstd threads) would be copied in whatever state they were, and a child that touches them can
hang. So a child is forked only on Linux (fork elsewhere is missing or unsafe), only while this
process runs no other thread, and only with two usable CPUs (on one, two processes take turns
and gain nothing).
"""

from __future__ import annotations

import contextlib
import gc
import multiprocessing
import os
import sys
import threading
from collections.abc import Callable
from multiprocessing.process import BaseProcess
from typing import Any, Generic, Literal, Protocol, Self, TypeVar

import msgspec

from kindling_bundle.errors import BundleError, KindlingBundleError, RecordError, StoreError

_Done = TypeVar("_Done", bound=msgspec.Struct)
_Command = TypeVar("_Command", bound=msgspec.Struct)


def fork_is_safe() -> bool:
    """True if a worker may be forked now (see the module docstring)."""
    return (
        sys.platform.startswith("linux")
        and "fork" in multiprocessing.get_all_start_methods()
        and threading.active_count() == 1
        and len(os.sched_getaffinity(0)) >= 2
    )


def start_child(
    target: Callable[..., None],
    args: tuple[Any, ...],
    name: str,
    *,
    parent_ends: tuple[Any, ...] = (),
) -> BaseProcess:
    """Fork a daemon child that runs `target(*args)` and leaves through `os._exit`
    (multiprocessing's fork start), so nothing of this process is finalized twice. Callers
    decide with `parallel.choose_workers` just before: with no other thread running, none can
    start in between but ours.

    `parent_ends`: this process's ends of the pipes to the child. The child closes its copies
    first, so that it reads the end of a pipe once this process closes its end, or dies."""
    child = multiprocessing.get_context("fork").Process(
        target=_run, args=(target, args, parent_ends), name=name, daemon=True
    )
    child.start()
    return child


def _run(target: Callable[..., None], args: tuple[Any, ...], parent_ends: tuple[Any, ...]) -> None:
    for end in parent_ends:
        end.close()
    target(*args)


def pipe() -> tuple[Any, Any]:
    """A one-way pipe for messages to or from a child: (receiving end, sending end)."""
    return multiprocessing.get_context("fork").Pipe(duplex=False)


class ChildFailed(msgspec.Struct, tag=True):
    """From a child: the error that stopped it, to be raised in this process as it was raised
    there (the same class and message as in one process)."""

    error: Literal["RecordError", "StoreError", "BundleError"]
    message: str
    entity: str | None = None
    record_id: str | None = None

    @classmethod
    def of(cls, exc: BaseException, process: str) -> ChildFailed:
        """The message for `exc`; `process` names the child's job ("encoding") in a message
        for an error that was not ours."""
        if isinstance(exc, RecordError):
            return cls("RecordError", str(exc), exc.entity, exc.record_id)
        if isinstance(exc, StoreError):
            return cls("StoreError", str(exc))
        if isinstance(exc, BundleError):
            return cls("BundleError", str(exc))
        return cls("BundleError", f"the {process} process failed: {type(exc).__name__}: {exc}")

    def exception(self) -> KindlingBundleError:
        if self.error == "RecordError":
            return RecordError(self.message, entity=self.entity, record_id=self.record_id)
        return StoreError(self.message) if self.error == "StoreError" else BundleError(self.message)


class Ready(msgspec.Struct, tag=True):
    """From a child: its snapshot is fixed."""


class Start(msgspec.Struct, tag=True):
    """To a child: nothing was committed since its snapshot; work."""


class ToParent:
    """A child's end of its two pipes: commands from the parent, reports to it."""

    def __init__(self, commands: Any, reports: Any):
        self._commands = commands
        self._reports = reports
        self._encode = msgspec.msgpack.Encoder()

    def send(self, message: msgspec.Struct) -> None:
        self._reports.send_bytes(self._encode.encode(message))

    def receive(self, kind: type[_Command]) -> _Command:
        """The parent's next command (EOFError at the end of the pipe: the parent stopped us)."""
        return msgspec.msgpack.decode(self._commands.recv_bytes(), type=kind)

    def ready(self) -> None:
        """Say the snapshot is fixed, and wait until told to start (or stopped)."""
        self.send(Ready())
        self.receive(Start)


class _Witness(Protocol):
    def unchanged(self) -> bool: ...


class WorkerChild(Generic[_Done]):
    """A forked child on this process's snapshot, seen from this process: it runs
    `work(ToParent)`, says Ready, and once told to Start reports as it goes (`progress`
    messages, which subclasses take in `_progress`) until its last word (`done`, or
    ChildFailed). `job` names what it does in messages ("encoding")."""

    def __init__(
        self,
        work: Callable[[ToParent], None],
        job: str,
        name: str,
        progress: type[msgspec.Struct],
        done: type[_Done],
    ):
        self._reports, child_reports = pipe()
        child_commands, self._commands = pipe()
        self._child = start_child(
            _work,
            (work, job, child_commands, child_reports),
            name,
            parent_ends=(self._reports, self._commands),
        )
        child_commands.close()
        child_reports.close()
        self._job = job
        self._encode = msgspec.msgpack.Encoder()
        self._decode = msgspec.msgpack.Decoder(Ready | progress | done | ChildFailed)
        self._done = done
        self._last: _Done | ChildFailed | None = None

    def __enter__(self) -> Self:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def shares(self, witness: _Witness) -> bool:
        """Wait until the child has its snapshot; tell it to start if it is this process's
        (nothing was committed since the witness opened). False: it will do nothing."""
        if not isinstance(self._receive(), Ready) or not witness.unchanged():
            return False
        self._send(Start())
        return True

    def poll(self) -> None:
        """Pass on what the child reported so far, without waiting."""
        while self._last is None and self._reports.poll():
            self._take(self._receive())

    def wait(self) -> _Done:
        """Every report until the child's last word; the error it met is raised."""
        while self._last is None:
            self._take(self._receive())
        if isinstance(self._last, ChildFailed):
            raise self._last.exception()
        return self._last

    def close(self) -> None:
        """Stop the child if it is still at work (after an error here, or if never started)."""
        self._commands.close()
        if not isinstance(self._last, self._done):
            self._child.terminate()
        self._child.join()
        self._reports.close()

    def _send(self, message: msgspec.Struct) -> None:
        self._commands.send_bytes(self._encode.encode(message))

    def _receive(self) -> Any:
        try:
            return self._decode.decode(self._reports.recv_bytes())
        except EOFError:  # gone without a last word
            return ChildFailed(
                "BundleError", f"the {self._job} process ended without a word (killed?)"
            )

    def _take(self, report: Any) -> None:
        if isinstance(report, self._done | ChildFailed):
            self._last = report
        else:
            self._progress(report)

    def _progress(self, report: Any) -> None:
        """A report before the last word."""


def _work(work: Callable[[ToParent], None], job: str, commands: Any, reports: Any) -> None:
    """In the child: `work`, its error sent to the parent as ChildFailed; the end of a pipe
    (the parent stopped the child, or is gone) ends it quietly."""
    parent = ToParent(commands, reports)
    gc.disable()  # records hold no cycles, and each is dropped after use
    try:
        work(parent)
    except (EOFError, BrokenPipeError):
        return
    except BaseException as exc:
        with contextlib.suppress(OSError):  # unless the parent is gone meanwhile
            parent.send(ChildFailed.of(exc, job))
