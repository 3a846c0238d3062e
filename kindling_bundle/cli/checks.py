"""verify, inspect and check: look at a bundle, a Kindling JSON export or a database."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import click

from kindling_bundle.cli.options import (
    common_options,
    db_option,
    default_db,
    iso,
    progress_for,
    signature_options,
    source_name,
    storage_options,
    workers_option,
)
from kindling_bundle.cli.output import Failed, Output, print_integrity, print_signature
from kindling_bundle.db.connection import open_store
from kindling_bundle.db.integrity import verify_import_integrity
from kindling_bundle.format.manifest import Manifest
from kindling_bundle.format.reader import BundleReader
from kindling_bundle.format.signature import SignatureOptions, signature_to_dict
from kindling_bundle.io.sniff import peek_format
from kindling_bundle.io.storage import HEAD_BLOCK_SIZE, open_source
from kindling_bundle.kindling_json.reader import verify_kindling_json
from kindling_bundle.ops.verify import verify_bundle
from kindling_bundle.parallel import Workers


@click.command()
@click.argument("in_targets", metavar="IN...", nargs=-1, required=True)
@workers_option("decode")
@signature_options
@storage_options
@common_options
def verify(
    in_targets: tuple[str, ...],
    workers: Workers,
    out: Output,
    storage_options: dict[str, Any],
    signature: SignatureOptions,
) -> None:
    """Check a bundle (a path, - or a URL) completely, without any database: every byte, hash,
    count and reference, and who signed it.

    IN may also be a Kindling JSON export (told by its content): every record, id and
    reference is checked. Prints each problem found, or that IN is valid; exits 1 if it is not.

    An increment alone is checked as far as it can be (its references may point into its
    base). Several INs are a chain: each bundle is checked, and so is each link.
    """
    if len(in_targets) > 1:
        from kindling_bundle.cli.archive import verify_bundles

        return verify_bundles(in_targets, out, storage_options, signature)
    (in_target,) = in_targets
    progress = progress_for("verify", out)

    def on_manifest(manifest: Manifest) -> None:
        progress.total_records = manifest.total_records

    with open_source(in_target, storage_options=storage_options) as stream:
        kind, stream = peek_format(stream)
        try:
            if kind == "kindling-json":
                signature.refuse_unsignable(in_target, "a Kindling JSON export")
                report = verify_kindling_json(stream, name=source_name(in_target))
            else:
                report = verify_bundle(
                    stream,
                    progress=progress,
                    on_manifest=on_manifest,
                    signature=signature,
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
@signature_options
@storage_options
@common_options
def inspect(
    in_target: str, out: Output, storage_options: dict[str, Any], signature: SignatureOptions
) -> None:
    """Show a bundle's manifest and who signed it (from a path, - or a URL), reading only the
    manifest and the signature: from a URL, only the first few hundred KiB of the object are
    fetched."""
    with (
        open_source(
            in_target, storage_options=storage_options, block_size=HEAD_BLOCK_SIZE
        ) as stream,
        BundleReader(stream, signature=signature) as reader,
    ):
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
    print_signature(out, signer)
    out.line("")
    out.line(f"  {'entity':<14}{'records':>10}{'bytes':>14}  sha256")
    for entry in manifest.entities:
        out.line(f"  {entry.entity:<14}{entry.records:>10,}{entry.bytes:>14,}  {entry.sha256}")
    out.result(
        {
            "bundle": in_target,
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
