"""The realistic sample text (issue 17): real lengths, a real vocabulary, adapters' provenance."""

from __future__ import annotations

import hashlib
import json
import sqlite3
import statistics
import subprocess
import sysconfig
from collections.abc import Callable
from pathlib import Path

import pytest

from conftest import dump_tables, one_error_line
from kindling_bundle import generate_sample
from kindling_bundle.db.sample.truncation import MAX_CONTENT, cap

OBSERVATIONS = 5000
NOTICE = len("\n\n[Truncated 1234567 characters]")


@pytest.fixture(scope="module")
def realistic(tmp_path_factory: pytest.TempPathFactory) -> Path:
    path = tmp_path_factory.mktemp("realistic") / "realistic.db"
    generate_sample(path, observations=OBSERVATIONS, seed=11)
    return path


def _rows(path: Path, sql: str) -> list[tuple]:
    conn = sqlite3.connect(f"file:{path}?mode=ro", uri=True)
    try:
        return conn.execute(sql).fetchall()
    finally:
        conn.close()


def _vocabulary(path: Path) -> int:
    conn = sqlite3.connect(path)
    try:
        conn.execute("CREATE VIRTUAL TABLE temp.v USING fts5vocab(main, observations_fts, row)")
        return int(conn.execute("SELECT count(*) FROM temp.v").fetchone()[0])
    finally:
        conn.close()


def _observations(path: Path) -> list[tuple[str, str, dict]]:
    rows = _rows(path, "SELECT kind, content, provenance FROM observations WHERE redacted = 0")
    return [(kind, content, json.loads(provenance)) for kind, content, provenance in rows]


def test_lengths_have_a_median_of_hundreds_and_a_long_capped_tail(realistic: Path) -> None:
    lengths = [len(content) for _, content, _ in _observations(realistic)]
    assert 150 <= statistics.median(lengths) <= 800
    assert max(lengths) > 10_000  # a long tail: whole files read, long diffs and outputs
    assert max(lengths) <= MAX_CONTENT + NOTICE
    by_kind: dict[str, list[int]] = {}
    for kind, content, _ in _observations(realistic):
        by_kind.setdefault(kind, []).append(len(content))
    for kind in ("message", "tool_call", "command", "file_diff", "error"):
        assert 100 <= statistics.median(by_kind[kind]) <= 3000, kind
    assert max(by_kind["node_start"]) < 200  # "Node started: NAME", as the adapter writes it


def test_content_is_truncated_as_kindlings_adapter_truncates() -> None:
    assert cap("x" * MAX_CONTENT) == "x" * MAX_CONTENT
    long = cap("y" * (MAX_CONTENT + 1234))
    assert long == "y" * MAX_CONTENT + "\n\n[Truncated 1234 characters]"


def test_vocabulary_is_that_of_real_text(realistic: Path, tmp_path: Path) -> None:
    salad = tmp_path / "salad.db"
    generate_sample(salad, observations=OBSERVATIONS, seed=11, text="small-vocabulary")
    assert _vocabulary(salad) < 3000  # the word salad of the first version
    assert _vocabulary(realistic) > 10_000


def test_reads_are_real_lines_of_the_standard_library(realistic: Path) -> None:
    root = Path(sysconfig.get_paths()["stdlib"])
    checked = 0
    for _, content, provenance in _observations(realistic):
        path = provenance.get("filePath", "")
        if provenance.get("toolName") != "Read" or "/src/" not in path:
            continue
        source = (root / path.split("/src/", 1)[1]).read_text(encoding="utf-8").split("\n")
        numbered = [line for line in content.split("\n") if "\t" in line][:50]
        for line in numbered:
            number, text = line.split("\t", 1)
            assert source[int(number) - 1] == text, (path, number)
        checked += 1
    assert checked > 20


def test_content_is_code_diffs_tracebacks_commands_and_prose(realistic: Path) -> None:
    contents = {kind: [] for kind in ("file_diff", "error", "command", "message")}
    for kind, content, _ in _observations(realistic):
        contents.get(kind, []).append(content)
    assert all("\n@@ -" in c and "\n+++ b/" in c for c in contents["file_diff"])
    assert all("Traceback (most recent call last):" in c for c in contents["error"])
    assert all(c.startswith(("$ ", "Tool: Bash\n\n$ ")) for c in contents["command"])
    assert sum("def " in c for c in contents["message"]) > 10  # pasted and quoted code
    assert any(any(ord(ch) > 127 for ch in c) for c in contents["message"])  # some unicode


def test_provenance_is_shaped_as_adapters_write_it(realistic: Path) -> None:
    tools, exit_codes, nested, floats = set(), set(), 0, 0
    for kind, _, provenance in _observations(realistic):
        if kind == "tool_call":
            assert isinstance(provenance["toolName"], str)
            tools.add(provenance["toolName"])
        if kind == "command":
            assert isinstance(provenance["exitCode"], int)
            exit_codes.add(provenance["exitCode"])
            if "toolName" in provenance:  # Claude Code: the command's first word
                assert provenance["toolName"] == "Bash" and " " not in provenance["command"]
            else:  # OpenCode: the whole line, where, how long, nested output sizes
                assert isinstance(provenance["durationMs"], int)
                assert set(provenance["output"]) == {"stdoutBytes", "stderrBytes"}
        if kind == "file_diff":
            assert "filePath" in provenance or provenance["paths"]
        if kind.startswith("node_") and "agentType" not in provenance:
            assert provenance["nodeName"] and provenance["nodeId"].startswith("node-")
        if kind == "node_error":
            assert "Traceback" in provenance["stack"]
        nested += any(isinstance(v, dict) for v in provenance.values())
        floats += any(isinstance(v, float) for v in provenance.values())
    assert {"Read", "Grep", "Glob", "read", "grep"} <= tools
    assert {0, 1} <= exit_codes
    assert nested > 100 and floats > 10


def test_sessions_repos_agents_capsules_redactions_and_pins(realistic: Path) -> None:
    def one(sql: str) -> int:
        return int(_rows(realistic, sql)[0][0])

    assert one("SELECT count(DISTINCT session_id) FROM observations") > 20
    assert one("SELECT count(DISTINCT repo_id) FROM observations") > 10
    assert one("SELECT count(DISTINCT agent_id) FROM observations") > 4
    assert one("SELECT count(DISTINCT kind) FROM observations") == 9
    assert one("SELECT count(*) FROM capsules WHERE status = 'open'") > 0
    assert one("SELECT count(*) FROM capsules WHERE status = 'closed'") > 0
    assert one("SELECT count(DISTINCT type) FROM capsules") == 2
    assert one("SELECT count(*) FROM capsules WHERE intent = 'Claude Code session'") > 0
    assert one("SELECT count(*) FROM summaries WHERE content LIKE 'Node ''%'") > 0
    assert 0 < one("SELECT count(*) FROM observations WHERE redacted = 1") < OBSERVATIONS / 50
    assert one("SELECT count(DISTINCT target_type) FROM pins") == 2
    assert one("SELECT count(*) FROM pins WHERE expires_at IS NULL") > 0
    assert one("SELECT count(*) FROM pins WHERE expires_at IS NOT NULL") > 0


def test_same_seed_same_database_in_any_process(
    tmp_path: Path, run_cli: Callable[..., subprocess.CompletedProcess]
) -> None:
    """The text is read from the library once per process: whatever an earlier sample read,
    a seed gives the same rows, FTS index included, here and in a new process."""
    generate_sample(tmp_path / "a.db", observations=600, seed=4)
    generate_sample(tmp_path / "b.db", observations=600, seed=4)
    assert run_cli("sample", tmp_path / "c.db", "-n", 600, "--seed", 4).returncode == 0
    generate_sample(tmp_path / "d.db", observations=600, seed=5)
    a, b, c, d = (dump_tables(tmp_path / f"{n}.db") for n in "abcd")
    for dump in (a, b, c, d):
        dump.pop("schema_migrations")  # when it was made
    assert a == b == c
    assert a["observations"] != d["observations"]


def test_small_vocabulary_is_the_first_versions_text(tmp_path: Path) -> None:
    """Byte for byte what the first generator wrote for this seed: benchmarks on it compare."""
    generate_sample(tmp_path / "salad.db", observations=500, seed=3, text="small-vocabulary")
    digest = hashlib.sha256()
    for table in ("observations", "capsules", "capsule_observations", "summaries", "pins"):
        for row in _rows(tmp_path / "salad.db", f"SELECT * FROM {table} ORDER BY rowid"):
            digest.update(repr(row).encode())
    assert digest.hexdigest() == "99859c42e29990a2f6bbfdc35e0bfa8b0004a3019106d547c8d802dbd0bc22c8"


def test_cli_text_option_and_check(
    tmp_path: Path, run_cli: Callable[..., subprocess.CompletedProcess]
) -> None:
    salad, real = tmp_path / "salad.db", tmp_path / "real.db"
    made = run_cli("sample", salad, "-n", 400, "--text", "small-vocabulary", "--json")
    assert made.returncode == 0, made.stderr.decode()
    assert json.loads(made.stdout)["text"] == "small-vocabulary"
    made = run_cli("sample", real, "-n", 400, "--json")
    assert json.loads(made.stdout)["text"] == "realistic"
    assert _vocabulary(real) > 3 * _vocabulary(salad)
    checked = run_cli("check", "--db", real)
    assert checked.returncode == 0 and b"integrity: ok" in checked.stdout, checked.stdout
    refused = run_cli("sample", tmp_path / "x.db", "--text", "lorem")
    assert "lorem" in one_error_line(refused, 2)
    assert not (tmp_path / "x.db").exists()
