"""Conversions between Kindling JSON exports, bundles and databases."""

from __future__ import annotations

import dataclasses
import itertools
import tempfile
from collections.abc import Iterable, Iterator, Mapping, Sequence
from contextlib import ExitStack, contextmanager
from pathlib import Path
from typing import TYPE_CHECKING, BinaryIO

from kindling_bundle.db.connection import KindlingConnection
from kindling_bundle.db.export import ENTITY_EXPORTS, ExportStreamOptions, snapshot
from kindling_bundle.errors import BundleError
from kindling_bundle.format.manifest import Manifest, ProgressCallback
from kindling_bundle.format.reader import BundleSource
from kindling_bundle.io.envelope import encrypting
from kindling_bundle.io.read_options import ReadOptions
from kindling_bundle.io.storage import atomic_file
from kindling_bundle.kindling_json.reader import open_kindling_json, source_name
from kindling_bundle.kindling_json.writer import write_kindling_json
from kindling_bundle.ops.datasets import entity_streams
from kindling_bundle.ops.import_run import ImportReport
from kindling_bundle.ops.read import open_bundle
from kindling_bundle.ops.references import DanglingReport, close_references
from kindling_bundle.ops.restore import import_bundle
from kindling_bundle.ops.write import (
    BundleDestination,
    BundleOptions,
    resolve_created_at,
    write_bundle_from_records,
)
from kindling_bundle.records import ConflictStrategy, Record
from kindling_bundle.scrub import Scanner, Scrubber

if TYPE_CHECKING:
    from kindling_bundle.io.age.recipients import Recipient


def export_kindling_json(
    conn: KindlingConnection,
    dest: str | Path | BinaryIO,
    opts: ExportStreamOptions | None = None,
    *,
    exported_at: int | None = None,
    recipients: Sequence[Recipient] = (),
    scrub: Scrubber | None = None,
) -> dict[str, int]:
    """Export a database as a Kindling JSON export (from one read snapshot), so its content
    can go to a Kindling installation that only reads JSON. Redacted rows are included and
    marked. A filtered export brings the records its selection references (as a bundle export
    does), so the file is referentially closed and imports. `exported_at` defaults as a bundle's
    creation time does ($SOURCE_DATE_EPOCH, else now). With `recipients`, the file is an age
    file whose plaintext is the export (`age -d` gives it back). With `scrub`, secrets are
    redacted as records are written (counted in `scrub.tally`; the JSON format has nowhere to
    say so). Returns the count per entity."""
    opts = opts or ExportStreamOptions()
    if opts.filtered and not opts.include_references:
        opts = dataclasses.replace(opts, include_references=True)
    exported_at = resolve_created_at(exported_at)
    with snapshot(conn), _encrypting(dest, recipients) as out:
        streams = {entity: export(conn, opts) for entity, export in ENTITY_EXPORTS.items()}
        try:
            return write_kindling_json(
                out, _scrubbed(streams, scrub), exported_at=exported_at, scope=opts.scope_ids
            )
        finally:  # finalize unfinished streams while the connection is open, not at GC
            for stream in streams.values():
                stream.close()


@contextmanager
def _encrypting(
    dest: str | Path | BinaryIO, recipients: Sequence[Recipient]
) -> Iterator[str | Path | BinaryIO]:
    """`dest`, or with recipients a stream that encrypts into it (a path: into a file that
    appears only when complete). The last chunk is written only on a clean exit."""
    if not recipients:
        yield dest
        return
    with ExitStack() as stack:
        raw = stack.enter_context(atomic_file(dest)) if isinstance(dest, str | Path) else dest
        yield stack.enter_context(encrypting(raw, recipients))


def kindling_json_to_bundle(
    src: str | Path | BinaryIO,
    dest: BundleDestination,
    *,
    drop_dangling: bool = False,
    created_at: int | None = None,
    level: int = 3,
    dangling: DanglingReport | None = None,
    name: str | None = None,
    progress: ProgressCallback | None = None,
    recipients: Sequence[Recipient] = (),
    sealed_spools: bool = False,
    options: ReadOptions | None = None,
    scrub: Scanner | None = None,
) -> Manifest:
    """Write a Kindling JSON export as a bundle, in one pass over the JSON.

    The bundle must import, so references are closed (`close_references`): a dangling one is
    an error, or with `drop_dangling` is left out and counted in `dangling`. The bundle's
    creation time is `created_at`, else the export's own `exportedAt` (so converting the same
    file twice gives the same bundle), else as for any bundle. The export's scope is recorded
    as the bundle's filter when it uses the four scope keys a filter can name. `recipients`
    and `sealed_spools` are as in BundleOptions (set `sealed_spools` when `src` is the
    plaintext of an encrypted file; an encrypted `src`, opened here with `options.identities`,
    seals them anyway). With `scrub`, secrets are redacted (BundleOptions.scrub).
    """
    with open_kindling_json(src, name=name, options=options) as reader:
        records: Iterator[Record] = iter(reader.records())
        first = next(records, None)  # parses the header fields that precede the lists
        if first is not None:
            records = itertools.chain([first], records)
        info = reader.info
        if created_at is None and info.exported_at is not None:
            try:
                created_at = resolve_created_at(info.exported_at)
            except ValueError as exc:
                raise BundleError(
                    f"{reader.name}: exportedAt cannot date a bundle ({exc})"
                ) from None
        try:
            export_filter = ExportStreamOptions(scope_ids=info.scope)
        except ValueError:  # a scope key no bundle filter can name: record no filter
            export_filter = ExportStreamOptions()
        closed = close_references(records, drop=drop_dangling, name=reader.name, report=dangling)
        return write_bundle_from_records(
            dest,
            dict(entity_streams(closed)),
            BundleOptions(
                filter=export_filter,
                created_at=created_at,
                level=level,
                recipients=recipients,
                sealed_spools=sealed_spools or reader.encrypted,
                scrub=scrub,
            ),
            progress=progress,
        )


def bundle_to_kindling_json(
    src: BundleSource,
    dest: str | Path | BinaryIO,
    *,
    options: ReadOptions | None = None,
    scrub: Scrubber | None = None,
) -> dict[str, int]:
    """Write a bundle's content as a Kindling JSON export, with the bundle's creation time as
    `exportedAt` and its scope filter as `scope`. The bundle is checked as it is read (its
    signature against `options.signature`, hashes, counts) and against the record rules, so the
    export imports; on a damaged bundle a path destination is left untouched. The JSON carries
    no signature. An encrypted bundle is opened with `options.identities`. With `scrub`, secrets
    are redacted as records are written (counted in `scrub.tally`)."""
    with open_bundle(src, options=options) as reader:
        manifest = reader.manifest
        assert manifest is not None  # open_bundle has read it
        records = close_references(reader.records(), drop=False, name=reader.label)
        if scrub is not None:
            records = scrub.records(records)
        return write_kindling_json(
            dest,
            dict(entity_streams(records)),
            exported_at=manifest.created_at,
            scope=manifest.export_filter.scope_ids,
        )


def _scrubbed(
    streams: Mapping[str, Iterable[Record]], scrub: Scrubber | None
) -> Mapping[str, Iterable[Record]]:
    if scrub is None:
        return streams
    return {entity: scrub.records(stream) for entity, stream in streams.items()}


def import_kindling_json(
    conn: KindlingConnection,
    src: str | Path | BinaryIO,
    *,
    conflict: ConflictStrategy = "skip",
    dry_run: bool = False,
    drop_dangling: bool = False,
    name: str | None = None,
    spool_dir: str | None = None,
    progress: ProgressCallback | None = None,
    options: ReadOptions | None = None,
) -> tuple[ImportReport, DanglingReport]:
    """Import a Kindling JSON export with exactly a bundle import's semantics, by converting it
    to a bundle in a temporary file (in `spool_dir`, else TMPDIR) and importing that: one
    transaction, the same conflict strategies, the integrity check, all or nothing. The JSON is
    fully read and checked before the database is touched. An encrypted export is opened with
    `options.identities`.

    The temporary bundle is encrypted to a key that exists only in this process's memory, and
    its spools are sealed, so no file ever holds the records in the clear (the JSON may have
    been decrypted from an encrypted export)."""
    dangling = DanglingReport()
    from kindling_bundle.io.age.identities import X25519Identity  # loads `cryptography`

    key = X25519Identity.generate()
    with tempfile.TemporaryDirectory(prefix="kindling-json-", dir=spool_dir) as folder:
        bundle = Path(folder) / "converted.kbundle"
        kindling_json_to_bundle(
            src,
            bundle,
            drop_dangling=drop_dangling,
            dangling=dangling,
            name=name,
            level=1,
            recipients=(key.recipient(),),
            options=options,
        )
        report = import_bundle(
            conn,
            bundle,
            conflict=conflict,
            dry_run=dry_run,
            progress=progress,
            name=source_name(src, name),
            options=ReadOptions(identities=(key,)),
        )
    return report, dangling
