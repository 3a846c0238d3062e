"""The installed `kindling-bundle` command, run as a user runs it: as a subprocess."""

from __future__ import annotations

import hashlib
import json
import os
import pty
import sqlite3
import subprocess
from pathlib import Path

from conftest import cli_executable, dump_tables, one_error_line


def _json(proc: subprocess.CompletedProcess) -> dict:
    assert proc.returncode == 0, proc.stderr.decode()
    return json.loads(proc.stdout)


def test_full_journey_with_json_at_every_step(run_cli, tmp_path: Path) -> None:
    db, bundle, restored = tmp_path / "memory.db", tmp_path / "memory.kbundle", tmp_path / "new.db"

    made = _json(run_cli("sample", db, "--observations", 800, "--seed", 5, "--json"))
    assert made["observations"] == 800

    exported = _json(run_cli("export", "--db", db, bundle, "--json"))
    assert exported["counts"]["observations"] == 800
    assert exported["counts"]["capsules"] == made["capsules"]
    assert exported["bytes"] == bundle.stat().st_size
    assert exported["sha256"] == hashlib.sha256(bundle.read_bytes()).hexdigest()

    verified = _json(run_cli("verify", bundle, "--json"))
    assert verified["ok"] is True
    assert verified["records"]["observations"] == 800

    inspected = _json(run_cli("inspect", bundle, "--json"))
    entities = {e["entity"]: e for e in inspected["manifest"]["entities"]}
    assert entities["pins"]["records"] == made["pins"]
    assert inspected["manifest"]["source"]["schemaGeneration"] == 5

    imported = _json(run_cli("import", "--db", restored, bundle, "--json"))
    assert imported["counts"]["observations"]["inserted"] == 800
    assert imported["counts"]["summaries"]["inserted"] == made["summaries"]
    assert imported["integrity"]["ok"] is True

    again = _json(run_cli("import", "--db", restored, bundle, "--json"))
    assert again["counts"]["observations"] == {
        "inserted": 0,
        "overwritten": 0,
        "skipped": 0,
        "unchanged": 800,
    }

    checked = _json(run_cli("check", "--db", restored, "--json"))
    assert checked["ok"] is True and checked["problems"] == []

    original = dump_tables(db)
    copy = dump_tables(restored)
    for table in ("observations", "capsules", "capsule_observations", "summaries", "pins"):
        # every column of every row, whatever order (rowid) the rows were written in
        assert sorted(r[1:] for r in copy[table]) == sorted(r[1:] for r in original[table]), table


def test_human_output_is_short_and_quiet_is_silent(run_cli, sample_db: Path, tmp_path: Path):
    bundle = tmp_path / "b.kbundle"
    proc = run_cli("export", "--db", sample_db, bundle)
    text = proc.stdout.decode()
    assert proc.returncode == 0 and proc.stderr == b""  # no progress bar when not a terminal
    assert "1500 observations" in text and "sha256" in text
    quiet = run_cli("verify", bundle, "--quiet")
    assert quiet.returncode == 0 and quiet.stdout == b"" and quiet.stderr == b""
    assert "valid" in run_cli("verify", bundle).stdout.decode()
    table = run_cli("inspect", bundle).stdout.decode()
    assert "observations" in table and "1,500" in table and "format:   kindling-bundle 1.0" in table


def test_pipe_export_to_import_gives_the_same_database_as_a_file(
    sample_db: Path, tmp_path: Path, run_cli
) -> None:
    through_file, through_pipe = tmp_path / "file.db", tmp_path / "pipe.db"
    bundle = tmp_path / "b.kbundle"
    assert run_cli("export", "--db", sample_db, bundle).returncode == 0
    assert run_cli("import", "--db", through_file, bundle).returncode == 0

    exe = cli_executable()
    producer = subprocess.Popen(
        [exe, "export", "--db", str(sample_db), "-"],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
    )
    consumer = subprocess.run(
        [exe, "import", "--db", str(through_pipe), "-"],
        stdin=producer.stdout,
        capture_output=True,
        timeout=120,
    )
    producer.stdout.close()
    assert producer.wait(timeout=120) == 0
    assert consumer.returncode == 0, consumer.stderr.decode()
    assert b"exported" in producer.stderr.read()  # the summary goes to stderr, not into the pipe

    a, b = dump_tables(through_file), dump_tables(through_pipe)
    a.pop("schema_migrations"), b.pop("schema_migrations")
    assert a == b


def test_export_filters_and_times(run_cli, sample_db: Path, tmp_path: Path) -> None:
    whole = _json(run_cli("export", "--db", sample_db, tmp_path / "all.kbundle", "--json"))
    later = _json(
        run_cli(
            "export",
            "--db",
            sample_db,
            tmp_path / "later.kbundle",
            "--json",
            "--since",
            "2026-01-01T06:00:00Z",
            "--created-at",
            "2026-02-01",
        )
    )
    assert 0 < later["counts"]["observations"] < whole["counts"]["observations"]
    assert later["manifest"]["createdAt"] == 1769904000000
    assert later["manifest"]["filter"]["fromTs"] == 1767247200000
    assert whole["manifest"]["filter"]["scopeIds"] is None
    session = (
        sqlite3.connect(sample_db)
        .execute("SELECT session_id FROM observations LIMIT 1")
        .fetchone()[0]
    )
    one = _json(
        run_cli(
            "export", "--db", sample_db, "--session", session, tmp_path / "one.kbundle", "--json"
        )
    )
    assert one["manifest"]["filter"]["scopeIds"] == {"sessionId": session}
    assert 0 < one["counts"]["observations"] < whole["counts"]["observations"]
    restored = tmp_path / "one.db"
    assert _json(run_cli("import", "--db", restored, tmp_path / "one.kbundle", "--json"))[
        "integrity"
    ]["ok"]


def test_same_created_at_gives_byte_identical_bundles(run_cli, sample_db: Path, tmp_path: Path):
    for name in ("a", "b"):
        proc = run_cli(
            "export",
            "--db",
            sample_db,
            "--created-at",
            "1767225600000",
            tmp_path / f"{name}.kbundle",
        )
        assert proc.returncode == 0
    assert (tmp_path / "a.kbundle").read_bytes() == (tmp_path / "b.kbundle").read_bytes()


def test_db_defaults_to_kindling_db_environment_variable(run_cli, sample_db: Path, tmp_path):
    env = {**os.environ, "KINDLING_DB": str(sample_db)}
    proc = run_cli("check", "--json", env=env)
    assert json.loads(proc.stdout)["database"] == str(sample_db)
    home = tmp_path / "home"
    (home / ".kindling").mkdir(parents=True)
    env = {k: v for k, v in os.environ.items() if k != "KINDLING_DB"} | {"HOME": str(home)}
    line = one_error_line(run_cli("check", env=env))
    assert f"{home / '.kindling' / 'kindling.db'}: no such database" in line


def test_dry_run_writes_nothing(run_cli, sample_db: Path, tmp_path: Path) -> None:
    bundle = tmp_path / "b.kbundle"
    run_cli("export", "--db", sample_db, bundle)
    target = tmp_path / "absent.db"
    report = _json(run_cli("import", "--dry-run", "--db", target, bundle, "--json"))
    assert report["dry_run"] is True and report["counts"]["observations"]["inserted"] == 1500
    assert not target.exists()


def test_conflict_error_exits_1_and_leaves_the_database_unchanged(
    run_cli, sample_copy: Path, tmp_path: Path
) -> None:
    bundle = tmp_path / "b.kbundle"
    run_cli("export", "--db", sample_copy, bundle)
    conn = sqlite3.connect(sample_copy)
    oid = conn.execute("SELECT id FROM observations WHERE redacted = 0 LIMIT 1").fetchone()[0]
    conn.execute("UPDATE observations SET content = 'changed here' WHERE id = ?", (oid,))
    conn.commit()
    conn.close()
    before = dump_tables(sample_copy)
    line = one_error_line(run_cli("import", "--db", sample_copy, "--conflict", "error", bundle))
    assert oid in line
    assert dump_tables(sample_copy) == before
    overwritten = _json(
        run_cli("import", "--db", sample_copy, "--conflict", "overwrite", bundle, "--json")
    )
    assert overwritten["counts"]["observations"]["overwritten"] == 1


def test_missing_file_gives_one_line_and_creates_no_database(run_cli, tmp_path: Path) -> None:
    for command in (("verify",), ("inspect",), ("import", "--db", tmp_path / "x.db")):
        line = one_error_line(run_cli(*command, tmp_path / "nope.kbundle"))
        assert "nope.kbundle" in line
    assert list(tmp_path.iterdir()) == []


def test_failed_import_into_a_new_database_leaves_none(run_cli, tmp_path: Path) -> None:
    damaged = tmp_path / "damaged.kbundle"
    damaged.write_bytes(bytes.fromhex("28b52ffd") + b"\x00" * 64)
    one_error_line(run_cli("import", "--db", tmp_path / "new.db", damaged))
    assert sorted(p.name for p in tmp_path.iterdir()) == ["damaged.kbundle"]


def test_non_bundle_file_gives_one_line(run_cli, sample_db: Path, tmp_path: Path) -> None:
    text = tmp_path / "notes.kbundle"
    text.write_text("just some notes\n")
    for command in (("verify",), ("inspect",), ("import", "--db", tmp_path / "x.db")):
        line = one_error_line(run_cli(*command, text))
        assert "notes.kbundle" in line and "not" in line


def test_bad_option_is_a_usage_error_with_one_line(run_cli, tmp_path: Path) -> None:
    for args in (
        ("export", "--bogus", "x"),
        ("import", "--conflict", "maybe", "x"),
        ("export", "--since", "yesterday-ish", "x"),
        ("sample",),
        ("frobnicate",),
        ("export", "--created-at", "-5", "x"),
        ("export", "--since", "2026-02-01", "--until", "2026-01-01", "x"),
    ):
        one_error_line(run_cli(*args), code=2)


def test_refused_database_gives_one_line(run_cli, sample_db: Path, tmp_path: Path) -> None:
    not_db = tmp_path / "plain.db"
    not_db.write_text("hello")
    for args in (("export", "--db", not_db, tmp_path / "o.kbundle"), ("check", "--db", not_db)):
        line = one_error_line(run_cli(*args))
        assert "plain.db" in line and "not a SQLite database" in line
    assert not (tmp_path / "o.kbundle").exists()
    assert not list(tmp_path.glob(".o.kbundle*"))
    one_error_line(run_cli("export", "--db", tmp_path / "absent.db", tmp_path / "o.kbundle"))


def test_check_finds_a_problem_and_exits_1(run_cli, sample_copy: Path) -> None:
    conn = sqlite3.connect(sample_copy)
    conn.execute(
        "INSERT INTO pins (id, target_type, target_id, created_at) "
        "VALUES ('dangling-pin', 'observation', 'no-such-observation', 1)"
    )
    conn.commit()
    conn.close()
    line = one_error_line(run_cli("check", "--db", sample_copy))
    assert "dangling-pin" in line


def test_version_and_help_everywhere(run_cli) -> None:
    assert run_cli("--version").stdout.decode().startswith("kindling-bundle, version")
    top = run_cli("--help").stdout.decode()
    assert "Exit codes" in top
    for command in ("export", "import", "verify", "inspect", "check", "sample"):
        proc = run_cli(command, "--help")
        assert proc.returncode == 0 and b"--json" in proc.stdout, command


def test_progress_is_drawn_on_a_terminal(sample_db: Path, tmp_path: Path) -> None:
    bundle = tmp_path / "b.kbundle"
    controller, terminal = pty.openpty()
    proc = subprocess.run(
        [cli_executable(), "export", "--db", str(sample_db), str(bundle)],
        stdout=subprocess.PIPE,
        stderr=terminal,
        timeout=120,
    )
    os.close(terminal)
    drawn = b""
    try:
        while chunk := os.read(controller, 65536):
            drawn += chunk
    except OSError:
        pass
    os.close(controller)
    assert proc.returncode == 0
    assert b"export:" in drawn and b"records" in drawn and b"left" in drawn


def test_corrupt_database_gives_one_line_for_check_and_export(
    run_cli, sample_copy: Path, tmp_path: Path
) -> None:
    conn = sqlite3.connect(sample_copy)
    conn.execute("PRAGMA wal_checkpoint(TRUNCATE)")
    conn.close()
    data = bytearray(sample_copy.read_bytes())
    for offset in range(8 * 4096, len(data), 3 * 4096):  # wreck pages all through the file
        data[offset : offset + 600] = bytes(range(256)) * 2 + bytes(88)
    sample_copy.write_bytes(bytes(data))
    for args in (("check", "--db", sample_copy), ("export", "--db", sample_copy, tmp_path / "o")):
        line = one_error_line(run_cli(*args))
        assert "copy.db" in line and "internal error" not in line
    assert not (tmp_path / "o").exists()
