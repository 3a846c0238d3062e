"""kindling-bundle: move Kindling memory between machines as portable, verifiable bundles.

The public API. Layers (ARCHITECTURE.md): `format` (the bundle format alone), `kindling_json`
(Kindling's JSON export format), `db` (everything that touches SQLite), `ops` (one job each,
composed of those), `parallel` (optional worker processes), `io` (paths, streams, URLs, progress)
and `cli`.
"""

from kindling_bundle.db.conflicts import ImportEntityResult, Outcome
from kindling_bundle.db.connection import open_store
from kindling_bundle.db.export import (
    ENTITY_EXPORTS,
    ExportStreamOptions,
    export_capsules,
    export_observations,
    export_pins,
    export_summaries,
    snapshot,
)
from kindling_bundle.db.importer import (
    import_batch,
    import_capsule,
    import_observation,
    import_pin,
    import_record,
    import_summary,
)
from kindling_bundle.db.integrity import IntegrityProblem, IntegrityReport, verify_import_integrity
from kindling_bundle.db.sample import generate_sample
from kindling_bundle.errors import (
    BundleError,
    ImportConflictError,
    IntegrityError,
    KindlingBundleError,
    RecordError,
    StorageError,
    StoreError,
)
from kindling_bundle.format.manifest import Manifest, ProgressCallback
from kindling_bundle.format.reader import BundleReader, open_bundle, read_manifest
from kindling_bundle.kindling_json.reader import (
    DanglingReport,
    KindlingJsonInfo,
    KindlingJsonReader,
    bundle_to_kindling_json,
    export_kindling_json,
    import_kindling_json,
    kindling_json_to_bundle,
    open_kindling_json,
    verify_kindling_json,
    write_kindling_json,
)
from kindling_bundle.ops.merge import (
    DiffReport,
    MergeReport,
    diff_datasets,
    merge_datasets,
    open_dataset,
)
from kindling_bundle.ops.restore import EntityCounts, ImportReport, import_bundle
from kindling_bundle.ops.verify import VerifyReport, verify_bundle
from kindling_bundle.ops.write import BundleOptions, write_bundle, write_bundle_from_records
from kindling_bundle.records import Capsule, ConflictStrategy, Observation, Pin, Summary

__version__ = "0.1.0"

__all__ = [
    "ENTITY_EXPORTS",
    "BundleError",
    "BundleOptions",
    "BundleReader",
    "Capsule",
    "ConflictStrategy",
    "DanglingReport",
    "DiffReport",
    "EntityCounts",
    "ExportStreamOptions",
    "ImportConflictError",
    "ImportEntityResult",
    "ImportReport",
    "IntegrityError",
    "IntegrityProblem",
    "IntegrityReport",
    "KindlingBundleError",
    "KindlingJsonInfo",
    "KindlingJsonReader",
    "Manifest",
    "MergeReport",
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
    "bundle_to_kindling_json",
    "diff_datasets",
    "export_capsules",
    "export_kindling_json",
    "export_observations",
    "export_pins",
    "export_summaries",
    "generate_sample",
    "import_batch",
    "import_bundle",
    "import_capsule",
    "import_kindling_json",
    "import_observation",
    "import_pin",
    "import_record",
    "import_summary",
    "kindling_json_to_bundle",
    "merge_datasets",
    "open_bundle",
    "open_dataset",
    "open_kindling_json",
    "open_store",
    "read_manifest",
    "snapshot",
    "verify_bundle",
    "verify_import_integrity",
    "verify_kindling_json",
    "write_bundle",
    "write_bundle_from_records",
    "write_kindling_json",
]
