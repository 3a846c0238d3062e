"""One exception hierarchy: the CLI maps each class to a one-line message and an exit code.

A class exists for each thing a caller would handle differently; those that carry details (the
record, the missing ids, every problem found) keep them as attributes beside the message.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

if TYPE_CHECKING:  # type names only: this module imports nothing of ours when it runs
    from kindling_bundle.db.integrity import IntegrityProblem
    from kindling_bundle.format.verify_report import VerifyProblem, VerifyReport


class KindlingBundleError(Exception):
    """Base class: anything the tool refuses or fails at on purpose (exit code 1)."""


class StoreError(KindlingBundleError):
    """A database could not be opened, or is not a Kindling database we accept."""


class RecordError(KindlingBundleError):
    """A record is invalid; the message names the entity, the record id and the field (also
    `field`, the record's field at fault, where one is)."""

    def __init__(
        self,
        message: str,
        *,
        entity: str | None = None,
        record_id: str | None = None,
        field: str | None = None,
    ):
        super().__init__(message)
        self.entity = entity
        self.record_id = record_id
        self.field = field


class ImportConflictError(KindlingBundleError):
    """An import failed on a record the database cannot take as it is: a conflict with a stored
    row under the `error` strategy, or a capsule listing an observation twice."""

    def __init__(self, message: str, *, entity: str, record_id: str):
        super().__init__(message)
        self.entity = entity
        self.record_id = record_id


class MissingReferenceError(ImportConflictError, RecordError):
    """A record references records that are neither in the data nor in the database: `missing`
    holds their ids. Import the records they name first, or leave such references out
    (`drop_dangling`, where offered). An ImportConflictError (what an import raised for it
    before) and a RecordError (what conversions and merges raised)."""

    entity: str
    record_id: str

    def __init__(self, message: str, *, entity: str, record_id: str, missing: tuple[str, ...]):
        KindlingBundleError.__init__(self, message)
        self.entity = entity
        self.record_id = record_id
        self.field = None
        self.missing = missing


class IntegrityError(KindlingBundleError):
    """A database failed the post-import integrity report; `problems` lists what it found."""

    def __init__(self, message: str, *, problems: list[IntegrityProblem] | None = None):
        super().__init__(message)
        self.problems = problems or []


class BundleError(KindlingBundleError):
    """A bundle file is damaged, hostile, or not a bundle at all."""


class UnsupportedVersionError(BundleError):
    """A bundle or Kindling JSON export of a format version this tool does not read (a newer
    major version): a newer kindling-bundle may read it; nothing else will help."""


class BundleValidationError(BundleError):
    """Verify found problems: `problems` lists them (up to `VerifyReport`'s limit), `report`
    is the whole report (counts, warnings, records)."""

    def __init__(self, message: str, *, report: VerifyReport):
        super().__init__(message)
        self.report = report

    @property
    def problems(self) -> list[VerifyProblem]:
        return self.report.problems


class StorageError(KindlingBundleError):
    """A bundle path or URL could not be read or written: missing object, credentials, network."""


class EncryptionError(KindlingBundleError):
    """An age envelope could not be made or opened (issue 18): the subclasses say why."""


class RecipientError(EncryptionError):
    """A recipient (public key) or recipients file was refused; the message names the file and
    line, never the line's text (a confidential file may have been given by mistake)."""


class IdentityError(EncryptionError):
    """An identity (private key) could not be used: unreadable, malformed or unsupported, or its
    passphrase was wrong or could not be asked for. The message never holds key material."""


class NoIdentityError(EncryptionError):
    """The input is encrypted and no identity was given: what the header shows without a key
    (`recipients`, the stanza types) rides along for `inspect`."""

    def __init__(self, message: str, *, recipients: int, stanza_types: tuple[str, ...]):
        super().__init__(message)
        self.recipients = recipients
        self.stanza_types = stanza_types


class NoMatchingIdentityError(EncryptionError):
    """None of the identities given opens the input (the wrong key, or a passphrase-encrypted
    file): the user must supply another key, not repair the file."""

    def __init__(self, message: str, *, recipients: int, stanza_types: tuple[str, ...]):
        super().__init__(message)
        self.recipients = recipients
        self.stanza_types = stanza_types


class CiphertextError(EncryptionError, BundleError):
    """Encrypted input is damaged, altered, or cut short: nothing read from it may be committed.
    Also a BundleError, so readers that refuse a damaged bundle refuse this one the same way."""


class TruncatedCiphertextError(CiphertextError):
    """Encrypted input certainly ended early (in its header, or at a chunk boundary before the
    final chunk): an interrupted copy or upload rather than tampering. A cut inside a chunk cannot
    be told from damage and is a plain CiphertextError."""


class SignatureError(KindlingBundleError):
    """A bundle's SSH signature, the key to make one, or the list of whom to trust is refused."""


class MalformedSignatureError(SignatureError):
    """A signature is not a well-formed armored SSHSIG, is too large, or uses an unsupported key."""


class BadSignatureError(SignatureError):
    """A well-formed signature does not verify: the signed bytes changed, or it signs others."""


class SignatureNamespaceError(SignatureError):
    """A signature was made for another namespace, or its key may not sign in this one."""


class UnknownSignerError(SignatureError):
    """A signature verifies, but its key is not in allowed_signers (for the principal asked)."""


class SignerNotValidError(SignatureError):
    """The signer's allowed_signers line is outside its valid-after / valid-before window."""


class UnsignedBundleError(SignatureError):
    """A bundle carries no signature, and one is required."""


class SigningKeyError(SignatureError):
    """A signing key cannot be loaded or used: unreadable, wrong passphrase, not in ssh-agent."""


class AllowedSignersError(SignatureError):
    """An allowed_signers file cannot be read or has a line we do not understand (file:line)."""


class RulesError(KindlingBundleError):
    """A secret rule file is unreadable or invalid; the message names the file and the rule."""
