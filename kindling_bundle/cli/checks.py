"""verify, inspect, check and scan: look at a bundle, a Kindling JSON export or a database."""

from __future__ import annotations

import json
from collections.abc import Iterable
from pathlib import Path
from typing import TYPE_CHECKING, Any, BinaryIO

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
    scanner_options,
    source_name,
    storage_options,
    workers_option,
)
from kindling_bundle.cli.output import Failed, Output, print_integrity, print_signature
from kindling_bundle.errors import BundleError, NoIdentityError
from kindling_bundle.format.manifest import Manifest
from kindling_bundle.format.reader import BundleReader
from kindling_bundle.format.signature import signature_to_dict
from kindling_bundle.io.progress import Progress
from kindling_bundle.io.read_options import ReadOptions
from kindling_bundle.io.sniff import open_input
from kindling_bundle.io.storage import HEAD_BLOCK_SIZE, STDIO, is_url, open_source
from kindling_bundle.kindling_json.reader import open_kindling_json, verify_kindling_json
from kindling_bundle.ops.read import open_bundle
from kindling_bundle.ops.verify import verify_bundle
from kindling_bundle.parallel import Workers
from kindling_bundle.records import ENTITY_TYPES

if TYPE_CHECKING:
    from kindling_bundle.ops.scan import ScanReport
    from kindling_bundle.scrub import RecordFinding, Scanner


@click.command()
@click.argument("in_targets", metavar="IN...", nargs=-1, required=True)
@workers_option("decode")
@reading_options
@storage_options
@common_options
def verify(
    in_targets: tuple[str, ...],
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

    An increment alone is checked as far as it can be (its references may point into its
    base). Several INs are a chain: each bundle is checked, and so is each link.
    """
    if len(in_targets) > 1:
        from kindling_bundle.cli.archive import verify_bundles

        return verify_bundles(in_targets, out, storage_options, read_options)
    (in_target,) = in_targets
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
    if manifest.scrub is not None:
        scrub = manifest.scrub
        files = ", ".join(f"{f.name} ({f.sha256[:12]})" for f in scrub.rule_files)
        out.line(
            f"scrubbed: {scrub.findings} secrets in {scrub.records} records redacted by "
            f"{scrub.rule_set.name} {scrub.rule_set.version}; rule files {files}"
        )
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
    order, full-text indexes in sync, and no unfinished import. Exits 1 if it finds a problem."""
    # Imported here, not with the module: verify needs none of them (cli/__init__ says why).
    from kindling_bundle.db.connection import open_store
    from kindling_bundle.db.export import snapshot
    from kindling_bundle.db.integrity import IntegrityReport, verify_import_integrity
    from kindling_bundle.db.journal import unfinished_import_problem

    db_path = db or default_db()
    conn = open_store(db_path, readonly=True)
    try:
        with snapshot(conn):  # one state, while Kindling may be writing
            report = verify_import_integrity(conn, sample_size=sample_size)
            unfinished = unfinished_import_problem(conn, str(db_path))
    finally:
        conn.close()
    if unfinished is not None:
        report = IntegrityReport([unfinished, *report.problems], report.warnings, report.sampled)
    out.line(f"{db_path}:")
    print_integrity(out, report)
    out.result({"database": str(db_path), **report.to_dict()})
    if not report.ok:
        first = report.problems[0]
        raise Failed(
            f"{db_path}: integrity check failed: {first.kind}: {first.entity} {first.id}: "
            f"{first.detail} ({len(report.problems)} problems in all)"
        )


class _OutputClosed(Exception):
    """Standard output went away (`scan ... | head`): not a failure to read the source, which
    is what an OSError inside `open_source` would be taken for."""


class _Findings:
    """Prints each finding as it comes (a table row, or an element of the JSON document's
    `findings` list), so that nothing is kept however many there are."""

    _COLUMNS = (("entity", 13), ("id", 36), ("field", 20), ("rule", 24))

    def __init__(self, out: Output, progress: Progress):
        self.out = out
        self.progress = progress
        self.count = 0

    def start(self, source: str, kind: str) -> None:
        if self.out.as_json:
            head = json.dumps({"source": source, "format": kind}, indent=2, ensure_ascii=False)
            try:
                click.echo(head[:-2] + ',\n  "findings": [', nl=False)
            except BrokenPipeError:
                raise _OutputClosed from None

    def __call__(self, finding: RecordFinding) -> None:
        try:
            self._print(finding)
        except BrokenPipeError:
            raise _OutputClosed from None

    def _print(self, finding: RecordFinding) -> None:
        self.progress.close()  # erased first, so that a row never lands on the progress line
        values = (finding.entity, finding.id, finding.field, finding.rule_id)
        if self.out.as_json:
            row = dict(zip(("entity", "id", "field", "rule"), values, strict=True))
            text = json.dumps({**row, "preview": finding.preview}, ensure_ascii=False)
            click.echo(("\n    " if not self.count else ",\n    ") + text, nl=False)
        else:
            if not self.count:
                self.out.line(self._row(name for name, _ in self._COLUMNS) + "preview")
            self.out.line(self._row(values) + finding.preview)
        self.count += 1

    def end(self, rest: dict[str, Any]) -> None:
        if self.out.as_json:
            tail = json.dumps(rest, indent=2, ensure_ascii=False)
            click.echo(("\n  ]" if self.count else "]") + ",\n  " + tail[4:])

    def _row(self, values: Iterable[str]) -> str:
        return "".join(
            f"{value:<{width}} " for value, (_, width) in zip(values, self._COLUMNS, strict=True)
        )


@click.command()
@click.argument("source", metavar="[SOURCE]", required=False)
@scanner_options
@workers_option("scan a database")
@reading_options
@storage_options
@common_options
def scan(
    source: str | None,
    scanner: Scanner,
    workers: Workers,
    out: Output,
    storage_options: dict[str, Any],
    read_options: ReadOptions,
) -> None:
    """Look for secrets (tokens, keys, passwords, private keys, credentials in URLs) in a
    database, a bundle (a path, - or a URL) or a Kindling JSON export, told by its content;
    without SOURCE, in Kindling's database ($KINDLING_DB, else ~/.kindling/kindling.db).

    Lists each finding: entity, record id, field, rule and a masked preview, never the secret
    itself. Exits 0 when nothing is found and 1 when anything is, so it can guard a script
    before a bundle is shared; `export --scrub` writes one with every finding redacted. An
    encrypted bundle or export is opened with --identity.
    """
    source = source or str(default_db())
    progress = progress_for("scan", out)
    printer = _Findings(out, progress)
    try:
        with open_source(source, storage_options=storage_options) as stream:
            opened = open_input(stream, read_options, label=input_label(source, stream))
            kind, stream = opened.format, opened.stream
            if kind is None:
                raise BundleError(
                    f"{source}: not a bundle, a Kindling JSON export or a Kindling database "
                    "(by its first bytes)"
                )
            printer.start(source, kind)
            try:
                local = source != STDIO and not is_url(source) and opened.envelope is None
                report = _scan(
                    source, kind, stream, local, scanner, printer, progress, workers, read_options
                )
            finally:
                progress.close()
    except _OutputClosed:
        raise BrokenPipeError from None  # run() ends quietly, as for any closed pipe
    summary = report.tally
    scanned = sum(report.records.values())
    printer.end(report.to_dict())
    if report.clean:
        out.line(f"{source}: no secrets found ({scanned:,} records scanned)")
        return
    rules = ", ".join(f"{rule} {n}" for rule, n in sorted(summary.by_rule.items()))
    out.line(f"{summary.findings} secrets in {summary.records} of {scanned:,} records: {rules}")
    raise Failed(
        f"{source}: {summary.findings} possible secrets in {summary.records} records "
        "(export --scrub redacts them)"
    )


def _scan(
    source: str,
    kind: str,
    stream: BinaryIO,
    local: bool,
    scanner: Scanner,
    on_finding: _Findings,
    progress: Progress,
    workers: Workers,
    read_options: ReadOptions,
) -> ScanReport:
    """The scan of what `stream` holds (`local`: it is the file `source` itself, not standard
    input, a download or the plaintext of an encrypted file)."""
    from kindling_bundle.db.connection import open_store
    from kindling_bundle.ops.scan import scan_database, scan_records

    name = source_name(source)
    if kind == "database":
        if not local:
            raise BundleError(
                f"{source}: a Kindling database can only be scanned as a local, unencrypted file"
            )
        conn = open_store(Path(source), readonly=True)
        try:
            progress.total_records = sum(
                conn.execute(f"SELECT count(*) FROM {entity}").fetchone()[0]
                for entity in ENTITY_TYPES
            )
            return scan_database(
                conn, scanner, on_finding=on_finding, progress=progress, workers=workers
            )
        finally:
            conn.close()
    if kind == "bundle":
        with open_bundle(stream, name=name, options=read_options) as bundle:
            assert bundle.manifest is not None  # open_bundle has read it
            progress.total_records = bundle.manifest.total_records
            records = bundle.records()
            return scan_records(records, scanner, on_finding=on_finding, progress=progress)
    with open_kindling_json(stream, name=name, options=read_options) as export:
        records = export.records()
        return scan_records(records, scanner, on_finding=on_finding, progress=progress)
