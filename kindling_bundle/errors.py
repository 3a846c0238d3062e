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
