"""The manifest's scrub record (optional in any 1.x bundle) and scrubbing in the writers."""

from __future__ import annotations

import json
import random
import sqlite3
import string
from pathlib import Path

import pytest

from kindling_bundle import (
    BundleError,
    BundleOptions,
    Observation,
    Scanner,
    merge_datasets,
    open_bundle,
    open_store,
    read_manifest,
    write_bundle,
    write_bundle_from_records,
)
from kindling_bundle.format.manifest import decode_manifest, encode_manifest
from kindling_bundle.parallel import encoder, forking

RNG = random.Random(11)
ALNUM = string.ascii_letters + string.digits


def _github_token() -> str:
    """Made up, in GitHub's format."""
    return "ghp_" + "".join(RNG.choice(ALNUM) for _ in range(36))


TOKEN = _github_token()


@pytest.fixture(scope="module")
def scanner() -> Scanner:
    return Scanner.load()


def _write(path: Path, records: list[Observation], scanner: Scanner | None) -> Path:
    write_bundle_from_records(
        path, {"observations": records}, BundleOptions(created_at=0, scrub=scanner)
    )
    return path


def test_the_scrub_record_round_trips_and_only_a_scrubbed_bundle_has_it(
    tmp_path: Path, scanner: Scanner
) -> None:
    records = [Observation(id="o1", kind="command", content=f"GH={TOKEN}", ts=1)]
    plain = read_manifest(_write(tmp_path / "plain.kbundle", records, None))
    assert plain.format_version == "1.0" and plain.scrub is None
    assert b"scrub" not in encode_manifest(plain)

    manifest = read_manifest(_write(tmp_path / "scrubbed.kbundle", records, scanner))
    assert manifest.format_version == "1.0"  # the record changes no version
    assert manifest.scrub is not None
    assert manifest.scrub.by_rule == {"github-pat": 1}
    assert (manifest.scrub.records, manifest.scrub.findings) == (1, 1)
    assert manifest.scrub.rule_set.name == scanner.name
    assert decode_manifest(encode_manifest(manifest), "x") == manifest
    with open_bundle(tmp_path / "scrubbed.kbundle") as reader:
        (record,) = reader.records()
    assert record == Observation(id="o1", kind="command", content="GH=[REDACTED:github-pat]", ts=1)


def test_a_bad_scrub_record_is_refused_and_unknown_fields_in_it_are_not(
    tmp_path: Path, scanner: Scanner
) -> None:
    records = [Observation(id="o1", kind="command", content=f"GH={TOKEN}", ts=1)]
    manifest = read_manifest(_write(tmp_path / "b.kbundle", records, scanner))
    data = json.loads(encode_manifest(manifest))
    data["scrub"]["addedLater"] = {"anything": [1, 2]}
    assert decode_manifest(json.dumps(data).encode(), "x") == manifest
    data["scrub"]["byRule"] = {"github-pat": -1}
    with pytest.raises(BundleError, match=r"scrub\.byRule"):
        decode_manifest(json.dumps(data).encode(), "x.kbundle")
    del data["scrub"]["byRule"]
    with pytest.raises(BundleError, match="byRule"):
        decode_manifest(json.dumps(data).encode(), "x.kbundle")


def test_merge_decides_conflicts_on_the_records_as_the_inputs_hold_them(
    tmp_path: Path, scanner: Scanner
) -> None:
    """Two inputs whose records differ only in a secret still conflict; the winner is then
    scrubbed, and the other input's secret is not in the output either."""
    other = _github_token()
    mine = Observation(id="o1", kind="command", content=f"GH={TOKEN}", ts=1)
    theirs = Observation(id="o1", kind="command", content=f"GH={other}", ts=1)
    a = _write(tmp_path / "a.kbundle", [mine], None)
    b = _write(tmp_path / "b.kbundle", [theirs], None)
    out = tmp_path / "merged.kbundle"
    report = merge_datasets([a, b], out, conflict="overwrite", created_at=0, scrub=scanner)
    assert report.entities["observations"].conflicts == 1
    assert report.manifest is not None and report.manifest.scrub is not None
    with open_bundle(out) as reader:
        (record,) = reader.records()
    assert record.content == "GH=[REDACTED:github-pat]"


def test_scrub_must_be_a_scanner() -> None:
    with pytest.raises(TypeError, match="scrub must be a Scanner"):
        BundleOptions(scrub="yes")  # type: ignore[arg-type]


@pytest.mark.skipif(not forking.fork_is_safe(), reason="the encoder process needs fork")
def test_the_encoding_worker_scrubs_its_part_and_the_bundle_is_the_same(
    sample_copy: Path, tmp_path: Path, scanner: Scanner, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Secrets in the first observations (the worker's part), in the last (this process's) and
    in a pin reason: the worker redacts its part, its counts reach the manifest, and the bundle
    is byte for byte the one a single process writes."""
    conn = sqlite3.connect(sample_copy)
    ids = [row[0] for row in conn.execute("SELECT id FROM observations ORDER BY ts, id")]
    planted = [ids[0], ids[1], ids[len(ids) // 3], ids[-1]]
    for oid in planted:
        conn.execute(
            "UPDATE observations SET content = content || ? WHERE id = ?",
            (f"\nexport GITHUB_TOKEN={_github_token()}\n", oid),
        )
    conn.execute("UPDATE pins SET reason = ? WHERE rowid = 1", (f"revoke {_github_token()}",))
    conn.commit()
    conn.close()

    started: list[int] = []
    start = encoder.SplitChild.__init__

    def counted(self: encoder.SplitChild, *args: object, **kwargs: object) -> None:
        started.append(1)
        start(self, *args, **kwargs)  # type: ignore[arg-type]

    monkeypatch.setattr(encoder.SplitChild, "__init__", counted)
    bundles = {}
    for workers in (2, 1):
        store = open_store(sample_copy, readonly=True)
        try:
            dest = tmp_path / f"{workers}.kbundle"
            opts = BundleOptions(created_at=0, workers=workers, scrub=scanner)
            manifest = write_bundle(store, dest, opts)
        finally:
            store.close()
        assert manifest.scrub is not None
        assert manifest.scrub.by_rule == {"github-pat": len(planted) + 1}, workers
        bundles[workers] = dest.read_bytes()
    assert started == [1]  # the first export split, the second did not
    assert bundles[2] == bundles[1]
    with open_bundle(tmp_path / "2.kbundle") as reader:
        texts = [r.content for r in reader.records() if isinstance(r, Observation)]
    assert sum("GITHUB_TOKEN=[REDACTED:github-pat]" in text for text in texts) == len(planted)
    assert not any("ghp_" in text for text in texts)
