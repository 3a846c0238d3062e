"""Signed increments (issues 14 and 21, spec section 16): a signed full bundle is a base like any
other, `export --base --sign-key` writes a 2.1 increment whose signature is checked wherever it
is read, and a stripped signature is refused. Needs OpenSSH's ssh-keygen."""

from __future__ import annotations

import json
import os
import subprocess
from pathlib import Path

import pytest
from chain_steps import DAY, T0, copy_database, mutate, table_rows
from test_signed_bundles import keygen, members_of, public_line, rebuild

from conftest import cli_executable, one_error_line
from kindling_bundle import read_manifest


@pytest.fixture(autouse=True)
def _private_cache(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("KINDLING_BUNDLE_CACHE", str(tmp_path / "cache"))


def cli(*args: str | Path) -> subprocess.CompletedProcess:
    env = {k: v for k, v in os.environ.items() if k != "KINDLING_BUNDLE_ALLOWED_SIGNERS"}
    return subprocess.run(
        [cli_executable(), *map(str, args)], capture_output=True, timeout=300, env=env
    )


@pytest.fixture
def signed_chain(sample_copy: Path, tmp_path: Path) -> dict[str, Path]:
    """A signed full bundle and a signed increment on it, with the database at the second."""
    key = keygen(tmp_path / "alice")
    signers = tmp_path / "allowed_signers"
    signers.write_text(f"alice {public_line(key)}\n")
    full, inc = tmp_path / "full.kbundle", tmp_path / "inc.kbundle"
    done = cli("export", "--db", sample_copy, "--sign-key", key, "--created-at", T0, full)
    assert done.returncode == 0, done.stderr
    mutate(sample_copy, 1)
    at1 = copy_database(sample_copy, tmp_path / "at1.db")
    done = cli(
        "export", "--db", sample_copy, "--base", full, "--sign-key", key,
        "--created-at", T0 + DAY, "--json", inc,
    )  # fmt: skip
    assert done.returncode == 0, done.stderr
    assert json.loads(done.stdout)["signature"]["status"] == "signed"
    return {"full": full, "inc": inc, "at1": at1, "signers": signers, "key": key}


def test_a_signed_increment_on_a_signed_base_verifies_and_restores(
    signed_chain: dict[str, Path], tmp_path: Path
) -> None:
    full, inc = signed_chain["full"], signed_chain["inc"]
    assert read_manifest(full).format_version == "1.1"
    assert read_manifest(inc).format_version == "2.1"
    assert [name for name, _ in members_of(inc)][:3] == [
        "manifest.json",
        "manifest.sig",
        "tombstones.msgpack",
    ]

    done = cli("verify", "--allowed-signers", signed_chain["signers"], "--json", full, inc)
    assert done.returncode == 0, done.stdout
    bundles = json.loads(done.stdout)["bundles"]
    assert [b["signature"]["principals"] for b in bundles] == [["alice"], ["alice"]]

    restored = tmp_path / "restored.db"
    done = cli("import", "--db", restored, full, inc)
    assert done.returncode == 0, done.stderr
    assert table_rows(restored) == table_rows(signed_chain["at1"])


def test_a_signed_increment_whose_signature_was_removed_is_refused(
    signed_chain: dict[str, Path], tmp_path: Path
) -> None:
    stripped = tmp_path / "stripped.kbundle"
    kept = [
        (name, data) for name, data in members_of(signed_chain["inc"]) if name != "manifest.sig"
    ]
    stripped.write_bytes(rebuild(kept))

    line = one_error_line(cli("verify", signed_chain["full"], stripped))
    assert "manifest.sig is missing" in line

    restored = tmp_path / "restored.db"
    line = one_error_line(cli("import", "--db", restored, signed_chain["full"], stripped))
    assert "manifest.sig is missing" in line
    assert not restored.exists()


def test_importing_increments_holds_every_link_to_the_trust_policy(
    signed_chain: dict[str, Path], tmp_path: Path
) -> None:
    chain = (signed_chain["full"], signed_chain["inc"])
    restored = tmp_path / "restored.db"
    done = cli("import", "--db", restored, "--allowed-signers", signed_chain["signers"], *chain)
    assert done.returncode == 0, done.stderr
    assert table_rows(restored) == table_rows(signed_chain["at1"])

    strangers = tmp_path / "strangers"
    strangers.write_text(f"bob {public_line(keygen(tmp_path / 'bob'))}\n")
    refused = tmp_path / "refused.db"
    line = one_error_line(cli("import", "--db", refused, "--allowed-signers", strangers, *chain))
    assert "is not allowed to sign" in line
    assert not refused.exists()
    onto = copy_database(signed_chain["at1"], tmp_path / "onto.db")
    before = table_rows(onto)
    line = one_error_line(
        cli("import", "--db", onto, "--require-signature", "--allowed-signers", strangers,
            signed_chain["inc"])
    )  # fmt: skip
    assert "is not allowed to sign" in line
    assert table_rows(onto) == before
