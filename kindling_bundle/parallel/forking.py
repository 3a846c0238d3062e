"""Forking a worker process, in one place: when it is safe, how, and how the error that
stopped one reaches this process (`ChildFailed`).

A forked child starts as a copy of this process with one thread, the one that forked. Any other
thread's locks (fsspec's I/O thread of an `s3://` session, a caller's thread, our own SHA-256 or
zstd threads) would be copied in whatever state they were, and a child that touches them can
hang. So a child is forked only on Linux (fork elsewhere is missing or unsafe), only while this
process runs no other thread, and only with two usable CPUs (on one, two processes take turns
and gain nothing).
"""

from __future__ import annotations

import multiprocessing
import os
import sys
import threading
from collections.abc import Callable
from multiprocessing.process import BaseProcess
from typing import Any, Literal

import msgspec

from kindling_bundle.errors import BundleError, KindlingBundleError, RecordError, StoreError


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
