"""export and import: between a Kindling database and a bundle (or a Kindling JSON export)."""

from __future__ import annotations

import dataclasses
import hashlib
import tempfile
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, BinaryIO

import click

from kindling_bundle.cli.keys import identity_options, recipient_options
from kindling_bundle.cli.options import (
    EpochMs,
    common_options,
    db_option,
    default_db,
    input_label,
    level_option,
    load_sign_key,
    progress_for,
    reading_options,
    scrub_line,
    scrub_options,
    sign_key_option,
    source_name,
    storage_options,
    workers_option,
)
from kindling_bundle.cli.output import Output, print_counts, print_integrity, print_signature
from kindling_bundle.db.connection import KindlingConnection, create_store, open_store
from kindling_bundle.db.export import ExportStreamOptions
from kindling_bundle.format.manifest import Manifest
from kindling_bundle.io.read_options import ReadOptions
from kindling_bundle.io.storage import STDIO, is_url, open_destination, open_source
from kindling_bundle.ops.write import BundleOptions, write_bundle
from kindling_bundle.parallel import Workers
from kindling_bundle.records import CONFLICT_STRATEGIES, ENTITY_TYPES

if TYPE_CHECKING:
    from kindling_bundle.io.age.recipients import Recipient
    from kindling_bundle.io.sshsig.keys import SigningKey
    from kindling_bundle.scrub import Scanner


class Hashing:
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
        if self.target is not None:
            self.target.flush()


def _file_digest(path: Path) -> tuple[int, str]:
    with path.open("rb") as handle:
        digest = hashlib.file_digest(handle, "sha256")
    return path.stat().st_size, digest.hexdigest()


@click.command()
@db_option
@click.option("--session", help="Only this session id.")
@click.option("--repo", help="Only this repo id.")
@click.option("--agent", help="Only this agent id.")
@click.option("--user", help="Only this user id.")
@click.option("--since", type=EpochMs(), help="From this time (inclusive): epoch ms or ISO-8601.")
@click.option("--until", type=EpochMs(), help="Up to this time (inclusive): epoch ms or ISO-8601.")
@level_option
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
@sign_key_option("the bundle")
@workers_option("encode")
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
@recipient_options
@identity_options
@scrub_options
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
    sign_key: str | None,
    workers: Workers,
    bases: tuple[str, ...],
    out_target: str,
    scrub: Scanner | None,
    out: Output,
    storage_options: dict[str, Any],
    recipients: tuple[Recipient, ...],
    read_options: ReadOptions,
) -> None:
    """Export the database to a bundle at OUT (a path, - for standard output, or a URL such as
    s3://bucket/key, uploaded as it is written and there only once complete).

    With --format kindling-json, OUT is a Kindling JSON export instead (redacted rows included,
    marked), for a Kindling installation that only reads JSON.

    With --recipient or --recipients-file, OUT is encrypted to those keys (an age file; no
    temporary file holds the records in the clear); every command reads it with --identity.

    A filtered export also carries what its selection references (the observations of its
    capsules, the capsules of its summaries, pin targets), so it always imports cleanly.

    With --scrub, every secret `scan` would find is replaced by [REDACTED:<rule-id>] on the way
    out (the database is not changed), and the bundle's manifest says so.

    With --sign-key the bundle carries an SSH signature (namespace kindling-bundle) over its
    manifest, which `verify`, `import` and `inspect` check and `ssh-keygen -Y verify` accepts.

    With --base, OUT is an increment: the records new or changed since PREV and tombstones
    for those gone; `import` applies it onto a database holding PREV's state. An encrypted PREV
    is read with --identity (not needed where the local cache holds PREV's hashes and PREV
    carries its SHA-256 in its name, as an archive names its bundles).
    """

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
    if sign_key is not None and out_format == "kindling-json":
        raise click.UsageError("--sign-key signs bundles: a Kindling JSON export cannot be signed")
    try:
        selection = ExportStreamOptions(scope_ids=scope or None, from_ts=since, to_ts=until)
        opts = BundleOptions(
            filter=selection,
            created_at=created_at,
            level=level,
            workers=workers,
            recipients=recipients,
            scrub=scrub,
        )
    except ValueError as exc:
        raise click.UsageError(str(exc)) from None
    key: SigningKey | None = None
    if sign_key is not None:  # before any work: a wrong passphrase should not cost an export
        key = load_sign_key(sign_key)
        opts = dataclasses.replace(opts, sign_key=key)
    db_path = db or default_db()
    if bases:
        if selection.filtered or out_format != "bundle":
            raise click.UsageError("--base writes an increment of the whole database, as a bundle")
        from kindling_bundle.cli.archive import export_increment

        return export_increment(
            db_path,
            bases,
            out_target,
            opts=opts,
            out=out,
            storage_options=storage_options,
            read_options=read_options,
        )
    conn = open_store(db_path, readonly=True)
    progress = progress_for("export", out)
    if progress.enabled and not selection.filtered:  # a whole export: the total is known
        progress.total_records = sum(
            conn.execute(f"SELECT count(*) FROM {entity}").fetchone()[0] for entity in ENTITY_TYPES
        )
    manifest: Manifest | None = None
    scrubber = None
    if scrub is not None and out_format == "kindling-json":
        from kindling_bundle.scrub import Scrubber

        scrubber = Scrubber(scrub)

    def write(dest: Path | BinaryIO, hashing: Hashing | None = None) -> dict[str, int]:
        nonlocal manifest
        if out_format == "kindling-json":
            from kindling_bundle.ops.convert import export_kindling_json

            return export_kindling_json(
                conn,
                dest,
                selection,
                exported_at=created_at,
                recipients=recipients,
                scrub=scrubber,
            )
        on_output = hashing.update if hashing is not None else None
        manifest = write_bundle(conn, dest, opts, progress=progress, on_output=on_output)
        return {entry.entity: entry.records for entry in manifest.entities}

    try:
        if out_target == STDIO or is_url(out_target):
            with open_destination(out_target, storage_options=storage_options) as stream:
                hashing = Hashing(stream)
                counts = write(hashing)  # type: ignore[arg-type]
            size, digest = hashing.size, hashing.sha256.hexdigest()
        elif out_format == "kindling-json":
            counts = write(Path(out_target))
            size, digest = _file_digest(Path(out_target))
        else:  # hashed as it is written, not read back
            hashing = Hashing()
            counts = write(Path(out_target), hashing)
            size, digest = hashing.size, hashing.sha256.hexdigest()
    finally:
        progress.close()
        conn.close()
    scrubbed = None
    if scrubber is not None:
        scrubbed = scrubber.manifest()
    elif manifest is not None and manifest.scrub is not None:
        scrubbed = manifest.to_dict()["scrub"]
    print_export(
        out,
        Exported(db_path, out_target, counts, size, digest, out_format, manifest=manifest),
        recipients=recipients,
        key=key if out_format == "bundle" else None,
        scrubbed=scrubbed,
    )


@dataclass(frozen=True)
class Exported:
    """What an export wrote, as its summary tells it."""

    database: Path
    target: str
    counts: dict[str, int]
    size: int
    sha256: str
    """Of the file written (the ciphertext, when encrypted)."""
    out_format: str = "bundle"
    kind: str = ""
    """How an increment names itself ("increment 2 on …"); empty for a full export."""
    manifest: Manifest | None = None
    bundle_sha256: str | None = None
    """Of an encrypted increment's plaintext: what the next increment's base names."""


def print_export(
    out: Output,
    done: Exported,
    *,
    recipients: Sequence[Recipient] = (),
    key: SigningKey | None = None,
    scrubbed: dict[str, Any] | None = None,
) -> None:
    """The summary of an export (full or increment): to standard error when the bundle went to
    standard output."""
    err = done.target == STDIO
    kind = f": {done.kind}" if done.kind else ""
    out.line(
        f"exported {done.database} to {done.target}{kind}: "
        + ", ".join(f"{n} {entity}" for entity, n in done.counts.items()),
        err=err,
    )
    plural = "" if len(recipients) == 1 else "s"
    encrypted = f", encrypted (age) to {len(recipients)} recipient{plural}" if recipients else ""
    out.line(f"{done.out_format}: {done.size:,} bytes, sha256 {done.sha256}{encrypted}", err=err)
    scrub_line(out, scrubbed, err=err)
    if key is not None:
        out.line(f"signed with {key.key_type} key {key.fingerprint} ({key.path})", err=err)
    result = {
        "database": str(done.database),
        "bundle": done.target,
        "bytes": done.size,
        "sha256": done.sha256,
        "format": done.out_format,
        "recipients": [str(recipient) for recipient in recipients],
        "counts": done.counts,
        "manifest": done.manifest.to_dict() if done.manifest is not None else None,
        "scrub": scrubbed,
        "signature": signing_key_to_dict(key) if done.out_format == "bundle" else None,
    }
    if done.bundle_sha256 is not None:
        result["bundle_sha256"] = done.bundle_sha256
    out.result(result, err=err)


def signing_key_to_dict(key: SigningKey | None) -> dict[str, Any]:
    """The export's signature in --json, shaped as verify and import report a signer."""
    if key is None:
        return {"status": "unsigned"}
    return {
        "status": "signed",
        "key_type": key.key_type,
        "fingerprint": key.fingerprint,
        "public_key": key.public_key,
        "principals": [],
    }


@click.command("import")
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
@workers_option("index a new database for full-text search")
@click.argument("in_targets", metavar="IN...", nargs=-1, required=True)
@reading_options
@storage_options
@common_options
def import_(
    db: Path | None,
    conflict: str,
    dry_run: bool,
    drop_dangling: bool,
    workers: Workers,
    in_targets: tuple[str, ...],
    out: Output,
    storage_options: dict[str, Any],
    read_options: ReadOptions,
) -> None:
    """Import the bundle IN (a path, - for standard input, or a URL) into the database.

    IN may also be a Kindling JSON export (told by its content), imported the same way, and
    either may be encrypted (opened with --identity).

    The import is all or nothing: on any failure (damaged bundle or ciphertext, conflict under
    --conflict error, integrity problem) the database is left as it was. Into a database that
    exists, it writes in short steps, so Kindling can keep writing meanwhile (and keeps what it
    wrote); if it is killed, `recover` (which every import runs first) undoes the part it wrote.
    A signed bundle's signature is checked (against --allowed-signers) before the database is
    touched.

    An incremental bundle is applied onto a database that holds its base's state. Several INs
    are a chain: a full bundle then its increments in order (restored into an empty or new
    database), or increments each on the one before; every link (and its signature) is checked
    before anything is written. --conflict does not apply to increments.
    """
    # Imported here, not with the module: an export needs none of them (cli/__init__ says why);
    # chains and increments (numpy) and Kindling JSON (scrub's rules) only where they are read.
    from kindling_bundle.format.increment import is_increment
    from kindling_bundle.io.sniff import open_input
    from kindling_bundle.ops.links import peek_manifest
    from kindling_bundle.ops.restore import import_bundle

    db_path = db or default_db()
    if len(in_targets) > 1:
        from kindling_bundle.cli import archive

        return archive.import_chain(
            db_path,
            in_targets,
            dry_run=dry_run,
            out=out,
            storage_options=storage_options,
            read_options=read_options,
        )
    (in_target,) = in_targets
    progress = progress_for("import", out)

    def on_manifest(manifest: Manifest) -> None:
        progress.total_records = manifest.total_records

    dangling = None
    with open_source(in_target, storage_options=storage_options) as stream:
        opened = open_input(stream, read_options, label=input_label(in_target, stream))
        kind, stream = opened.format, opened.stream
        if kind == "kindling-json":
            read_options.signature.refuse_unsignable(in_target, "a Kindling JSON export")
        else:
            manifest, stream = peek_manifest(stream, source_name(in_target))
            if is_increment(manifest):
                from kindling_bundle.cli import archive

                return archive.import_increment(
                    db_path,
                    stream,
                    manifest,
                    in_target,
                    dry_run=dry_run,
                    out=out,
                    storage_options=storage_options,
                    read_options=read_options,
                )
        with target_database(db_path, dry_run) as conn:
            try:
                if kind == "kindling-json":
                    from kindling_bundle.ops.convert import import_kindling_json

                    report, dangling = import_kindling_json(
                        conn,
                        stream,
                        conflict=conflict,  # type: ignore[arg-type]
                        dry_run=dry_run,
                        drop_dangling=drop_dangling,
                        name=source_name(in_target),
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
                        options=read_options,
                        workers=workers,
                    )
            finally:
                progress.close()
    verb = "would import" if dry_run else "imported"
    out.line(f"{verb} {in_target} into {db_path} (conflict: {conflict})")
    if kind != "kindling-json":
        print_signature(out, report.signer, indent="  ")
    print_counts(
        out,
        ("inserted", "overwritten", "skipped", "unchanged"),
        {
            entity: (c.inserted, c.overwritten, c.skipped, c.unchanged)
            for entity, c in report.counts.items()
        },
    )
    if dangling is not None and dangling.total:
        out.line(
            f"  left out {dangling.links} capsule links, {dangling.summaries} summaries and "
            f"{dangling.pins} pins naming records not in {in_target}"
        )
    print_integrity(out, report.integrity)
    extra = {"dangling": dangling.to_dict()} if dangling is not None else {}
    out.result({"database": str(db_path), **report.to_dict(), **extra})


@contextmanager
def target_database(db_path: Path, dry_run: bool) -> Iterator[KindlingConnection]:
    """The database to import into. One that does not exist yet is built privately and appears
    only when the import succeeded (`create_store`); a dry run against it uses a throwaway one."""

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
