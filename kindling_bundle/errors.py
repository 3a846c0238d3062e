"""One exception hierarchy: the CLI maps each class to a one-line message and an exit code."""

from __future__ import annotations


class KindlingBundleError(Exception):
    """Base class: anything the tool refuses or fails at on purpose (exit code 1)."""


class StoreError(KindlingBundleError):
    """A database could not be opened, or is not a Kindling database we accept."""


class RecordError(KindlingBundleError):
    """A record is invalid; the message names the entity, the record id and the field."""

    def __init__(self, message: str, *, entity: str | None = None, record_id: str | None = None):
        super().__init__(message)
        self.entity = entity
        self.record_id = record_id


class ImportConflictError(KindlingBundleError):
    """An import failed: a conflict under the `error` strategy, or a missing reference."""

    def __init__(self, message: str, *, entity: str, record_id: str):
        super().__init__(message)
        self.entity = entity
        self.record_id = record_id


class IntegrityError(KindlingBundleError):
    """A database failed the post-import integrity report."""


class BundleError(KindlingBundleError):
    """A bundle file is damaged, hostile, or not a bundle at all."""


class StorageError(KindlingBundleError):
    """A bundle path or URL could not be read or written: missing object, credentials, network."""


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
