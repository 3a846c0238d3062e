"""The bundle format v1: what the writer produces (checked with standard tools and an independent
reader built on tarfile + zstandard, as another implementation would read it), determinism,
streams that cannot seek, atomic writes, and a verifier that reports every problem it finds."""

from __future__ import annotations

import hashlib
import io
import json
import os
import random
import sqlite3
import subprocess
import tarfile
import threading
from collections.abc import Callable
from pathlib import Path

import msgspec
import pytest
import zstandard

from kindling_bundle import (
    BundleError,
    BundleOptions,
    Capsule,
    ExportStreamOptions,
    Manifest,
    Observation,
    Pin,
    RecordError,
    StorageError,
    Summary,
    export_capsules,
    export_observations,
    export_pins,
    export_summaries,
    import_bundle,
    open_bundle,
    open_store,
    read_manifest,
    verify_bundle,
    write_bundle,
    write_bundle_from_records,
)
from kindling_bundle.format import zstd_frames
from kindling_bundle.format.record_frames import FrameEncoder
from kindling_bundle.format.tar import archive_size

CREATED_AT = 1_767_225_600_000  # 2026-01-01T00:00:00Z
MEMBERS = [
    "manifest.json",
    "observations.msgpack",
    "capsules.msgpack",
    "summaries.msgpack",
    "pins.msgpack",
]


# --- an independent reader and writer, as another implementation would do it ------------------


def members_of(bundle: bytes) -> list[tuple[str, bytes]]:
    """(name, data) of every member, read with tarfile and zstandard (not our reader)."""
    tar_bytes = zstandard.ZstdDecompressor().decompressobj().decompress(bundle)
    with tarfile.open(fileobj=io.BytesIO(tar_bytes), mode="r:") as tar:
        return [(info.name, tar.extractfile(info).read()) for info in tar.getmembers()]


def repack(members: list[tuple[str, bytes]]) -> bytes:
    """A bundle from (name, data) members, written with tarfile and zstandard."""
    raw = io.BytesIO()
    with tarfile.open(fileobj=raw, mode="w", format=tarfile.USTAR_FORMAT) as tar:
        for name, data in members:
            info = tarfile.TarInfo(name)
            info.size = len(data)
            tar.addfile(info, io.BytesIO(data))
    return zstandard.ZstdCompressor(write_checksum=True).compress(raw.getvalue())


def with_observations(bundle: Path, data: bytes, *, records: int) -> bytes:
    """The bundle with its observations member replaced by `data`, and a manifest that agrees
    (count, size and hash), so that only the data itself can be at fault."""
    members = members_of(bundle.read_bytes())
    manifest = json.loads(members[0][1])
    manifest["entities"][0].update(
        records=records, bytes=len(data), sha256=hashlib.sha256(data).hexdigest()
    )
    return repack(
        [
            ("manifest.json", json.dumps(manifest).encode()),
            ("observations.msgpack", data),
            *members[2:],
        ]
    )


def edit_manifest(bundle: bytes, edit: Callable[[dict], None]) -> bytes:
    """The same bundle with its manifest JSON changed by `edit`."""
    members = members_of(bundle)
    manifest = json.loads(members[0][1])
    edit(manifest)
    return repack([("manifest.json", json.dumps(manifest).encode()), *members[1:]])


def frames_of(data: bytes) -> list[list[dict]]:
    """Split an entity member as the spec describes: u32 big-endian length, MessagePack array."""
    frames, pos = [], 0
    while pos < len(data):
        size = int.from_bytes(data[pos : pos + 4], "big")
        frames.append(msgspec.msgpack.decode(data[pos + 4 : pos + 4 + size]))
        pos += 4 + size
    assert pos == len(data)
    return frames


def frame(records: list[dict]) -> bytes:
    payload = msgspec.msgpack.encode(records)
    return len(payload).to_bytes(4, "big") + payload


# --- fixtures ------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def sample_bundle(sample_db: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The sample database as a bundle (read-only use)."""
    path = tmp_path_factory.mktemp("bundle") / "sample.kbundle"
    conn = open_store(sample_db, readonly=True)
    try:
        write_bundle(conn, path, BundleOptions(created_at=CREATED_AT))
    finally:
        conn.close()
    return path


@pytest.fixture
def sample_conn(sample_db: Path):
    conn = open_store(sample_db, readonly=True)
    yield conn
    conn.close()


class OneWayStream(io.RawIOBase):
    """A binary stream that cannot seek or tell, like a pipe or a network body."""

    def __init__(self, data: bytes = b""):
        self._data = io.BytesIO(data)
        self.written = io.BytesIO()
        self.bytes_read = 0

    def readable(self) -> bool:
        return True

    def writable(self) -> bool:
        return True

    def seekable(self) -> bool:
        return False

    def readinto(self, buffer) -> int:
        chunk = self._data.read(len(buffer))
        buffer[: len(chunk)] = chunk
        self.bytes_read += len(chunk)
        return len(chunk)

    def write(self, data) -> int:
        return self.written.write(data)

    def seek(self, *args):
        raise io.UnsupportedOperation("not seekable")

    def tell(self):
        raise io.UnsupportedOperation("not seekable")


def problems_of(data: bytes) -> list[str]:
    report = verify_bundle(io.BytesIO(data))
    assert not report.ok
    assert report.problem_count == len(report.problems)
    return report.messages


# --- the file on disk ----------------------------------------------------------------------------


def test_standard_tools_read_the_bundle_with_the_manifest_first(sample_bundle: Path) -> None:
    listing = subprocess.run(
        ["tar", "--zstd", "-tvf", str(sample_bundle)], capture_output=True, text=True, check=True
    ).stdout.splitlines()
    assert [line.split()[-1] for line in listing] == MEMBERS
    assert all(line.startswith("-rw-r--r-- 0/0 ") for line in listing)
    subprocess.run(["zstd", "-q", "-t", str(sample_bundle)], check=True)
    piped = subprocess.run(
        f"zstd -dc '{sample_bundle}' | tar -tf -", shell=True, capture_output=True, text=True
    )
    assert piped.returncode == 0 and piped.stdout.split() == MEMBERS


def test_members_have_fixed_metadata(sample_bundle: Path) -> None:
    tar_bytes = zstandard.ZstdDecompressor().decompressobj().decompress(sample_bundle.read_bytes())
    assert len(tar_bytes) % 10240 == 0
    with tarfile.open(fileobj=io.BytesIO(tar_bytes), mode="r:") as tar:
        infos = tar.getmembers()
    assert [i.name for i in infos] == MEMBERS
    for info in infos:
        assert info.isreg() and info.mode == 0o644
        assert (info.uid, info.gid, info.uname, info.gname) == (0, 0, "", "")
        assert info.mtime == CREATED_AT // 1000
        assert not info.pax_headers


def test_manifest_describes_every_member(sample_bundle: Path, sample_db: Path) -> None:
    members = dict(members_of(sample_bundle.read_bytes()))
    manifest = json.loads(members["manifest.json"])
    assert list(manifest) == [
        "format",
        "formatVersion",
        "createdAt",
        "tool",
        "source",
        "filter",
        "entities",
    ]
    assert manifest["format"] == "kindling-bundle" and manifest["formatVersion"] == "1.0"
    assert manifest["createdAt"] == CREATED_AT
    assert manifest["tool"]["name"] == "kindling-bundle"
    assert manifest["source"] == {"schemaGeneration": 5}
    assert manifest["filter"] == {
        "scopeIds": None,
        "fromTs": None,
        "toTs": None,
        "includeReferences": False,
    }
    db = sqlite3.connect(sample_db)
    for entry in manifest["entities"]:
        data = members[entry["member"]]
        assert entry["member"] == f"{entry['entity']}.msgpack"
        assert entry["bytes"] == len(data)
        assert entry["sha256"] == hashlib.sha256(data).hexdigest()
        assert entry["records"] == sum(len(f) for f in frames_of(data))
        stored = db.execute(f"SELECT count(*) FROM {entry['entity']}").fetchone()[0]
        assert entry["records"] == stored > 0
    assert read_manifest(sample_bundle).to_dict() == manifest


def test_entity_members_hold_records_in_export_order_as_documented(
    sample_bundle: Path, sample_db: Path
) -> None:
    members = dict(members_of(sample_bundle.read_bytes()))
    frames = frames_of(members["observations.msgpack"])
    assert all(len(f) == 1024 for f in frames[:-1]) and 0 < len(frames[-1]) <= 1024
    records = [record for f in frames for record in f]
    db = sqlite3.connect(sample_db)
    assert [r["id"] for r in records] == [
        row[0] for row in db.execute("SELECT id FROM observations ORDER BY ts, id")
    ]
    assert set(records[0]) == {"id", "kind", "content", "provenance", "ts", "scopeIds", "redacted"}
    capsules = [r for f in frames_of(members["capsules.msgpack"]) for r in f]
    first = capsules[0]
    assert first["observationIds"] == [
        row[0]
        for row in db.execute(
            "SELECT observation_id FROM capsule_observations WHERE capsule_id = ? ORDER BY seq",
            (first["id"],),
        )
    ]


def test_same_data_and_time_give_identical_bytes(
    sample_conn, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    paths = [tmp_path / f"{n}.kbundle" for n in range(4)]
    write_bundle(sample_conn, paths[0], BundleOptions(created_at=CREATED_AT))
    write_bundle(sample_conn, paths[1], BundleOptions(created_at=CREATED_AT))
    monkeypatch.setenv("SOURCE_DATE_EPOCH", str(CREATED_AT // 1000))
    manifest = write_bundle(sample_conn, paths[2])
    write_bundle(sample_conn, paths[3], BundleOptions(created_at=CREATED_AT + 1000))
    assert manifest.created_at == CREATED_AT
    assert paths[0].read_bytes() == paths[1].read_bytes() == paths[2].read_bytes()
    assert paths[3].read_bytes() != paths[0].read_bytes()


def test_bad_source_date_epoch_is_refused(sample_conn, tmp_path: Path, monkeypatch) -> None:
    monkeypatch.setenv("SOURCE_DATE_EPOCH", "yesterday")
    with pytest.raises(Exception, match="SOURCE_DATE_EPOCH='yesterday' is not a whole number"):
        write_bundle(sample_conn, tmp_path / "b.kbundle")
    assert not (tmp_path / "b.kbundle").exists()


def test_output_is_the_same_for_any_number_of_compression_threads(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    # zstd splits its input into jobs of 4 windows (8 MiB at level 3) and gives each job to a
    # worker: below a few jobs, thread counts cannot make a difference. So: 24 MiB and more.
    rng = random.Random(3)
    observations = [
        Observation(id=f"o{n:05}", kind="message", content=rng.randbytes(2048).hex(), ts=n)
        for n in range(6200)
    ]
    outputs = []
    for threads in (1, 2, 3):
        monkeypatch.setattr(zstd_frames, "COMPRESSION_THREADS", threads)
        stream = OneWayStream()
        write_bundle_from_records(
            stream, {"observations": observations}, BundleOptions(created_at=CREATED_AT)
        )
        outputs.append(stream.written.getvalue())
    assert outputs[0] == outputs[1] == outputs[2]
    # Why the mode is fixed: single-threaded zstd gives other bytes for the same data.
    tar_bytes = zstandard.ZstdDecompressor().decompressobj().decompress(outputs[0])
    assert len(tar_bytes) >= 24 << 20
    single = zstandard.ZstdCompressor(level=3, threads=0, write_checksum=True)
    assert single.compress(tar_bytes) != outputs[0]
    # An archive this large gets the widest window a reader accepts, and reads back.
    assert zstandard.get_frame_parameters(outputs[0]).window_size == zstd_frames.MAX_WINDOW_BYTES
    assert verify_bundle(io.BytesIO(outputs[0])).ok


def test_a_large_archive_finds_repeats_a_small_window_cannot_see(tmp_path: Path) -> None:
    # 1 MiB of text, 3 MiB of filler, the same 1 MiB again (3 MiB back: beyond level 3's own
    # 2 MiB window), and filler up to a 9 MiB archive.
    rng = random.Random(5)
    texts = [rng.randbytes(16 << 10).hex() for _ in range(32)]
    contents = [*texts, *["x" * (32 << 10)] * 96, *texts, *["y" * (32 << 10)] * 128]
    observations = [
        Observation(id=f"o{n:05}", kind="message", content=content, ts=n)
        for n, content in enumerate(contents)
    ]
    path = tmp_path / "twice.kbundle"
    manifest = write_bundle_from_records(
        path, {"observations": observations}, BundleOptions(created_at=CREATED_AT)
    )
    bundle = path.read_bytes()
    tar_bytes = zstandard.ZstdDecompressor().decompressobj().decompress(bundle)
    sizes = [len(member) for _, member in members_of(bundle)]
    assert len(tar_bytes) == archive_size(sizes)
    assert sizes[1:] == [entry.bytes for entry in manifest.entities]
    level_window = zstandard.ZstdCompressor(level=3, threads=1, write_checksum=True)
    assert len(bundle) < 0.7 * len(level_window.compress(tar_bytes))
    assert verify_bundle(path).ok


def test_levels_are_bounded_and_high_levels_read_back(sample_conn, tmp_path: Path) -> None:
    for level in (0, 20, True):
        with pytest.raises(ValueError, match="level"):
            BundleOptions(level=level)
    path = tmp_path / "b.kbundle"
    write_bundle(sample_conn, path, BundleOptions(level=19, filter=ExportStreamOptions(to_ts=0)))
    assert verify_bundle(path).ok


def test_empty_database_gives_four_empty_members(new_store, tmp_path: Path) -> None:
    path = tmp_path / "empty.kbundle"
    manifest = write_bundle(new_store, path, BundleOptions(created_at=CREATED_AT))
    empty_sha256 = hashlib.sha256(b"").hexdigest()
    assert [(e.records, e.bytes, e.sha256) for e in manifest.entities] == [(0, 0, empty_sha256)] * 4
    assert [name for name, _ in members_of(path.read_bytes())] == MEMBERS
    report = verify_bundle(path)
    assert report.ok and report.records == dict.fromkeys(manifest_entities(manifest), 0)


def manifest_entities(manifest: Manifest) -> list[str]:
    return [e.entity for e in manifest.entities]


# --- streams that cannot seek ---------------------------------------------------------------------


def test_write_to_and_read_from_pipes(sample_conn, sample_bundle: Path, tmp_path: Path) -> None:
    hasher = subprocess.Popen(["sha256sum"], stdin=subprocess.PIPE, stdout=subprocess.PIPE)
    write_bundle(sample_conn, hasher.stdin, BundleOptions(created_at=CREATED_AT))
    hasher.stdin.close()
    piped_sha256 = hasher.stdout.read().split()[0].decode()
    assert hasher.wait() == 0
    assert piped_sha256 == hashlib.sha256(sample_bundle.read_bytes()).hexdigest()
    assert not list(tmp_path.iterdir())  # the spool of a stream lives in TMPDIR and is gone

    cat = subprocess.Popen(["cat", str(sample_bundle)], stdout=subprocess.PIPE)
    report = verify_bundle(cat.stdout)
    assert cat.wait() == 0 and report.ok, report.problems

    target = open_store(tmp_path / "target.db")
    cat = subprocess.Popen(["cat", str(sample_bundle)], stdout=subprocess.PIPE)
    imported = import_bundle(target, cat.stdout)
    assert cat.wait() == 0
    assert imported.counts["observations"].inserted == report.records["observations"]
    target.close()


def test_read_manifest_reads_only_the_start(sample_bundle: Path) -> None:
    data = sample_bundle.read_bytes()
    stream = OneWayStream(data)
    manifest = read_manifest(stream)
    assert manifest.created_at == CREATED_AT
    assert stream.bytes_read <= 64 * 1024 < len(data)
    # The rest of the bundle is never needed: a bundle cut after its start still has a manifest.
    assert read_manifest(io.BytesIO(data[: 64 * 1024])) == manifest


def test_open_bundle_streams_every_record_in_order(sample_bundle: Path, sample_db: Path) -> None:
    db = sqlite3.connect(sample_db)
    with open_bundle(OneWayStream(sample_bundle.read_bytes())) as reader:
        entities = [(type(r).__name__, r.id) for r in reader.records()]
    expected = [
        ("Observation", i) for (i,) in db.execute("SELECT id FROM observations ORDER BY ts, id")
    ]
    assert entities[: len(expected)] == expected
    assert [kind for kind, _ in entities][len(expected) :] == sorted(
        [kind for kind, _ in entities][len(expected) :], key=["Capsule", "Summary", "Pin"].index
    )


def _read_ahead_threads() -> list[threading.Thread]:
    return [t for t in threading.enumerate() if t.name == "kbundle-zstd"]


def test_a_reader_left_half_way_stops_reading_ahead(tmp_path: Path) -> None:
    """Records are decompressed ahead in a thread, a few MiB at most; leaving the reader early
    (an error in the caller, a consumer that has seen enough) stops it."""
    bundle = tmp_path / "big.kbundle"
    observations = (
        Observation(id=f"o{i}", kind="message", content=f"{i} " * 20_000, ts=i) for i in range(1000)
    )  # 120 MB of records, far more than the thread may hold ahead
    write_bundle_from_records(bundle, {"observations": observations}, BundleOptions(created_at=1))
    with open_bundle(bundle) as reader:
        entity, records = next(reader.batches())
        assert (entity, records[0].id) == ("observations", "o0")
        assert len(_read_ahead_threads()) == 1
    assert _read_ahead_threads() == []


# --- atomic writes ------------------------------------------------------------------------------


def test_failed_export_leaves_no_file_and_keeps_an_existing_one(
    sample_copy: Path, tmp_path: Path
) -> None:
    db = sqlite3.connect(sample_copy)
    db.execute("UPDATE pins SET scope_ids = '{broken' WHERE rowid = (SELECT max(rowid) FROM pins)")
    db.commit()
    db.close()
    out = tmp_path / "out"
    out.mkdir()
    conn = open_store(sample_copy, readonly=True)
    with pytest.raises(RecordError, match="scope_ids is not valid JSON"):
        write_bundle(conn, out / "new.kbundle")
    assert not list(out.iterdir())
    (out / "old.kbundle").write_bytes(b"previous bundle")
    with pytest.raises(RecordError):
        write_bundle(conn, out / "old.kbundle")
    assert [p.name for p in out.iterdir()] == ["old.kbundle"]
    assert (out / "old.kbundle").read_bytes() == b"previous bundle"
    conn.close()


def test_destination_errors_are_one_line(sample_conn, tmp_path: Path) -> None:
    with pytest.raises(StorageError, match="missing does not exist"):
        write_bundle(sample_conn, tmp_path / "missing" / "b.kbundle")
    with pytest.raises(StorageError, match="it is a folder"):
        write_bundle(sample_conn, tmp_path)
    with pytest.raises(BundleError, match="cannot open: No such file"):
        read_manifest(tmp_path / "nothing.kbundle")


def test_progress_hook_counts_up_to_the_manifest_totals(
    sample_conn, sample_bundle: Path, tmp_path: Path
) -> None:
    calls: dict[str, list[tuple[int, int]]] = {"write": [], "verify": [], "import": []}
    manifest = write_bundle(
        sample_conn, tmp_path / "b.kbundle", progress=lambda r, b: calls["write"].append((r, b))
    )
    seen: list[Manifest] = []

    def on_manifest(m: Manifest) -> None:
        assert not calls["verify"]  # before any record
        seen.append(m)

    verify_bundle(
        sample_bundle, progress=lambda r, b: calls["verify"].append((r, b)), on_manifest=on_manifest
    )
    target = open_store(tmp_path / "t.db")
    import_bundle(target, sample_bundle, progress=lambda r, b: calls["import"].append((r, b)))
    target.close()
    for done in calls.values():
        assert done == sorted(done) and len(done) > 4
        assert done[-1] == (manifest.total_records, manifest.total_bytes)
    assert seen[0].total_records == manifest.total_records


# --- verify ---------------------------------------------------------------------------------------


def test_verify_accepts_a_good_bundle(sample_bundle: Path, sample_db: Path) -> None:
    report = verify_bundle(sample_bundle)
    assert report.ok and report.problems == []
    db = sqlite3.connect(sample_db)
    for entity, count in report.records.items():
        assert count == db.execute(f"SELECT count(*) FROM {entity}").fetchone()[0]
    as_dict = report.to_dict()
    assert as_dict["ok"] is True and as_dict["manifest"]["formatVersion"] == "1.0"


@pytest.mark.parametrize("where", [0.1, 0.3, 0.5, 0.7, 0.9, -1])
def test_verify_catches_a_flipped_byte(sample_bundle: Path, where: float) -> None:
    data = bytearray(sample_bundle.read_bytes())
    pos = int(len(data) * where) if where > 0 else len(data) - 1
    data[pos] ^= 0x10
    problems = problems_of(bytes(data))
    assert any("damaged" in p or "SHA-256" in p or "not valid" in p for p in problems), problems


@pytest.mark.parametrize("keep", [1, 100, 0.5, -4, -1])
def test_verify_catches_truncation(sample_bundle: Path, keep: float) -> None:
    data = sample_bundle.read_bytes()
    cut = data[: int(len(data) * keep) if isinstance(keep, float) else keep]
    assert problems_of(cut) == [
        "<stream>: truncated: the zstd stream ends before its frame is complete"
    ]


def test_verify_catches_data_after_the_frame(sample_bundle: Path) -> None:
    data = sample_bundle.read_bytes()
    assert problems_of(data + b"\0") == [
        "<stream>: unexpected data after the end of the zstd frame"
    ]
    twice = data + data
    assert problems_of(twice) == ["<stream>: unexpected data after the end of the zstd frame"]


def test_verify_catches_a_missing_member(sample_bundle: Path) -> None:
    members = [m for m in members_of(sample_bundle.read_bytes()) if m[0] != "capsules.msgpack"]
    # Summaries point at capsules that are now absent: reported once as the missing member,
    # not once per summary.
    assert problems_of(repack(members)) == ["<stream>: member capsules.msgpack is missing"]


def test_verify_catches_a_manifest_whose_count_lies(sample_bundle: Path) -> None:
    def lie(manifest: dict) -> None:
        manifest["entities"][0]["records"] += 1

    real = read_manifest(sample_bundle).entry("observations").records
    assert problems_of(edit_manifest(sample_bundle.read_bytes(), lie)) == [
        f"<stream>: observations.msgpack: holds {real} records, the manifest says {real + 1}"
    ]


def test_verify_catches_a_manifest_whose_hash_lies(sample_bundle: Path) -> None:
    def lie(manifest: dict) -> None:
        manifest["entities"][3]["sha256"] = "0" * 64

    (problem,) = problems_of(edit_manifest(sample_bundle.read_bytes(), lie))
    assert problem.startswith("<stream>: pins.msgpack: SHA-256 ")
    assert problem.endswith(f"does not match the manifest's {'0' * 64}")


def test_verify_catches_a_manifest_whose_size_lies(sample_bundle: Path) -> None:
    def lie(manifest: dict) -> None:
        manifest["entities"][2]["bytes"] -= 1

    problems = problems_of(edit_manifest(sample_bundle.read_bytes(), lie))
    assert problems[0].startswith("<stream>: summaries.msgpack: holds ")
    assert "the manifest says" in problems[0] and len(problems) == 1


def test_verify_reports_every_problem_not_just_the_first(sample_bundle: Path) -> None:
    members = members_of(sample_bundle.read_bytes())
    manifest = json.loads(members[0][1])
    manifest["entities"][0]["records"] += 1
    manifest["entities"][3]["sha256"] = "f" * 64
    damaged = repack(
        [
            ("manifest.json", json.dumps(manifest).encode()),
            *members[1:3],
            ("notes.txt", b"hello"),
            *members[3:],
        ]
    )
    problems = problems_of(damaged)
    assert len(problems) == 3, problems
    assert "observations.msgpack: holds" in problems[0]
    assert problems[1] == "<stream>: unknown member 'notes.txt'"
    assert "pins.msgpack: SHA-256" in problems[2]


def test_verify_catches_members_out_of_order_and_repeated(sample_bundle: Path) -> None:
    members = members_of(sample_bundle.read_bytes())
    swapped = [members[0], members[1], members[3], members[2], members[4], members[4], members[0]]
    assert problems_of(repack(swapped)) == [
        "<stream>: member capsules.msgpack is out of order (after summaries.msgpack)",
        "<stream>: repeated member 'pins.msgpack'",
        "<stream>: repeated member 'manifest.json'",
    ]


def test_verify_requires_the_manifest_first(sample_bundle: Path) -> None:
    members = members_of(sample_bundle.read_bytes())
    assert problems_of(repack(members[1:] + members[:1])) == [
        "<stream>: the first member is 'observations.msgpack', not manifest.json"
    ]
    assert problems_of(b"plain text, not a bundle") == [
        "<stream>: not a bundle (not zstd-compressed data)"
    ]


def test_verify_checks_references_and_ids_inside_the_bundle(tmp_path: Path) -> None:
    path = tmp_path / "dangling.kbundle"
    obs = [
        Observation(id="o1", kind="message", content="hi", ts=1),
        Observation(id="o1", kind="message", content="again", ts=2),
    ]
    caps = [
        Capsule(id="c1", type="session", intent="x", opened_at=1, observation_ids=["o1", "o9"]),
        Capsule(id="c2", type="session", intent="y", opened_at=2, observation_ids=["o1", "o1"]),
    ]
    sums = [
        Summary(id="s1", capsule_id="c1", content="a", confidence=0.5, created_at=3),
        Summary(id="s2", capsule_id="c1", content="b", confidence=0.5, created_at=4),
        Summary(
            id="s3",
            capsule_id="c7",
            content="c",
            confidence=0.5,
            created_at=5,
            evidence_refs=["o1", "o8"],
        ),
    ]
    pins = [
        Pin(id="p1", target_type="observation", target_id="o5", created_at=6),
        Pin(id="p2", target_type="summary", target_id="s9", created_at=7),
        Pin(id="p3", target_type="summary", target_id="s1", created_at=8),
    ]
    write_bundle_from_records(
        path, {"observations": obs, "capsules": caps, "summaries": sums, "pins": pins}
    )
    report = verify_bundle(path)
    where = f"{path}: "
    assert report.messages == [
        where + "observations.msgpack: observation o1 appears more than once",
        where + "capsules.msgpack: capsule c1: linked observation o9 is not in the bundle",
        where + "capsules.msgpack: capsule c2 lists observation o1 more than once",
        where + "summaries.msgpack: summary s2: capsule c1 already has a summary in the bundle",
        where + "summaries.msgpack: summary s3: capsule c7 is not in the bundle",
        where + "pins.msgpack: pin p1: target observation o5 is not in the bundle",
        where + "pins.msgpack: pin p2: target summary s9 is not in the bundle",
    ]
    assert report.warning_messages == [
        where + "summaries.msgpack: summary s3: evidence observation o8 is not in the bundle"
    ]


def test_verify_names_each_invalid_record_and_field(sample_bundle: Path) -> None:
    good = {"id": "o1", "kind": "message", "content": "x", "ts": 1}
    records = [
        good,
        {**good, "id": "o2", "kind": "gossip"},
        {**good, "id": "o3", "ts": "yesterday"},
        {"kind": "message"},
    ]
    bundle = with_observations(sample_bundle, frame(records), records=4)
    problems = problems_of(bundle)
    where = "<stream>: observations.msgpack: "
    assert problems[:3] == [
        where + "observation o2: field kind: invalid enum value 'gossip'",
        where + "observation o3: field ts: expected `int`, got `str`",
        where + "record #3: object missing required field `id`",
    ]
    with (
        pytest.raises(RecordError, match="observation o2: field kind") as caught,
        open_bundle(io.BytesIO(bundle)) as reader,
    ):
        list(reader.records())
    assert caught.value.record_id == "o2" and caught.value.entity == "observations"


def test_verify_catches_bad_framing(sample_bundle: Path) -> None:
    data = frame([]) + (10**9).to_bytes(4, "big") + b"xx"
    bundle = with_observations(sample_bundle, data, records=0)
    problems = problems_of(bundle)
    assert problems[0] == (
        "<stream>: observations.msgpack: frame at byte 5 declares 1000000000 bytes "
        "(allowed: 1 to 67108864)"
    )


# --- versions and forward compatibility -----------------------------------------------------------


def test_unknown_major_version_is_refused(sample_bundle: Path, tmp_path: Path) -> None:
    def bump(manifest: dict) -> None:
        manifest["formatVersion"] = "3.0"  # 2.x: incremental bundles (test_increment.py)

    newer = edit_manifest(sample_bundle.read_bytes(), bump)
    message = "format version 3.0 is not supported: this tool reads 1.x bundles and 2.x incr"
    with pytest.raises(BundleError, match=message):
        read_manifest(io.BytesIO(newer))
    assert message in problems_of(newer)[0]
    target = open_store(tmp_path / "t.db")
    with pytest.raises(BundleError, match=message):
        import_bundle(target, io.BytesIO(newer))
    target.close()


def test_newer_minor_version_and_unknown_fields_are_ignored(tmp_path: Path) -> None:
    """A 1.x reader reads a 1.7 bundle: unknown manifest and record fields are skipped."""
    records = [{"id": "o1", "kind": "message", "content": "x", "ts": 1, "mood": "happy"}]
    data = frame(records)
    empty = hashlib.sha256(b"").hexdigest()
    entities = [
        {
            "entity": e,
            "member": f"{e}.msgpack",
            "records": 0,
            "bytes": 0,
            "sha256": empty,
            "compression": "none",
        }
        for e in ("observations", "capsules", "summaries", "pins")
    ]
    entities[0].update(records=1, bytes=len(data), sha256=hashlib.sha256(data).hexdigest())
    manifest = {
        "format": "kindling-bundle",
        "formatVersion": "1.7",
        "createdAt": CREATED_AT,
        "tool": {"name": "future-tool", "version": "9"},
        "source": {"schemaGeneration": 5, "host": "laptop"},
        "filter": {"scopeIds": None, "fromTs": None, "toTs": None, "includeReferences": False},
        "entities": entities,
        "signature": "abc",
    }
    bundle = repack(
        [("manifest.json", json.dumps(manifest).encode()), ("observations.msgpack", data)]
        + [(f"{e}.msgpack", b"") for e in ("capsules", "summaries", "pins")]
    )
    assert verify_bundle(io.BytesIO(bundle)).ok
    target = open_store(tmp_path / "t.db")
    report = import_bundle(target, io.BytesIO(bundle))
    assert report.counts["observations"].inserted == 1
    assert target.execute("SELECT content FROM observations WHERE id = 'o1'").fetchone() == ("x",)
    target.close()


@pytest.mark.parametrize(
    ("edit", "message"),
    [
        (lambda m: m.update(format="zip"), "not a kindling-bundle manifest"),
        (lambda m: m.update(formatVersion="one"), "formatVersion 'one' is not MAJOR.MINOR"),
        (lambda m: m["entities"].pop(), "entities must list observations.msgpack, capsules"),
        (lambda m: m["entities"][1].update(sha256="XYZ"), "field entities[1].sha256"),
        (lambda m: m["entities"][0].update(records=-1), "field entities[0].records"),
        (lambda m: m.pop("createdAt"), "missing required field `createdAt`"),
    ],
)
def test_invalid_manifests_are_refused_with_the_reason(
    sample_bundle: Path, edit: Callable[[dict], None], message: str
) -> None:
    bad = edit_manifest(sample_bundle.read_bytes(), edit)
    with pytest.raises(BundleError, match=message.replace("[", r"\[").replace("]", r"\]")):
        read_manifest(io.BytesIO(bad))


def test_write_from_records_checks_its_input(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="unknown entities: notes"):
        write_bundle_from_records(tmp_path / "b.kbundle", {"notes": []})
    with pytest.raises(TypeError, match="observations: expected Observation records, got Pin"):
        write_bundle_from_records(
            tmp_path / "b.kbundle",
            {"observations": [Pin(id="p", target_type="observation", target_id="o", created_at=1)]},
        )
    assert not list(tmp_path.iterdir())
    manifest = write_bundle_from_records(tmp_path / "b.kbundle", {}, source_generation=None)
    assert manifest.source.schema_generation is None and verify_bundle(tmp_path / "b.kbundle").ok
    assert os.stat(tmp_path / "b.kbundle").st_mode & 0o777 == 0o600


def test_filtered_bundles_are_always_referentially_closed(sample_conn, tmp_path: Path) -> None:
    lo, hi = sample_conn.execute("SELECT min(ts), max(ts) FROM observations").fetchone()
    window = ExportStreamOptions(from_ts=lo + (hi - lo) // 3, to_ts=lo + (hi - lo) // 2)
    path = tmp_path / "window.kbundle"
    manifest = write_bundle(sample_conn, path, BundleOptions(filter=window))
    assert manifest.export_filter.include_references
    assert manifest.export_filter.from_ts == window.from_ts
    assert verify_bundle(path).ok
    # The bare selection is not closed: that is what the writer guards against.
    streams = {
        "observations": export_observations(sample_conn, window),
        "capsules": export_capsules(sample_conn, window),
        "summaries": export_summaries(sample_conn, window),
        "pins": export_pins(sample_conn, window),
    }
    write_bundle_from_records(tmp_path / "bare.kbundle", streams)
    problems = verify_bundle(tmp_path / "bare.kbundle").messages
    assert any("not in the bundle" in p for p in problems)


@pytest.mark.parametrize("count", [0, 1, 63, 64, 65, 1023, 1024, 1025, 2048, 2111])
def test_members_are_framed_in_batches_of_frame_records_whatever_the_count(
    count: int, tmp_path: Path
) -> None:
    """The writer reads a member a few records at a time (so it can pause for the export's
    encoding process), yet frames it as one FrameEncoder pass over the whole stream would."""
    summaries = [
        Summary(id=f"s{n}", capsule_id=f"c{n}", content="x", confidence=0.5, created_at=n)
        for n in range(count)
    ]
    dest = tmp_path / "out.kbundle"
    write_bundle_from_records(dest, {"summaries": summaries}, BundleOptions(created_at=1))
    tar = zstandard.ZstdDecompressor().decompressobj().decompress(dest.read_bytes())
    with tarfile.open(fileobj=io.BytesIO(tar)) as archive:
        member = archive.extractfile("summaries.msgpack").read()  # type: ignore[union-attr]
    expected = b"".join(frame for _, frame in FrameEncoder("summaries").frames(summaries))
    assert member == expected


def test_frames_encoded_into_one_reused_buffer_are_the_frames_encoded_afresh() -> None:
    """The writer encodes every frame into one buffer (FrameEncoder's `reuse_buffer`): frames
    that grow, shrink and are split for holding too many values come out byte for byte as
    frames encoded each into a buffer of its own."""
    refs = [0, 3000, 5, 3000, 0]  # a frame of 1024 such summaries holds too many values
    summaries = [
        Summary(
            id=f"s{n}",
            capsule_id=f"c{n}",
            content="x" * (n % 700),
            confidence=0.5,
            created_at=n,
            evidence_refs=[f"o{i}" for i in range(refs[n // 1024])],
        )
        for n in range(5 * 1024 - 7)
    ]
    fresh = [(count, bytes(frame)) for count, frame in FrameEncoder("summaries").frames(summaries)]
    reused = FrameEncoder("summaries", reuse_buffer=True).frames(summaries)
    assert [(count, bytes(frame)) for count, frame in reused] == fresh
    assert len(fresh) > 5  # some frames were split


def test_a_scratch_bundle_of_checked_records_is_the_bundle_written_with_checks(
    tmp_path: Path,
) -> None:
    """A scratch bundle (a restore's merged chain: records a reader decoded) does not walk each
    observation's provenance again; it holds the same bytes as the bundle written with the
    check, and the check still refuses what a reader would refuse elsewhere."""
    observations = [
        Observation(
            id=f"o{n}",
            kind="message",
            content="x",
            ts=n,
            provenance={"tool": "t", "nested": {"n": n, "list": [1, 2.5, None, {"k": "v"}]}},
        )
        for n in range(2500)
    ]
    options = BundleOptions(created_at=1, level=1)
    checked = tmp_path / "checked.kbundle"
    plain = tmp_path / "plain.kbundle"
    write_bundle_from_records(checked, {"observations": observations}, options, scratch=True)
    write_bundle_from_records(plain, {"observations": observations}, options, scratch=False)
    assert checked.read_bytes() == plain.read_bytes()
    bad = [Observation(id="b", kind="message", content="x", ts=1, provenance={"f": float("nan")})]
    with pytest.raises(RecordError, match="provenance"):
        write_bundle_from_records(tmp_path / "bad.kbundle", {"observations": bad}, options)
