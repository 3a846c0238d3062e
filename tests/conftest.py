"""Shared fixtures: real SQLite files in temporary folders, and the installed CLI."""

from __future__ import annotations

import asyncio
import shutil
import sqlite3
import subprocess
import sys
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from kindling_bundle import generate_sample
from kindling_bundle.db.connection import open_store, write_transaction
from kindling_bundle.db.schema import create_schema


def make_v4_database(path: Path) -> None:
    """A database as the published 0.1.2 store leaves it: no user_version, four migrations."""
    conn = sqlite3.connect(path, isolation_level=None)
    conn.execute("PRAGMA journal_mode = WAL")
    with write_transaction(conn):
        create_schema(conn, generation=4)
    conn.close()


def dump_tables(path: Path) -> dict[str, list[tuple]]:
    """Every row of every Kindling table, FTS shadow tables included, for exact comparisons."""
    conn = sqlite3.connect(f"file:{path}?mode=ro", uri=True)
    tables = [
        row[0]
        for row in conn.execute(
            "SELECT name FROM sqlite_master WHERE type = 'table' AND name NOT LIKE 'sqlite_%' "
            "AND sql NOT LIKE 'CREATE VIRTUAL%' ORDER BY name"
        )
    ]
    result = {}
    for table in tables:
        try:  # rowids matter: the FTS index refers to them
            rows = conn.execute(f'SELECT rowid, * FROM "{table}" ORDER BY rowid').fetchall()
        except sqlite3.OperationalError:  # a WITHOUT ROWID table (an FTS shadow table)
            rows = sorted(conn.execute(f'SELECT * FROM "{table}"').fetchall())
        result[table] = rows
    result["user_version"] = [conn.execute("PRAGMA user_version").fetchone()]
    conn.close()
    return result


FTS_TABLES = ("observations_fts", "summaries_fts")


def dump_contents(path: Path) -> dict[str, list[tuple]]:
    """`dump_tables`, with each full-text index compared by what it holds (every token instance:
    term, row, column, offset; each row's token count; its config) instead of how its segments
    happen to be laid out. An import into a database in use that is undone goes back through
    Kindling's FTS triggers: the index holds exactly what it held, written anew."""
    tables = dump_tables(path)
    conn = sqlite3.connect(f"file:{path}?mode=ro", uri=True)
    for fts in FTS_TABLES:
        del tables[f"{fts}_data"], tables[f"{fts}_idx"]
        conn.execute(f"CREATE VIRTUAL TABLE temp.{fts}_v USING fts5vocab(main, {fts}, instance)")
        tables[f"{fts} instances"] = conn.execute(
            f"SELECT term, doc, col, offset FROM temp.{fts}_v ORDER BY term, doc, offset"
        ).fetchall()
    conn.close()
    return tables


@pytest.fixture(scope="module", autouse=True)
def _fsspec_threads_stopped() -> Iterator[None]:
    """fsspec runs its I/O loop in threads that live as long as the process: stopped after each
    module that started them (s3:// tests), so that the tests after it may fork workers (never
    done beside other threads), whatever order the modules run in."""
    yield
    if "fsspec.asyn" not in sys.modules:
        return
    import fsspec.asyn
    from fsspec.spec import AbstractFileSystem

    loop, thread = fsspec.asyn.loop[0], fsspec.asyn.iothread[0]
    if loop is None or thread is None:
        return
    AbstractFileSystem.clear_instance_cache()
    asyncio.run_coroutine_threadsafe(loop.shutdown_default_executor(), loop).result(timeout=30)
    loop.call_soon_threadsafe(loop.stop)
    thread.join(timeout=30)
    loop.close()
    fsspec.asyn.reset_after_fork()


@pytest.fixture
def db_path(tmp_path: Path) -> Path:
    return tmp_path / "kindling.db"


@pytest.fixture
def new_store(db_path: Path):
    conn = open_store(db_path)
    yield conn
    conn.close()


@pytest.fixture(scope="session")
def sample_db(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A small sample database, made once; copy it before writing to it. Its text is the word
    salad the tests that use it were written against (searched words, member sizes);
    test_sample_text.py and the CLI journey cover the realistic text."""
    path = tmp_path_factory.mktemp("sample") / "sample.db"
    generate_sample(path, observations=1500, seed=7, text="small-vocabulary")
    return path


@pytest.fixture
def sample_copy(sample_db: Path, tmp_path: Path) -> Path:
    path = tmp_path / "copy.db"
    shutil.copy(sample_db, path)
    return path


def cli_executable() -> str:
    """The installed `kindling-bundle` script of the environment running the tests."""
    candidate = Path(sys.executable).parent / "kindling-bundle"
    found = str(candidate) if candidate.exists() else shutil.which("kindling-bundle")
    if not found:
        pytest.fail("kindling-bundle is not installed: run `pip install -e '.[test]'` first")
    return found


def one_error_line(proc: subprocess.CompletedProcess, code: int = 1) -> str:
    """The single line a failed command prints on stderr: exit `code`, no traceback, prefixed
    `kindling-bundle: error: ` (returned whole)."""
    stderr = proc.stderr.decode()
    lines = stderr.splitlines()
    assert proc.returncode == code and len(lines) == 1, stderr
    assert lines[0].startswith("kindling-bundle: error: ") and "Traceback" not in stderr, stderr
    return lines[0]


@pytest.fixture
def run_cli() -> Callable[..., subprocess.CompletedProcess]:
    """Run the installed CLI as a subprocess and return the completed process."""

    def run(*args: str, input: bytes | None = None, timeout: float = 300, **kwargs):
        return subprocess.run(
            [cli_executable(), *map(str, args)],
            input=input,
            capture_output=True,
            timeout=timeout,
            **kwargs,
        )

    return run
