"""`scan` and `--scrub`, run as a user runs them: the installed command, as a subprocess.

The secrets are made up at run time (random, in real token formats), so none is stored in the
repository; each test checks that no command ever prints one.
"""

from __future__ import annotations

import io
import json
import os
import random
import sqlite3
import string
import subprocess
import tarfile
from pathlib import Path

import pytest
import zstandard
from age_tools import age_keygen

from conftest import cli_executable, one_error_line
from kindling_bundle import BundleOptions, Capsule, Observation, Pin, Summary
from kindling_bundle.ops.write import write_bundle_from_records

RNG = random.Random(2020)
ALNUM = string.ascii_letters + string.digits


def _s(alphabet: str, n: int) -> str:
    return "".join(RNG.choice(alphabet) for _ in range(n))


GITHUB = "ghp_" + _s(ALNUM, 36)
AWS_ID = "AKIA" + _s("ABCDEFGHIJKLMNOPQRSTUVWXYZ234567", 16)
AWS_SECRET = _s(ALNUM + "/+", 40)
DB_PASSWORD = "Tr0ub4dor&" + _s(ALNUM, 8)
SLACK = "xoxb-" + _s(string.digits, 12) + "-" + _s(string.digits, 13) + "-" + _s(ALNUM, 24)
PEM_BODY = [_s(ALNUM + "+/", 64) for _ in range(6)]
PRIVATE_KEY = "\n".join(
    ["-----BEGIN OPENSSH PRIVATE KEY-----", *PEM_BODY, "-----END OPENSSH PRIVATE KEY-----"]
)
STRIPE = "sk_live_" + _s(ALNUM, 32)
SECRETS = {
    "github": GITHUB,
    "aws id": AWS_ID,
    "aws secret": AWS_SECRET,
    "password": DB_PASSWORD,
    "slack": SLACK,
    "pem line": PEM_BODY[2],
    "stripe": STRIPE,
}
COMMIT = "9fceb02d0ae598e95dc970b74767f19372d61af8"  # a commit hash is not a secret


def _records() -> dict[str, list]:
    scope = {"sessionId": "s1", "repoId": "r1"}
    observations = [
        Observation(
            id="o-env",
            kind="command",
            content=f"$ env\nHOME=/home/dev\nGITHUB_TOKEN={GITHUB}\nPATH=/usr/bin\n",
            ts=1_000,
            scope_ids=scope,
        ),
        Observation(
            id="o-aws",
            kind="file_diff",
            content=f"+[default]\n+aws_access_key_id = {AWS_ID}\n"
            f"+aws_secret_access_key = {AWS_SECRET}\n",
            ts=2_000,
            scope_ids=scope,
        ),
        Observation(
            id="o-key",
            kind="tool_call",
            content="read the deploy key",
            provenance={"tool": "Read", "result": {"files": [{"text": PRIVATE_KEY}]}},
            ts=3_000,
            scope_ids=scope,
        ),
        Observation(
            id="o-url",
            kind="command",
            content=f"$ git log -1\ncommit {COMMIT}\npsql postgres://app:{DB_PASSWORD}@db:5432/app",
            ts=4_000,
            scope_ids=scope,
        ),
        Observation(
            id="o-clean",
            kind="message",
            content="The tests pass; sha256 of the wheel is " + "ab" * 32,
            ts=5_000,
            scope_ids=scope,
        ),
    ]
    capsule = Capsule(
        id="c1",
        type="session",
        intent=f"rotate the Slack bot token {SLACK}",
        status="closed",
        opened_at=1_000,
        closed_at=6_000,
        scope_ids=scope,
        observation_ids=[o.id for o in observations],
    )
    summary = Summary(
        id="sum1",
        capsule_id="c1",
        content=f"Configured billing with STRIPE_SECRET_KEY={STRIPE}; see commit {COMMIT}.",
        confidence=0.9,
        created_at=6_000,
        evidence_refs=["o-aws"],
    )
    pins = [
        Pin(
            id="p1",
            target_type="observation",
            target_id="o-env",
            reason=f"the token {GITHUB} must be revoked",
            created_at=6_500,
            scope_ids=scope,
        ),
        Pin(id="p2", target_type="summary", target_id="sum1", created_at=6_600, scope_ids=scope),
    ]
    return {
        "observations": observations,
        "capsules": [capsule],
        "summaries": [summary],
        "pins": pins,
    }


@pytest.fixture(scope="module")
def leaky(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """A database, a bundle and a Kindling JSON export holding the same leaky records."""
    folder = tmp_path_factory.mktemp("leaky")
    bundle, db, export = folder / "leaky.kbundle", folder / "leaky.db", folder / "leaky.json"
    write_bundle_from_records(bundle, _records(), BundleOptions(created_at=7_000))
    cli = cli_executable()
    subprocess.run([cli, "import", "--db", str(db), str(bundle), "--quiet"], check=True)
    subprocess.run(
        [cli, "export", "--db", str(db), str(export), "--format", "kindling-json", "--quiet"],
        check=True,
    )
    return {"db": db, "bundle": bundle, "json": export}


def _no_secret_in(*texts: bytes) -> None:
    for text in texts:
        for name, secret in SECRETS.items():
            assert secret.encode() not in text, f"the {name} was printed"
            assert secret[4:-4].encode() not in text, f"most of the {name} was printed"


def _scan_rows(stdout: bytes) -> list[list[str]]:
    lines = stdout.decode().splitlines()
    assert lines[0].split() == ["entity", "id", "field", "rule", "preview"]
    return [
        line.split()
        for line in lines[1:]
        if line.startswith(("observations", "capsules", "summaries", "pins"))
    ]


def test_scan_lists_each_finding_masked_and_exits_1(run_cli, leaky: dict[str, Path]) -> None:
    for kind in ("db", "bundle", "json"):
        proc = run_cli("scan", leaky[kind])
        line = one_error_line(proc, 1)
        assert "possible secrets" in line and "--scrub" in line
        _no_secret_in(proc.stdout, proc.stderr)
        rows = _scan_rows(proc.stdout)
        found = {(r[0], r[1], r[2], r[3]) for r in rows}
        assert ("observations", "o-env", "content", "github-pat") in found, kind
        assert ("observations", "o-aws", "content", "aws-access-key-id") in found
        assert ("capsules", "c1", "intent", "slack-token") in found
        assert ("summaries", "sum1", "content", "stripe-key") in found
        assert ("pins", "p1", "reason", "github-pat") in found
        assert any(r[1] == "o-key" and r[2] == "provenance.result.files[0].text" for r in rows)
        assert any(r[1] == "o-url" for r in rows)
        assert not any(r[1] == "o-clean" for r in rows)  # a sha256 and a commit hash
        previews = {r[1]: r[-1] for r in rows if r[3] == "github-pat"}
        assert previews["o-env"] == f"ghp_…{GITHUB[-4:]}"


def test_scan_of_a_clean_source_exits_0(run_cli, sample_db: Path) -> None:
    proc = run_cli("scan", sample_db)
    assert proc.returncode == 0, proc.stderr.decode()
    conn = sqlite3.connect(f"file:{sample_db}?mode=ro", uri=True)
    tables = ("observations", "capsules", "summaries", "pins")
    total = sum(conn.execute(f"SELECT count(*) FROM {t}").fetchone()[0] for t in tables)
    conn.close()
    assert proc.stdout.decode() == f"{sample_db}: no secrets found ({total:,} records scanned)\n"
    # Without SOURCE, Kindling's database, found as export finds it.
    proc = run_cli("scan", env={**os.environ, "KINDLING_DB": str(sample_db)})
    assert proc.returncode == 0 and str(sample_db) in proc.stdout.decode()


def test_scan_json_lists_findings_and_counts(run_cli, leaky: dict[str, Path]) -> None:
    proc = run_cli("scan", leaky["bundle"], "--json")
    assert proc.returncode == 1
    _no_secret_in(proc.stdout, proc.stderr)
    report = json.loads(proc.stdout)
    assert report["source"] == str(leaky["bundle"]) and report["format"] == "bundle"
    assert report["clean"] is False
    assert report["scanned"] == {"observations": 5, "capsules": 1, "summaries": 1, "pins": 2}
    for finding in report["findings"]:
        assert set(finding) == {"entity", "id", "field", "rule", "preview"}
    summary = report["summary"]
    assert summary["findings"] == len(report["findings"]) == sum(summary["byRule"].values())
    assert summary["records"] == len({(f["entity"], f["id"]) for f in report["findings"]}) == 7
    assert summary["ruleSet"]["name"] == "kindling-bundle secrets"
    assert summary["ruleFiles"][0]["name"] == "rules.toml"


def test_scan_reads_a_bundle_from_standard_input(run_cli, leaky: dict[str, Path]) -> None:
    proc = run_cli("scan", "-", "--json", input=leaky["bundle"].read_bytes())
    assert proc.returncode == 1 and json.loads(proc.stdout)["summary"]["records"] == 7


def test_export_scrub_verifies_imports_and_full_text_search_finds_no_secret(
    run_cli, leaky: dict[str, Path], tmp_path: Path
) -> None:
    bundle, restored = tmp_path / "shared.kbundle", tmp_path / "restored.db"
    proc = run_cli("export", "--db", leaky["db"], bundle, "--scrub", "--json")
    assert proc.returncode == 0, proc.stderr.decode()
    _no_secret_in(proc.stdout, proc.stderr, _archive(bundle))
    manifest = json.loads(proc.stdout)["manifest"]
    assert manifest["formatVersion"] == "1.0"  # the scrub record changes no version
    scrub = manifest["scrub"]
    assert scrub["records"] == 7 and scrub["byRule"]["github-pat"] == 2
    assert len(scrub["ruleFiles"][0]["sha256"]) == 64

    assert run_cli("verify", bundle).returncode == 0
    assert run_cli("scan", bundle).returncode == 0
    imported = run_cli("import", "--db", restored, bundle, "--json")
    assert imported.returncode == 0, imported.stderr.decode()
    assert json.loads(imported.stdout)["integrity"]["ok"] is True

    def search(db: Path, table: str, phrase: str) -> list[tuple]:
        conn = sqlite3.connect(f"file:{db}?mode=ro", uri=True)
        try:
            query = f"SELECT rowid FROM {table} WHERE {table} MATCH ?"
            return conn.execute(query, [f'"{phrase}"']).fetchall()
        finally:
            conn.close()

    # The search works: the source database finds each secret, the restored one does not.
    for phrase in (GITHUB, AWS_SECRET, DB_PASSWORD):
        assert search(leaky["db"], "observations_fts", phrase), phrase
        assert not search(restored, "observations_fts", phrase), phrase
    assert search(leaky["db"], "summaries_fts", STRIPE)
    assert not search(restored, "summaries_fts", STRIPE)
    assert search(restored, "observations_fts", "REDACTED github-pat")
    assert search(restored, "observations_fts", COMMIT)  # the commit hash is still there
    stored = b"".join(p.read_bytes() for p in tmp_path.glob("restored.db*"))
    _no_secret_in(stored)

    conn = sqlite3.connect(f"file:{restored}?mode=ro", uri=True)
    rows = dict(conn.execute("SELECT id, content FROM observations").fetchall())
    intent = conn.execute("SELECT intent FROM capsules").fetchone()[0]
    conn.close()
    assert (
        rows["o-env"]
        == "$ env\nHOME=/home/dev\nGITHUB_TOKEN=[REDACTED:github-pat]\nPATH=/usr/bin\n"
    )
    assert rows["o-clean"] == _records()["observations"][4].content
    assert intent == "rotate the Slack bot token [REDACTED:slack-token]"


def _archive(bundle: Path) -> bytes:
    """The uncompressed archive, where a secret would be readable."""
    return zstandard.ZstdDecompressor().stream_reader(bundle.open("rb")).read()


def _manifest(bundle: Path) -> dict:
    with tarfile.open(fileobj=io.BytesIO(_archive(bundle))) as tar:
        member = tar.extractfile("manifest.json")
        assert member is not None
        return json.loads(member.read())


def test_scrubbing_is_deterministic_and_a_plain_export_is_unchanged(
    run_cli, leaky: dict[str, Path], tmp_path: Path
) -> None:
    outputs = []
    for name in ("a", "b"):
        out = tmp_path / f"{name}.kbundle"
        proc = run_cli("export", "--db", leaky["db"], out, "--scrub", "--created-at", 7_000)
        assert proc.returncode == 0, proc.stderr.decode()
        outputs.append(out.read_bytes())
    assert outputs[0] == outputs[1]
    plain = tmp_path / "plain.kbundle"
    assert run_cli("export", "--db", leaky["db"], plain, "--created-at", 7_000).returncode == 0
    manifest = _manifest(plain)
    assert manifest["formatVersion"] == "1.0" and "scrub" not in manifest
    assert run_cli("scan", plain).returncode == 1


def test_export_to_kindling_json_with_scrub(run_cli, leaky: dict[str, Path], tmp_path: Path):
    out = tmp_path / "shared.json"
    proc = run_cli("export", "--db", leaky["db"], out, "--format", "kindling-json", "--scrub")
    assert proc.returncode == 0, proc.stderr.decode()
    assert "scrubbed" in proc.stdout.decode() and "in 7 records" in proc.stdout.decode()
    _no_secret_in(out.read_bytes(), proc.stdout)
    assert run_cli("scan", out).returncode == 0


def test_convert_scrub_both_ways(run_cli, leaky: dict[str, Path], tmp_path: Path) -> None:
    to_json, to_bundle = tmp_path / "out.json", tmp_path / "out.kbundle"
    proc = run_cli("convert", leaky["bundle"], to_json, "--scrub", "--json")
    assert proc.returncode == 0, proc.stderr.decode()
    assert json.loads(proc.stdout)["scrub"]["records"] == 7
    _no_secret_in(to_json.read_bytes(), proc.stdout)
    assert run_cli("scan", to_json).returncode == 0

    proc = run_cli("convert", leaky["json"], to_bundle, "--scrub")
    assert proc.returncode == 0, proc.stderr.decode()
    _no_secret_in(_archive(to_bundle), proc.stdout)
    assert _manifest(to_bundle)["scrub"]["records"] == 7
    assert run_cli("verify", to_bundle).returncode == 0
    assert run_cli("scan", to_bundle).returncode == 0


def test_merge_scrub(run_cli, leaky: dict[str, Path], sample_db: Path, tmp_path: Path) -> None:
    out = tmp_path / "merged.kbundle"
    proc = run_cli("merge", sample_db, leaky["bundle"], out, "--scrub", "--json")
    assert proc.returncode == 0, proc.stderr.decode()
    assert json.loads(proc.stdout)["manifest"]["scrub"]["records"] == 7
    _no_secret_in(_archive(out), proc.stdout)
    assert run_cli("verify", out).returncode == 0
    assert run_cli("scan", out).returncode == 0


def test_an_invalid_rules_file_is_a_usage_error_naming_the_rule(
    run_cli, leaky: dict[str, Path], tmp_path: Path
) -> None:
    rules = tmp_path / "team.toml"
    rules.write_text("[[rules]]\nid = 'internal'\nregex = '''itk-(?=[0-9]{8})'''\n")
    for args in (
        ("scan", leaky["db"], "--rules", rules),
        ("export", "--db", leaky["db"], tmp_path / "x.kbundle", "--scrub", "--rules", rules),
    ):
        line = one_error_line(run_cli(*args), 2)
        assert str(rules) in line and "rule 'internal'" in line and "lookahead" in line
    assert not (tmp_path / "x.kbundle").exists()
    line = one_error_line(run_cli("scan", leaky["db"], "--rules", tmp_path / "absent.toml"), 2)
    assert "absent.toml" in line
    usage = one_error_line(
        run_cli("export", "--db", leaky["db"], tmp_path / "y.kbundle", "--rules", rules), 2
    )
    assert "--rules applies only with --scrub" in usage


def test_a_gitleaks_file_written_for_go_adds_rules(
    run_cli, leaky: dict[str, Path], tmp_path: Path
) -> None:
    """A file in gitleaks' own format, with Go-only syntax: \\z, \\Q...\\E, (?i) mid-pattern,
    (?s:...), a path-only rule and a global allowlist."""
    rules = tmp_path / "gitleaks.toml"
    rules.write_text(
        r"""
title = "team gitleaks config"

[allowlist]
description = "docs"
stopwords = ["example"]

[[rules]]
id = "acme-deploy-key"
description = "ACME deploy keys"
regex = '''\QACME.\E(?i)deploy[_-]key[=: ]+([a-f0-9]{24})\z'''
secretGroup = 1
keywords = ["acme."]

[[rules]]
id = "acme-cert"
path = '''(?i)\.p12$'''
"""
    )
    deploy = "ACME.Deploy_Key=" + _s("abcdef0123456789", 24)
    db = tmp_path / "acme.db"
    source = tmp_path / "acme.kbundle"
    record = Observation(id="o1", kind="command", content=deploy, ts=1)
    write_bundle_from_records(source, {"observations": [record]}, BundleOptions(created_at=0))
    assert run_cli("import", "--db", db, source, "--quiet").returncode == 0
    assert run_cli("scan", db).returncode == 0  # our rules alone do not know the format
    proc = run_cli("scan", db, "--rules", rules, "--json")
    assert proc.returncode == 1, proc.stderr.decode()
    report = json.loads(proc.stdout)
    assert [f["rule"] for f in report["findings"]] == ["acme-deploy-key"]
    names = [f["name"] for f in report["summary"]["ruleFiles"]]
    assert names == ["rules.toml", "gitleaks.toml"]  # a base name, never the local path

    out = tmp_path / "acme-shared.kbundle"
    assert run_cli("export", "--db", db, out, "--scrub", "--rules", rules).returncode == 0
    scrub = _manifest(out)["scrub"]
    assert scrub["byRule"] == {"acme-deploy-key": 1}
    assert scrub["ruleFiles"][1]["title"] == "team gitleaks config"
    assert deploy[-24:].encode() not in _archive(out)


def test_a_scrubbed_bundle_can_be_signed_and_the_signature_covers_the_scrub_record(
    run_cli, leaky: dict[str, Path], tmp_path: Path
) -> None:
    vectors = Path(__file__).parent.parent / "spec" / "vectors"
    key = tmp_path / "key"
    key.write_bytes((vectors / "test-signing-key").read_bytes())
    key.chmod(0o600)
    out = tmp_path / "signed.kbundle"
    proc = run_cli("export", "--db", leaky["db"], out, "--scrub", "--sign-key", key)
    assert proc.returncode == 0, proc.stderr.decode()
    manifest = _manifest(out)
    assert manifest["formatVersion"] == "1.1" and manifest["scrub"]["records"] == 7
    signers = vectors / "allowed_signers"
    proc = run_cli("verify", out, "--allowed-signers", signers, "--require-signature", "--json")
    assert proc.returncode == 0, proc.stderr.decode()
    assert json.loads(proc.stdout)["signature"]["status"] == "signed"
    assert run_cli("scan", out).returncode == 0


def test_scrub_then_encrypt_and_scan_the_encrypted_bundle(
    run_cli, leaky: dict[str, Path], tmp_path: Path
) -> None:
    key = tmp_path / "key.txt"
    recipient = age_keygen(key)
    secret = tmp_path / "secret.kbundle"
    assert run_cli("scan", leaky["bundle"], "-i", key).returncode == 1  # a plain one, too
    plain = tmp_path / "plain.kbundle"
    assert run_cli("export", "--db", leaky["db"], plain, "-r", recipient).returncode == 0
    proc = run_cli("scan", plain, "-i", key, "--json")
    assert proc.returncode == 1 and json.loads(proc.stdout)["summary"]["records"] == 7
    _no_secret_in(proc.stdout, proc.stderr)
    assert "identity" in one_error_line(run_cli("scan", plain), 1).lower()

    proc = run_cli("export", "--db", leaky["db"], secret, "--scrub", "-r", recipient)
    assert proc.returncode == 0, proc.stderr.decode()
    assert run_cli("scan", secret, "-i", key).returncode == 0
    assert run_cli("verify", secret, "-i", key).returncode == 0
