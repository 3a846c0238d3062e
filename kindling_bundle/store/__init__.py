"""The store layer: open Kindling databases, their schema contract, rows and the write path."""

from kindling_bundle.store.connection import (
    KindlingConnection,
    create_store,
    open_store,
    savepoint,
    write_transaction,
)
from kindling_bundle.store.schema import CURRENT_GENERATION, create_schema

__all__ = [
    "CURRENT_GENERATION",
    "KindlingConnection",
    "create_schema",
    "create_store",
    "open_store",
    "savepoint",
    "write_transaction",
]
