"""Shared fixtures: real SQLite files in temporary folders, and the installed CLI."""

from __future__ import annotations

import shutil
import sqlite3
import subprocess
import sys
from collections.abc import Callable
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
