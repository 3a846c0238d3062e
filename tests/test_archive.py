"""Archives of snapshots in a folder and in a bucket (issue 21): backup, snapshots, restore and
forget, through the library, and the command line as users run it.

The bucket is moto's S3 server from test_cloud.py (a real S3 API on 127.0.0.1, never a cloud)."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import textwrap
from datetime import UTC, datetime
from pathlib import Path

import pytest
from chain_steps import DAY, T0, copy_database, mutate, table_rows
from test_cloud import S3Server, _no_real_cloud, bucket, cli_env, s3_server

from conftest import one_error_line
from kindling_bundle import open_store
from kindling_bundle.db.connection import create_store
from kindling_bundle.errors import BundleError, StoreError
from kindling_bundle.ops import archive as archive_module
from kindling_bundle.ops.archive import (
    Archive,
    backup,
    list_snapshots,
    restore,
)
from kindling_bundle.ops.forget import forget
from kindling_bundle.ops.retention import Policy, keep

SHARED_FIXTURES = (s3_server, bucket, _no_real_cloud)
"""test_cloud's: the moto server, a fresh bucket, and no real cloud (autouse)."""


@pytest.fixture(autouse=True)
def _private_cache(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("KINDLING_BUNDLE_CACHE", str(tmp_path / "cache"))


def run_backup(db: Path, archive: Archive, step: int, **kwargs):
    with open_store(db, readonly=True) as conn:
        return backup(conn, archive, created_at=T0 + step * DAY + 1000, **kwargs)


def restored(archive: Archive, which: str, target: Path) -> Path:
    with create_store(target) as conn:
        _, report = restore(archive, which, conn)
    assert report.integrity.ok
    return target


def chain_of_snapshots(db: Path, archive: Archive, folder: Path, steps: int = 9) -> list:
    """`steps` days of work, a backup after each, with a copy of the database at each backup."""
    reports = []
    for step in range(steps):
        if step:
            mutate(db, step)
        copy_database(db, folder / f"at-{step}.db")
        reports.append(run_backup(db, archive, step))
    return reports


def check_every_snapshot(archive: Archive, reports: list, folder: Path) -> None:
    for step, report in enumerate(reports):
        target = restored(archive, report.snapshot.name, folder / f"restored-{step}.db")
        assert table_rows(target) == table_rows(folder / f"at-{step}.db"), f"snapshot {step}"


# --- a chain of snapshots, each restored row for row ------------------------------------------


def test_nine_backups_to_a_folder_restore_each_snapshot_row_for_row(
    sample_copy: Path, tmp_path: Path
) -> None:
    archive = Archive(str(tmp_path / "archive"))
    reports = chain_of_snapshots(sample_copy, archive, tmp_path)

    kinds = [r.snapshot.kind for r in reports]
    assert kinds == ["full"] + ["increment"] * 7 + ["full"]  # --full-every 7
    assert reports[8].reason == "the latest chain has 7 increments (--full-every 7)"
    names = [r.snapshot.name for r in reports]
    assert names == sorted(names)  # names sort by time
    assert sorted(os.listdir(tmp_path / "archive")) == names  # nothing else left behind
    full = reports[0].snapshot.size
    assert all(r.snapshot.size < full / 10 for r in reports[1:8])
    check_every_snapshot(archive, reports, tmp_path)

    infos = list_snapshots(archive)
    assert [(i.snapshot.kind, i.depth, i.problem) for i in infos] == [
        ("full", 0, None),
        *[("increment", d, None) for d in range(1, 8)],
        ("full", 0, None),
    ]
    assert infos[3].base == reports[2].snapshot.id
    with open_store(sample_copy, readonly=True) as conn:
        (observations,) = conn.execute("SELECT count(*) FROM observations").fetchone()
    assert infos[-1].records["observations"] == observations


def test_nine_backups_to_a_bucket_restore_each_snapshot_row_for_row(
    s3_server: S3Server,
    bucket: str,
    sample_copy: Path,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """Without the local cache: each backup reads its base's chain back from the bucket."""
    monkeypatch.setenv("KINDLING_BUNDLE_CACHE", "off")
    archive = Archive(f"s3://{bucket}/kindling/", s3_server.options)
    reports = chain_of_snapshots(sample_copy, archive, tmp_path)
    assert [r.snapshot.kind for r in reports] == ["full"] + ["increment"] * 7 + ["full"]
    listed = sorted(p.rsplit("/", 1)[-1] for p in s3_server.fs().ls(f"{bucket}/kindling"))
    assert listed == [r.snapshot.name for r in reports]
    check_every_snapshot(archive, reports, tmp_path)


def test_the_cache_saves_reading_the_chain(
    sample_copy: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    archive = Archive(str(tmp_path / "archive"))
    run_backup(sample_copy, archive, 0)
    mutate(sample_copy, 1)
    opened: list[str] = []
    real_open = archive.folder.open

    def spying_open(name: str, **kwargs):
        opened.append(name)
        return real_open(name, **kwargs)

    monkeypatch.setattr(archive.folder, "open", spying_open)
    report = run_backup(sample_copy, archive, 1)
    assert report.snapshot.increment
    # Nothing at all: the cache holds the latest snapshot's depth and its records' hashes (so an
    # encrypted archive is backed up with no identity).
    assert opened == []


# --- an interrupted backup leaves the archive as it was ---------------------------------------


def test_failed_backup_leaves_the_folder_as_it_was(
    sample_copy: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    archive = Archive(str(tmp_path / "archive"))
    run_backup(sample_copy, archive, 0)
    before = sorted(os.listdir(tmp_path / "archive"))
    mutate(sample_copy, 1)

    def fail(*args, **kwargs):
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(archive_module, "snapshot_name", fail)  # written, not yet named
    with pytest.raises(OSError):
        run_backup(sample_copy, archive, 1)
    assert sorted(os.listdir(tmp_path / "archive")) == before
    assert [p.name for p in (tmp_path / "cache").iterdir()] == [before[0].split("-")[-1][:-8]]


def test_killed_backup_leaves_the_folder_as_it_was(sample_copy: Path, tmp_path: Path) -> None:
    """SIGKILL once the bundle is written, just before it gets its name."""
    folder = tmp_path / "archive"
    archive = Archive(str(folder))
    run_backup(sample_copy, archive, 0)
    before = sorted(os.listdir(folder))
    mutate(sample_copy, 1)
    script = textwrap.dedent(
        f"""
        import os, signal
        from kindling_bundle import open_store
        from kindling_bundle.ops import archive as module

        def killed(*args):
            print("written", flush=True)
            os.kill(os.getpid(), signal.SIGKILL)

        module.snapshot_name = killed
        with open_store({str(sample_copy)!r}, readonly=True) as conn:
            module.backup(conn, module.Archive({str(folder)!r}), created_at={T0 + DAY})
        """
    )
    done = subprocess.run([sys.executable, "-c", script], capture_output=True, timeout=120)
    assert done.stdout == b"written\n", done.stderr.decode()
    assert done.returncode == -signal.SIGKILL
    assert sorted(os.listdir(folder)) == before


def test_failed_upload_leaves_the_bucket_as_it_was(
    s3_server: S3Server,
    bucket: str,
    sample_copy: Path,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    archive = Archive(f"s3://{bucket}/kindling", s3_server.options)
    run_backup(sample_copy, archive, 0)
    fs = s3_server.fs()
    before = fs.ls(f"{bucket}/kindling")
    mutate(sample_copy, 1)
    from kindling_bundle.io import folder as folder_module

    def broken_copy(source, dest, length=0):
        dest.write(source.read(1000))
        raise ConnectionResetError(104, "Connection reset by peer")

    monkeypatch.setattr(folder_module.shutil, "copyfileobj", broken_copy)
    with pytest.raises(Exception, match="Connection reset"):
        run_backup(sample_copy, archive, 1)
    assert s3_server.fs().ls(f"{bucket}/kindling") == before
    assert fs.list_multipart_uploads(bucket) == []


# --- broken chains ----------------------------------------------------------------------------


def test_a_missing_base_is_named_and_backup_starts_a_new_chain(
    sample_copy: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("KINDLING_BUNDLE_CACHE", "off")
    folder = tmp_path / "archive"
    archive = Archive(str(folder))
    reports = chain_of_snapshots(sample_copy, archive, tmp_path, steps=4)
    (folder / reports[1].snapshot.name).unlink()  # a link lost by hand

    infos = list_snapshots(archive)
    assert [i.problem is not None for i in infos] == [False, True, True]
    assert f"needs {reports[1].snapshot.id}" in infos[1].problem
    assert f"needs {reports[1].snapshot.id}" in infos[2].problem
    with pytest.raises(BundleError, match=rf"needs {reports[1].snapshot.id} \(created "):
        restored(archive, "latest", tmp_path / "never.db")
    assert not (tmp_path / "never.db").exists()

    mutate(sample_copy, 4)
    report = run_backup(sample_copy, archive, 4)
    assert not report.snapshot.increment
    assert report.reason.startswith("starting a new chain: ")


def test_restore_makes_a_new_database_only(sample_copy: Path, tmp_path: Path) -> None:
    archive = Archive(str(tmp_path / "archive"))
    run_backup(sample_copy, archive, 0)
    with (
        pytest.raises(StoreError, match="already exists"),
        create_store(sample_copy) as conn,
    ):
        restore(archive, "latest", conn)


def test_snapshots_are_found_by_name_time_or_id(sample_copy: Path, tmp_path: Path) -> None:
    archive = Archive(str(tmp_path / "archive"))
    first = run_backup(sample_copy, archive, 0).snapshot
    mutate(sample_copy, 1)
    second = run_backup(sample_copy, archive, 1).snapshot
    catalogue = archive.snapshots()
    assert archive.find("latest", catalogue).name == second.name
    assert archive.find(first.name, catalogue).name == first.name
    assert archive.find(first.name.removesuffix(".kbundle"), catalogue).name == first.name
    assert archive.find(first.sha256[:8], catalogue).name == first.name
    assert archive.find(second.name.split("-")[1], catalogue).name == second.name
    with pytest.raises(Exception, match="matches none"):
        archive.find("deadbeef", catalogue)


def test_backup_refuses_a_time_before_the_latest_snapshot(
    sample_copy: Path, tmp_path: Path
) -> None:
    archive = Archive(str(tmp_path / "archive"))
    run_backup(sample_copy, archive, 3)
    with pytest.raises(Exception, match="is the clock behind"):
        run_backup(sample_copy, archive, 2)


# --- retention --------------------------------------------------------------------------------


def ms(text: str) -> int:
    return int(datetime.fromisoformat(text).replace(tzinfo=UTC).timestamp() * 1000)


def test_retention_keeps_the_newest_of_each_period_as_restic_does() -> None:
    times = [
        ms("2026-01-05T10:00"),  # 0 Monday, week 2
        ms("2026-01-06T10:00"),  # 1
        ms("2026-01-06T18:00"),  # 2 newest of Jan 6
        ms("2026-01-12T09:00"),  # 3 week 3
        ms("2026-01-31T23:00"),  # 4 newest of January
        ms("2026-02-01T01:00"),  # 5
        ms("2026-02-02T01:00"),  # 6 newest
    ]
    assert keep(times, Policy(last=2)) == {6: ["last"], 5: ["last"]}
    assert keep(times, Policy(daily=3)) == {6: ["daily"], 5: ["daily"], 4: ["daily"]}
    assert keep(times, Policy(weekly=3)) == {6: ["weekly"], 5: ["weekly"], 3: ["weekly"]}
    assert keep(times, Policy(monthly=2)) == {6: ["monthly"], 4: ["monthly"]}
    # Rules combine; each counts only the periods it kept a snapshot for.
    assert keep(times, Policy(last=1, daily=2, monthly=3)) == {
        6: ["last", "daily", "monthly"],
        5: ["daily"],
        4: ["monthly"],
        0: ["oldest monthly"],  # a third month does not exist: the oldest is kept (restic 0.16)
    }
    assert keep(times, Policy(daily=30))[0] == ["daily"]  # Jan 5 is a day of its own
    assert keep([], Policy(last=3)) == {}


def test_forget_keeps_every_base_a_kept_snapshot_needs(
    sample_copy: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    folder = tmp_path / "archive"
    archive = Archive(str(folder))
    reports = []
    for step in range(6):  # full, 2 increments, full, 2 increments
        if step:
            mutate(sample_copy, step)
        with open_store(sample_copy, readonly=True) as conn:
            reports.append(backup(conn, archive, full_every=2, created_at=T0 + step * DAY))
    names = [r.snapshot.name for r in reports]
    assert [r.snapshot.kind for r in reports] == ["full", "increment", "increment"] * 2

    dry = forget(archive, Policy(last=1), dry_run=True)
    assert sorted(os.listdir(folder)) == names  # nothing removed
    kept = {s.name: reasons for s, reasons in dry.kept}
    assert kept == {
        names[3]: [f"base of {reports[5].snapshot.id}"],
        names[4]: [f"base of {reports[5].snapshot.id}"],
        names[5]: ["last"],
    }
    assert [s.name for s in dry.removed] == names[:3]

    deleted: list[str] = []
    real_delete = archive.folder.delete
    monkeypatch.setattr(
        archive.folder, "delete", lambda name: (deleted.append(name), real_delete(name))
    )
    forget(archive, Policy(last=1))
    assert deleted == [names[2], names[1], names[0]]  # increments before their base
    assert sorted(os.listdir(folder)) == names[3:]
    target = restored(archive, "latest", tmp_path / "r.db")
    assert table_rows(target) == table_rows(sample_copy)

    with pytest.raises(ValueError, match="no policy"):
        forget(archive, Policy())


# --- the command line -------------------------------------------------------------------------


def test_cli_backup_snapshots_restore_forget_on_a_folder(
    sample_copy: Path, tmp_path: Path, run_cli
) -> None:
    folder = tmp_path / "archive"
    env = {**os.environ, "KINDLING_BUNDLE_CACHE": str(tmp_path / "cli-cache")}
    for step in range(3):
        if step:
            mutate(sample_copy, step)
        copy_database(sample_copy, tmp_path / f"at-{step}.db")
        stamp = str(T0 + step * DAY)
        done = run_cli(
            "backup", "--db", sample_copy, folder, "--created-at", stamp, "--full-every", "1",
            env=env,
        )  # fmt: skip
        assert done.returncode == 0, done.stderr
        kind = "full" if step % 2 == 0 else "increment"
        assert f"\n  {kind}: " in done.stdout.decode()

    done = run_cli("snapshots", folder, "--json", env=env)
    assert done.returncode == 0, done.stderr
    listed = json.loads(done.stdout)["snapshots"]
    assert [(s["kind"], s["depth"]) for s in listed] == [("full", 0), ("increment", 1), ("full", 0)]
    text = run_cli("snapshots", folder, env=env).stdout.decode()
    assert f"{listed[1]['id']} " in text and "incr 1" in text and "3 snapshots" in text

    target = tmp_path / "restored.db"
    done = run_cli("restore", folder, listed[1]["id"], "--db", target, env=env)
    assert done.returncode == 0, done.stderr
    assert "integrity: ok" in done.stdout.decode()
    assert table_rows(target) == table_rows(tmp_path / "at-1.db")
    line = one_error_line(run_cli("restore", folder, "--db", target, env=env))
    assert line.endswith("restored.db: already exists; restore makes a new database")

    done = run_cli("forget", folder, "--keep-last", "1", "--dry-run", env=env)
    assert done.returncode == 0, done.stderr
    assert "kept 1, would remove 2" in done.stdout.decode()
    assert len(os.listdir(folder)) == 3
    done = run_cli("forget", folder, "--keep-last", "1", "--json", env=env)
    assert [s["kind"] for s in json.loads(done.stdout)["remove"]] == ["full", "increment"]
    assert os.listdir(folder) == [listed[2]["name"]]

    usage = run_cli("forget", folder, env=env)
    assert "no policy given" in one_error_line(usage, code=2)


def test_cli_export_base_import_and_verify_a_chain(
    sample_copy: Path, tmp_path: Path, run_cli
) -> None:
    env = {**os.environ, "KINDLING_BUNDLE_CACHE": "off"}
    full, inc1, inc2 = (tmp_path / f"{n}.kbundle" for n in ("full", "inc1", "inc2"))
    assert run_cli("export", "--db", sample_copy, full, env=env).returncode == 0
    mutate(sample_copy, 1)
    done = run_cli("export", "--db", sample_copy, "--base", full, inc1, env=env)
    assert done.returncode == 0, done.stderr
    assert "increment 1 on " in done.stdout.decode()
    mutate(sample_copy, 2)
    done = run_cli(
        "export", "--db", sample_copy, "--base", full, "--base", inc1, inc2, "--json", env=env
    )
    assert json.loads(done.stdout)["manifest"]["formatVersion"] == "2.0"

    done = run_cli("verify", full, inc1, inc2, env=env)
    assert done.returncode == 0, done.stderr
    assert done.stdout.decode().endswith("chain of 3: links valid\n")
    done = run_cli("verify", inc2, env=env)
    assert done.returncode == 0 and "valid" in done.stdout.decode()
    line = one_error_line(run_cli("verify", full, inc2, env=env))
    assert "link 2, " in line and "1 link missing before it" in line

    restored_db = tmp_path / "restored.db"
    done = run_cli("import", "--dry-run", "--db", restored_db, full, inc1, inc2, env=env)
    assert done.returncode == 0, done.stderr
    assert "would apply link 3: " in done.stdout.decode()
    assert not restored_db.exists()
    done = run_cli("import", "--db", restored_db, full, inc1, inc2, env=env)
    assert done.returncode == 0, done.stderr
    assert table_rows(restored_db) == table_rows(sample_copy)

    # One increment at a time onto the database of its base, from standard input too.
    step_db = tmp_path / "step.db"
    assert run_cli("import", "--db", step_db, full, env=env).returncode == 0
    done = run_cli("import", "--db", step_db, "-", input=inc1.read_bytes(), env=env)
    assert done.returncode == 0, done.stderr
    assert run_cli("import", "--db", step_db, inc2, env=env).returncode == 0
    assert table_rows(step_db) == table_rows(sample_copy)

    line = one_error_line(run_cli("import", "--db", tmp_path / "never.db", full, inc2, env=env))
    assert "link 2, " in line and "missing" in line
    assert not (tmp_path / "never.db").exists()
    line = one_error_line(run_cli("import", "--db", step_db, inc1, env=env))
    assert "does not hold this increment's base" in line

    usage = run_cli("export", "--db", sample_copy, "--base", full, "--session", "s", "x", env=env)
    assert "--base writes an increment of the whole database" in one_error_line(usage, code=2)


def test_cli_backup_and_restore_through_a_bucket(
    s3_server: S3Server, bucket: str, sample_copy: Path, tmp_path: Path, run_cli
) -> None:
    url = f"s3://{bucket}/nightly/"
    env = {**cli_env(s3_server), "KINDLING_BUNDLE_CACHE": str(tmp_path / "cache")}
    endpoint = ["--endpoint-url", s3_server.endpoint]
    for step in range(2):
        if step:
            mutate(sample_copy, step)
        stamp = str(T0 + step * DAY)
        args = ("--db", sample_copy, url, "--created-at", stamp, *endpoint)
        done = run_cli("backup", *args, env=env)
        assert done.returncode == 0, done.stderr
    done = run_cli("snapshots", url, "--json", *endpoint, env=env)
    assert [s["kind"] for s in json.loads(done.stdout)["snapshots"]] == ["full", "increment"]
    target = tmp_path / "restored.db"
    done = run_cli("restore", url, "latest", "--db", target, *endpoint, env=env)
    assert done.returncode == 0, done.stderr
    assert table_rows(target) == table_rows(sample_copy)
