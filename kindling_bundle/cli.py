"""The `kindling-bundle` command: a thin click layer that parses, calls the library, prints, exits.

Exit codes: 0 success; 1 the work failed (damaged bundle, conflict, integrity problem, refused
database); 2 usage error. Every failure is one line on standard error, never a traceback
(unless --debug).
"""

from __future__ import annotations

import functools
import hashlib
import json
import os
import sys
import tempfile
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from datetime import UTC, datetime
from pathlib import Path
from typing import TYPE_CHECKING, Any, BinaryIO

import click

from kindling_bundle import __version__
from kindling_bundle.errors import BundleError, KindlingBundleError
from kindling_bundle.format.increment import is_increment
from kindling_bundle.format.manifest import Manifest
from kindling_bundle.format.reader import read_manifest
from kindling_bundle.io.progress import Progress
from kindling_bundle.io.storage import (
    HEAD_BLOCK_SIZE,
    STDIO,
    is_url,
    open_destination,
    open_source,
    parse_storage_options,
)
from kindling_bundle.kindling_json.reader import (
    DanglingReport,
    bundle_to_kindling_json,
    export_kindling_json,
    import_kindling_json,
    kindling_json_to_bundle,
    peek_format,
    verify_kindling_json,
)
from kindling_bundle.ops.verify import verify_bundle
from kindling_bundle.records import CONFLICT_STRATEGIES, ENTITY_TYPES

if TYPE_CHECKING:  # SQLite and the modules that write: imported by the commands that use them
    from kindling_bundle.db.connection import KindlingConnection
    from kindling_bundle.db.integrity import IntegrityReport

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


class EpochMs(click.ParamType):
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
    from kindling_bundle.db.sample import generate_sample

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


def db_option(func: Callable[..., Any]) -> Callable[..., Any]:
    """--db, defaulting as Kindling does: $KINDLING_DB, else ~/.kindling/kindling.db."""
    return click.option(
        "--db",
        "db",
        type=click.Path(dir_okay=False, path_type=Path),
        default=None,
        help="Kindling database [default: $KINDLING_DB, else ~/.kindling/kindling.db].",
    )(func)


class _Hashing:
    """A write-only stream that hashes and counts what passes through it to `target`."""

    def __init__(self, target: BinaryIO | None = None):
        self.target = target
        self.sha256 = hashlib.sha256()
        self.size = 0
        self.name = getattr(target, "name", "<stream>")

    def update(self, data: bytes) -> None:
        self.sha256.update(data)
        self.size += len(data)

    def write(self, data: bytes) -> int:
        self.update(data)
        assert self.target is not None
        return self.target.write(data)

    def flush(self) -> None:
        self.target.flush()


def _file_digest(path: Path) -> tuple[int, str]:
    with path.open("rb") as handle:
        digest = hashlib.file_digest(handle, "sha256")
    return path.stat().st_size, digest.hexdigest()


def _progress(label: str, out: Output) -> Progress:
    return Progress(label, enabled=None if not out.quiet else False)


@cli.command()
@db_option
@click.option("--session", help="Only this session id.")
@click.option("--repo", help="Only this repo id.")
@click.option("--agent", help="Only this agent id.")
@click.option("--user", help="Only this user id.")
@click.option("--since", type=EpochMs(), help="From this time (inclusive): epoch ms or ISO-8601.")
@click.option("--until", type=EpochMs(), help="Up to this time (inclusive): epoch ms or ISO-8601.")
@click.option(
    "--level",
    type=click.IntRange(1, 19),
    default=3,
    show_default=True,
    help="zstd compression level.",
)
@click.option(
    "--created-at",
    type=EpochMs(),
    help="Fixed creation time, for byte-identical bundles [default: $SOURCE_DATE_EPOCH, else now].",
)
@click.option(
    "--format",
    "out_format",
    type=click.Choice(["bundle", "kindling-json"]),
    default="bundle",
    show_default=True,
    help="kindling-json writes Kindling's own JSON export format instead of a bundle.",
)
@click.option(
    "--base",
    "bases",
    multiple=True,
    metavar="PREV",
    help="Write an increment: only what changed since the bundle PREV (a path or URL). If PREV "
    "is itself an increment, repeat --base for its chain in order (full bundle first), unless "
    "PREV sits in an archive folder.",
)
@click.argument("out_target", metavar="OUT")
@storage_options
@common_options
def export(
    db: Path | None,
    session: str | None,
    repo: str | None,
    agent: str | None,
    user: str | None,
    since: int | None,
    until: int | None,
    level: int,
    created_at: int | None,
    out_format: str,
    bases: tuple[str, ...],
    out_target: str,
    out: Output,
    storage_options: dict[str, Any],
) -> None:
    """Export the database to a bundle at OUT (a path, - for standard output, or a URL such as
    s3://bucket/key, uploaded as it is written and there only once complete).

    With --format kindling-json, OUT is a Kindling JSON export instead (redacted rows included,
    marked), for a Kindling installation that only reads JSON.

    A filtered export also carries what its selection references (the observations of its
    capsules, the capsules of its summaries, pin targets), so it always imports cleanly.

    With --base, OUT is an increment: the records new or changed since PREV and tombstones
    for those gone; `import` applies it onto a database holding PREV's state.
    """
    from kindling_bundle.db.connection import open_store
    from kindling_bundle.db.export import ExportStreamOptions
    from kindling_bundle.ops.write import BundleOptions, write_bundle

    scope = {
        key: value
        for key, value in (
            ("sessionId", session),
            ("repoId", repo),
            ("agentId", agent),
            ("userId", user),
        )
        if value is not None
    }
    try:
        selection = ExportStreamOptions(scope_ids=scope or None, from_ts=since, to_ts=until)
        opts = BundleOptions(filter=selection, created_at=created_at, level=level)
    except ValueError as exc:
        raise click.UsageError(str(exc)) from None
    db_path = db or default_db()
    if bases:
        if selection.filtered or out_format != "bundle":
            raise click.UsageError("--base writes an increment of the whole database, as a bundle")
        return export_increment(
            db_path,
            bases,
            out_target,
            created_at=created_at,
            level=level,
            out=out,
            storage_options=storage_options,
        )
    conn = open_store(db_path, readonly=True)
    progress = _progress("export", out)
    if progress.enabled and not selection.filtered:  # a whole export: the total is known
        progress.total_records = sum(
            conn.execute(f"SELECT count(*) FROM {entity}").fetchone()[0] for entity in ENTITY_TYPES
        )
    manifest: Manifest | None = None

    def write(dest: Path | BinaryIO, hashing: _Hashing | None = None) -> dict[str, int]:
        nonlocal manifest
        if out_format == "kindling-json":
            return export_kindling_json(conn, dest, selection, exported_at=created_at)
        on_output = hashing.update if hashing is not None else None
        manifest = write_bundle(conn, dest, opts, progress=progress, on_output=on_output)
        return {entry.entity: entry.records for entry in manifest.entities}

    try:
        if out_target == STDIO or is_url(out_target):
            with open_destination(out_target, storage_options=storage_options) as stream:
                hashing = _Hashing(stream)
                counts = write(hashing)  # type: ignore[arg-type]
            size, digest = hashing.size, hashing.sha256.hexdigest()
        elif out_format == "kindling-json":
            counts = write(Path(out_target))
            size, digest = _file_digest(Path(out_target))
        else:  # hashed as it is written, not read back
            hashing = _Hashing()
            counts = write(Path(out_target), hashing)
            size, digest = hashing.size, hashing.sha256.hexdigest()
    finally:
        progress.close()
        conn.close()
    # With the bundle on standard output, the summary goes to standard error.
    to_stderr = out_target == STDIO
    out.line(
        f"exported {db_path} to {out_target}: "
        + ", ".join(f"{n} {entity}" for entity, n in counts.items()),
        err=to_stderr,
    )
    out.line(f"{out_format}: {size:,} bytes, sha256 {digest}", err=to_stderr)
    out.result(
        {
            "database": str(db_path),
            "bundle": out_target,
            "bytes": size,
            "sha256": digest,
            "format": out_format,
            "counts": counts,
            "manifest": manifest.to_dict() if manifest is not None else None,
        },
        err=to_stderr,
    )


@cli.command("import")
@db_option
@click.option(
    "--conflict",
    type=click.Choice(CONFLICT_STRATEGIES),
    default="skip",
    show_default=True,
    help="When a stored record has the same id and other content: keep it (skip), replace it "
    "(overwrite), or fail the whole import (error).",
)
@click.option("--dry-run", is_flag=True, help="Report what would happen; write nothing.")
@click.option(
    "--drop-dangling",
    is_flag=True,
    help="Kindling JSON input: leave out capsule links, summaries and pins that name records "
    "the file does not hold (Kindling's default export leaves redacted observations out).",
)
@click.argument("in_targets", metavar="IN...", nargs=-1, required=True)
@storage_options
@common_options
def import_(
    db: Path | None,
    conflict: str,
    dry_run: bool,
    drop_dangling: bool,
    in_targets: tuple[str, ...],
    out: Output,
    storage_options: dict[str, Any],
) -> None:
    """Import the bundle IN (a path, - for standard input, or a URL) into the database.

    IN may also be a Kindling JSON export (told by its content), imported the same way.

    An incremental bundle is applied onto a database that holds its base's state. Several INs
    are a chain: a full bundle then its increments in order (restored into an empty or new
    database), or increments each on the one before; every link is checked before anything
    is written. --conflict does not apply to increments.

    The import is all or nothing: on any failure (damaged bundle, conflict under --conflict
    error, integrity problem) the database is left exactly as it was.
    """
    from kindling_bundle.ops.increment import peek_manifest
    from kindling_bundle.ops.restore import import_bundle

    db_path = db or default_db()
    if len(in_targets) > 1:
        return import_chain(
            db_path, in_targets, dry_run=dry_run, out=out, storage_options=storage_options
        )
    (in_target,) = in_targets
    progress = _progress("import", out)

    def on_manifest(manifest: Manifest) -> None:
        progress.total_records = manifest.total_records

    dangling = None
    with open_source(in_target, storage_options=storage_options) as stream:
        kind, stream = peek_format(stream)
        if kind != "kindling-json":
            manifest, stream = peek_manifest(stream, _source_name(in_target))
            if is_increment(manifest):
                return import_increment(
                    db_path,
                    stream,
                    manifest,
                    in_target,
                    dry_run=dry_run,
                    out=out,
                    storage_options=storage_options,
                )
        with _target_database(db_path, dry_run) as conn:
            try:
                if kind == "kindling-json":
                    report, dangling = import_kindling_json(
                        conn,
                        stream,
                        conflict=conflict,  # type: ignore[arg-type]
                        dry_run=dry_run,
                        drop_dangling=drop_dangling,
                        name=_source_name(in_target),
                        progress=progress,
                    )
                else:
                    report = import_bundle(
                        conn,
                        stream,
                        conflict=conflict,  # type: ignore[arg-type]
                        dry_run=dry_run,
                        progress=progress,
                        on_manifest=on_manifest,
                    )
            finally:
                progress.close()
    verb = "would import" if dry_run else "imported"
    out.line(f"{verb} {in_target} into {db_path} (conflict: {conflict})")
    out.line(f"  {'entity':<14}{'inserted':>10}{'overwritten':>13}{'skipped':>9}{'unchanged':>11}")
    for entity, counts in report.counts.items():
        out.line(
            f"  {entity:<14}{counts.inserted:>10,}{counts.overwritten:>13,}"
            f"{counts.skipped:>9,}{counts.unchanged:>11,}"
        )
    if dangling is not None and dangling.total:
        out.line(
            f"  left out {dangling.links} capsule links, {dangling.summaries} summaries and "
            f"{dangling.pins} pins naming records not in {in_target}"
        )
    _print_integrity(out, report.integrity)
    extra = {"dangling": dangling.to_dict()} if dangling is not None else {}
    out.result({"database": str(db_path), **report.to_dict(), **extra})


@contextmanager
def _target_database(db_path: Path, dry_run: bool) -> Iterator[KindlingConnection]:
    """The database to import into. One that does not exist yet is built privately and appears
    only when the import succeeded (`create_store`); a dry run against it uses a throwaway one."""
    from kindling_bundle.db.connection import create_store, open_store

    if db_path.exists():
        conn = open_store(db_path)
        try:
            yield conn
        finally:
            conn.close()
    elif dry_run:
        with tempfile.TemporaryDirectory(prefix="kindling-dry-run-") as folder:
            conn = open_store(Path(folder) / "dry-run.db")
            try:
                yield conn
            finally:
                conn.close()
    else:
        with create_store(db_path) as conn:
            yield conn


@cli.command()
@click.argument("in_targets", metavar="IN...", nargs=-1, required=True)
@storage_options
@common_options
def verify(in_targets: tuple[str, ...], out: Output, storage_options: dict[str, Any]) -> None:
    """Check a bundle (a path, - or a URL) completely, without any database: every byte, hash,
    count and reference.

    IN may also be a Kindling JSON export (told by its content): every record, id and
    reference is checked. Prints each problem found, or that IN is valid; exits 1 if it is not.

    An increment alone is checked as far as it can be (its references may point into its
    base). Several INs are a chain: each bundle is checked, and so is each link.
    """
    if len(in_targets) > 1:
        return verify_bundles(in_targets, out, storage_options)
    (in_target,) = in_targets
    progress = _progress("verify", out)

    def on_manifest(manifest: Manifest) -> None:
        progress.total_records = manifest.total_records

    with open_source(in_target, storage_options=storage_options) as stream:
        kind, stream = peek_format(stream)
        try:
            if kind == "kindling-json":
                report = verify_kindling_json(stream, name=_source_name(in_target))
            else:
                report = verify_bundle(stream, progress=progress, on_manifest=on_manifest)
        finally:
            progress.close()
    what = "Kindling JSON export" if kind == "kindling-json" else "bundle"
    if out.as_json:
        out.result({"bundle": in_target, **report.to_dict(), "source": in_target})
    elif report.ok:
        total = sum(report.records.values())
        out.line(f"{in_target}: valid ({total:,} records)")
        for warning in report.warnings:
            out.line(f"warning: {warning}")
    elif report.problem_count > 1:  # the first one is also the error line below
        for problem in report.problems:
            out.line(problem if problem.startswith(in_target) else f"{in_target}: {problem}")
        hidden = report.problem_count - len(report.problems)
        if hidden:
            out.line(f"... and {hidden} more problems")
    if not report.ok:
        first = report.problems[0] if report.problems else "damaged"
        more = report.problem_count - 1
        raise _Failed(
            f"{in_target}: not a valid {what}: {first.removeprefix(in_target + ': ')}"
            + (f" (and {more} more {'problem' if more == 1 else 'problems'})" if more else "")
        )


@cli.command()
@click.argument("in_target", metavar="IN")
@storage_options
@common_options
def inspect(in_target: str, out: Output, storage_options: dict[str, Any]) -> None:
    """Show a bundle's manifest (from a path, - or a URL), reading only the manifest: from a
    URL, only the first few hundred KiB of the object are fetched."""
    with open_source(
        in_target, storage_options=storage_options, block_size=HEAD_BLOCK_SIZE
    ) as stream:
        manifest = read_manifest(stream)
    selection = manifest.export_filter
    parts = [f"{k}={v}" for k, v in (selection.scope_ids or {}).items()]
    if selection.from_ts is not None:
        parts.append(f"since {iso(selection.from_ts)}")
    if selection.to_ts is not None:
        parts.append(f"until {iso(selection.to_ts)}")
    generation = manifest.source.schema_generation
    out.line(f"bundle:   {in_target}")
    out.line(f"format:   {manifest.format} {manifest.format_version}")
    out.line(f"created:  {iso(manifest.created_at)} ({manifest.created_at})")
    out.line(f"tool:     {manifest.tool.name} {manifest.tool.version}")
    out.line(
        f"source:   {'Kindling schema v' + str(generation) if generation else 'not a database'}"
    )
    out.line(f"filter:   {', '.join(parts) if parts else 'everything'}")
    out.line("")
    out.line(f"  {'entity':<14}{'records':>10}{'bytes':>14}  sha256")
    for entry in manifest.entities:
        out.line(f"  {entry.entity:<14}{entry.records:>10,}{entry.bytes:>14,}  {entry.sha256}")
    out.result({"bundle": in_target, "manifest": manifest.to_dict()})


@cli.command()
@db_option
@click.option(
    "--sample-size",
    type=click.IntRange(min=0),
    default=200,
    show_default=True,
    help="Rows searched for by their own content in the FTS check.",
)
@common_options
def check(db: Path | None, sample_size: int, out: Output) -> None:
    """Run the integrity report on a database (read-only): foreign keys, pin targets, capsule
    order, and full-text indexes in sync. Exits 1 if it finds a problem."""
    from kindling_bundle.db.connection import open_store
    from kindling_bundle.db.integrity import verify_import_integrity

    db_path = db or default_db()
    conn = open_store(db_path, readonly=True)
    try:
        report = verify_import_integrity(conn, sample_size=sample_size)
    finally:
        conn.close()
    out.line(f"{db_path}:")
    _print_integrity(out, report)
    out.result({"database": str(db_path), **report.to_dict()})
    if not report.ok:
        first = report.problems[0]
        raise _Failed(
            f"{db_path}: integrity check failed: {first.kind}: {first.entity} {first.id}: "
            f"{first.detail} ({len(report.problems)} problems in all)"
        )


def _print_integrity(out: Output, report: IntegrityReport) -> None:
    if report.ok:
        out.line(f"integrity: ok ({len(report.warnings)} warnings)")
    else:
        out.line(f"integrity: {len(report.problems)} problems")
    for problem in [*report.problems, *report.warnings]:
        out.line(
            f"  {problem.severity}: {problem.kind}: {problem.entity} {problem.id}: {problem.detail}"
        )


@cli.command()
@click.argument("source")
@click.argument("dest")
@click.option(
    "--drop-dangling",
    is_flag=True,
    help="Leave out capsule links, summaries and pins that name records the JSON does not hold "
    "(Kindling's default export leaves redacted observations out).",
)
@storage_options
@common_options
def convert(
    source: str, dest: str, drop_dangling: bool, out: Output, storage_options: dict[str, Any]
) -> None:
    """Convert a Kindling JSON export to a bundle, or a bundle to a Kindling JSON export.

    What SOURCE is, is told by its content; DEST gets the other format. Either may be `-`
    (standard input or output) or a URL. DEST appears only when complete.
    """
    with open_source(source, storage_options=storage_options) as stream:
        kind, stream = peek_format(stream)
        if kind is None:
            raise BundleError(f"{source}: neither a bundle nor a Kindling JSON export")
        with open_destination(dest, storage_options=storage_options) as target:
            if kind == "kindling-json":
                dangling = DanglingReport()
                manifest = kindling_json_to_bundle(
                    stream,
                    target,
                    drop_dangling=drop_dangling,
                    dangling=dangling,
                    name=_source_name(source),
                )
                counts = {entry.entity: entry.records for entry in manifest.entities}
            else:
                dangling = None
                counts = bundle_to_kindling_json(stream, target)
    to = "bundle" if kind == "kindling-json" else "kindling-json"
    to_stderr = dest == STDIO  # the converted data is on standard output
    out.line(
        f"wrote {dest} ({to}): " + ", ".join(f"{n} {e}" for e, n in counts.items()), err=to_stderr
    )
    if dangling is not None and dangling.total:
        out.line(
            f"left out {dangling.links} capsule links, {dangling.summaries} summaries and "
            f"{dangling.pins} pins naming records not in {source}",
            err=to_stderr,
        )
    out.result(
        {
            "source": source,
            "dest": dest,
            "from": kind,
            "to": to,
            "records": counts,
            "dangling": dangling.to_dict() if dangling is not None else None,
        },
        err=to_stderr,
    )


@cli.command()
@click.argument("a", type=click.Path(exists=True, dir_okay=False))
@click.argument("b", type=click.Path(exists=True, dir_okay=False))
@common_options
def diff(a: str, b: str, out: Output) -> None:
    """Compare two datasets: per entity, records added, removed and changed from A to B, and
    the same (by id, and by content for the same id).

    A and B may each be a bundle, a Kindling JSON export or a Kindling database (read only).
    """
    from kindling_bundle.ops.merge import diff_datasets

    report = diff_datasets(a, b)
    out.line(f"{'entity':<14}{'added':>8}{'removed':>9}{'changed':>9}{'same':>9}")
    for entity, d in report.entities.items():
        out.line(f"{entity:<14}{d.added:>8}{d.removed:>9}{d.changed:>9}{d.same:>9}")
        for kind, ids in d.examples.items():
            if ids:
                more = getattr(d, kind) - len(ids)
                out.line(f"  {kind}: {', '.join(ids)}" + (f" (and {more} more)" if more else ""))
    out.line("identical" if report.identical else "the datasets differ")
    out.result(report.to_dict())


@cli.command()
@click.argument("paths", nargs=-1, required=True, metavar="A B ... OUT")
@click.option(
    "--conflict",
    type=click.Choice(CONFLICT_STRATEGIES),
    default="skip",
    show_default=True,
    help="Same id, different content: skip keeps the first, overwrite the last, error stops.",
)
@click.option(
    "--drop-dangling",
    is_flag=True,
    help="Leave out references that no input can satisfy, instead of failing.",
)
@click.option("--force", is_flag=True, help="Replace OUT if it exists.")
@common_options
def merge(
    paths: tuple[str, ...], conflict: str, drop_dangling: bool, force: bool, out: Output
) -> None:
    """Merge bundles, Kindling JSON exports and Kindling databases into one bundle OUT.

    OUT holds the union; it verifies and imports (every reference resolves). OUT is never
    replaced unless --force is given, so a forgotten OUT cannot overwrite an input.
    """
    from kindling_bundle.ops.merge import merge_datasets

    if len(paths) < 3:
        raise click.UsageError("merge needs at least two inputs and OUT")
    *sources, dest = paths
    for source in sources:
        if not Path(source).is_file():
            raise click.UsageError(f"input {source!r} is not a file")
    if Path(dest).exists() and not force:
        raise click.UsageError(f"{dest} exists: choose another OUT, or give --force to replace it")
    report = merge_datasets(sources, dest, conflict=conflict, drop_dangling=drop_dangling)
    out.line(f"wrote {dest}: " + ", ".join(f"{m.records} {e}" for e, m in report.entities.items()))
    conflicts = {e: m.conflicts for e, m in report.entities.items() if m.conflicts}
    if conflicts:
        settled = "kept the first" if conflict == "skip" else "kept the last"
        listed = ", ".join(f"{n} {e}" for e, n in conflicts.items())
        out.line(f"conflicts ({settled}): {listed}")
    if report.moved_pins:
        out.line(f"moved {report.moved_pins} pins to the summary kept for their capsule")
    if report.dangling.total:
        d = report.dangling
        out.line(
            f"left out {d.links} capsule links, {d.summaries} summaries and {d.pins} pins "
            "naming records no input holds"
        )
    out.result(report.to_dict())


def _source_name(target: str) -> str | None:
    """How messages name an input: as given, except standard input (its stream says <stdin>)."""
    return None if target == STDIO else target


class _Failed(KindlingBundleError):
    """The command did its job and found the input bad (exit 1); details were printed."""


# The archive commands, and the increment side of export, import and verify (issue 21).
from kindling_bundle.cli_archive import (  # noqa: E402 - they use the helpers above
    ARCHIVE_COMMANDS,
    export_increment,
    import_chain,
    import_increment,
    verify_bundles,
)

for _command in ARCHIVE_COMMANDS:
    cli.add_command(_command)


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
