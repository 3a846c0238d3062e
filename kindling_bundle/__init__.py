"""kindling-bundle: move Kindling memory between machines as portable, verifiable bundles."""

from kindling_bundle.bundle import (
    BundleOptions,
    BundleReader,
    EntityCounts,
    ImportReport,
    Manifest,
    ProgressCallback,
    VerifyReport,
    import_bundle,
    open_bundle,
    read_manifest,
    verify_bundle,
    write_bundle,
    write_bundle_from_records,
)
from kindling_bundle.errors import (
    BundleError,
    ImportConflictError,
    IntegrityError,
    KindlingBundleError,
    RecordError,
    StorageError,
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
    "BundleOptions",
    "BundleReader",
    "Capsule",
    "ConflictStrategy",
    "EntityCounts",
    "ExportStreamOptions",
    "ImportConflictError",
    "ImportEntityResult",
    "ImportReport",
    "IntegrityError",
    "IntegrityProblem",
    "IntegrityReport",
    "KindlingBundleError",
    "Manifest",
    "Observation",
    "Outcome",
    "Pin",
    "ProgressCallback",
    "RecordError",
    "StorageError",
    "StoreError",
    "Summary",
    "VerifyReport",
    "__version__",
    "export_capsules",
    "export_observations",
    "export_pins",
    "export_summaries",
    "generate_sample",
    "import_batch",
    "import_bundle",
    "import_capsule",
    "import_observation",
    "import_pin",
    "import_record",
    "import_summary",
    "open_bundle",
    "open_store",
    "read_manifest",
    "snapshot",
    "verify_bundle",
    "verify_import_integrity",
    "write_bundle",
    "write_bundle_from_records",
]
