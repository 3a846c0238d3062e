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


class RulesError(KindlingBundleError):
    """A secret rule file is unreadable or invalid; the message names the file and the rule."""
