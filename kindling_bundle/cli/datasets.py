"""sample, convert, diff and merge: make, convert, compare and combine datasets."""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Any

import click

from kindling_bundle.cli.keys import recipient_options
from kindling_bundle.cli.options import (
    common_options,
    input_label,
    reading_options,
    scrub_line,
    scrub_options,
    source_name,
    storage_options,
)
from kindling_bundle.cli.output import Output
from kindling_bundle.db.sample import TEXT_PROFILES, generate_sample
from kindling_bundle.errors import BundleError
from kindling_bundle.io.envelope import encrypting
from kindling_bundle.io.read_options import ReadOptions
from kindling_bundle.io.sniff import open_input
from kindling_bundle.io.storage import STDIO, open_destination, open_source
from kindling_bundle.ops.convert import bundle_to_kindling_json, kindling_json_to_bundle
from kindling_bundle.ops.merge import diff_datasets, merge_datasets
from kindling_bundle.ops.references import DanglingReport
from kindling_bundle.records import CONFLICT_STRATEGIES
from kindling_bundle.scrub import Scanner, Scrubber

if TYPE_CHECKING:
    from kindling_bundle.io.age.recipients import Recipient


@click.command()
@click.argument("path", type=click.Path(dir_okay=False, path_type=Path))
@click.option("--observations", "-n", type=click.IntRange(min=1), default=2000, show_default=True)
@click.option("--seed", type=int, default=0, show_default=True, help="Same seed, same content.")
@click.option(
    "--text",
    type=click.Choice(TEXT_PROFILES),
    default="realistic",
    show_default=True,
    help="realistic: source, diffs, tracebacks, command output and prose from Python's standard "
    "library (same seed, same content on the same Python); small-vocabulary: word salad of "
    "~2,400 distinct terms.",
)
@common_options
def sample(path: Path, observations: int, seed: int, text: str, out: Output) -> None:
    """Write a realistic sample memory database to PATH (a new file)."""

    stats = generate_sample(path, observations=observations, seed=seed, text=text)
    counts = {
        "observations": stats.observations,
        "capsules": stats.capsules,
        "summaries": stats.summaries,
        "pins": stats.pins,
        "redacted": stats.redacted,
        "sessions": len(stats.sessions),
    }
    out.line(f"wrote {path}: " + ", ".join(f"{value} {name}" for name, value in counts.items()))
    out.result({"path": str(path), "seed": seed, "text": text, **counts})


@click.command()
@click.argument("source")
@click.argument("dest")
@click.option(
    "--drop-dangling",
    is_flag=True,
    help="Leave out capsule links, summaries and pins that name records the JSON does not hold "
    "(Kindling's default export leaves redacted observations out).",
)
@reading_options
@recipient_options
@scrub_options
@storage_options
@common_options
def convert(
    source: str,
    dest: str,
    drop_dangling: bool,
    scrub: Scanner | None,
    out: Output,
    storage_options: dict[str, Any],
    read_options: ReadOptions,
    recipients: tuple[Recipient, ...],
) -> None:
    """Convert a Kindling JSON export to a bundle, or a bundle to a Kindling JSON export.

    What SOURCE is, is told by its content; DEST gets the other format. Either may be `-`
    (standard input or output) or a URL. DEST appears only when complete. An encrypted SOURCE
    is opened with --identity (no temporary file holds its records in the clear); with
    --recipient or --recipients-file, DEST is encrypted. With --scrub, secrets are redacted on
    the way (see `export --scrub`).
    """
    with open_source(source, storage_options=storage_options) as stream:
        opened = open_input(stream, read_options, label=input_label(source, stream))
        kind, stream = opened.format, opened.stream
        if kind not in ("bundle", "kindling-json"):
            raise BundleError(f"{source}: neither a bundle nor a Kindling JSON export")
        if kind == "kindling-json":
            read_options.signature.refuse_unsignable(source, "a Kindling JSON export")
        with open_destination(dest, storage_options=storage_options) as target:
            scrubbed = None
            if kind == "kindling-json":
                dangling = DanglingReport()
                manifest = kindling_json_to_bundle(
                    stream,
                    target,
                    drop_dangling=drop_dangling,
                    dangling=dangling,
                    name=source_name(source),
                    recipients=recipients,
                    sealed_spools=opened.envelope is not None,
                    scrub=scrub,
                )
                counts = {entry.entity: entry.records for entry in manifest.entities}
                if manifest.scrub is not None:
                    scrubbed = manifest.to_dict()["scrub"]
            else:
                dangling = None
                scrubber = Scrubber(scrub) if scrub is not None else None
                with encrypting(target, recipients) as sink:
                    counts = bundle_to_kindling_json(
                        stream, sink, options=read_options, scrub=scrubber
                    )
                if scrubber is not None:
                    scrubbed = scrubber.manifest()
    to = "bundle" if kind == "kindling-json" else "kindling-json"
    to_stderr = dest == STDIO  # the converted data is on standard output
    out.line(
        f"wrote {dest} ({to}): " + ", ".join(f"{n} {e}" for e, n in counts.items()), err=to_stderr
    )
    scrub_line(out, scrubbed, err=to_stderr)
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
            "scrub": scrubbed,
        },
        err=to_stderr,
    )


@click.command()
@click.argument("a", type=click.Path(exists=True, dir_okay=False))
@click.argument("b", type=click.Path(exists=True, dir_okay=False))
@reading_options
@common_options
def diff(a: str, b: str, out: Output, read_options: ReadOptions) -> None:
    """Compare two datasets: per entity, records added, removed and changed from A to B, and
    the same (by id, and by content for the same id).

    A and B may each be a bundle, a Kindling JSON export or a Kindling database (read only);
    encrypted ones are opened with --identity.
    """

    report = diff_datasets(a, b, options=read_options)
    out.line(f"{'entity':<14}{'added':>8}{'removed':>9}{'changed':>9}{'same':>9}")
    for entity, d in report.entities.items():
        out.line(f"{entity:<14}{d.added:>8}{d.removed:>9}{d.changed:>9}{d.same:>9}")
        for kind, ids in d.examples.items():
            if ids:
                more = getattr(d, kind) - len(ids)
                out.line(f"  {kind}: {', '.join(ids)}" + (f" (and {more} more)" if more else ""))
    out.line("identical" if report.identical else "the datasets differ")
    out.result(report.to_dict())


@click.command()
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
@reading_options
@recipient_options
@scrub_options
@common_options
def merge(
    paths: tuple[str, ...],
    conflict: str,
    drop_dangling: bool,
    force: bool,
    scrub: Scanner | None,
    out: Output,
    read_options: ReadOptions,
    recipients: tuple[Recipient, ...],
) -> None:
    """Merge bundles, Kindling JSON exports and Kindling databases into one bundle OUT.

    OUT holds the union; it verifies and imports (every reference resolves). OUT is never
    replaced unless --force is given, so a forgotten OUT cannot overwrite an input. Encrypted
    inputs are opened with --identity; with --recipient or --recipients-file, OUT is encrypted.
    With --scrub, secrets in OUT are redacted (see `export --scrub`).
    """

    if len(paths) < 3:
        raise click.UsageError("merge needs at least two inputs and OUT")
    *sources, dest = paths
    for source in sources:
        if not Path(source).is_file():
            raise click.UsageError(f"input {source!r} is not a file")
    if Path(dest).exists() and not force:
        raise click.UsageError(f"{dest} exists: choose another OUT, or give --force to replace it")
    report = merge_datasets(
        sources,
        dest,
        conflict=conflict,  # type: ignore[arg-type]
        drop_dangling=drop_dangling,
        options=read_options,
        recipients=recipients,
        scrub=scrub,
    )
    out.line(f"wrote {dest}: " + ", ".join(f"{m.records} {e}" for e, m in report.entities.items()))
    if report.manifest is not None and report.manifest.scrub is not None:
        scrub_line(out, report.manifest.to_dict()["scrub"])
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
