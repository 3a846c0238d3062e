"""The `kindling-bundle` command: a thin click layer that parses, calls the library, prints, exits.

Exit codes: 0 success; 1 the work failed (damaged bundle, conflict, integrity problem, refused
database); 2 usage error. Every failure is one line on standard error, never a traceback
(unless --debug).
"""

from __future__ import annotations

import functools
import json
import os
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

import click

from kindling_bundle import __version__
from kindling_bundle.errors import KindlingBundleError
from kindling_bundle.sample import generate_sample

EXIT_OK, EXIT_FAILED, EXIT_USAGE = 0, 1, 2


class Output:
    """Human lines, or with --json one JSON document, or with --quiet nothing on success."""

    def __init__(self, *, as_json: bool, quiet: bool):
        self.as_json = as_json
        self.quiet = quiet

    def line(self, text: str = "") -> None:
        if not self.as_json and not self.quiet:
            click.echo(text)

    def result(self, data: dict[str, Any]) -> None:
        if self.as_json:
            click.echo(json.dumps(data, indent=2, ensure_ascii=False))


def common_options(func: Callable[..., Any]) -> Callable[..., Any]:
    """--json, --quiet and --debug on every command; hands the command an `out` keyword."""

    @click.option("--json", "as_json", is_flag=True, help="Print one JSON document.")
    @click.option("--quiet", "-q", is_flag=True, help="Print nothing on success.")
    @click.option("--debug", is_flag=True, help="Show a traceback on unexpected errors.")
    @functools.wraps(func)
    def wrapper(*args: Any, as_json: bool, quiet: bool, debug: bool, **kwargs: Any) -> Any:
        click.get_current_context().meta["kindling_bundle.debug"] = debug
        return func(*args, out=Output(as_json=as_json, quiet=quiet), **kwargs)

    return wrapper


def default_db() -> Path:
    """Where Kindling keeps its database: $KINDLING_DB, else ~/.kindling/kindling.db."""
    return Path(os.environ.get("KINDLING_DB") or Path.home() / ".kindling" / "kindling.db")


@click.group(
    context_settings={"help_option_names": ["-h", "--help"]},
    epilog="Exit codes: 0 success; 1 the work failed (damaged bundle, conflict, integrity "
    "problem, refused database); 2 usage error.",
)
@click.version_option(__version__, "--version", "-V", prog_name="kindling-bundle")
def cli() -> None:
    """Back up, share, check and restore Kindling memory as portable bundles."""


@cli.command()
@click.argument("path", type=click.Path(dir_okay=False, path_type=Path))
@click.option("--observations", "-n", type=click.IntRange(min=1), default=2000, show_default=True)
@click.option("--seed", type=int, default=0, show_default=True, help="Same seed, same content.")
@common_options
def sample(path: Path, observations: int, seed: int, out: Output) -> None:
    """Write a realistic sample memory database to PATH (a new file)."""
    stats = generate_sample(path, observations=observations, seed=seed)
    counts = {
        "observations": stats.observations,
        "capsules": stats.capsules,
        "summaries": stats.summaries,
        "pins": stats.pins,
        "redacted": stats.redacted,
        "sessions": len(stats.sessions),
    }
    out.line(f"wrote {path}: " + ", ".join(f"{value} {name}" for name, value in counts.items()))
    out.result({"path": str(path), "seed": seed, **counts})


def main(argv: list[str] | None = None) -> None:
    """Entry point: run the CLI and turn every failure into one line and an exit code."""
    debug = "--debug" in (argv if argv is not None else sys.argv[1:])
    try:
        cli.main(args=argv, prog_name="kindling-bundle", standalone_mode=False)
    except click.exceptions.Exit as exc:
        sys.exit(exc.exit_code)
    except click.Abort:
        _fail("aborted", EXIT_FAILED)
    except click.UsageError as exc:
        _fail(exc.format_message().replace("\n", " "), EXIT_USAGE)
    except click.ClickException as exc:
        _fail(exc.format_message().replace("\n", " "), EXIT_FAILED)
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
