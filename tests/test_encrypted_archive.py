"""Encrypted and signed archives (issues 18, 19 and 21): `backup --recipient --sign-key`, and
`snapshots`, `restore`, `import` of a chain and `verify` of increments opened with `--identity`;
refused in one line, with nothing written, without a key or with the wrong one. A link's base is
named by the SHA-256 of its plaintext bundle (spec 16.2), checked here against the `age` tool's
own decryption. No file written while backing up (or restoring) holds a record in the clear."""

from __future__ import annotations

import hashlib
import json
import os
import re
import subprocess
from pathlib import Path

import pytest
from age_tools import age_keygen, run, ssh_keygen
from chain_steps import DAY, T0, copy_database, mutate, table_rows
from test_encrypted_bundles import (  # noqa: F401  (marked_db, watched: fixtures used below)
    MARKER,
    PlaintextWatch,
    marked_db,
    watched,
)

from conftest import cli_executable, one_error_line
from kindling_bundle import ReadOptions, load_identities, open_store, parse_recipient
from kindling_bundle.db.connection import create_store
from kindling_bundle.ops.archive import Archive, backup, restore
from kindling_bundle.parallel import strategy


@pytest.fixture(autouse=True)
def _private_cache(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("KINDLING_BUNDLE_CACHE", str(tmp_path / "cache"))
    monkeypatch.delenv("KINDLING_BUNDLE_IDENTITY", raising=False)
    monkeypatch.delenv("KINDLING_BUNDLE_ALLOWED_SIGNERS", raising=False)


def cli(*args: str | Path, **env: str) -> subprocess.CompletedProcess:
    return subprocess.run(
        [cli_executable(), *map(str, args)],
        capture_output=True,
        timeout=300,
        env={**os.environ, **env},
    )


@pytest.fixture(scope="module")
def keys(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path | str]:
    folder = tmp_path_factory.mktemp("keys")
    age_pub = age_keygen(folder / "age.txt")
    age_keygen(folder / "other.txt")
    public = ssh_keygen(folder / "alice", "ed25519")
    signers = folder / "allowed_signers"
    signers.write_text(f"alice {public}")
    strangers = folder / "strangers"
    strangers.write_text(f"bob {ssh_keygen(folder / 'bob', 'ed25519')}")
    return {
        "age_pub": age_pub,
        "age_id": folder / "age.txt",
        "other_id": folder / "other.txt",
        "sign": folder / "alice",
        "signers": signers,
        "strangers": strangers,
    }


def names(archive: Path) -> list[str]:
    return sorted(path.name for path in archive.iterdir())


@pytest.fixture
def encrypted_archive(sample_copy: Path, keys: dict, tmp_path: Path) -> dict:
    """Six encrypted and signed backups of a database changing between them, with a copy of the
    database at each, none but the fourth given a key to decrypt: the cache holds what an
    increment needs. The fourth is made without the cache, so the latest chain is read from the
    archive with the identity; the fifth with an empty cache and no identity, so it starts a new
    chain with a full bundle, and the sixth is an increment on it from that cache."""
    archive = tmp_path / "archive"
    reasons, kinds = [], []
    for step in range(6):
        if step:
            mutate(sample_copy, step)
        copy_database(sample_copy, tmp_path / f"at-{step}.db")
        reading: tuple[str | Path, ...] = ()
        env = {}
        if step == 3:  # no cache: the chain is read back, with the key
            env["KINDLING_BUNDLE_CACHE"] = "off"
            reading = ("--identity", keys["age_id"])
        if step >= 4:  # another machine's cache, empty at first, and still no key
            env["KINDLING_BUNDLE_CACHE"] = str(tmp_path / "other-cache")
        done = cli(
            "backup", "--db", sample_copy, archive, "-r", keys["age_pub"], "--sign-key",
            keys["sign"], "--created-at", T0 + step * DAY, *reading, "--json", **env,
        )  # fmt: skip
        assert done.returncode == 0, done.stderr
        result = json.loads(done.stdout)
        reasons.append(result["reason"])
        kinds.append(result["snapshot"]["kind"])
        assert result["signature"]["status"] == "signed"
        assert result["recipients"] == [keys["age_pub"]]
    assert kinds == ["full", "increment", "increment", "increment", "full", "increment"]
    assert reasons[3] == "increment 3 on " + reasons[3].rsplit(" ", 1)[-1]
    assert "starting a new chain" in reasons[4] and "no identity" in reasons[4]
    files = names(archive)
    assert len(files) == 6
    for name in files:  # every file is an age file: nothing in the clear
        assert (archive / name).read_bytes().startswith(b"age-encryption.org/v1\n")
    return {"archive": archive, "names": files, "db": sample_copy}


def test_an_encrypted_signed_chain_restores_each_snapshot_row_for_row(
    encrypted_archive: dict, keys: dict, tmp_path: Path
) -> None:
    archive = encrypted_archive["archive"]
    done = cli("snapshots", archive, "--identity", keys["age_id"], "--json")
    assert done.returncode == 0, done.stderr
    listed = json.loads(done.stdout)["snapshots"]
    assert [s["kind"] for s in listed] == ["full", *["increment"] * 3, "full", "increment"]
    assert [s["depth"] for s in listed] == [0, 1, 2, 3, 0, 1]
    assert all(s["problem"] is None for s in listed)
    for step, snap in enumerate(listed):
        target = tmp_path / f"restored-{step}.db"
        done = cli(
            "restore", archive, snap["id"], "--db", target, "--identity", keys["age_id"],
            "--allowed-signers", keys["signers"], "--require-signature",
        )  # fmt: skip
        assert done.returncode == 0, done.stderr
        assert "integrity: ok" in done.stdout.decode()
        assert table_rows(target) == table_rows(tmp_path / f"at-{step}.db"), f"snapshot {step}"

    # The same chain given as files to import and verify, the key from the environment.
    chain = [archive / name for name in encrypted_archive["names"][:4]]
    key_env = {"KINDLING_BUNDLE_IDENTITY": str(keys["age_id"])}
    done = cli("verify", "--allowed-signers", keys["signers"], *chain, **key_env)
    assert done.returncode == 0, done.stdout
    assert "chain of 4: links valid" in done.stdout.decode()
    imported = tmp_path / "imported.db"
    done = cli("import", "--db", imported, *chain, **key_env)
    assert done.returncode == 0, done.stderr
    assert table_rows(imported) == table_rows(tmp_path / "at-3.db")

    # An increment applied onto the database its base restores, and a stranger's signature.
    applied = tmp_path / "restored-2.db"
    done = cli("import", "--db", applied, chain[3], "--identity", keys["age_id"])
    assert done.returncode == 0, done.stderr
    assert table_rows(applied) == table_rows(tmp_path / "at-3.db")
    refused = tmp_path / "refused.db"
    line = one_error_line(
        cli("import", "--db", refused, "--allowed-signers", keys["strangers"], *chain, **key_env)
    )
    assert "alice" not in line and "allowed" in line.lower(), line
    assert not refused.exists()


@pytest.mark.parametrize("key", ["none", "wrong"])
def test_without_the_key_every_reader_refuses_in_one_line_and_writes_nothing(
    key: str, encrypted_archive: dict, keys: dict, tmp_path: Path
) -> None:
    archive = encrypted_archive["archive"]
    reading = () if key == "none" else ("--identity", keys["other_id"])
    expected = "no identity" if key == "none" else "none of the"
    chain = [archive / name for name in encrypted_archive["names"][:3]]
    target = tmp_path / "restored.db"
    existing = copy_database(encrypted_archive["db"], tmp_path / "existing.db")
    before = table_rows(existing)
    for args in (
        ("snapshots", archive),
        ("restore", archive, "latest", "--db", target),
        ("import", "--db", target, *chain),
        ("import", "--db", existing, chain[2]),
        ("verify", *chain),
        ("forget", archive, "--keep-last", "1"),
    ):
        line = one_error_line(cli(*args, *reading))
        assert "encrypted" in line and expected in line.lower(), (args, line)
        assert not target.exists(), args
    assert table_rows(existing) == before
    assert names(archive) == encrypted_archive["names"]  # forget removed nothing


def test_age_decrypts_a_backup_link_to_the_bundle_its_name_and_successor_name(
    encrypted_archive: dict, keys: dict, tmp_path: Path
) -> None:
    archive, files = encrypted_archive["archive"], encrypted_archive["names"]
    plain = []
    for position, name in enumerate(files[:2]):
        out = tmp_path / f"link-{position}.kbundle"
        done = run("age", "-d", "-i", keys["age_id"], "-o", out, archive / name)
        assert done.returncode == 0, done.stderr
        plain.append(out)
        # The archive names a snapshot by the SHA-256 of its bundle, the plaintext.
        named = re.fullmatch(r"kindling-.*-(full|incr)-([0-9a-f]{64})\.kbundle", name)
        assert named is not None
        assert hashlib.sha256(out.read_bytes()).hexdigest() == named.group(2)
    done = cli("verify", "--allowed-signers", keys["signers"], "--json", *plain)
    assert done.returncode == 0, done.stdout
    result = json.loads(done.stdout)
    assert [b["signature"]["principals"] for b in result["bundles"]] == [["alice"], ["alice"]]
    manifest = result["bundles"][1]["manifest"]
    assert manifest["base"]["sha256"] == hashlib.sha256(plain[0].read_bytes()).hexdigest()


def test_an_encrypted_backup_and_its_restore_write_no_plaintext_to_any_file(
    marked_db: Path,  # noqa: F811
    watched: Path,  # noqa: F811
    keys: dict,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    # The archive, the cache and every temporary file are where the watch looks; the database
    # (written by the backups, the output of the restore) is not.
    monkeypatch.setenv("KINDLING_BUNDLE_CACHE", str(watched / "cache"))
    # The watch's thread would keep the export from forking (fork_is_safe asks for a process of
    # one thread); the encoding child touches nothing the watch holds.
    monkeypatch.setattr(strategy, "fork_is_safe", lambda: True)
    db = copy_database(marked_db, tmp_path / "marked.db")
    recipients = (parse_recipient(str(keys["age_pub"])),)

    plain = Archive(str(watched / "plain-archive"))
    with PlaintextWatch(watched) as control, open_store(db, readonly=True) as conn:
        backup(conn, plain, created_at=T0, recipients=())
    assert control.found, "the watch saw no plaintext in a plain backup"
    for path in (watched / "plain-archive").iterdir():
        path.unlink()

    archive = Archive(
        str(watched / "archive"), options=ReadOptions(load_identities(keys["age_id"]))
    )
    with PlaintextWatch(watched) as watch:
        for step in range(3):
            if step:
                mutate(db, step)
                conn = open_store(db)
                with conn:
                    conn.execute(
                        "UPDATE observations SET content = content || ? WHERE id LIKE ?",
                        (" " + MARKER.decode(), f"obs-{step}-%"),
                    )
                conn.close()
            with open_store(db, readonly=True) as conn:
                report = backup(
                    conn, archive, created_at=T0 + (step + 1) * DAY, recipients=recipients
                )
            assert report.snapshot.increment == (step > 0)
        with create_store(tmp_path / "restored.db") as conn:
            restore(archive, "latest", conn)
    assert watch.found == []
    assert len(watch.files) >= 3  # the snapshots, at least
    assert table_rows(tmp_path / "restored.db") == table_rows(db)


def test_export_base_on_an_encrypted_bundle_names_its_plaintext(
    sample_copy: Path, keys: dict, tmp_path: Path
) -> None:
    full, inc = tmp_path / "full.kbundle", tmp_path / "inc.kbundle"
    encrypt = ("-r", keys["age_pub"])
    done = cli("export", "--db", sample_copy, *encrypt, "--created-at", T0, full)
    assert done.returncode == 0, done.stderr
    mutate(sample_copy, 1)
    at1 = copy_database(sample_copy, tmp_path / "at1.db")
    base = ("--base", full, *encrypt, "--created-at", T0 + DAY)
    line = one_error_line(cli("export", "--db", sample_copy, *base, inc))
    assert "no identity" in line and not inc.exists()

    done = cli("export", "--db", sample_copy, *base, "-i", keys["age_id"], "--json", inc)
    assert done.returncode == 0, done.stderr
    result = json.loads(done.stdout)
    assert inc.read_bytes().startswith(b"age-encryption.org/v1\n")
    assert result["sha256"] == hashlib.sha256(inc.read_bytes()).hexdigest()  # the file's
    plain = tmp_path / "full-plain.kbundle"
    assert run("age", "-d", "-i", keys["age_id"], "-o", plain, full).returncode == 0
    assert result["manifest"]["base"]["sha256"] == hashlib.sha256(plain.read_bytes()).hexdigest()
    assert result["bundle_sha256"] != result["sha256"]

    restored = tmp_path / "restored.db"
    done = cli("import", "--db", restored, "-i", keys["age_id"], full, inc)
    assert done.returncode == 0, done.stderr
    assert table_rows(restored) == table_rows(at1)
