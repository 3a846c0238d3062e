"""Datasets: a bundle, a Kindling JSON export or a Kindling database, each read as one
foreign-key-ordered record stream, so diff, merge and conversions treat them alike.

What a source holds is told by its first bytes (`io.sniff`); an encrypted bundle or JSON
export is read through its decrypted stream; a database is read from one snapshot and never
changed. A bundle's signature is checked as it is opened, against the caller's
`options.signature`; under `require_signature`, a source that cannot carry a signature (a
Kindling JSON export, a database) is refused.
"""

from __future__ import annotations

import os
import sqlite3
from collections.abc import Generator, Iterable, Iterator
from contextlib import ExitStack, contextmanager
from dataclasses import dataclass
from typing import BinaryIO

from kindling_bundle.db.connection import open_store
from kindling_bundle.db.export import ENTITY_EXPORTS, ExportStreamOptions, snapshot
from kindling_bundle.errors import BundleError
from kindling_bundle.io.read_options import ReadOptions
from kindling_bundle.io.sniff import InputFormat, open_input, sniff_path
from kindling_bundle.kindling_json.reader import open_kindling_json
from kindling_bundle.ops.read import open_bundle
from kindling_bundle.records import ENTITY_TYPES, Record

DatasetSource = str | os.PathLike[str]


@dataclass
class Dataset:
    """An open dataset source: what it is, and its records (single use, foreign-key order).
    `encrypted`: the source was an age file (`format` is what its plaintext is)."""

    name: str
    format: InputFormat
    records: Iterator[Record]
    encrypted: bool = False


@contextmanager
def open_dataset(
    src: DatasetSource, *, spool_dir: str | None = None, options: ReadOptions | None = None
) -> Iterator[Dataset]:
    """Open a bundle, Kindling JSON export or Kindling database (read-only) as records; an
    encrypted bundle or export with `options.identities`. `format` is what the plaintext is.

    On exit the record stream is closed before its source, even when it was left half read."""
    name = os.fspath(src)
    kind = sniff_path(src)
    encrypted = kind == "encrypted"
    trust = (options or ReadOptions()).signature
    with ExitStack() as stack:
        source: str | BinaryIO = name
        if encrypted:
            try:
                stream = stack.enter_context(open(name, "rb"))
            except OSError as exc:
                raise BundleError(f"{name}: cannot open: {exc.strerror}") from None
            opened = open_input(stream, options, label=name)
            if opened.format not in ("bundle", "kindling-json"):
                raise BundleError(
                    f"{name}: encrypted, and what it holds is neither a bundle nor a Kindling "
                    "JSON export"
                )
            kind, source = opened.format, opened.stream
        if kind == "bundle":
            records = stack.enter_context(open_bundle(source, name=name, options=options)).records()
        elif kind == "kindling-json":
            trust.refuse_unsignable(name, "a Kindling JSON export")
            reader = open_kindling_json(source, name=name, spool_dir=spool_dir)
            records = stack.enter_context(reader).records()
        else:
            trust.refuse_unsignable(name, "a Kindling database")
            conn = open_store(name, readonly=True)
            stack.callback(conn.close)
            stack.enter_context(snapshot(conn))
            records = _database_records(conn)
        stack.callback(records.close)
        yield Dataset(name, kind, records, encrypted)


def _database_records(conn: sqlite3.Connection) -> Generator[Record, None, None]:
    opts = ExportStreamOptions()
    for export in ENTITY_EXPORTS.values():
        yield from export(conn, opts)


def entity_streams(records: Iterable[Record]) -> Iterator[tuple[str, Iterator[Record]]]:
    """Split one foreign-key-ordered record stream into (entity, records) for all four
    entities, in order (empty ones too). Consume each before asking for the next."""
    source = iter(records)
    rank = {cls: position for position, cls in enumerate(ENTITY_TYPES.values())}
    pending: list[Record] = []  # the first record of a later entity, read one too far

    def stream(position: int) -> Iterator[Record]:
        while True:
            record = pending.pop() if pending else next(source, None)
            if record is None:
                return
            if rank[type(record)] != position:
                if rank[type(record)] < position:
                    raise ValueError(f"a {type(record).__name__} out of foreign-key order")
                pending.append(record)
                return
            yield record

    for position, entity in enumerate(ENTITY_TYPES):
        yield entity, stream(position)
