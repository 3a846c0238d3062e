"""verify, inspect and check: look at a bundle, a Kindling JSON export or a database."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import click

from kindling_bundle.cli.keys import IDENTITY_HINT, describe_envelope
from kindling_bundle.cli.options import (
    common_options,
    db_option,
    default_db,
    input_label,
    iso,
    progress_for,
    reading_options,
    source_name,
    storage_options,
    workers_option,
)
from kindling_bundle.cli.output import Failed, Output, print_integrity, print_signature
from kindling_bundle.db.connection import open_store
from kindling_bundle.db.integrity import verify_import_integrity
from kindling_bundle.errors import NoIdentityError
from kindling_bundle.format.manifest import Manifest
from kindling_bundle.format.reader import BundleReader
from kindling_bundle.format.signature import signature_to_dict
from kindling_bundle.io.read_options import ReadOptions
from kindling_bundle.io.sniff import open_input
from kindling_bundle.io.storage import HEAD_BLOCK_SIZE, open_source
from kindling_bundle.kindling_json.reader import verify_kindling_json
from kindling_bundle.ops.verify import verify_bundle
from kindling_bundle.parallel import Workers


@click.command()
@click.argument("in_target", metavar="IN")
@workers_option("decode")
@reading_options
@storage_options
@common_options
def verify(
    in_target: str,
    workers: Workers,
    out: Output,
    storage_options: dict[str, Any],
    read_options: ReadOptions,
) -> None:
    """Check a bundle (a path, - or a URL) completely, without any database: every byte, hash,
    count and reference, and who signed it.

    IN may also be a Kindling JSON export (told by its content): every record, id and
    reference is checked. An encrypted IN is opened with --identity; a damaged or cut short
    ciphertext is a problem like any other. Prints each problem found, or that IN is valid;
    exits 1 if it is not.
    """
    progress = progress_for("verify", out)

    def on_manifest(manifest: Manifest) -> None:
        progress.total_records = manifest.total_records

    with open_source(in_target, storage_options=storage_options) as stream:
        opened = open_input(stream, read_options, label=input_label(in_target, stream))
        kind, stream = opened.format, opened.stream
        try:
            if kind == "kindling-json":
                read_options.signature.refuse_unsignable(in_target, "a Kindling JSON export")
                report = verify_kindling_json(stream, name=source_name(in_target))
            else:
                report = verify_bundle(
                    stream,
                    progress=progress,
                    on_manifest=on_manifest,
                    options=read_options,
                    workers=workers,
                )
        finally:
            progress.close()
    if out.as_json:
        out.result({"bundle": in_target, **report.to_dict(), "source": in_target})
    elif report.ok:
        total = sum(report.records.values())
        out.line(f"{in_target}: valid ({total:,} records)")
        if kind != "kindling-json":
            print_signature(out, report.signer)
        for warning in report.warning_messages:
            out.line(f"warning: {warning}")
    elif report.problem_count > 1:  # the first one is also the error line below
        for problem in report.messages:
            out.line(problem if problem.startswith(in_target) else f"{in_target}: {problem}")
        hidden = report.problem_count - len(report.problems)
        if hidden:
            out.line(f"... and {hidden} more problems")
    report.raise_for_problems(in_target)


@click.command()
@click.argument("in_target", metavar="IN")
@reading_options
@storage_options
@common_options
def inspect(
    in_target: str, out: Output, storage_options: dict[str, Any], read_options: ReadOptions
) -> None:
    """Show a bundle's manifest and who signed it (from a path, - or a URL), reading only the
    manifest and the signature: from a URL, only the first few hundred KiB of the object are
    fetched.

    An encrypted bundle is opened with --identity; without one, what its header shows (how many
    recipients, of which key types) is printed, and the exit code is 1."""
    with open_source(
        in_target, storage_options=storage_options, block_size=HEAD_BLOCK_SIZE
    ) as stream:
        try:
            opened = open_input(stream, read_options, label=input_label(in_target, stream))
        except NoIdentityError as exc:
            shown = describe_envelope(exc.recipients, exc.stanza_types)
            out.line(f"bundle:   {in_target}")
            out.line(f"encrypted: age, {shown}")
            out.result(
                {
                    "bundle": in_target,
                    "encrypted": {"recipients": exc.recipients, "stanza_types": exc.stanza_types},
                    "manifest": None,
                }
            )
            raise Failed(f"{in_target}: encrypted (age) {shown}: {IDENTITY_HINT}") from None
        with BundleReader(opened.stream, signature=read_options.signature) as reader:
            manifest = reader.read_manifest()
            signer = reader.signer
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
    envelope = opened.envelope
    if envelope is not None:
        out.line(f"encrypted: age, {describe_envelope(envelope.recipients, envelope.stanza_types)}")
    print_signature(out, signer)
    out.line("")
    out.line(f"  {'entity':<14}{'records':>10}{'bytes':>14}  sha256")
    for entry in manifest.entities:
        out.line(f"  {entry.entity:<14}{entry.records:>10,}{entry.bytes:>14,}  {entry.sha256}")
    encrypted = (
        None
        if envelope is None
        else {"recipients": envelope.recipients, "stanza_types": envelope.stanza_types}
    )
    out.result(
        {
            "bundle": in_target,
            "encrypted": encrypted,
            "manifest": manifest.to_dict(),
            "signature": signature_to_dict(signer),
        }
    )


@click.command()
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

    db_path = db or default_db()
    conn = open_store(db_path, readonly=True)
    try:
        report = verify_import_integrity(conn, sample_size=sample_size)
    finally:
        conn.close()
    out.line(f"{db_path}:")
    print_integrity(out, report)
    out.result({"database": str(db_path), **report.to_dict()})
    if not report.ok:
        first = report.problems[0]
        raise Failed(
            f"{db_path}: integrity check failed: {first.kind}: {first.entity} {first.id}: "
            f"{first.detail} ({len(report.problems)} problems in all)"
        )
