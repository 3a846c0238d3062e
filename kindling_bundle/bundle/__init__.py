"""The bundle format v1 (spec/bundle-format.md): write, read, verify and restore bundles.

A bundle is a POSIX ustar archive in one zstd frame: `manifest.json` first, then one member of
length-prefixed MessagePack frames per entity in foreign-key order. Every entry point streams in
one forward pass, so sources and destinations may be paths or non-seekable binary streams.

Names are imported on first use (kindling_bundle.lazy).
"""

from __future__ import annotations

from kindling_bundle.lazy import lazy_names

_MODULES: dict[str, tuple[str, ...]] = {
    "kindling_bundle.bundle.format": (
        "BUNDLE_EXTENSION",
        "FORMAT_VERSION",
        "EntityEntry",
        "FilterInfo",
        "Manifest",
        "ProgressCallback",
        "SourceInfo",
        "ToolInfo",
    ),
    "kindling_bundle.bundle.reader": (
        "BundleReader",
        "open_bundle",
        "read_manifest",
    ),
    "kindling_bundle.bundle.restore": (
        "EntityCounts",
        "ImportReport",
        "import_bundle",
    ),
    "kindling_bundle.bundle.verify": (
        "VerifyReport",
        "verify_bundle",
    ),
    "kindling_bundle.bundle.writer": (
        "BundleOptions",
        "write_bundle",
        "write_bundle_from_records",
    ),
}
__getattr__ = lazy_names(globals(), _MODULES)


def __dir__() -> list[str]:
    return sorted(__all__)


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
