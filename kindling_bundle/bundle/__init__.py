"""The bundle format v1 (spec/bundle-format.md): write, read, verify and restore bundles.

A bundle is a POSIX ustar archive in one zstd frame: `manifest.json` first, then one member of
length-prefixed MessagePack frames per entity in foreign-key order. Every entry point streams in
one forward pass, so sources and destinations may be paths or non-seekable binary streams.
"""

from kindling_bundle.bundle.format import (
    BUNDLE_EXTENSION,
    FORMAT_VERSION,
    EntityEntry,
    FilterInfo,
    Manifest,
    ProgressCallback,
    SourceInfo,
    ToolInfo,
)
from kindling_bundle.bundle.reader import BundleReader, open_bundle, read_manifest
from kindling_bundle.bundle.restore import EntityCounts, ImportReport, import_bundle
from kindling_bundle.bundle.verify import VerifyReport, verify_bundle
from kindling_bundle.bundle.writer import BundleOptions, write_bundle, write_bundle_from_records

__all__ = [
    "BUNDLE_EXTENSION",
    "FORMAT_VERSION",
    "BundleOptions",
    "BundleReader",
    "EntityCounts",
    "EntityEntry",
    "FilterInfo",
    "ImportReport",
    "Manifest",
    "ProgressCallback",
    "SourceInfo",
    "ToolInfo",
    "VerifyReport",
    "import_bundle",
    "open_bundle",
    "read_manifest",
    "verify_bundle",
    "write_bundle",
    "write_bundle_from_records",
]
