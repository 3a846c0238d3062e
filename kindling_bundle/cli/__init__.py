"""The `kindling-bundle` command: a thin click layer that parses, calls the library, prints,
exits. Commands live by job in `transfer`, `checks`, `datasets` and `archive`; what they print
and how failures become exit codes, in `output`.
"""

from __future__ import annotations

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


def main(argv: list[str] | None = None) -> None:
    """Entry point: run the CLI and turn every failure into one line and an exit code."""
    run(cli, argv)
