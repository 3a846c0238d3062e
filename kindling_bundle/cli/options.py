"""Options and parameter types shared by the commands."""

from __future__ import annotations

import functools
import os
from collections.abc import Callable
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, BinaryIO

import click

from kindling_bundle.cli.output import Output
from kindling_bundle.io.progress import Progress
from kindling_bundle.io.storage import STDIO, parse_storage_options


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


def storage_options(func: Callable[..., Any]) -> Callable[..., Any]:
    """--storage-option and --endpoint-url for bundles given as URLs; hands `storage_options`."""

    @click.option(
        "--storage-option",
        "option_pairs",
        multiple=True,
        metavar="KEY=VALUE",
        help="For a URL: an option of its storage backend, e.g. profile=backup or anon=true "
        "(repeatable). Credentials also come from the environment and AWS config files.",
    )
    @click.option(
        "--endpoint-url",
        metavar="URL",
        help="For an s3:// URL: an S3-compatible endpoint such as MinIO [default: "
        "$AWS_ENDPOINT_URL, else AWS].",
    )
    @functools.wraps(func)
    def wrapper(
        *args: Any, option_pairs: tuple[str, ...], endpoint_url: str | None, **kwargs: Any
    ) -> Any:
        try:
            options = parse_storage_options(option_pairs)
        except ValueError as exc:
            raise click.BadParameter(str(exc), param_hint="'--storage-option'") from None
        if endpoint_url:
            options["endpoint_url"] = endpoint_url
        return func(*args, storage_options=options, **kwargs)

    return wrapper


class EpochMs(click.ParamType):  # type: ignore[type-arg]  # generic only in newer click
    """Epoch milliseconds, or an ISO-8601 date/time (UTC unless it names an offset)."""

    name = "TIME"

    def convert(self, value: Any, param: click.Parameter | None, ctx: click.Context | None) -> int:
        if isinstance(value, int):
            return value
        text = str(value).strip()
        if text.lstrip("-").isdigit():
            return int(text)
        try:
            moment = datetime.fromisoformat(text)
        except ValueError:
            self.fail(
                f"{value!r} is neither epoch milliseconds nor an ISO-8601 date/time", param, ctx
            )
        if moment.tzinfo is None:
            moment = moment.replace(tzinfo=UTC)
        return int(moment.timestamp() * 1000)


def iso(ms: int | None) -> str | None:
    """Epoch milliseconds as an ISO-8601 UTC time, for people."""
    if ms is None:
        return None
    moment = datetime.fromtimestamp(ms / 1000, tz=UTC)
    return moment.isoformat(timespec="milliseconds").replace("+00:00", "Z")


def default_db() -> Path:
    """Where Kindling keeps its database: $KINDLING_DB, else ~/.kindling/kindling.db."""
    return Path(os.environ.get("KINDLING_DB") or Path.home() / ".kindling" / "kindling.db")


def db_option(func: Callable[..., Any]) -> Callable[..., Any]:
    """--db, defaulting as Kindling does: $KINDLING_DB, else ~/.kindling/kindling.db."""
    return click.option(
        "--db",
        "db",
        type=click.Path(dir_okay=False, path_type=Path),
        default=None,
        help="Kindling database [default: $KINDLING_DB, else ~/.kindling/kindling.db].",
    )(func)


def progress_for(label: str, out: Output) -> Progress:
    return Progress(label, enabled=None if not out.quiet else False)


def source_name(target: str) -> str | None:
    """How messages name an input: as given, except standard input (its stream says <stdin>)."""
    return None if target == STDIO else target


def input_label(target: str, stream: BinaryIO) -> str:
    """How errors name an input: as given, or standard input's stream name."""
    return target if target != STDIO else str(getattr(stream, "name", "<stdin>"))
