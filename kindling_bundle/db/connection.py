"""Opening Kindling databases the way Kindling does, and transactions that nest."""

from __future__ import annotations

import contextlib
import errno
import os
import sqlite3
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from kindling_bundle.db.schema import create_schema, detect_generation
from kindling_bundle.errors import StoreError
from kindling_bundle.io.storage import fsync_folder

BUSY_TIMEOUT_MS = 5000
BUSY_TIMEOUT_ENV = "KINDLING_BUSY_TIMEOUT_MS"
"""Overrides BUSY_TIMEOUT_MS (whole milliseconds): how long to wait for another process's lock."""
SQLITE_MAGIC = b"SQLite format 3\x00"

_WRITING: set[int] = set()
"""id() of each connection inside a write_transaction (sqlite3 connections take no weakrefs)."""


class TransactionLost(StoreError):
    """SQLite rolled a write_transaction back by itself (disk full, I/O error, corruption)."""


class KindlingConnection(sqlite3.Connection):
    """A sqlite3 connection that remembers which schema generation (4 or 5) it found."""

    generation: int = 0
    path: str = ""
    private: bool = False
    """No other connection can reach this database (`create_store`'s file before it is linked):
    an import may hold the write lock for as long as it likes."""


def open_store(
    path: str | Path, *, readonly: bool = False, busy_timeout_ms: int | None = None
) -> KindlingConnection:
    """Open (or, unless read-only, create) a Kindling database.

    The connection is in autocommit mode: every write goes through `write_transaction` or
    `savepoint`, so nothing is ever committed behind the caller's back. A read-only connection
    never changes the file, not even its journal mode. While another process holds a lock, a
    statement waits up to `busy_timeout_ms` (default: $KINDLING_BUSY_TIMEOUT_MS, else 5000, as
    Kindling waits) and then fails with a StoreError.
    """
    path = Path(path)
    label = str(path)
    if busy_timeout_ms is None:
        busy_timeout_ms = _busy_timeout_from_environment()
    exists = path.exists()
    if exists and path.is_dir():
        raise StoreError(f"{label}: is a directory, not a database")
    if exists and path.stat().st_size:
        with path.open("rb") as handle:
            if handle.read(16) != SQLITE_MAGIC:
                raise StoreError(f"{label}: not a SQLite database")
    if readonly and not exists:
        raise StoreError(f"{label}: no such database")
    if not exists and not path.parent.exists():
        raise StoreError(f"{label}: directory {path.parent} does not exist")
    try:
        if readonly:
            conn = sqlite3.connect(
                f"{path.resolve().as_uri()}?mode=ro",
                uri=True,
                isolation_level=None,
                factory=KindlingConnection,
            )
        else:
            conn = sqlite3.connect(path, isolation_level=None, factory=KindlingConnection)
    except sqlite3.Error as exc:
        raise StoreError(f"{label}: cannot open database: {exc}") from None
    try:
        _configure(conn, readonly=readonly, busy_timeout_ms=busy_timeout_ms)
        has_tables = conn.execute("SELECT count(*) FROM sqlite_master").fetchone()[0]
        if not has_tables and not readonly:
            with write_transaction(conn):
                create_schema(conn)
        conn.generation = detect_generation(conn, label)
        conn.path = label
    except sqlite3.DatabaseError as exc:
        conn.close()
        raise StoreError(f"{label}: {describe_error(exc)}") from None
    except StoreError:
        conn.close()
        raise
    return conn


_SIDE_FILES = ("-wal", "-shm", "-journal")
_NO_HARD_LINKS = {errno.EPERM, errno.EOPNOTSUPP, errno.ENOTSUP, errno.EMLINK}


@contextmanager
def create_store(path: str | Path) -> Iterator[KindlingConnection]:
    """A new Kindling database that appears at `path` only once the block exits cleanly.

    For filling a database that does not exist yet (a restore onto a new machine): nothing can
    be reading it, so the database is built as a private file beside `path` without the
    write-ahead log (its rollback journal is kept in memory, and is nearly empty for a new
    file) and without syncing each commit: every page is written once instead of twice. When
    the block ends, the file is put back in WAL mode (as Kindling keeps its databases), fsynced,
    and linked at `path`, which must still not exist. On any failure, or if the process dies,
    `path` never appears; a killed process leaves the private file `.NAME.XXXXXXXX.tmp`, named
    so, for the user to delete. Messages name `path`.
    """
    path = Path(path)
    label = str(path)
    if path.exists() or path.is_symlink():
        raise StoreError(f"{label}: already exists (create_store makes new databases only)")
    if not path.parent.is_dir():
        raise StoreError(f"{label}: directory {path.parent} does not exist")
    try:
        fd, temporary = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    except OSError as exc:
        raise StoreError(f"{label}: cannot create a file beside it: {exc.strerror}") from None
    os.close(fd)
    conn: KindlingConnection | None = None
    try:
        umask = os.umask(0o22)
        os.umask(umask)
        os.chmod(temporary, 0o666 & ~umask)  # as SQLite creates files (mkstemp's are private)
        conn = open_store(temporary)
        conn.path = label
        conn.private = True
        conn.execute("PRAGMA journal_mode = MEMORY")
        conn.execute("PRAGMA synchronous = OFF")
        yield conn
        if conn.in_transaction:
            raise StoreError(f"{label}: a transaction is still open; nothing was created")
        conn.execute("PRAGMA journal_mode = WAL")
        conn.close()
        conn = None
        _publish_database(temporary, path, label)
    except sqlite3.DatabaseError as exc:
        raise StoreError(f"{label}: {describe_error(exc)}") from None
    finally:
        if conn is not None:
            conn.close()
        for leftover in (temporary, *(temporary + end for end in _SIDE_FILES)):
            with contextlib.suppress(FileNotFoundError):
                os.unlink(leftover)


def _publish_database(temporary: str, path: Path, label: str) -> None:
    """fsync the finished file and give it its name, unless something else took the name."""
    try:
        with open(temporary, "rb") as handle:
            os.fsync(handle.fileno())
        try:
            os.link(temporary, path)  # unlike a rename, never replaces a file made meanwhile
        except OSError as exc:
            if exc.errno not in _NO_HARD_LINKS or path.exists():
                raise
            os.rename(temporary, path)  # a file system without hard links (FAT, some shares)
    except FileExistsError:
        raise StoreError(
            f"{label}: another program created this file during the import; left it as it is"
        ) from None
    except OSError as exc:
        raise StoreError(f"{label}: cannot create it: {exc.strerror or exc}") from None
    fsync_folder(path.parent)


def _busy_timeout_from_environment() -> int:
    value = os.environ.get(BUSY_TIMEOUT_ENV, "").strip()
    if not value:
        return BUSY_TIMEOUT_MS
    if not value.isdigit():
        raise StoreError(f"{BUSY_TIMEOUT_ENV}={value!r} is not a whole number of milliseconds")
    return int(value)


def _configure(conn: sqlite3.Connection, *, readonly: bool, busy_timeout_ms: int) -> None:
    conn.execute(f"PRAGMA busy_timeout = {int(busy_timeout_ms)}")
    conn.execute("PRAGMA foreign_keys = ON")
    if readonly:
        conn.execute("PRAGMA query_only = 1")
    else:
        conn.execute("PRAGMA journal_mode = WAL")
        conn.execute("PRAGMA synchronous = NORMAL")


def last_rowid(conn: sqlite3.Connection, table: str) -> int:
    """The largest rowid in `table` of the main database (0 when it is empty): a new row takes
    the next."""
    return int(conn.execute(f"SELECT coalesce(max(rowid), 0) FROM main.{table}").fetchone()[0])


def describe_error(exc: sqlite3.Error) -> str:
    """A database failure in words a user can act on."""
    text = str(exc)
    if "locked" in text or "busy" in text:
        return f"database is locked by another process ({text})"
    if "malformed" in text or "not a database" in text:
        return f"database is corrupt ({text})"
    if "full" in text:
        return f"the disk is full or the file is too large ({text})"
    return text


@contextmanager
def write_transaction(conn: sqlite3.Connection) -> Iterator[sqlite3.Connection]:
    """An outermost BEGIN IMMEDIATE transaction: takes the write lock up front (waiting up to
    the busy timeout) so a long import cannot fail half-way on a lock upgrade.

    On some errors (disk full, I/O error, corruption) SQLite rolls the whole transaction back by
    itself, and the connection is back in autocommit mode: a caller that carried on (retrying
    record by record, say) would commit each statement on its own. `savepoint` therefore
    refuses to start inside a write_transaction whose transaction is gone, and COMMIT fails."""
    try:
        conn.execute("BEGIN IMMEDIATE")
    except sqlite3.OperationalError as exc:
        path = getattr(conn, "path", "")
        where = f"{path}: " if path else ""
        raise StoreError(
            f"{where}cannot start a write transaction: {describe_error(exc)}"
        ) from None
    _WRITING.add(id(conn))
    try:
        yield conn
    except BaseException:
        if conn.in_transaction:
            conn.execute("ROLLBACK")
        raise
    finally:
        _WRITING.discard(id(conn))
    if not conn.in_transaction:
        path = getattr(conn, "path", "")
        raise TransactionLost(
            f"{path or 'database'}: SQLite rolled the write transaction back after an error (a "
            "full disk, an I/O error or a corrupt database)"
        )
    conn.execute("COMMIT")


@contextmanager
def savepoint(conn: sqlite3.Connection, name: str = "kindling_bundle") -> Iterator[None]:
    """Make a group of statements atomic, inside a caller's transaction or on its own."""
    if id(conn) in _WRITING and not conn.in_transaction:
        path = getattr(conn, "path", "")
        raise TransactionLost(
            f"{path or 'database'}: SQLite rolled the write transaction back after an error (a "
            "full disk, an I/O error or a corrupt database); nothing more is written"
        )
    conn.execute(f"SAVEPOINT {name}")
    try:
        yield
    except BaseException:
        if conn.in_transaction:  # SQLite rolls everything back itself on some errors (corruption)
            conn.execute(f"ROLLBACK TO {name}")
            conn.execute(f"RELEASE {name}")
        raise
    conn.execute(f"RELEASE {name}")
