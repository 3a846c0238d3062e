"""The `kindling-bundle` command: a thin click layer that parses, calls the library, prints,
exits. Commands live by job in `transfer`, `checks`, `datasets`, `repair` and `archive`; what
they print and how failures become exit codes, in `output`.

A command's module is imported only when that command runs (or `--help` lists them all): each
module imports the operations it calls, and importing every one of them (increments' numpy,
the signature and encryption libraries) took longer than a small export.
"""

from __future__ import annotations

import importlib

import click

from kindling_bundle import __version__
from kindling_bundle.cli.output import run

COMMANDS = {
    "export": "transfer:export",
    "import": "transfer:import_",
    "verify": "checks:verify",
    "inspect": "checks:inspect",
    "check": "checks:check",
    "scan": "checks:scan",
    "recover": "repair:recover_",
    "sample": "datasets:sample",
    "convert": "datasets:convert",
    "diff": "datasets:diff",
    "merge": "datasets:merge",
    "backup": "archive:backup",
    "snapshots": "archive:snapshots",
    "restore": "archive:restore",
    "forget": "archive:forget",
}
"""Each command's name and where it is defined (module in kindling_bundle.cli: attribute)."""


class _Commands(click.Group):
    """A group that imports a command's module when the command is looked up."""

    def list_commands(self, ctx: click.Context) -> list[str]:
        return sorted(COMMANDS)

    def get_command(self, ctx: click.Context, cmd_name: str) -> click.Command | None:
        where = COMMANDS.get(cmd_name)
        if where is None:
            return None
        module, attribute = where.split(":")
        command = getattr(importlib.import_module(f"kindling_bundle.cli.{module}"), attribute)
        assert isinstance(command, click.Command)
        return command


@click.group(
    cls=_Commands,
    context_settings={"help_option_names": ["-h", "--help"]},
    epilog="Exit codes: 0 success; 1 the work failed (damaged bundle, conflict, integrity "
    "problem, refused database) or scan found secrets; 2 usage error (an invalid --rules file "
    "included).",
)
@click.version_option(__version__, "--version", "-V", prog_name="kindling-bundle")
def cli() -> None:
    """Back up, share, check and restore Kindling memory as portable bundles."""


def main(argv: list[str] | None = None) -> None:
    """Entry point: run the CLI and turn every failure into one line and an exit code."""
    run(cli, argv)
