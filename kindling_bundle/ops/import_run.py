"""One import as it runs: what it reads, how, the counts so far and the report it ends with;
shared by the import into a new database (ops.restore_new) and into one in use (ops.restore)."""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import asdict, dataclass
from typing import Any

import msgspec

from kindling_bundle.db.conflicts import ImportEntityResult
from kindling_bundle.db.integrity import IntegrityReport
from kindling_bundle.errors import (
    ImportConflictError,
    IntegrityError,
    MissingReferenceError,
    RecordError,
)
from kindling_bundle.format.manifest import ENTITY_MEMBERS, Manifest, ProgressCallback
from kindling_bundle.format.reader import BundleReader
from kindling_bundle.format.signature import signature_to_dict
from kindling_bundle.io.sshsig.verification import Signer
from kindling_bundle.records import ENTITY_TYPES, ConflictStrategy, Pin, Record

_LISTED_PROBLEMS = 3


@dataclass
class EntityCounts:
    """What happened to one entity's records."""

    inserted: int = 0
    overwritten: int = 0
    skipped: int = 0
    unchanged: int = 0

    @property
    def total(self) -> int:
        return self.inserted + self.overwritten + self.skipped + self.unchanged


@dataclass
class ImportReport:
    """The outcome of an import (or, with `dry_run`, of what an import would do)."""

    source: str
    manifest: Manifest
    conflict: ConflictStrategy
    dry_run: bool
    counts: dict[str, EntityCounts]
    integrity: IntegrityReport
    signer: Signer | None = None
    """Who signed the bundle; None if it is unsigned."""

    def to_dict(self) -> dict[str, Any]:
        """A JSON-ready form, for the CLI's --json."""
        return {
            "source": self.source,
            "conflict": self.conflict,
            "dry_run": self.dry_run,
            "committed": not self.dry_run,
            "counts": {entity: asdict(counts) for entity, counts in self.counts.items()},
            "integrity": self.integrity.to_dict(),
            "manifest": self.manifest.to_dict(),
            "signature": signature_to_dict(self.signer),
        }


@dataclass
class ImportRun:
    """One import: what it reads, how, and what happened so far."""

    reader: BundleReader
    manifest: Manifest
    conflict: ConflictStrategy
    dry_run: bool
    progress: ProgressCallback | None

    def __post_init__(self) -> None:
        self.label = self.reader.label
        self.counts = {entity: EntityCounts() for entity in ENTITY_TYPES}
        self.redirects: dict[str, str] = {}
        self.where = self.label

    def enter(self, entity: str) -> None:
        """The frames that follow are of `entity`: messages name its member."""
        self.where = f"{self.label}: {ENTITY_MEMBERS[entity]}"

    def redirect(self, records: list[Record]) -> list[Record]:
        """The frame's pins on summaries skipped in favour of another go to that one."""
        if not self.redirects:
            return records
        return [_redirected(r, self.redirects) if isinstance(r, Pin) else r for r in records]

    @contextmanager
    def naming(self) -> Iterator[None]:
        """A record error raised inside names the member it is in, once, and keeps its class
        (a caller catches a MissingReferenceError as such)."""
        try:
            yield
        except RecordError as exc:
            if not str(exc).startswith(f"{self.where}: "):
                exc.args = (f"{self.where}: {exc}", *exc.args[1:])
            raise

    def take(self, results: Sequence[ImportEntityResult]) -> None:
        """Count results; an error fails the import. A summary skipped in favour of its
        capsule's stored summary is remembered, so that the bundle's pins on it follow it (and
        none dangles)."""
        for result in results:
            if result.error is not None and result.missing:
                raise MissingReferenceError(
                    f"{self.where}: {result.error}",
                    entity=result.entity,
                    record_id=result.id,
                    missing=result.missing,
                )
            if result.error is not None:
                raise ImportConflictError(
                    f"{self.where}: {result.error}", entity=result.entity, record_id=result.id
                )
            if result.kept_id is not None:
                self.redirects[result.id] = result.kept_id
            entity_counts = self.counts[result.entity]
            assert result.outcome is not None
            setattr(entity_counts, result.outcome, getattr(entity_counts, result.outcome) + 1)

    def report(self, integrity: IntegrityReport) -> ImportReport:
        report = ImportReport(
            self.label,
            self.manifest,
            self.conflict,
            self.dry_run,
            self.counts,
            integrity,
            self.reader.signer,
        )
        if not integrity.ok:
            message = _integrity_message(self.label, integrity)
            raise IntegrityError(message, problems=integrity.problems)
        return report


def _redirected(pin: Pin, redirects: dict[str, str]) -> Pin:
    if pin.target_type == "summary" and pin.target_id in redirects:
        return msgspec.structs.replace(pin, target_id=redirects[pin.target_id])
    return pin


def _integrity_message(label: str, integrity: IntegrityReport) -> str:
    listed = "; ".join(
        f"{p.kind} {p.entity} {p.id}: {p.detail}" for p in integrity.problems[:_LISTED_PROBLEMS]
    )
    more = len(integrity.problems) - _LISTED_PROBLEMS
    suffix = f" (and {more} more)" if more > 0 else ""
    return (
        f"{label}: import rolled back, the database would fail its integrity check: "
        f"{listed}{suffix}"
    )
