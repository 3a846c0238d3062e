"""The archive commands (`backup`, `snapshots`, `restore`, `forget`) and the increment side of
`export --base`, `import` and `verify` with several bundles (issue 21).

`transfer` and `checks` hand over to the functions below when a bundle is an increment or there
are several; the helpers shared with every command come from `output`, `options` and
`transfer`.
"""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Any, BinaryIO

import click

from kindling_bundle.cli.keys import identity_options, recipient_options
from kindling_bundle.cli.options import (
    EpochMs,
    common_options,
    db_option,
    default_db,
    iso,
    level_option,
    load_sign_key,
    progress_for,
    reading_options,
    sign_key_option,
    storage_options,
)
from kindling_bundle.cli.output import (
    Failed,
    Output,
    print_counts,
    print_integrity,
    print_signature,
)
from kindling_bundle.cli.transfer import (
    Exported,
    Hashing,
    print_export,
    signing_key_to_dict,
    target_database,
)
from kindling_bundle.errors import StoreError
from kindling_bundle.format.increment import IncrementManifest, Link, file_sha256, short
from kindling_bundle.format.manifest import Manifest
from kindling_bundle.io.read_options import ReadOptions
from kindling_bundle.io.storage import STDIO, is_url, open_destination
from kindling_bundle.ops.apply import ChainReport
from kindling_bundle.ops.archive import DEFAULT_FULL_EVERY
from kindling_bundle.ops.retention import Policy
from kindling_bundle.ops.write import BundleOptions
from kindling_bundle.records import ENTITY_TYPES

if TYPE_CHECKING:
    from kindling_bundle.io.age.recipients import Recipient

# --- export --base ----------------------------------------------------------------------------


def export_increment(
    db_path: Path,
    bases: tuple[str, ...],
    out_target: str,
    *,
    opts: BundleOptions,
    out: Output,
    storage_options: dict[str, Any],
    read_options: ReadOptions,
) -> None:
    """`export --base PREV ... OUT`: write the increment of the database on PREV to OUT
    (signed and encrypted as `opts` says; an encrypted PREV read with `read_options`)."""
    from kindling_bundle.db.connection import open_store
    from kindling_bundle.ops.archive import base_chain
    from kindling_bundle.ops.increment import export_increment as write

    chain = base_chain(bases, storage_options, read_options)
    conn = open_store(db_path, readonly=True)
    progress = progress_for("export", out)
    try:
        if out_target == STDIO or is_url(out_target):
            with open_destination(out_target, storage_options=storage_options) as stream:
                hashing: Any = Hashing(stream)
                manifest, bundle_sha256 = write(conn, hashing, chain, opts, progress=progress)
            size, digest = hashing.size, hashing.sha256.hexdigest()
        else:
            manifest, bundle_sha256 = write(conn, Path(out_target), chain, opts, progress=progress)
            size, digest = Path(out_target).stat().st_size, file_sha256(out_target)
    finally:
        progress.close()
        conn.close()
    base = manifest.base
    print_export(
        out,
        Exported(
            db_path,
            out_target,
            {entry.entity: entry.records for entry in manifest.entities},
            size,
            digest,
            kind=f"increment {base.depth} on {short(base.sha256)}",
            manifest=manifest,
            bundle_sha256=bundle_sha256 if opts.recipients else None,
        ),
        recipients=opts.recipients,
        key=opts.sign_key,
    )


# --- import of increments and chains --------------------------------------------------------


def import_increment(
    db_path: Path,
    stream: BinaryIO,
    manifest: Manifest,
    target: str,
    *,
    dry_run: bool,
    out: Output,
    storage_options: dict[str, Any],
    read_options: ReadOptions,
) -> None:
    """`import IN` where IN is an increment: apply it onto the database (an encrypted one
    opened, and its signature checked, as `read_options` say)."""
    from kindling_bundle.ops.apply import apply_increments
    from kindling_bundle.ops.links import bundle_ref, stream_ref

    if target == STDIO:
        ref = stream_ref(stream, "<stdin>", read_options)
        prepared = [Link("<stdin>", "", manifest)]
    else:
        ref = bundle_ref(target, storage_options, options=read_options)
        prepared = None
    with target_database(db_path, dry_run) as conn:
        if prepared is None:
            report = apply_increments(conn, [ref], dry_run=dry_run)
        else:
            report = apply_increments(conn, [ref], dry_run=dry_run, prepared=prepared)
    _print_chain(out, report, db_path, dry_run)


def import_chain(
    db_path: Path,
    targets: tuple[str, ...],
    *,
    dry_run: bool,
    out: Output,
    storage_options: dict[str, Any],
    read_options: ReadOptions,
) -> None:
    """`import IN1 IN2 ...`: a chain. From a full bundle, restore it into an empty database;
    from an increment, apply the increments onto a database that holds the first one's base.
    Every link is opened, and its signature checked, as `read_options` say."""
    from kindling_bundle.ops.apply import apply_increments
    from kindling_bundle.ops.chain_restore import restore_chain
    from kindling_bundle.ops.links import bundle_ref, manifest_of, prepare_chain

    refs = [bundle_ref(target, storage_options, options=read_options) for target in targets]
    from_full = not isinstance(manifest_of(refs[0]), IncrementManifest)
    refs, links = prepare_chain(refs, full=from_full)
    with target_database(db_path, dry_run) as conn:
        if from_full:
            report = restore_chain(conn, refs, dry_run=dry_run, prepared=links)
        else:
            report = apply_increments(conn, refs, dry_run=dry_run, prepared=links)
    _print_chain(out, report, db_path, dry_run)


def _print_chain(out: Output, report: ChainReport, db_path: Path, dry_run: bool) -> None:
    verb = "would apply" if dry_run else "applied"
    for position, link in enumerate(report.links, 1):
        out.line(f"{verb} link {position}: {_describe(link)}")
    out.line(f"to {db_path}:")
    rows = {}
    for entity, counts in report.counts.items():
        inserted = counts.inserted
        if report.full is not None:
            inserted += report.full.counts[entity].inserted
        rows[entity] = (inserted, counts.overwritten, counts.deleted)
    print_counts(out, ("inserted", "overwritten", "deleted"), rows)
    print_integrity(out, report.integrity)
    out.result(report.to_dict())


def _describe(link: Link) -> str:
    manifest = link.manifest
    kind = (
        f"increment {manifest.base.depth} on {short(manifest.base.sha256)}"
        if isinstance(manifest, IncrementManifest)
        else "full bundle"
    )
    return f"{link.label} ({kind}, sha256 {short(link.sha256)}, created {iso(manifest.created_at)})"


# --- verify of several bundles ----------------------------------------------------------------


def verify_bundles(
    targets: tuple[str, ...],
    out: Output,
    storage_options: dict[str, Any],
    options: ReadOptions | None = None,
) -> None:
    """`verify IN1 IN2 ...`: each bundle completely (opened, and its signature checked, as
    `options` say), and the links of the chain they form."""
    from kindling_bundle.ops.links import bundle_ref, verify_chain

    refs = [bundle_ref(target, storage_options, options=options) for target in targets]
    result = verify_chain(refs)
    for report in result.reports:
        total = sum(report.records.values())
        if report.ok:
            out.line(f"{report.source}: valid ({total:,} records)")
            print_signature(out, report.signer)
        for message in report.messages:
            out.line(
                message if message.startswith(report.source) else f"{report.source}: {message}"
            )
    for problem in result.link_problems:
        out.line(str(problem))
    if result.ok:
        out.line(f"chain of {len(targets)}: links valid")
    out.result(result.to_dict())
    if not result.ok:
        problems = [*(p for r in result.reports for p in r.problems), *result.link_problems]
        raise Failed(f"not a valid chain: {problems[0]} ({len(problems)} problems in all)")


# --- the archive commands ---------------------------------------------------------------------


@click.command()
@db_option
@click.argument("url")
@click.option(
    "--full-every",
    type=click.IntRange(min=0),
    default=DEFAULT_FULL_EVERY,
    show_default=True,
    help="Write a full bundle once the latest chain has this many increments (0: always).",
)
@level_option
@click.option(
    "--created-at",
    type=EpochMs(),
    help="The snapshot's time [default: $SOURCE_DATE_EPOCH, else now]; after the latest's.",
)
@sign_key_option("the snapshot")
@recipient_options
@identity_options
@storage_options
@common_options
def backup(
    db: Path | None,
    url: str,
    full_every: int,
    level: int,
    created_at: int | None,
    sign_key: str | None,
    out: Output,
    storage_options: dict[str, Any],
    recipients: tuple[Recipient, ...],
    read_options: ReadOptions,
) -> None:
    """Add the database's current state to the archive URL (a folder, or a URL prefix such as
    s3://bucket/kindling/): an increment on the latest snapshot, or a full bundle when the
    archive is empty or the latest chain has --full-every increments. The bundle appears only
    once complete: an interrupted backup leaves the archive as it was.

    With --recipient or --recipients-file the snapshot is encrypted, as `export` encrypts (no
    temporary file holds records in the clear). An increment needs the latest snapshot's
    record hashes: from the local cache, else read from the archive, opening an encrypted
    chain with --identity; without one, the backup starts a new chain (a full bundle)."""
    from kindling_bundle.db.connection import open_store
    from kindling_bundle.ops.archive import Archive
    from kindling_bundle.ops.archive import backup as run_backup

    key = load_sign_key(sign_key) if sign_key is not None else None  # before any work
    db_path = db or default_db()
    archive = Archive(url, storage_options, read_options)
    conn = open_store(db_path, readonly=True)
    progress = progress_for("backup", out)
    try:
        report = run_backup(
            conn,
            archive,
            full_every=full_every,
            level=level,
            created_at=created_at,
            progress=progress,
            sign_key=key,
            recipients=recipients,
        )
    finally:
        progress.close()
        conn.close()
    snap, manifest = report.snapshot, report.manifest
    written = {e.entity: e.records for e in manifest.entities}
    out.line(f"backed up {db_path} to {url}: {snap.name}")
    out.line(f"  {report.reason}")
    out.line(
        f"  {snap.kind}: {snap.size:,} bytes; "
        + ", ".join(f"{n:,} {entity}" for entity, n in written.items())
    )
    if recipients:
        plural = "" if len(recipients) == 1 else "s"
        out.line(f"  encrypted (age) to {len(recipients)} recipient{plural}")
    if key is not None:
        out.line(f"  signed with {key.key_type} key {key.fingerprint} ({key.path})")
    out.result(
        {
            **report.to_dict(),
            "recipients": [str(recipient) for recipient in recipients],
            "written": written,
            "manifest": manifest.to_dict(),
            "signature": signing_key_to_dict(key),
        }
    )


@click.command()
@click.argument("url")
@identity_options
@storage_options
@common_options
def snapshots(
    url: str, out: Output, storage_options: dict[str, Any], read_options: ReadOptions
) -> None:
    """List the snapshots of the archive URL, oldest first: time, full or increment, base,
    the record counts of the database each restores, and size. Encrypted snapshots are read
    with --identity."""
    from kindling_bundle.ops.archive import Archive, list_snapshots

    infos = list_snapshots(Archive(url, storage_options, read_options))
    out.line(
        f"{'ID':<13}{'time':<25}{'kind':<10}{'base':<13}"
        + "".join(f"{entity:>13}" for entity in ENTITY_TYPES)
        + f"{'bytes':>14}"
    )
    for info in infos:
        snap = info.snapshot
        kind = f"incr {info.depth}" if snap.increment else "full"
        counts = "".join(f"{info.records.get(entity, 0):>13,}" for entity in ENTITY_TYPES)
        out.line(
            f"{snap.id:<13}{iso(snap.created_at):<25}{kind:<10}{info.base or '-':<13}"
            f"{counts}{snap.size:>14,}"
        )
        if info.problem:
            out.line(f"  cannot be restored: {info.problem}")
    out.line(f"{len(infos)} snapshots")
    out.result({"archive": url, "snapshots": [info.to_dict() for info in infos]})


@click.command()
@click.argument("url")
@click.argument("snapshot", default="latest")
@click.option(
    "--db",
    "db",
    type=click.Path(dir_okay=False, path_type=Path),
    required=True,
    help="The database to create (it must not exist).",
)
@reading_options
@storage_options
@common_options
def restore(
    url: str,
    snapshot: str,
    db: Path,
    out: Output,
    storage_options: dict[str, Any],
    read_options: ReadOptions,
) -> None:
    """Restore SNAPSHOT (latest, its name, its time or an id from `snapshots`) of the archive
    URL into a new database: the database as it was at that backup, row for row, integrity
    checked. Every link of its chain (and its signature, against --allowed-signers) is checked
    first; the database appears only if all went well. Encrypted snapshots are opened with
    --identity."""
    from kindling_bundle.db.connection import create_store
    from kindling_bundle.ops.archive import Archive
    from kindling_bundle.ops.archive import restore as run_restore

    if db.exists():
        raise StoreError(f"{db}: already exists; restore makes a new database")
    archive = Archive(url, storage_options, read_options)
    progress = progress_for("restore", out)
    try:
        with create_store(db) as conn:
            snap, report = run_restore(archive, snapshot, conn, progress=progress)
    finally:
        progress.close()
    out.line(f"restored {snap.name} ({snap.kind}) into {db}")
    _print_chain(out, report, db, False)


@click.command()
@click.argument("url")
@click.option("--keep-last", type=click.IntRange(min=0), default=0, help="The newest N.")
@click.option("--keep-daily", type=click.IntRange(min=0), default=0, help="The newest of N days.")
@click.option("--keep-weekly", type=click.IntRange(min=0), default=0, help="… of N ISO weeks.")
@click.option("--keep-monthly", type=click.IntRange(min=0), default=0, help="… of N months.")
@click.option("--dry-run", is_flag=True, help="Show what would be removed; remove nothing.")
@identity_options
@storage_options
@common_options
def forget(
    url: str,
    keep_last: int,
    keep_daily: int,
    keep_weekly: int,
    keep_monthly: int,
    dry_run: bool,
    out: Output,
    storage_options: dict[str, Any],
    read_options: ReadOptions,
) -> None:
    """Remove the snapshots of the archive URL that the policy does not keep, as restic's
    forget does (each rule keeps the newest snapshot of each of its last N periods, in UTC;
    the rules combine), but never a bundle that a kept snapshot's chain needs (an encrypted
    archive's chains are read with --identity)."""
    from kindling_bundle.ops.archive import Archive
    from kindling_bundle.ops.forget import forget as run_forget

    policy = Policy(last=keep_last, daily=keep_daily, weekly=keep_weekly, monthly=keep_monthly)
    if policy.empty:
        raise click.UsageError(
            "no policy given: --keep-last, --keep-daily, --keep-weekly or --keep-monthly"
        )
    archive = Archive(url, storage_options, read_options)
    report = run_forget(archive, policy, dry_run=dry_run)
    for snap, reasons in report.kept:
        out.line(f"keep    {snap.id}  {iso(snap.created_at)}  {snap.kind:<9}  {', '.join(reasons)}")
    verb = "would remove" if dry_run else "removed"
    for snap in report.removed:
        out.line(f"{verb:<7} {snap.id}  {iso(snap.created_at)}  {snap.kind}")
    out.line(f"kept {len(report.kept)}, {verb} {len(report.removed)}")
    out.result(report.to_dict())


ARCHIVE_COMMANDS = (backup, snapshots, restore, forget)
