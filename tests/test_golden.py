"""The golden vectors in spec/vectors/: today's writer must still produce them byte for byte, and
they must verify, restore and decode as the spec says. If a test here fails after a change to
the writer, either the change is a bug, or the format changed on purpose: then regenerate with
`python spec/vectors/make_vectors.py` and say so in the changelog."""

from __future__ import annotations

import hashlib
import importlib.util
import io
import json
import subprocess
import tarfile
from pathlib import Path

import msgspec
import pytest
import zstandard

from kindling_bundle import (
    AllowedSigners,
    BundleOptions,
    ReadOptions,
    SignatureOptions,
    import_bundle,
    open_store,
    verify_bundle,
    write_bundle,
)

VECTORS_DIR = Path(__file__).resolve().parent.parent / "spec" / "vectors"


def _load_make_vectors():
    spec = importlib.util.spec_from_file_location("make_vectors", VECTORS_DIR / "make_vectors.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


make_vectors = _load_make_vectors()
NAMES = list(make_vectors.VECTORS)


def tar_of(bundle: bytes) -> bytes:
    return zstandard.ZstdDecompressor().decompressobj().decompress(bundle)


def test_every_vector_is_stored() -> None:
    assert NAMES == ["full", "filtered", "empty", "signed"]
    for name in NAMES:
        for suffix in (".kbundle", ".manifest.json", ".records.json"):
            assert (VECTORS_DIR / f"{name}{suffix}").is_file(), f"{name}{suffix} missing"
    assert (VECTORS_DIR / "signed.manifest.sig").is_file()


@pytest.mark.parametrize("name", NAMES)
def test_writer_reproduces_the_vector_byte_for_byte(name: str, tmp_path: Path) -> None:
    stored = (VECTORS_DIR / f"{name}.kbundle").read_bytes()
    rebuilt_path = tmp_path / f"{name}.kbundle"
    make_vectors.build(name, rebuilt_path)
    rebuilt = rebuilt_path.read_bytes()
    # The archive first: it depends on this code only. The compressed bytes also depend on the
    # zstd library (deterministic for a given version, in multi-threaded mode).
    assert tar_of(rebuilt) == tar_of(stored), f"{name}: the tar archive inside changed"
    assert rebuilt == stored, (
        f"{name}: same archive, other compressed bytes (zstd {zstandard.ZSTD_VERSION})"
    )


@pytest.mark.parametrize("name", NAMES)
def test_stored_manifest_and_records_match_the_bundle(name: str) -> None:
    bundle = (VECTORS_DIR / f"{name}.kbundle").read_bytes()
    with tarfile.open(fileobj=io.BytesIO(tar_of(bundle)), mode="r:") as tar:
        members = {info.name: tar.extractfile(info).read() for info in tar.getmembers()}
    assert members["manifest.json"] == (VECTORS_DIR / f"{name}.manifest.json").read_bytes()
    signature = VECTORS_DIR / f"{name}.manifest.sig"
    assert members.get("manifest.sig") == (signature.read_bytes() if signature.exists() else None)
    manifest = json.loads(members["manifest.json"])
    expected = json.loads((VECTORS_DIR / f"{name}.records.json").read_bytes())
    for entry in manifest["entities"]:
        data = members[entry["member"]]
        assert hashlib.sha256(data).hexdigest() == entry["sha256"]
        # Decode as the spec describes: u32 big-endian length, then one MessagePack array.
        records, pos = [], 0
        while pos < len(data):
            size = int.from_bytes(data[pos : pos + 4], "big")
            records += msgspec.msgpack.decode(data[pos + 4 : pos + 4 + size])
            pos += 4 + size
        assert records == expected[entry["entity"]]
        assert len(records) == entry["records"]


def test_full_vector_holds_the_whole_dataset() -> None:
    expected = json.loads((VECTORS_DIR / "full.records.json").read_bytes())
    dataset = {
        "observations": make_vectors.OBSERVATIONS,
        "capsules": make_vectors.CAPSULES,
        "summaries": make_vectors.SUMMARIES,
        "pins": make_vectors.PINS,
    }
    for entity, records in dataset.items():
        assert sorted(r["id"] for r in expected[entity]) == sorted(r.id for r in records)
    # Export order: (ts, id), so the tie between obs-03 and obs-02 goes to obs-02.
    assert [r["id"] for r in expected["observations"]][1:3] == ["obs-02", "obs-03"]
    assert expected["capsules"][0]["observationIds"] == ["obs-03", "obs-01", "obs-02", "obs-04"]


@pytest.mark.parametrize("name", NAMES)
def test_vector_verifies_and_restores_to_the_same_bundle(name: str, tmp_path: Path) -> None:
    path = VECTORS_DIR / f"{name}.kbundle"
    assert verify_bundle(path).ok
    conn = open_store(tmp_path / "restored.db")
    report = import_bundle(conn, path)
    assert report.integrity.ok
    again = tmp_path / "again.kbundle"
    stored_manifest = json.loads((VECTORS_DIR / f"{name}.manifest.json").read_bytes())
    write_bundle(conn, again, BundleOptions(created_at=stored_manifest["createdAt"]))
    conn.close()
    # The filter is recorded in the manifest, so compare what was restored: the entity files.
    assert [
        (e["entity"], e["records"], e["sha256"]) for e in json.loads(_manifest(again))["entities"]
    ] == [(e["entity"], e["records"], e["sha256"]) for e in stored_manifest["entities"]]


def test_signed_vector_is_full_signed_and_openssh_agrees() -> None:
    full = json.loads((VECTORS_DIR / "full.manifest.json").read_bytes())
    signed_bytes = (VECTORS_DIR / "signed.manifest.json").read_bytes()
    assert json.loads(signed_bytes) == {**full, "formatVersion": "1.1"}
    names = [info.name for info in _members(VECTORS_DIR / "signed.kbundle")]
    assert names[:2] == ["manifest.json", "manifest.sig"]
    assert names[2:] == [info.name for info in _members(VECTORS_DIR / "full.kbundle")][1:]

    signers = VECTORS_DIR / "allowed_signers"
    done = subprocess.run(
        [
            *("ssh-keygen", "-Y", "verify", "-f", str(signers), "-n", "kindling-bundle"),
            *("-I", "test-vector@kindling-bundle.invalid"),
            *("-s", str(VECTORS_DIR / "signed.manifest.sig")),
        ],
        input=signed_bytes,
        capture_output=True,
        check=False,
    )
    assert done.returncode == 0 and b"Good" in done.stdout, done.stderr
    trust = SignatureOptions(AllowedSigners.load(signers), require_signature=True)
    report = verify_bundle(VECTORS_DIR / "signed.kbundle", options=ReadOptions(signature=trust))
    assert report.ok, report.problems
    assert report.signer is not None
    assert report.signer.principals == ("test-vector@kindling-bundle.invalid",)


def _members(bundle: Path) -> list[tarfile.TarInfo]:
    with tarfile.open(fileobj=io.BytesIO(tar_of(bundle.read_bytes())), mode="r:") as tar:
        return tar.getmembers()


def _manifest(bundle: Path) -> bytes:
    with tarfile.open(fileobj=io.BytesIO(tar_of(bundle.read_bytes())), mode="r:") as tar:
        return tar.extractfile("manifest.json").read()
