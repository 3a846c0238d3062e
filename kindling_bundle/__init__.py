"""kindling-bundle: move Kindling memory between machines as portable, verifiable bundles."""

from kindling_bundle.errors import (
    BundleError,
    ImportConflictError,
    IntegrityError,
    KindlingBundleError,
    RecordError,
    StoreError,
)
from kindling_bundle.records import Capsule, Observation, Pin, Summary
from kindling_bundle.sample import generate_sample
from kindling_bundle.store import open_store

__version__ = "0.1.0"

__all__ = [
    "BundleError",
    "Capsule",
    "ImportConflictError",
    "IntegrityError",
    "KindlingBundleError",
    "Observation",
    "Pin",
    "RecordError",
    "StoreError",
    "Summary",
    "__version__",
    "generate_sample",
    "open_store",
]
