"""What a command prints, and how its failures become one line and an exit code.

Exit codes: 0 success; 1 the work failed (damaged bundle, conflict, integrity problem, refused
database) or `scan` found secrets; 2 usage error (an invalid --rules file included). Every
failure is one line on standard error, never a traceback (unless --debug).
"""

from __future__ import annotations

import json
import sys
from collections.abc import Mapping, Sequence
from typing import TYPE_CHECKING, Any

import click

from kindling_bundle.errors import KindlingBundleError, NoIdentityError, RulesError

if TYPE_CHECKING:  # imported by the commands that print them (cli/__init__ says why)
    from kindling_bundle.db.integrity import IntegrityReport
    from kindling_bundle.io.sshsig.verification import Signer

EXIT_OK, EXIT_FAILED, EXIT_USAGE = 0, 1, 2


class Output:
    """Human lines, or with --json one JSON document, or with --quiet nothing on success."""

    def __init__(self, *, as_json: bool, quiet: bool):
        self.as_json = as_json
        self.quiet = quiet

    def line(self, text: str = "", *, err: bool = False) -> None:
        if not self.as_json and not self.quiet:
            click.echo(text, err=err)

    def result(self, data: dict[str, Any], *, err: bool = False) -> None:
        if self.as_json:
            click.echo(json.dumps(data, indent=2, ensure_ascii=False), err=err)


class Failed(KindlingBundleError):
    """The command did its job and found the input bad (exit 1); details were printed."""


def print_integrity(out: Output, report: IntegrityReport) -> None:
    if report.ok:
        out.line(f"integrity: ok ({len(report.warnings)} warnings)")
    else:
        out.line(f"integrity: {len(report.problems)} problems")
    for problem in [*report.problems, *report.warnings]:
        out.line(
            f"  {problem.severity}: {problem.kind}: {problem.entity} {problem.id}: {problem.detail}"
        )


def print_counts(out: Output, columns: Sequence[str], rows: Mapping[str, Sequence[int]]) -> None:
    """What an import or a chain did, a row per entity: the same table for every import."""
    out.line(
        "  " + f"{'entity':<14}" + "".join(f"{column:>{len(column) + 2}}" for column in columns)
    )
    for entity, values in rows.items():
        cells = zip(columns, values, strict=True)
        out.line("  " + f"{entity:<14}" + "".join(f"{n:>{len(c) + 2},}" for c, n in cells))


def print_signature(out: Output, signer: Signer | None, indent: str = "") -> None:
    """Who signed a bundle: principals, key type and fingerprint; or that it is unsigned."""
    from kindling_bundle.format.signature import describe_signature

    out.line(f"{indent}signature: {describe_signature(signer)}")


def run(group: click.Group, argv: list[str] | None) -> None:
    """Run the command line and turn every failure into one line and an exit code."""
    debug = "--debug" in (argv if argv is not None else sys.argv[1:])
    try:
        group.main(args=argv, prog_name="kindling-bundle", standalone_mode=False)
    except click.exceptions.Exit as exc:
        sys.exit(exc.exit_code)
    except click.Abort:
        _fail("aborted", EXIT_FAILED)
    except click.UsageError as exc:
        _fail(exc.format_message().replace("\n", " "), EXIT_USAGE)
    except click.ClickException as exc:
        _fail(exc.format_message().replace("\n", " "), EXIT_FAILED)
    except RulesError as exc:  # the user's --rules file: a usage error, as a bad option is
        _fail(str(exc).replace("\n", " "), EXIT_USAGE)
    except NoIdentityError as exc:
        from kindling_bundle.cli.keys import IDENTITY_HINT

        _fail(f"{exc}: {IDENTITY_HINT}".replace("\n", " "), EXIT_FAILED)
    except KindlingBundleError as exc:
        _fail(str(exc).replace("\n", " "), EXIT_FAILED)
    except BrokenPipeError:
        sys.stderr.close()
        sys.exit(EXIT_FAILED)
    except KeyboardInterrupt:
        _fail("interrupted", 130)
    except Exception as exc:  # an unexpected bug: still one line, unless --debug
        if debug:
            raise
        _fail(
            f"internal error: {type(exc).__name__}: {exc} (run with --debug for details)",
            EXIT_FAILED,
        )
    sys.exit(EXIT_OK)


def _fail(message: str, code: int) -> None:
    click.echo(f"kindling-bundle: error: {message}", err=True)
    sys.exit(code)
