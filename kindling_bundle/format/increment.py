"""Incremental bundles (spec section 16): the manifest of an increment, its tombstones, the rules
its records keep, and the checks that link an increment to its base.

An increment holds the records that are new or changed since its base, and a tombstone for each
record that is gone. It is format version 2: a new member (`tombstones.msgpack`) is a new major
version (section 8), so a 1.x reader refuses an increment by its version instead of importing it
as if it were a whole database. Full bundles are unchanged and keep writing version 1.0.
"""

from __future__ import annotations

import hashlib
import os
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Annotated, Any, cast

import msgspec

from kindling_bundle.errors import BundleError
from kindling_bundle.format.hashset import HashSet
from kindling_bundle.format.manifest import ENTITY_MEMBERS, Manifest, describe_validation
from kindling_bundle.format.stream_rules import Breach, RecordRules
from kindling_bundle.records import (
    ENTITY_TYPES,
    SINGULAR,
    TOMBSTONES,
    Record,
    Tombstone,
    entity_of,
)

INCREMENT_VERSION = "2.0"
SIGNED_INCREMENT_VERSION = "2.1"
"""A signed increment: as 1.1 is to 1.0, a `manifest.sig` member follows the manifest."""
INCREMENT_MAJOR = 2
TOMBSTONES_MEMBER = f"{TOMBSTONES}.msgpack"
INCREMENT_MEMBERS: dict[str, str] = {TOMBSTONES: TOMBSTONES_MEMBER, **ENTITY_MEMBERS}
"""An increment's members after the manifest, in order: tombstones first, so that a one-pass
reader deletes before it writes (a replaced summary's old row must go before the new one, which
has the same capsule, can be inserted)."""

DELETION_ORDER: tuple[str, ...] = ("pins", "summaries", "capsules", "observations")
"""Tombstones are ordered by entity in this order (the reverse of foreign-key order: nothing is
deleted while something deleted later still refers to it), then by id."""

_SHA256 = Annotated[str, msgspec.Meta(pattern="^[0-9a-f]{64}$")]
_COUNT = Annotated[int, msgspec.Meta(ge=0, le=2**63 - 1)]
_EPOCH_MS = Annotated[int, msgspec.Meta(ge=-(2**63), le=2**63 - 1)]
_DEPTH = Annotated[int, msgspec.Meta(ge=1, le=2**31 - 1)]


class StateCounts(msgspec.Struct, frozen=True, kw_only=True):
    """How many records of each entity a database holds in a snapshot."""

    observations: _COUNT
    capsules: _COUNT
    summaries: _COUNT
    pins: _COUNT

    def as_dict(self) -> dict[str, int]:
        return {entity: getattr(self, entity) for entity in ENTITY_TYPES}

    @classmethod
    def of(cls, counts: Mapping[str, int]) -> StateCounts:
        return cls(**{entity: counts.get(entity, 0) for entity in ENTITY_TYPES})


class BaseInfo(msgspec.Struct, frozen=True, kw_only=True, rename="camel"):
    """What an increment applies to: the base bundle (SHA-256 of its file and its createdAt),
    the full bundle its chain starts with, this increment's place in that chain (1: its base is
    the full bundle), and how many records of each entity the base's snapshot holds."""

    sha256: _SHA256
    created_at: _EPOCH_MS
    full_sha256: _SHA256
    depth: _DEPTH
    records: StateCounts


class IncrementManifest(Manifest, frozen=True, kw_only=True, rename="camel"):
    """The manifest of an increment: a 1.0 manifest whose `entities` list the tombstones member
    first, plus its base and the record counts of the snapshot it makes (`state`)."""

    base: BaseInfo
    state: StateCounts

    @property
    def tombstones(self) -> int:
        return self.entry(TOMBSTONES).records

    @property
    def upserts(self) -> int:
        """Records written (new or changed), tombstones aside."""
        return sum(entry.records for entry in self.entities if entry.entity != TOMBSTONES)


@dataclass(frozen=True)
class IncrementHeader:
    """What the writer puts in an increment's manifest beside its members: its base, and the
    record counts of the snapshot it makes."""

    base: BaseInfo
    state: Mapping[str, int]


_increment_decoder = msgspec.json.Decoder(IncrementManifest)


def decode_increment_manifest(data: bytes, where: str) -> IncrementManifest:
    """Decode a 2.x manifest whose common checks (format, version, unique keys) `decode_manifest`
    has made; a BundleError names `where` and what is wrong."""
    try:
        manifest = _increment_decoder.decode(data)
    except msgspec.ValidationError as exc:
        raise BundleError(f"{where}: {describe_validation(exc)}") from None
    expected = list(INCREMENT_MEMBERS.items())
    found = [(entry.entity, entry.member) for entry in manifest.entities]
    if found != expected:
        listed = ", ".join(member for _, member in found) or "none"
        raise BundleError(
            f"{where}: an increment's entities must list {', '.join(INCREMENT_MEMBERS.values())} "
            f"in that order (found: {listed})"
        )
    base = manifest.base
    if (base.depth == 1) != (base.sha256 == base.full_sha256):
        raise BundleError(
            f"{where}: field base: depth {base.depth} does not agree with its base "
            f"{'being' if base.sha256 == base.full_sha256 else 'not being'} the full bundle"
        )
    return manifest


def is_increment(manifest: Manifest) -> bool:
    return isinstance(manifest, IncrementManifest)


def increment_manifest(
    manifest: Manifest, base: BaseInfo, state: Mapping[str, int]
) -> IncrementManifest:
    """The increment's manifest from the one the writer built for its members (signed if that
    one says it is: the minor version tells, in both majors)."""
    fields = {f: getattr(manifest, f) for f in manifest.__struct_fields__}
    signed = manifest.minor_version >= 1
    fields["format_version"] = SIGNED_INCREMENT_VERSION if signed else INCREMENT_VERSION
    return IncrementManifest(**fields, base=base, state=StateCounts.of(state))


def state_of(manifest: Manifest) -> StateCounts:
    """The record counts of the snapshot a bundle makes: a full bundle's own counts."""
    if isinstance(manifest, IncrementManifest):
        return manifest.state
    return StateCounts.of({entry.entity: entry.records for entry in manifest.entities})


def depth_of(manifest: Manifest) -> int:
    """0 for a full bundle, else the increment's place in its chain."""
    return manifest.base.depth if isinstance(manifest, IncrementManifest) else 0


def short(sha256: str) -> str:
    """How messages and listings name a bundle by its SHA-256 (as restic shortens ids)."""
    return sha256[:12]


def iso_time(ms: int) -> str:
    moment = datetime.fromtimestamp(ms / 1000, tz=UTC)
    return moment.isoformat(timespec="milliseconds").replace("+00:00", "Z")


# --- the rules an increment's records keep -------------------------------------------------


def tombstone_key(tombstone: Tombstone) -> tuple[int, bytes]:
    """Where a tombstone sorts in its member: deletion order, then id by UTF-8 bytes."""
    return DELETION_ORDER.index(tombstone.entity), tombstone.id.encode("utf-8", "surrogatepass")


class IncrementRules(RecordRules):
    """The record rules for an increment, whose records may refer to records of its base: ids
    unique within each entity, no capsule listing an observation twice, at most one summary per
    capsule in the increment; tombstones in order, none twice, and no record both deleted and
    written. References are not resolved here (they may point into the base): importing the
    increment onto its base's database checks them, with the database's integrity report."""

    def __init__(self, place: str, *, expected: Mapping[str, int] | None = None):
        super().__init__(place, trusted=lambda entity: False, expected=expected)
        self._deleted = {entity: HashSet() for entity in ENTITY_TYPES}
        self._deleting: set[str] = set()  # entities with a tombstone so far
        self._last: tuple[int, bytes] | None = None

    def check(self, record: Record | Tombstone) -> list[Breach]:
        if isinstance(record, Tombstone):
            return self._check_tombstone(record)
        breaches = super().check(record)
        entity = entity_of(record)
        if entity in self._deleting and hash(record.id) in self._deleted[entity]:
            text = (
                f"{SINGULAR[entity]} {record.id} is both deleted (a tombstone) and written by "
                f"{self.place}"
            )
            breaches.append(Breach(entity, record.id, "deleted-and-written", text))
        return breaches

    def _check_tombstone(self, tombstone: Tombstone) -> list[Breach]:
        key = tombstone_key(tombstone)
        name = f"tombstone for {SINGULAR[tombstone.entity]} {tombstone.id}"
        if self._last is not None and key == self._last:
            text = f"{name} appears more than once"
            return [Breach(TOMBSTONES, tombstone.id, "repeated-id", text)]
        if self._last is not None and key < self._last:
            text = (
                f"{name} is out of order (tombstones go by entity: "
                f"{', '.join(DELETION_ORDER)}, then by id)"
            )
            return [Breach(TOMBSTONES, tombstone.id, "order", text)]
        return []

    def clear_run(self, records: Sequence[Record | Tombstone]) -> bool:
        if not records:
            return True
        if isinstance(records[0], Tombstone):
            return False  # one by one: their order is checked record by record
        entity = entity_of(records[0])
        if entity in self._deleting and not self._deleted[entity].isdisjoint(
            [hash(record.id) for record in records]
        ):
            return False
        return super().clear_run(cast("Sequence[Record]", records))

    def clear_new_ids(self, entity: str, hashes: list[int]) -> bool:
        if entity in self._deleting and not self._deleted[entity].isdisjoint(hashes):
            return False
        return super().clear_new_ids(entity, hashes)

    def add(self, record: Record | Tombstone) -> None:
        if isinstance(record, Tombstone):
            self._last = tombstone_key(record)  # each is compared with the one before
            self._deleted[record.entity].add(hash(record.id))
            self._deleting.add(record.entity)
            return
        super().add(record)

    def add_run(self, records: Sequence[Record | Tombstone]) -> None:
        for record in records:
            self.add(record)


def rules_for(
    manifest: Manifest,
    place: str,
    *,
    trusted: Callable[[str], bool] | None = None,
    expected: Mapping[str, int] | None = None,
) -> RecordRules:
    """The rules a bundle's records keep: a full bundle's (references resolve inside it) or an
    increment's."""
    if isinstance(manifest, IncrementManifest):
        return IncrementRules(place, expected=expected)
    return RecordRules(place, trusted=trusted, expected=expected)


# --- links of a chain ----------------------------------------------------------------------


@dataclass(frozen=True)
class Link:
    """One bundle of a chain as a reader met it: how to name it, the SHA-256 of its file, and
    its manifest."""

    label: str
    sha256: str
    manifest: Manifest

    @property
    def increment(self) -> bool:
        return isinstance(self.manifest, IncrementManifest)

    def describe(self) -> str:
        kind = f"increment {depth_of(self.manifest)}" if self.increment else "full bundle"
        return f"{self.label} ({kind}, {short(self.sha256)}, created {iso_time(self.created_at)})"

    @property
    def created_at(self) -> int:
        return self.manifest.created_at


def check_first_link(link: Link, *, position: int = 1) -> None:
    """A chain starts with a full bundle."""
    if isinstance(link.manifest, IncrementManifest):
        base = link.manifest.base
        raise BundleError(
            f"link {position}, {link.describe()}: is an increment on {short(base.sha256)} "
            f"(created {iso_time(base.created_at)}); a chain starts with its full bundle "
            f"({short(base.full_sha256)}), and the increments follow in order"
        )


def check_link(previous: Link, link: Link, position: int, full: Link) -> None:
    """That `link` (number `position` of the chain, counting from 1) is an increment whose base
    is `previous`; the error names the link and says what is wrong with it."""
    where = f"link {position}, {link.describe()}"
    manifest = link.manifest
    if not isinstance(manifest, IncrementManifest):
        raise BundleError(
            f"{where}: is a full bundle; only the first link of a chain may be one (give the "
            "chain from its full bundle, then each increment in order)"
        )
    base = manifest.base
    if base.sha256 == previous.sha256:
        if base.created_at != previous.created_at or base.records != state_of(previous.manifest):
            raise BundleError(
                f"{where}: names its base {short(base.sha256)} but disagrees with it (created "
                f"{iso_time(base.created_at)}, records {base.records.as_dict()}): damaged"
            )
        return
    wanted = depth_of(previous.manifest) + 1
    after = f"increment {wanted - 1}" if wanted > 1 else "the full bundle"
    if base.full_sha256 != full.sha256:
        reason = (
            f"belongs to another chain (its full bundle is {short(base.full_sha256)}, this "
            f"chain's is {short(full.sha256)}): a foreign link"
        )
    elif base.depth > wanted:
        missing = base.depth - wanted
        reason = (
            f"is increment {base.depth} of the chain but follows {after}: "
            f"{missing} link{'s' if missing > 1 else ''} missing before it (its base is "
            f"{short(base.sha256)}, created {iso_time(base.created_at)})"
        )
    elif base.depth < wanted:
        reason = f"is increment {base.depth} of the chain but comes after {after}: out of order"
    else:
        reason = (
            f"its base is {short(base.sha256)} (created {iso_time(base.created_at)}), not the "
            f"link before it, {short(previous.sha256)}: a foreign link (another increment on "
            "the same full bundle)"
        )
    raise BundleError(f"{where}: {reason}")


def check_chain(links: Sequence[Link]) -> None:
    """A whole chain: a full bundle, then each increment on the one before."""
    if not links:
        raise ValueError("a chain has at least one link")
    check_first_link(links[0])
    for position in range(1, len(links)):
        check_link(links[position - 1], links[position], position + 1, links[0])


def check_applies_to(link: Link, counts: Mapping[str, int], label: str) -> None:
    """Before applying an increment onto a database: it holds as many records of each entity as
    the increment's base says (a cheap sign that it holds the base's snapshot)."""
    manifest = link.manifest
    assert isinstance(manifest, IncrementManifest)
    expected = manifest.base.records.as_dict()
    if dict(counts) != expected:
        differ = ", ".join(
            f"{entity} {counts.get(entity, 0)} (base: {expected[entity]})"
            for entity in ENTITY_TYPES
            if counts.get(entity, 0) != expected[entity]
        )
        raise BundleError(
            f"{link.describe()}: {label} does not hold this increment's base "
            f"{short(manifest.base.sha256)} (created {iso_time(manifest.base.created_at)}): "
            f"it holds {differ}; apply the increment onto the database its base restores"
        )


class HashingReader:
    """A readable stream that computes the SHA-256 of everything read through it, so that a
    bundle's link can be checked as it is read once (a pipe, a download). `at_end(hexdigest)`
    is called once, when the stream first ends: a reader reads its source to the end before an
    import commits, so a check raising there undoes the import instead of following it."""

    def __init__(self, stream: Any, at_end: Callable[[str], None] | None = None):
        self._stream = stream
        self.sha256 = hashlib.sha256()
        self.name = getattr(stream, "name", "<stream>")
        self._at_end = at_end

    def read(self, size: int = -1) -> bytes:
        data: bytes = self._stream.read(size)
        self.sha256.update(data)
        if not data and size:
            self._ended()
        return data

    def readinto(self, buffer: Any) -> int:
        n: int = self._stream.readinto(buffer)
        with memoryview(buffer) as view:
            self.sha256.update(view[:n])
            if not n and len(view):
                self._ended()
        return n

    def _ended(self) -> None:
        at_end, self._at_end = self._at_end, None
        if at_end is not None:
            at_end(self.sha256.hexdigest())

    def readable(self) -> bool:
        return True

    def seekable(self) -> bool:
        return False

    def hexdigest(self) -> str:
        return self.sha256.hexdigest()


def file_sha256(path: str | os.PathLike[str]) -> str:
    """The SHA-256 of a local file (a link given as a path is hashed before anything is
    written, so a wrong link is refused up front)."""
    with open(path, "rb") as handle:
        return hashlib.file_digest(handle, "sha256").hexdigest()
