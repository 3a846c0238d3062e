"""Every public name, imported: what `kindling_bundle` exports (its __init__ loads this module on
the first use of a name, so that a command imports only what it runs)."""

from kindling_bundle import __version__
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
    AllowedSignersError,
    BadSignatureError,
    BundleError,
    BundleValidationError,
    CiphertextError,
    EncryptionError,
    IdentityError,
    ImportConflictError,
    IntegrityError,
    KindlingBundleError,
    MalformedSignatureError,
    MissingReferenceError,
    NoIdentityError,
    NoMatchingIdentityError,
    RecipientError,
    RecordError,
    RulesError,
    SignatureError,
    SignatureNamespaceError,
    SignerNotValidError,
    SigningKeyError,
    StorageError,
    StoreError,
    TruncatedCiphertextError,
    UnknownSignerError,
    UnsignedBundleError,
    UnsupportedVersionError,
)
from kindling_bundle.format.increment import IncrementManifest
from kindling_bundle.format.manifest import Manifest, ProgressCallback, ScrubInfo
from kindling_bundle.format.reader import BundleReader
from kindling_bundle.format.signature import SignatureOptions
from kindling_bundle.format.verify_report import VerifyProblem, VerifyReport
from kindling_bundle.io.age.header import AgeHeader
from kindling_bundle.io.age.identities import Identity, load_identities, parse_identities
from kindling_bundle.io.age.recipients import Recipient, parse_recipient, read_recipients_file
from kindling_bundle.io.read_options import ReadOptions
from kindling_bundle.io.sshsig.allowed_signers import AllowedSigners
from kindling_bundle.io.sshsig.keys import SigningKey, load_signing_key
from kindling_bundle.io.sshsig.verification import Signer
from kindling_bundle.kindling_json.reader import (
    KindlingJsonInfo,
    KindlingJsonReader,
    open_kindling_json,
    verify_kindling_json,
)
from kindling_bundle.kindling_json.writer import write_kindling_json
from kindling_bundle.ops.apply import ChainReport, apply_increments
from kindling_bundle.ops.archive import (
    Archive,
    BackupReport,
    SnapshotInfo,
    backup,
    list_snapshots,
    restore,
)
from kindling_bundle.ops.chain_restore import restore_chain
from kindling_bundle.ops.convert import (
    bundle_to_kindling_json,
    export_kindling_json,
    import_kindling_json,
    kindling_json_to_bundle,
)
from kindling_bundle.ops.datasets import open_dataset
from kindling_bundle.ops.forget import ForgetReport, forget
from kindling_bundle.ops.import_run import EntityCounts, ImportReport
from kindling_bundle.ops.increment import write_increment
from kindling_bundle.ops.links import BundleRef, ChainVerifyReport, bundle_ref, verify_chain
from kindling_bundle.ops.merge import DiffReport, MergeReport, diff_datasets, merge_datasets
from kindling_bundle.ops.read import open_bundle, read_manifest
from kindling_bundle.ops.references import DanglingReport
from kindling_bundle.ops.restore import import_bundle
from kindling_bundle.ops.retention import Policy
from kindling_bundle.ops.scan import ScanReport, scan_database, scan_records
from kindling_bundle.ops.verify import verify_bundle
from kindling_bundle.ops.write import BundleOptions, write_bundle, write_bundle_from_records
from kindling_bundle.records import (
    Capsule,
    ConflictStrategy,
    Observation,
    Pin,
    Summary,
    Tombstone,
)
from kindling_bundle.scrub import RecordFinding, Scanner, Scrubber

__all__ = [
    "ENTITY_EXPORTS",
    "AgeHeader",
    "AllowedSigners",
    "AllowedSignersError",
    "Archive",
    "BackupReport",
    "BadSignatureError",
    "BundleError",
    "BundleOptions",
    "BundleReader",
    "BundleRef",
    "BundleValidationError",
    "Capsule",
    "ChainReport",
    "ChainVerifyReport",
    "CiphertextError",
    "ConflictStrategy",
    "DanglingReport",
    "DiffReport",
    "EncryptionError",
    "EntityCounts",
    "ExportStreamOptions",
    "ForgetReport",
    "Identity",
    "IdentityError",
    "ImportConflictError",
    "ImportEntityResult",
    "ImportReport",
    "IncrementManifest",
    "IntegrityError",
    "IntegrityProblem",
    "IntegrityReport",
    "KindlingBundleError",
    "KindlingJsonInfo",
    "KindlingJsonReader",
    "MalformedSignatureError",
    "Manifest",
    "MergeReport",
    "MissingReferenceError",
    "NoIdentityError",
    "NoMatchingIdentityError",
    "Observation",
    "Outcome",
    "Pin",
    "Policy",
    "ProgressCallback",
    "ReadOptions",
    "Recipient",
    "RecipientError",
    "RecordError",
    "RecordFinding",
    "RulesError",
    "ScanReport",
    "Scanner",
    "ScrubInfo",
    "Scrubber",
    "SignatureError",
    "SignatureNamespaceError",
    "SignatureOptions",
    "Signer",
    "SignerNotValidError",
    "SigningKey",
    "SigningKeyError",
    "SnapshotInfo",
    "StorageError",
    "StoreError",
    "Summary",
    "Tombstone",
    "TruncatedCiphertextError",
    "UnknownSignerError",
    "UnsignedBundleError",
    "UnsupportedVersionError",
    "VerifyProblem",
    "VerifyReport",
    "__version__",
    "apply_increments",
    "backup",
    "bundle_ref",
    "bundle_to_kindling_json",
    "diff_datasets",
    "export_capsules",
    "export_kindling_json",
    "export_observations",
    "export_pins",
    "export_summaries",
    "forget",
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
    "list_snapshots",
    "load_identities",
    "load_signing_key",
    "merge_datasets",
    "open_bundle",
    "open_dataset",
    "open_kindling_json",
    "open_store",
    "parse_identities",
    "parse_recipient",
    "read_manifest",
    "read_recipients_file",
    "restore",
    "restore_chain",
    "scan_database",
    "scan_records",
    "snapshot",
    "verify_bundle",
    "verify_chain",
    "verify_import_integrity",
    "verify_kindling_json",
    "write_bundle",
    "write_bundle_from_records",
    "write_increment",
    "write_kindling_json",
]
