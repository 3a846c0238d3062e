"""The `kindling-bundle` command: a thin click layer that parses, calls the library, prints,
exits. Commands live by job in `transfer`, `checks`, `datasets` and `archive`; what they print
and how failures become exit codes, in `output`.
"""

from __future__ import annotations

import ctypes
import sys

import click

from kindling_bundle import __version__
from kindling_bundle.cli import archive, checks, datasets, repair, transfer
from kindling_bundle.cli.output import run


@click.group(
    context_settings={"help_option_names": ["-h", "--help"]},
    epilog="Exit codes: 0 success; 1 the work failed (damaged bundle, conflict, integrity "
    "problem, refused database) or scan found secrets; 2 usage error (an invalid --rules file "
    "included).",
)
@click.version_option(__version__, "--version", "-V", prog_name="kindling-bundle")
def cli() -> None:
    """Back up, share, check and restore Kindling memory as portable bundles."""


for command in (
    transfer.export,
    transfer.import_,
    checks.verify,
    checks.inspect,
    checks.check,
    checks.scan,
    repair.recover_,
    datasets.sample,
    datasets.convert,
    datasets.diff,
    datasets.merge,
    *archive.ARCHIVE_COMMANDS,
):
    cli.add_command(command)


_M_MMAP_THRESHOLD = -3
MMAP_THRESHOLD_BYTES = 256 << 10
"""Allocations this large or larger get their own mapping (see `_return_freed_memory`)."""


def _return_freed_memory() -> None:
    """Have glibc's malloc give every allocation of MMAP_THRESHOLD_BYTES or more (decompressed
    pieces, frames, NumPy arrays) its own mapping, returned to the system as soon as it is
    freed. By default glibc raises that threshold after the first such free (up to 32 MiB):
    large buffers then come from the heap (a reading thread's own heap, for its pieces), whose
    freed pages stay resident, so each phase of a command starts from the peak of the one
    before (a restore's import from its merge's, an increment's writing from its comparison's).
    Set once at start, by the command only: a program that imports the library keeps its own
    allocator's settings. Elsewhere than glibc, nothing is changed."""
    if not sys.platform.startswith("linux"):
        return
    try:
        mallopt = ctypes.CDLL(None).mallopt
    except (OSError, AttributeError):
        return
    mallopt.argtypes = (ctypes.c_int, ctypes.c_int)
    mallopt(_M_MMAP_THRESHOLD, MMAP_THRESHOLD_BYTES)


def main(argv: list[str] | None = None) -> None:
    """Entry point: run the CLI and turn every failure into one line and an exit code."""
    _return_freed_memory()
    run(cli, argv)
