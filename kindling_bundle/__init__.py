"""kindling-bundle: move Kindling memory between machines as portable, verifiable bundles."""

from kindling_bundle.errors import (
    BundleError,
    ImportConflictError,
    IntegrityError,
    KindlingBundleError,
    RecordError,
    StoreError,
)
from kindling_bundle.export import (
    ExportStreamOptions,
    export_capsules,
    export_observations,
    export_pins,
    export_summaries,
    snapshot,
)
from kindling_bundle.importer import (
    ConflictStrategy,
    ImportEntityResult,
    Outcome,
    import_batch,
    import_capsule,
    import_observation,
    import_pin,
    import_record,
    import_summary,
)
from kindling_bundle.integrity import IntegrityProblem, IntegrityReport, verify_import_integrity
from kindling_bundle.records import Capsule, Observation, Pin, Summary
from kindling_bundle.sample import generate_sample
from kindling_bundle.store import open_store

__version__ = "0.1.0"

__all__ = [
    "BundleError",
    "Capsule",
    "ConflictStrategy",
    "ExportStreamOptions",
    "ImportConflictError",
    "ImportEntityResult",
    "IntegrityError",
    "IntegrityProblem",
    "IntegrityReport",
    "KindlingBundleError",
    "Observation",
    "Outcome",
    "Pin",
    "RecordError",
    "StoreError",
    "Summary",
    "__version__",
    "export_capsules",
    "export_observations",
    "export_pins",
    "export_summaries",
    "generate_sample",
    "import_batch",
    "import_capsule",
    "import_observation",
    "import_pin",
    "import_record",
    "import_summary",
    "open_store",
    "snapshot",
    "verify_import_integrity",
]
