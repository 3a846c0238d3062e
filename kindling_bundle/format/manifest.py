"""The bundle format v1 as code: member names, limits, and the manifest (spec/bundle-format.md).

The manifest is the contract a reader checks before it trusts a byte of the entity members, so
decoding it validates everything a reader relies on (format name, major version, the four members
in foreign-key order with their sizes, counts and SHA-256) and names the field at fault.
Unknown manifest fields are ignored: a newer minor version may add some.
"""

from __future__ import annotations

import json
import re
from collections.abc import Callable
from typing import Annotated, Any

import msgspec

from kindling_bundle.errors import BundleError, UnsupportedVersionError
from kindling_bundle.records import ENTITY_TYPES

FORMAT_NAME = "kindling-bundle"
FORMAT_VERSION = "1.0"
SIGNED_FORMAT_VERSION = "1.1"
"""What a signed bundle's manifest says: a 1.1 bundle carries SIGNATURE_MEMBER."""
FORMAT_MAJOR = 1
INCREMENT_MAJOR = 2
"""Incremental bundles (format.increment): full bundles stay version 1.0."""
BUNDLE_EXTENSION = ".kbundle"

MANIFEST_MEMBER = "manifest.json"
SIGNATURE_MEMBER = "manifest.sig"
"""Format 1.1: the SSH signature over the manifest's bytes, the member right after it."""
ENTITY_MEMBERS: dict[str, str] = {entity: f"{entity}.msgpack" for entity in ENTITY_TYPES}

MAX_MANIFEST_BYTES = 1 << 20
"""A manifest is a few hundred bytes; a bigger first member is not a bundle we wrote."""

FRAME_HEADER_BYTES = 4
MAX_FRAME_BYTES = 64 << 20
"""The largest frame payload a reader accepts (and so the largest single record)."""

FRAME_RECORDS = 1024
"""Records per frame a writer puts in each frame (the last frame of a member may hold fewer)."""

MAX_FRAME_VALUES = 1 << 21
"""The most MessagePack values (containers, keys and elements all count) a frame may hold.
Decoding makes a Python object of each, many times the bytes it took (an empty map is one
byte), so this bounds a frame's decoded size where MAX_FRAME_BYTES alone would allow gigabytes.
Only frames longer than this many bytes can exceed it, so only those are counted."""

MAX_NESTING_DEPTH = 100
"""How deep maps and arrays may nest in an observation's provenance (the provenance map itself
is level 1): deeper values cannot be decoded and stored back within Python's recursion limit."""

ProgressCallback = Callable[[int, int], None]
"""`progress(records_done, bytes_done)`: called after each frame (about every 1024 records).

`bytes_done` counts uncompressed entity member bytes (the manifest's `bytes`), so for verify and
import the totals are `Manifest.total_records` and `Manifest.total_bytes`, available from the
`on_manifest` hook before the first record. Cumulative over all four entities."""

_SHA256 = Annotated[str, msgspec.Meta(pattern="^[0-9a-f]{64}$")]
_COUNT = Annotated[int, msgspec.Meta(ge=0, le=2**63 - 1)]
_EPOCH_MS = Annotated[int, msgspec.Meta(ge=-(2**63), le=2**63 - 1)]
_VERSION = re.compile(r"^(0|[1-9][0-9]{0,8})\.(0|[1-9][0-9]{0,8})$")


class ToolInfo(msgspec.Struct, frozen=True, kw_only=True):
    """The program that wrote the bundle."""

    name: str
    version: str


class SourceInfo(msgspec.Struct, frozen=True, kw_only=True, rename="camel"):
    """Where the records came from: the Kindling schema generation (4 or 5) of the source
    database, or None when they did not come from a database (a converted or merged bundle)."""

    schema_generation: int | None


class FilterInfo(msgspec.Struct, frozen=True, kw_only=True, rename="camel"):
    """The export filter the bundle was written with (all None/False: everything)."""

    scope_ids: dict[str, str] | None = None
    from_ts: _EPOCH_MS | None = None
    to_ts: _EPOCH_MS | None = None
    include_references: bool = False


class EntityEntry(msgspec.Struct, frozen=True, kw_only=True):
    """One entity member: its name, how many records, and the size and SHA-256 of its bytes."""

    entity: str
    member: str
    records: _COUNT
    bytes: _COUNT
    sha256: _SHA256


class RuleSetInfo(msgspec.Struct, frozen=True, kw_only=True):
    """The rule set a bundle was scrubbed with: the title and version of its first rule file."""

    name: str
    version: str


class RuleFileInfo(msgspec.Struct, frozen=True, kw_only=True):
    """One rule file a bundle was scrubbed with: its base name (never a local path), title,
    version, the SHA-256 of its bytes and how many rules of it applied."""

    name: str
    title: str
    version: str
    sha256: _SHA256
    rules: _COUNT


class ScrubInfo(msgspec.Struct, frozen=True, kw_only=True, rename="camel"):
    """That the records' free text was scrubbed of secrets before the bundle was written, with
    which rules, and how many findings by rule: counts only, never secret material."""

    rule_set: RuleSetInfo
    rule_files: list[RuleFileInfo]
    records: _COUNT
    """Records in which at least one secret was replaced."""
    findings: _COUNT
    by_rule: dict[str, _COUNT]


class Manifest(msgspec.Struct, frozen=True, kw_only=True, rename="camel", omit_defaults=True):
    """The first member of every bundle (field order here is the order on the wire). `scrub`
    is optional in any 1.x bundle (a reader that does not know it ignores it, so it changes no
    version); it is left out, not null, when the bundle was not scrubbed, so that such a
    bundle stays byte for byte what it was before the field existed."""

    format: str
    format_version: str
    created_at: _EPOCH_MS
    tool: ToolInfo
    source: SourceInfo
    export_filter: FilterInfo = msgspec.field(name="filter")
    entities: list[EntityEntry]
    scrub: ScrubInfo | None = None

    @property
    def minor_version(self) -> int:
        """MINOR of `format_version` (decode_manifest checked it is MAJOR.MINOR)."""
        return int(self.format_version.split(".")[1])

    @property
    def total_records(self) -> int:
        return sum(entry.records for entry in self.entities)

    @property
    def total_bytes(self) -> int:
        return sum(entry.bytes for entry in self.entities)

    def entry(self, entity: str) -> EntityEntry:
        """The entry of one entity ("observations", ...)."""
        for entry in self.entities:
            if entry.entity == entity:
                return entry
        raise KeyError(entity)

    def to_dict(self) -> dict[str, Any]:
        """The manifest as JSON-ready builtins, with its wire (camelCase) names."""
        wire: dict[str, Any] = msgspec.to_builtins(self)
        return wire


def encode_manifest(manifest: Manifest) -> bytes:
    """The manifest member's bytes: UTF-8 JSON, fields in a fixed order, two-space indent."""
    return msgspec.json.format(msgspec.json.encode(manifest), indent=2) + b"\n"


_manifest_decoder = msgspec.json.Decoder(Manifest)


class _DuplicateKey(Exception):
    pass


def _unique_pairs(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
    result = dict(pairs)
    if len(result) != len(pairs):
        seen: set[str] = set()
        for key, _ in pairs:
            if key in seen:
                raise _DuplicateKey(key)
            seen.add(key)
    return result


def _refuse_duplicate_keys(data: bytes) -> None:
    """Raise _DuplicateKey for a key repeated within one JSON object (msgspec keeps the last)."""
    json.loads(data, object_pairs_hook=_unique_pairs)


def decode_manifest(data: bytes, label: str) -> Manifest:
    """Decode and validate a manifest; a BundleError names the file and what is wrong."""
    where = f"{label}: {MANIFEST_MEMBER}"
    try:
        raw = msgspec.json.decode(data)
        _refuse_duplicate_keys(data)
    except (msgspec.DecodeError, ValueError) as exc:  # ValueError: not UTF-8
        raise BundleError(f"{where}: not valid JSON ({exc})") from None
    except RecursionError:
        raise BundleError(f"{where}: not a manifest (nested too deeply to decode)") from None
    except _DuplicateKey as exc:
        raise BundleError(
            f"{where}: key {exc.args[0]!r} appears twice in one object (readers could disagree "
            "on which one counts, so a manifest must not repeat a key)"
        ) from None
    if not isinstance(raw, dict) or raw.get("format") != FORMAT_NAME:
        raise BundleError(
            f"{where}: not a kindling-bundle manifest (format is not {FORMAT_NAME!r})"
        )
    version = raw.get("formatVersion")
    match = _VERSION.match(version) if isinstance(version, str) else None
    if match is None:
        raise BundleError(f"{where}: formatVersion {version!r} is not MAJOR.MINOR")
    major = int(match.group(1))
    if major == INCREMENT_MAJOR:  # an incremental bundle (spec section 16)
        from kindling_bundle.format.increment import decode_increment_manifest

        return decode_increment_manifest(data, where)
    if major != FORMAT_MAJOR:
        raise UnsupportedVersionError(
            f"{where}: format version {version} is not supported: this tool reads "
            f"{FORMAT_MAJOR}.x bundles and {INCREMENT_MAJOR}.x increments; use a "
            f"kindling-bundle that reads version {version}"
        )
    try:
        manifest = _manifest_decoder.decode(data)
    except msgspec.ValidationError as exc:
        raise BundleError(f"{where}: {describe_validation(exc)}") from None
    expected = [(entity, member) for entity, member in ENTITY_MEMBERS.items()]
    found = [(entry.entity, entry.member) for entry in manifest.entities]
    if found != expected:
        listed = ", ".join(member for _, member in found) or "none"
        raise BundleError(
            f"{where}: entities must list {', '.join(ENTITY_MEMBERS.values())} in that order "
            f"(found: {listed})"
        )
    return manifest


_PATH = re.compile(r" - at `\$(?:\[(\d+)\])?\.?([^`]*)`$")


def validation_field(exc: msgspec.ValidationError) -> str | None:
    """The top-level field msgspec's error is about (`provenance` for `$.provenance.a`), or
    None when it is about the value as a whole."""
    match = _PATH.search(str(exc))
    if match is None:
        return None
    return re.split(r"[.\[]", match.group(2))[0] or None


def describe_validation(exc: msgspec.ValidationError) -> str:
    """msgspec's "Expected `int`, got `str` - at `$.ts`" as
    "field ts: expected `int`, got `str`"."""
    text = str(exc)
    match = _PATH.search(text)
    message = text if match is None else text[: match.start()]
    message = message[:1].lower() + message[1:]
    if match is None:
        return message
    field = match.group(2)
    return f"field {field}: {message}" if field else message
