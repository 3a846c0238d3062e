"""Writing Kindling's own JSON export format, exactly as Kindling's `JSON.stringify` would:
compact, fields in Kindling's order, absent optional values left out, numbers and escapes as
JavaScript writes them (see `jsjson`). Records keep their `redacted` flag, so redacted rows are
present (as Kindling's `includeRedacted: true` writes them).
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import Any, BinaryIO

import msgspec

from kindling_bundle.io.storage import atomic_file
from kindling_bundle.kindling_json import jsjson
from kindling_bundle.kindling_json.reader import KINDLING_JSON_VERSION
from kindling_bundle.records import ENTITY_TYPES, Capsule, Pin, Record

# Record fields that Kindling leaves out of its JSON when they hold no value.
_OPTIONAL_FIELDS: dict[type, tuple[str, ...]] = {
    Capsule: ("closedAt",),
    Pin: ("reason", "expiresAt"),
}


def record_json(record: Record) -> bytes:
    """One record as Kindling's `JSON.stringify` writes it (absent optional values left out)."""
    value = msgspec.to_builtins(record)
    for key in _OPTIONAL_FIELDS.get(type(record), ()):
        if value[key] is None:
            del value[key]
    return jsjson.dumps(value).encode()


def write_kindling_json(
    dest: str | Path | BinaryIO,
    streams: Mapping[str, Iterable[Record]],
    *,
    exported_at: int,
    scope: Mapping[str, str] | None = None,
) -> dict[str, int]:
    """Write a Kindling JSON export from record streams; returns the count per entity.

    The streams are consumed in foreign-key order, one at a time, so they may be lazy streams
    of one snapshot or one bundle pass. A path destination appears only when complete
    (`io.storage.atomic_file`); failing to write it is a one-line StorageError naming it.
    """
    unknown = set(streams) - set(ENTITY_TYPES)
    if unknown:
        raise ValueError(f"unknown entities: {', '.join(sorted(unknown))}")
    if isinstance(dest, (str, Path)):
        with atomic_file(dest) as handle:
            return _write(handle, streams, exported_at, scope)
    return _write(dest, streams, exported_at, scope)


def _write(
    out: BinaryIO,
    streams: Mapping[str, Iterable[Record]],
    exported_at: int,
    scope: Mapping[str, str] | None,
) -> dict[str, int]:
    header = {"bundleVersion": KINDLING_JSON_VERSION, "exportedAt": exported_at}
    dataset: dict[str, Any] = {"version": KINDLING_JSON_VERSION, "exportedAt": exported_at}
    if scope:
        dataset["scope"] = dict(scope)
    out.write(
        jsjson.dumps(header)[:-1].encode() + b',"dataset":' + jsjson.dumps(dataset)[:-1].encode()
    )
    counts = {}
    for entity, cls in ENTITY_TYPES.items():
        out.write(b',"' + entity.encode() + b'":[')
        count = 0
        pieces: list[bytes] = []
        for record in streams.get(entity, ()):
            if type(record) is not cls:
                raise ValueError(f"a {type(record).__name__} in the {entity} stream")
            pieces.append(b"," + record_json(record) if count else record_json(record))
            count += 1
            if len(pieces) >= 256:
                out.write(b"".join(pieces))
                pieces = []
        out.write(b"".join(pieces) + b"]")
        counts[entity] = count
    out.write(b"}}")
    return counts
