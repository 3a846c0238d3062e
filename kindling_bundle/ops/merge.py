"""Compare and merge datasets: any mix of bundles, Kindling JSON exports and Kindling databases.

A dataset source is a path to any of them (`ops.datasets`), read as one foreign-key-ordered
record stream.

Content identity: two records with the same id are the same when their canonical MessagePack
encodings (the bundle's own encoding of the record Struct: field order fixed, JSON values in
their stored key order) have the same BLAKE2b-128 digest. So "same" means what a database would
store byte for byte, whatever file the record came from.

diff: one pass over each side. Memory: one entry per record of A and per record added in B
(an id string, a 16-byte digest and a dict slot; measured in bench/RESULTS.md).

merge: two passes over every input. The first indexes every record (id -> digest, and where
its winning occurrence is) and applies the `conflict` strategy to records with the same id
and different content: `skip` keeps the first occurrence (inputs in the order given, records in
file order), `overwrite` the last, `error` stops and names the id and both inputs. Identical
records are kept once. The second pass streams the winning occurrences into the bundle writer,
entity by entity, merging the inputs by Kindling's export order ((ts, id) for observations,
(opened_at, id) for capsules, (created_at, id) for summaries and pins), so the result is in
export order when the inputs are. An input that reads differently the second time (a database
written to in between) is detected (record counts and the digests of kept records) and the
merge fails, naming it. Memory: one packed 24-byte entry, its id and a dict slot per
distinct record (measured in bench/RESULTS.md).

A capsule has at most one summary: two summaries (different ids) of the same capsule in the
union are a conflict on that capsule, settled by the same strategy; pins on the summary left out
are moved to the one kept (as an overwriting import does), so no pin is lost or left dangling.

Record rules: the winners are checked as they are written, by the checker verify uses
(`format.stream_rules`, through `ops.references.ReferenceGuard`), so references are closed
over the union, not each input: an input that is not closed (a Kindling JSON export without its
redacted observations) is fine when another input holds what it names. A reference that no input
can satisfy is an error, or with `drop_dangling` is left out and counted; a capsule that lists an
observation twice is an error. The result always verifies and imports.
"""

from __future__ import annotations

import hashlib
import heapq
import os
from collections.abc import Callable, Iterable, Iterator, Sequence
from contextlib import ExitStack
from dataclasses import asdict, dataclass, field
from typing import TYPE_CHECKING, Any

import msgspec

from kindling_bundle.db.conflicts import check_strategy
from kindling_bundle.errors import BundleError, ImportConflictError, RecordError
from kindling_bundle.format.manifest import Manifest
from kindling_bundle.io.read_options import ReadOptions
from kindling_bundle.ops.datasets import DatasetSource, entity_streams, open_dataset
from kindling_bundle.ops.references import DanglingReport, ReferenceGuard
from kindling_bundle.ops.write import BundleDestination, BundleOptions, write_bundle_from_records
from kindling_bundle.records import (
    ENTITY_TYPES,
    SINGULAR,
    ConflictStrategy,
    Pin,
    Record,
    Summary,
    entity_of,
)
from kindling_bundle.scrub import Scanner

if TYPE_CHECKING:
    from kindling_bundle.io.age.recipients import Recipient

_LISTED_IDS = 5

# Kindling's export order per entity; the id makes it total.
_ORDER: dict[str, Callable[[Any], tuple[int, str]]] = {
    "observations": lambda r: (r.ts, r.id),
    "capsules": lambda r: (r.opened_at, r.id),
    "summaries": lambda r: (r.created_at, r.id),
    "pins": lambda r: (r.created_at, r.id),
}


class _Digester:
    """The content digest of a record: BLAKE2b-128 of its canonical MessagePack encoding."""

    def __init__(self) -> None:
        self._encoder = msgspec.msgpack.Encoder()
        self._buffer = bytearray()

    def __call__(self, record: Record) -> bytes:
        self._encoder.encode_into(record, self._buffer)
        return hashlib.blake2b(self._buffer, digest_size=16).digest()


# -- diff ------------------------------------------------------------------------------------


@dataclass
class EntityDiff:
    """How one entity differs from A to B, by id and, for the same id, by content."""

    added: int = 0
    removed: int = 0
    changed: int = 0
    same: int = 0
    examples: dict[str, list[str]] = field(
        default_factory=lambda: {"added": [], "removed": [], "changed": []}
    )
    """A few ids of each kind of difference, for people."""

    def _count(self, kind: str, record_id: str) -> None:
        setattr(self, kind, getattr(self, kind) + 1)
        if kind != "same" and len(self.examples[kind]) < _LISTED_IDS:
            self.examples[kind].append(record_id)


@dataclass
class DiffReport:
    """Per entity, what B adds, removes and changes relative to A, and what is the same."""

    a: str
    b: str
    entities: dict[str, EntityDiff]

    @property
    def identical(self) -> bool:
        return all(d.added == d.removed == d.changed == 0 for d in self.entities.values())

    def to_dict(self) -> dict[str, Any]:
        """A JSON-ready form, for the CLI's --json."""
        return {
            "a": self.a,
            "b": self.b,
            "identical": self.identical,
            "entities": {entity: asdict(diff) for entity, diff in self.entities.items()},
        }


_MATCHED = b"m"  # an id of A also found in B
_ADDED = b"a"  # an id found only in B


def diff_records(
    a: Iterable[Record], b: Iterable[Record], *, a_name: str = "A", b_name: str = "B"
) -> DiffReport:
    """Compare two record streams (see the module docstring for identity and memory).

    An id that occurs twice within one side makes the comparison meaningless: RecordError."""
    digest = _Digester()
    index: dict[str, dict[str, bytes]] = {entity: {} for entity in ENTITY_TYPES}
    for record in a:
        entity = entity_of(record)
        if record.id in index[entity]:
            raise _duplicate(a_name, entity, record.id)
        index[entity][record.id] = digest(record)
    entities = {entity: EntityDiff() for entity in ENTITY_TYPES}
    for record in b:
        entity = entity_of(record)
        seen = index[entity]
        stored = seen.get(record.id)
        if stored is None:
            entities[entity]._count("added", record.id)
            seen[record.id] = _ADDED
        elif stored is _MATCHED or stored is _ADDED:
            raise _duplicate(b_name, entity, record.id)
        else:
            entities[entity]._count("same" if stored == digest(record) else "changed", record.id)
            seen[record.id] = _MATCHED
    for entity, seen in index.items():
        for record_id, value in seen.items():
            if value is not _MATCHED and value is not _ADDED:
                entities[entity]._count("removed", record_id)
    return DiffReport(a_name, b_name, entities)


def diff_datasets(
    a: DatasetSource,
    b: DatasetSource,
    *,
    spool_dir: str | None = None,
    options: ReadOptions | None = None,
) -> DiffReport:
    """Compare two dataset sources of any kinds (bundle, Kindling JSON, database); encrypted
    ones are opened with `options.identities`, and a bundle's signature is checked against
    `options.signature` (see `open_dataset`)."""
    with (
        open_dataset(a, spool_dir=spool_dir, options=options) as left,
        open_dataset(b, spool_dir=spool_dir, options=options) as right,
    ):
        return diff_records(left.records, right.records, a_name=left.name, b_name=right.name)


def _duplicate(name: str, entity: str, record_id: str) -> RecordError:
    return RecordError(
        f"{name}: {SINGULAR[entity]} {record_id} appears more than once",
        entity=entity,
        record_id=record_id,
    )


# -- merge -----------------------------------------------------------------------------------


@dataclass
class EntityMerge:
    """What the merge did with one entity."""

    records: int = 0
    """Records in the merged bundle."""
    duplicates: int = 0
    """Occurrences of an id with the same content as the one kept (left out, no conflict)."""
    conflicts: int = 0
    """Occurrences of an id with other content, settled by the strategy."""
    conflict_ids: list[str] = field(default_factory=list)
    """A few of the conflicting ids, for people."""

    def count_conflict(self, record_id: str) -> None:
        self.conflicts += 1
        if len(self.conflict_ids) < _LISTED_IDS:
            self.conflict_ids.append(record_id)


@dataclass
class MergeReport:
    """The outcome of a merge: per entity counts, what was dropped, and the new manifest."""

    inputs: list[str]
    conflict: ConflictStrategy
    entities: dict[str, EntityMerge]
    dangling: DanglingReport
    moved_pins: int = 0
    """Pins moved from a summary left out to the summary kept for the same capsule."""
    manifest: Manifest | None = None

    def to_dict(self) -> dict[str, Any]:
        """A JSON-ready form, for the CLI's --json."""
        return {
            "inputs": self.inputs,
            "conflict": self.conflict,
            "entities": {entity: asdict(merge) for entity, merge in self.entities.items()},
            "dangling": self.dangling.to_dict(),
            "moved_pins": self.moved_pins,
            "manifest": self.manifest.to_dict() if self.manifest else None,
        }


def _entry(digest: bytes, source: int, ordinal: int) -> bytes:
    """An index entry, packed to keep memory low: the content digest (16 bytes), then where
    the kept occurrence is: input number (2 bytes) and position in its entity (6 bytes)."""
    return digest + (source << 48 | ordinal).to_bytes(8, "big")


def _place(entry: bytes) -> tuple[int, int]:
    """(input number, position) of an index entry."""
    where = int.from_bytes(entry[16:], "big")
    return where >> 48, where & 0xFFFF_FFFF_FFFF


class _Merger:
    def __init__(
        self,
        sources: Sequence[DatasetSource],
        conflict: ConflictStrategy,
        drop_dangling: bool,
        spool_dir: str | None,
        options: ReadOptions | None,
    ):
        self.sources = list(sources)
        self.options = options
        self.encrypted = False  # an input was: the output's spools are sealed
        self.names = [os.fspath(src) for src in self.sources]
        self.conflict = conflict
        self.spool_dir = spool_dir
        self.index: dict[str, dict[str, bytes]] = {entity: {} for entity in ENTITY_TYPES}
        self.capsule_of: dict[str, str] = {}  # summary id -> capsule id, of the kept summary
        self.counts: list[dict[str, int]] = []  # records per entity of each input, in pass 1
        self.moved: dict[str, str] = {}  # summary id left out -> summary id kept
        self.report = MergeReport(
            self.names,
            conflict,
            {entity: EntityMerge() for entity in ENTITY_TYPES},
            DanglingReport(),
        )
        self.guard = ReferenceGuard(
            drop=drop_dangling, name="merge", report=self.report.dangling, place="any input"
        )

    # pass 1: which occurrence of each id wins
    def build_index(self) -> None:
        digest = _Digester()
        for source, src in enumerate(self.sources):
            with open_dataset(src, spool_dir=self.spool_dir, options=self.options) as dataset:
                self.encrypted = self.encrypted or dataset.encrypted
                ordinals = dict.fromkeys(ENTITY_TYPES, 0)
                for record in dataset.records:
                    entity = entity_of(record)
                    ordinal = ordinals[entity]
                    ordinals[entity] += 1
                    kept = self._offer(entity, record.id, _entry(digest(record), source, ordinal))
                    if kept and type(record) is Summary:
                        self.capsule_of[record.id] = record.capsule_id
                self.counts.append(ordinals)
        self._one_summary_per_capsule()

    def _offer(self, entity: str, record_id: str, incoming: bytes) -> bool:
        """Apply the strategy to one occurrence; True when it is now the one kept."""
        index = self.index[entity]
        kept = index.get(record_id)
        if kept is None:
            index[record_id] = incoming
            return True
        stats = self.report.entities[entity]
        if kept[:16] == incoming[:16]:
            stats.duplicates += 1
            return False
        stats.count_conflict(record_id)
        if self.conflict == "error":
            raise ImportConflictError(
                f"{SINGULAR[entity]} {record_id} differs between "
                f"{self.names[_place(kept)[0]]} and {self.names[_place(incoming)[0]]} "
                "(--conflict error)",
                entity=entity,
                record_id=record_id,
            )
        if self.conflict == "overwrite":
            index[record_id] = incoming
            return True
        return False

    def _one_summary_per_capsule(self) -> None:
        holder: dict[str, str] = {}
        summaries = self.index["summaries"]
        for summary_id, entry in list(summaries.items()):
            capsule_id = self.capsule_of[summary_id]
            other_id = holder.get(capsule_id)
            if other_id is None:
                holder[capsule_id] = summary_id
                continue
            other = summaries[other_id]
            stats = self.report.entities["summaries"]
            stats.count_conflict(summary_id)
            if self.conflict == "error":
                raise ImportConflictError(
                    f"capsule {capsule_id} has two summaries: {other_id} "
                    f"({self.names[_place(other)[0]]}) and {summary_id} "
                    f"({self.names[_place(entry)[0]]}) (--conflict error)",
                    entity="summaries",
                    record_id=summary_id,
                )
            first, last = sorted([(_place(other), other_id), (_place(entry), summary_id)])
            keep, lose = (first, last) if self.conflict == "skip" else (last, first)
            holder[capsule_id] = keep[1]
            del summaries[lose[1]]
            self.moved[lose[1]] = keep[1]
        for lost, kept in list(self.moved.items()):  # a kept one may itself have lost later
            while kept in self.moved:
                kept = self.moved[kept]
            self.moved[lost] = kept

    # pass 2: stream the winners, entity by entity, in export order
    def write(self, dest: BundleDestination, opts: BundleOptions) -> Manifest:
        with ExitStack() as stack:
            datasets = [
                stack.enter_context(
                    open_dataset(src, spool_dir=self.spool_dir, options=self.options)
                )
                for src in self.sources
            ]
            splitters = [entity_streams(dataset.records) for dataset in datasets]
            streams = {entity: self._winners(entity, splitters) for entity in ENTITY_TYPES}
            return write_bundle_from_records(dest, streams, opts)

    def _winners(
        self, entity: str, splitters: list[Iterator[tuple[str, Iterator[Record]]]]
    ) -> Iterator[Record]:
        inputs = [
            _keyed(entity, source, next(splitter)[1]) for source, splitter in enumerate(splitters)
        ]
        index = self.index[entity]
        stats = self.report.entities[entity]
        digest = _Digester()
        seen = [0] * len(inputs)
        record: Record | None  # None: left out by the guard
        for (_, source, ordinal), record in heapq.merge(*inputs):
            seen[source] += 1
            winner_id = record.id
            winner = index.get(winner_id)
            if winner is None or _place(winner) != (source, ordinal):
                continue
            if digest(record) != winner[:16]:
                raise self._changed(source)
            if type(record) is Pin and record.target_type == "summary":
                kept = self.moved.get(record.target_id)
                if kept is not None:
                    record = msgspec.structs.replace(record, target_id=kept)
                    self.report.moved_pins += 1
            self.guard.name = self.names[source]
            record = self.guard.check(record)
            if record is None:  # a summary of a capsule nobody has, or a dangling pin
                continue
            stats.records += 1
            yield record
        for source, count in enumerate(seen):
            if count != self.counts[source][entity]:
                raise self._changed(source)

    def _changed(self, source: int) -> BundleError:
        """An input read differently the second time (a database written to meanwhile)."""
        return BundleError(
            f"{self.names[source]}: changed while it was being merged; merge it again"
        )


def _keyed(
    entity: str, source: int, stream: Iterator[Record]
) -> Iterator[tuple[tuple[tuple[int, str], int, int], Record]]:
    """Records of one input with their merge key: export order, then input, then position."""
    key = _ORDER[entity]
    for ordinal, record in enumerate(stream):
        yield (key(record), source, ordinal), record


def merge_datasets(
    sources: Sequence[DatasetSource],
    dest: BundleDestination,
    *,
    conflict: ConflictStrategy = "skip",
    drop_dangling: bool = False,
    created_at: int | None = None,
    level: int = 3,
    spool_dir: str | None = None,
    options: ReadOptions | None = None,
    recipients: Sequence[Recipient] = (),
    scrub: Scanner | None = None,
) -> MergeReport:
    """Merge bundles, Kindling JSON exports and Kindling databases into one bundle at `dest`.

    See the module docstring for the strategies, closure, order and memory. Raises
    ImportConflictError under `error`, RecordError for a dangling reference without
    `drop_dangling`, a SignatureError for an input `options.signature` refuses (see
    `open_dataset`); then nothing is left at a path destination. The merged bundle is unsigned.
    Encrypted inputs are opened with `options.identities` (the output's spools are then
    sealed); with `recipients` the output is encrypted to them. With `scrub`, secrets in the
    merged records are redacted (BundleOptions.scrub); which record wins is decided on the
    records as the inputs hold them.
    """
    check_strategy(conflict)
    if not sources:
        raise ValueError("nothing to merge: give at least one source")
    merger = _Merger(sources, conflict, drop_dangling, spool_dir, options)
    merger.build_index()
    opts = BundleOptions(
        created_at=created_at,
        level=level,
        recipients=recipients,
        sealed_spools=merger.encrypted,
        scrub=scrub,
    )
    merger.report.manifest = merger.write(dest, opts)
    return merger.report
