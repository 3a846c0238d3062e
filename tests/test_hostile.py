"""Damaged and hostile bundles (issue 8): each is refused by verify and by import with one clear
line, within bounded time and memory, and the target database is left exactly as it was.

The bundles are built by hand in tests/hostile_tar.py, so that every layer can lie: tar headers
written field by field, zstd frame headers forged, a bomb made of RLE blocks. Every case runs
through the library in-process (the code the CLI runs) and through the installed CLI as a
subprocess with a 1 GiB address-space limit and a timeout.
"""

from __future__ import annotations

import io
import json
import os
import resource
import shutil
import sqlite3
import subprocess
import tracemalloc
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import msgspec
import pytest
import zstandard
from hostile_tar import (
    RLE_BLOCK_MAX,
    VECTORS,
    Parts,
    archive,
    bomb,
    compress,
    frame,
    member,
    raw_block,
    tar_header,
    with_content_size,
    with_window,
    zero_blocks,
    zstd_frame,
)

from conftest import cli_executable, dump_contents, dump_tables, one_error_line
from kindling_bundle import (
    KindlingBundleError,
    generate_sample,
    import_bundle,
    open_bundle,
    open_store,
    verify_bundle,
    write_bundle_from_records,
)
from kindling_bundle.cli import main as cli_main
from kindling_bundle.errors import BundleError, RecordError
from kindling_bundle.format.manifest import MAX_FRAME_BYTES, MAX_FRAME_VALUES, MAX_NESTING_DEPTH
from kindling_bundle.format.zstd_frames import (
    AHEAD_FEED_BLOCKS,
    FEED_BLOCKS,
    READ_AHEAD,
    ZstdFrameReader,
)
from kindling_bundle.records import Observation

MEMORY_LIMIT = 1 << 30
CLI_TIMEOUT = 60
Build = Callable[[], bytes]


# --- the cases -----------------------------------------------------------------------------------


def _members(edit: Callable[[list[bytes], Parts], list[bytes]], *, end: bool = True) -> Build:
    """A bundle whose list of tar members (manifest first, then the four entities) is edited."""

    def build() -> bytes:
        parts = Parts()
        return compress(archive(*edit(parts.members(), parts), end=end))

    return build


def _entity_member(**header: Any) -> Build:
    """observations.msgpack with a header that lies (name, type flag, link, ...)."""
    name = header.pop("name", "observations.msgpack")

    def edit(members: list[bytes], parts: Parts) -> list[bytes]:
        members[1] = member(name, parts.data["observations"], **header)
        return members

    return _members(edit)


def _tar(edit: Callable[[bytes, int], bytes]) -> Build:
    """A bundle whose whole tar stream is edited; `at` is where observations.msgpack starts."""

    def build() -> bytes:
        members = Parts().members()
        return compress(edit(archive(*members), len(members[0])))

    return build


def _manifest(edit: Callable[[dict], None]) -> Build:
    def build() -> bytes:
        parts = Parts()
        edit(parts.manifest)
        return parts.bundle()

    return build


def _manifest_bytes(data: Callable[[bytes], bytes]) -> Build:
    def build() -> bytes:
        parts = Parts()
        members = parts.members()
        members[0] = member("manifest.json", data(parts.manifest_bytes()))
        return compress(archive(*members))

    return build


def _records(entity: str, edit: Callable[[list[dict]], None]) -> Build:
    """A bundle whose records of one entity are edited, with a manifest that describes them."""

    def build() -> bytes:
        parts = Parts()
        records = json.loads(json.dumps(parts.records[entity]))
        edit(records)
        return parts.set_records(entity, records).bundle()

    return build


def _payload(edit: Callable[[bytes], bytes], records: int = 7) -> Build:
    """observations.msgpack as one frame whose MessagePack payload is edited bytewise."""

    def build() -> bytes:
        parts = Parts()
        payload = edit(msgspec.msgpack.encode(parts.records["observations"]))
        return parts.set_data("observations", frame(payload), records).bundle()

    return build


def _nested(depth: int) -> Any:
    value: Any = None
    for _ in range(depth):
        value = [value]
    return value


def _deeper_than_any_decoder(_: bytes) -> bytes:
    """One observation whose provenance nests 200,000 arrays deep."""
    head = msgspec.msgpack.encode({"id": "o1", "kind": "message", "content": "x", "ts": 1})
    return (
        b"\x91" + bytes([head[0] + 1]) + head[1:] + b"\xaaprovenance\x81\xa1d" + b"\x91" * 200_000
    )


def _empty_maps(count: int) -> Callable[[bytes], bytes]:
    """One observation whose provenance holds `count` empty maps: one byte each on the wire,
    ~70 bytes each once decoded."""

    def payload(_: bytes) -> bytes:
        head = msgspec.msgpack.encode({"id": "o1", "kind": "message", "content": "x", "ts": 1})
        array = b"\xdd" + count.to_bytes(4, "big") + b"\x80" * count
        return b"\x91" + bytes([head[0] + 1]) + head[1:] + b"\xaaprovenance\x81\xa1a" + array

    return payload


def _good() -> bytes:
    return Parts().bundle()


# (id, bundle, what verify says, what import says); one string: both say it.
CASES: list[tuple[str, Build, str, str | None]] = [
    # The archive layer. Names are only ever compared, never used as paths.
    (
        "name-dotdot",
        _entity_member(name="../../etc/cron.d/x"),
        "unknown member '../../etc/cron.d/x'",
        None,
    ),
    (
        "name-absolute",
        _entity_member(name="/tmp/kindling-hostile-abs"),
        "unknown member '/tmp/kindling-hostile-abs'",
        None,
    ),
    (
        "name-backslash",
        _entity_member(name=b"..\\..\\evil"),
        "unknown member '..\\\\..\\\\evil'",
        None,
    ),
    ("name-nul", _entity_member(name=b"observations.msgpack\0/../../x"), "holds a NUL byte", None),
    (
        "name-not-ascii",
        _entity_member(name="observations.msgpack\u00e9".encode()),
        "is not a bundle member",
        None,
    ),
    ("hard-link", _entity_member(typeflag=b"1", linkname=b"/etc/passwd"), "(tar type b'1')", None),
    ("symlink", _entity_member(typeflag=b"2", linkname=b"/etc/passwd"), "(tar type b'2')", None),
    ("char-device", _entity_member(typeflag=b"3"), "(tar type b'3')", None),
    ("block-device", _entity_member(typeflag=b"4"), "(tar type b'4')", None),
    ("directory", _entity_member(typeflag=b"5"), "(tar type b'5')", None),
    ("fifo", _entity_member(typeflag=b"6"), "(tar type b'6')", None),
    ("old-regular-file", _entity_member(typeflag=b"\0"), "(tar type b'\\x00')", None),
    ("gnu-long-name", _entity_member(typeflag=b"L"), "(tar type b'L')", None),
    ("name-prefix", _entity_member(prefix=b"../.."), "uses a tar name prefix", None),
    ("not-ustar", _entity_member(magic=b"ustar  \0"), "not a POSIX ustar archive member", None),
    (
        "pax-path",
        _members(
            lambda m, p: [
                m[0],
                member("PaxHeader", b"30 path=observations.msgpack\n", typeflag=b"x"),
                *m[1:],
            ]
        ),
        "(tar type b'x')",
        None,
    ),
    (
        "pax-size",
        _members(
            lambda m, p: [m[0], member("PaxHeader", b"16 size=99999\n", typeflag=b"x"), *m[1:]]
        ),
        "(tar type b'x')",
        None,
    ),
    (
        "pax-global",
        _members(lambda m, p: [member("PaxHeader", b"16 size=99999\n", typeflag=b"g"), *m]),
        "(tar type b'g')",
        None,
    ),
    (
        "second-manifest",
        _members(lambda m, p: [m[0], m[0], *m[1:]]),
        "repeated member 'manifest.json'",
        None,
    ),
    (
        "second-manifest-last",
        _members(lambda m, p: [*m, m[0]]),
        "repeated member 'manifest.json'",
        "unexpected member 'manifest.json' after the last one",
    ),
    (
        "second-entity-member",
        _members(lambda m, p: [*m, m[1]]),
        "repeated member 'observations.msgpack'",
        "unexpected member 'observations.msgpack' after the last one",
    ),
    (
        "unlisted-member",
        _members(lambda m, p: [*m[:2], member("notes.txt", b"hi"), *m[2:]]),
        "unknown member 'notes.txt'",
        None,
    ),
    (
        "listed-but-absent",
        _members(lambda m, p: [*m[:2], *m[3:]]),
        "member capsules.msgpack is missing",
        "expected member capsules.msgpack",
    ),
    (
        "members-swapped",
        _members(lambda m, p: [m[0], m[2], m[1], *m[3:]]),
        "out of order",
        "expected member observations.msgpack",
    ),
    (
        "corrupt-header-mid-archive",
        _tar(lambda t, at: t[: at + 3] + bytes([t[at + 3] ^ 0x20]) + t[at + 4 :]),
        "damaged tar header (checksum mismatch)",
        None,
    ),
    (
        "size-not-octal",
        _entity_member(size_field=b"\x80" + b"\0" * 3 + b"\xff" * 8),
        "is not an octal number",
        None,
    ),
    (
        "truncated-in-header",
        _tar(lambda t, at: t[: at + 100]),
        "truncated: the data ends inside a tar header",
        None,
    ),
    (
        "truncated-in-data",
        _tar(lambda t, at: t[: at + 600]),
        "truncated: the data ends inside",
        None,
    ),
    (
        "no-end-of-archive",
        _members(lambda m, p: m, end=False),
        "truncated: the data ends inside a tar header",
        None,
    ),
    (
        "truncated-end-of-archive",
        lambda: compress(archive(*Parts().members(), end=False) + b"\0" * 812),
        "truncated: the data ends inside the end-of-archive marker",
        None,
    ),
    (
        "data-after-end-of-archive",
        _tar(lambda t, at: t + b"x"),
        "unexpected data after the end of the tar archive",
        None,
    ),
    (
        "huge-declared-member",
        _members(lambda m, p: [m[0], tar_header("observations.msgpack", 8**11 - 1), *m[1:]]),
        "8589934591 bytes, the manifest says",
        None,
    ),
    (
        "huge-undeclared-member",
        _members(lambda m, p: [*m[:-1], tar_header("blob.bin", 8**11 - 1)], end=False),
        "unknown member 'blob.bin'",
        None,
    ),
    # The compression layer.
    ("empty-file", lambda: b"", "empty file, not a bundle", None),
    (
        "not-zstd",
        lambda: b"SQLite format 3\0" + b"\0" * 100,
        "not a bundle (not zstd-compressed data)",
        None,
    ),
    (
        "truncated-magic",
        lambda: _good()[:3],
        "truncated: the zstd stream ends before its frame is complete",
        None,
    ),
    (
        "truncated-frame-header",
        lambda: _good()[:5],
        "truncated: the zstd stream ends before its frame is complete",
        None,
    ),
    (
        "truncated-half",
        lambda: _good()[: len(_good()) // 2],
        "truncated: the zstd stream ends before its frame is complete",
        None,
    ),
    (
        "truncated-checksum",
        lambda: _good()[:-2],
        "truncated: the zstd stream ends before its frame is complete",
        None,
    ),
    (
        "checksum-missing",
        lambda: _good()[:-4],
        "truncated: the zstd stream ends before its frame is complete",
        None,
    ),
    ("checksum-wrong", lambda: _good()[:-1] + bytes([_good()[-1] ^ 1]), "damaged zstd data", None),
    (
        "trailing-junk",
        lambda: _good() + b"junk",
        "unexpected data after the end of the zstd frame",
        None,
    ),
    (
        "trailing-zero-byte",
        lambda: _good() + b"\0",
        "unexpected data after the end of the zstd frame",
        None,
    ),
    (
        "second-frame",
        lambda: _good() + _good(),
        "unexpected data after the end of the zstd frame",
        None,
    ),
    (
        "skippable-frame-after",
        lambda: _good() + b"\x50\x2a\x4d\x18\x04\0\0\0abcd",
        "unexpected data after the end of the zstd frame",
        None,
    ),
    (
        "skippable-frame-first",
        lambda: b"\x50\x2a\x4d\x18\x04\0\0\0abcd" + _good(),
        "not a bundle (not zstd-compressed data)",
        None,
    ),
    (
        "no-frame-checksum",
        lambda: zstandard.ZstdCompressor(write_checksum=False).compress(Parts().tar()),
        "has no content checksum",
        None,
    ),
    (
        "forged-content-size-huge",
        lambda: with_content_size(_good(), 1 << 50),
        "damaged zstd data",
        None,
    ),
    (
        "forged-content-size-small",
        lambda: with_content_size(_good(), 100),
        "damaged zstd data",
        None,
    ),
    (
        "window-128-mib",
        lambda: with_window(_good(), 27),
        "asks for a window of 134,217,728 bytes",
        None,
    ),
    (
        "window-2-tib",
        lambda: with_window(_good(), 41),
        "asks for a window of more than 2 GiB",
        None,
    ),
    ("bomb-within-declared-size", lambda: bomb(1 << 30), "frame at byte 0 declares 0 bytes", None),
    (
        "bomb-beyond-declared-size",
        lambda: bomb(100, member_size=4 << 30),
        "4294967296 bytes, the manifest says 100",
        None,
    ),
    # The manifest.
    (
        "manifest-missing",
        _members(lambda m, p: m[1:]),
        "the first member is 'observations.msgpack', not manifest.json",
        None,
    ),
    (
        "manifest-not-first",
        _members(lambda m, p: [m[1], m[0], *m[2:]]),
        "the first member is 'observations.msgpack', not manifest.json",
        None,
    ),
    ("manifest-only-end", lambda: compress(archive()), "empty archive, no manifest.json", None),
    (
        "manifest-invalid-json",
        _manifest_bytes(lambda m: m[:-1]),
        "manifest.json: not valid JSON",
        None,
    ),
    (
        "manifest-not-utf8",
        _manifest_bytes(lambda m: m.replace(b"hostile-tests", b"host\xffile")),
        "manifest.json: not valid JSON",
        None,
    ),
    (
        "manifest-lone-surrogate",
        _manifest_bytes(lambda m: m.replace(b"hostile-tests", b"\\ud800")),
        "manifest.json: not valid JSON",
        None,
    ),
    (
        "manifest-duplicate-key",
        _manifest_bytes(
            lambda m: m.replace(
                b'"format": "kindling-bundle"', b'"entities": [], "format": "kindling-bundle"'
            )
        ),
        "key 'entities' appears twice",
        None,
    ),
    (
        "manifest-deep",
        _manifest_bytes(lambda m: b"[" * 400_000 + b"]" * 400_000),
        "nested too deeply",
        None,
    ),
    (
        "manifest-oversized",
        _manifest_bytes(lambda m: m + b" " * (1 << 20)),
        "more than a manifest may be (1048576)",
        None,
    ),
    (
        "manifest-format-v3",
        _manifest(lambda m: m.update(formatVersion="3.0")),
        "format version 3.0 is not supported",
        None,
    ),
    (
        "manifest-v2-without-base",  # 2.x is an increment (spec section 16): it names its base
        _manifest(lambda m: m.update(formatVersion="2.0")),
        "missing required field `base`",
        None,
    ),
    (
        "manifest-not-ours",
        _manifest(lambda m: m.update(format="zip")),
        "not a kindling-bundle manifest",
        None,
    ),
    (
        "manifest-count-lies",
        _manifest(lambda m: m["entities"][0].update(records=99)),
        "holds 7 records, the manifest says 99",
        None,
    ),
    (
        "manifest-size-lies",
        _manifest(lambda m: m["entities"][1].update(bytes=5)),
        "bytes, the manifest says 5",
        None,
    ),
    (
        "manifest-hash-lies",
        _manifest(lambda m: m["entities"][3].update(sha256="0" * 64)),
        f"does not match the manifest's {'0' * 64}",
        None,
    ),
    (
        "manifest-integer-beyond-64-bits",
        _manifest(lambda m: m.update(createdAt=2**70)),
        "field createdAt",
        None,
    ),
    (
        "manifest-negative-count",
        _manifest(lambda m: m["entities"][2].update(records=-1)),
        "field entities[2].records",
        None,
    ),
    # Records.
    (
        "record-not-utf8",
        _payload(lambda p: p.replace("Café".encode(), b"Caf\xff\xfe")),
        "frame is not valid MessagePack",
        None,
    ),
    (
        "record-lone-surrogate",
        _payload(lambda p: p.replace("Café".encode(), b"Ca\xed\xa0\x80")),
        "frame is not valid MessagePack",
        None,
    ),
    (
        "record-nan",
        _records("observations", lambda r: r[0]["provenance"].update(score=float("nan"))),
        "observation obs-01: field provenance.score is nan",
        None,
    ),
    (
        "record-infinity",
        _records("observations", lambda r: r[2]["provenance"]["args"].update(w=float("-inf"))),
        "observation obs-03: field provenance.args.w is -inf",
        None,
    ),
    (
        "record-bin",
        _records("observations", lambda r: r[0]["provenance"].update(raw=b"\x00")),
        "field provenance.raw holds a MessagePack bin value",
        None,
    ),
    (
        "record-ext",
        _records(
            "observations", lambda r: r[0]["provenance"].update(t=msgspec.msgpack.Ext(1, b"x"))
        ),
        "field provenance.t holds a MessagePack ext value",
        None,
    ),
    (
        "record-map-key-not-string",
        _records("observations", lambda r: r[0]["provenance"].update(k={1: "x"})),
        "field provenance.k has a map key that is not a string",
        None,
    ),
    (
        "record-integer-beyond-64-bits",
        _records("observations", lambda r: r[0].update(ts=2**64 - 1)),
        "field ts: expected `int` <= 9223372036854775807",
        None,
    ),
    (
        "record-nested-too-deep",
        _records("observations", lambda r: r[0]["provenance"].update(d=_nested(MAX_NESTING_DEPTH))),
        f"more than {MAX_NESTING_DEPTH} levels deep",
        None,
    ),
    (
        "record-nested-beyond-recursion",
        _payload(_deeper_than_any_decoder, 1),
        "nests values too deeply to be decoded",
        None,
    ),
    (
        "record-larger-than-a-frame",
        lambda: (
            Parts()
            .set_data("observations", (MAX_FRAME_BYTES + 1).to_bytes(4, "big") + b"\x91", 1)
            .bundle()
        ),
        f"declares {MAX_FRAME_BYTES + 1} bytes (allowed: 1 to {MAX_FRAME_BYTES})",
        None,
    ),
    (
        "record-decodes-to-gigabytes",
        _payload(_empty_maps(8 << 20), 1),
        f"holds more than {MAX_FRAME_VALUES} values",
        None,
    ),
    (
        "record-wrong-type",
        _records("capsules", lambda r: r[0].update(openedAt="yesterday")),
        "field openedAt: expected `int`, got `str`",
        None,
    ),
    (
        "record-missing-field",
        _records("pins", lambda r: r[0].pop("targetId")),
        "missing required field `targetId`",
        None,
    ),
    (
        "record-unknown-enum",
        _records("observations", lambda r: r[1].update(kind="telepathy")),
        "field kind: invalid enum value 'telepathy'",
        None,
    ),
    (
        "record-duplicate-id",
        _records("observations", lambda r: r.append(dict(r[0]))),
        "observation obs-01 appears more than once",
        None,
    ),
    (
        "record-duplicate-id-other-content",
        _records("summaries", lambda r: r.append({**r[0], "content": "other"})),
        "appears more than once",
        None,
    ),
    (
        "record-links-nowhere",
        _records("capsules", lambda r: r[0]["observationIds"].append("nowhere")),
        "nowhere",
        "observation nowhere, which does not exist",
    ),
    (
        "record-summary-of-nothing",
        _records("summaries", lambda r: r[0].update(capsuleId="nowhere")),
        "capsule nowhere is not in the bundle",
        "capsule nowhere does not exist",
    ),
    (
        "record-pin-on-nothing",
        _records("pins", lambda r: r[0].update(targetId="nowhere")),
        "is not in the bundle",
        "nowhere does not exist",
    ),
    (
        "record-count-disagrees",
        _manifest(lambda m: m["entities"][0].update(records=8)),
        "holds 7 records, the manifest says 8",
        None,
    ),
    (
        "frame-not-an-array",
        _payload(lambda p: b"\x01"),
        "frame is not a MessagePack array of records",
        None,
    ),
    (
        "frame-trailing-bytes",
        _payload(lambda p: p + b"\xc0"),
        "frame is not valid MessagePack",
        None,
    ),
]

CASE_IDS = [case[0] for case in CASES]


@pytest.fixture(scope="module")
def target_template(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A small Kindling database to import into; copied per test."""
    path = tmp_path_factory.mktemp("target") / "target.db"
    generate_sample(path, observations=40, seed=11)
    conn = open_store(path)
    conn.execute("PRAGMA wal_checkpoint(TRUNCATE)")
    conn.close()
    return path


def _copy(template: Path, to: Path) -> Path:
    shutil.copy(template, to)
    return to


def test_the_builder_makes_valid_bundles(tmp_path: Path, target_template: Path) -> None:
    """Every case below is one lie away from this bundle, which verifies and imports."""
    data = _good()
    report = verify_bundle(io.BytesIO(data))
    assert report.ok, report.problems
    assert report.records == {"observations": 7, "capsules": 3, "summaries": 2, "pins": 3}
    target = _copy(target_template, tmp_path / "t.db")
    conn = open_store(target)
    imported = import_bundle(conn, io.BytesIO(data))
    conn.close()
    assert imported.counts["observations"].inserted == 7 and imported.integrity.ok


@pytest.mark.parametrize(("name", "build", "verify_says", "import_says"), CASES, ids=CASE_IDS)
def test_verify_and_import_refuse_it_and_the_database_is_untouched(
    name: str,
    build: Build,
    verify_says: str,
    import_says: str | None,
    tmp_path: Path,
    target_template: Path,
    capsys: pytest.CaptureFixture[str],
) -> None:
    data = build()
    report = verify_bundle(io.BytesIO(data))
    assert not report.ok
    assert any(verify_says in problem for problem in report.messages), report.messages

    target = _copy(target_template, tmp_path / "t.db")
    before = dump_contents(target)
    conn = open_store(target)
    with pytest.raises(KindlingBundleError) as refused:
        import_bundle(conn, io.BytesIO(data))
    conn.close()
    assert (import_says or verify_says) in str(refused.value)
    assert dump_contents(target) == before

    # The CLI's own code path, in this process (a subprocess costs 0.2 s to start; a
    # representative subset runs as real subprocesses below): one line on stderr, exit code 1.
    bundle = tmp_path / "in.kbundle"
    bundle.write_bytes(data)
    for args, expected in (
        (["verify", str(bundle)], verify_says),
        (["import", "--db", str(target), str(bundle)], import_says or verify_says),
    ):
        with pytest.raises(SystemExit) as exited:
            cli_main(args)
        out = capsys.readouterr()
        lines = out.err.splitlines()
        assert exited.value.code == 1 and len(lines) == 1, out.err
        assert lines[0].startswith("kindling-bundle: error: ") and expected in lines[0]
    assert dump_contents(target) == before


def _limit_memory() -> None:
    resource.setrlimit(resource.RLIMIT_AS, (MEMORY_LIMIT, MEMORY_LIMIT))


def _run_cli(*args: str | Path, cwd: Path | None = None) -> subprocess.CompletedProcess:
    return subprocess.run(
        [cli_executable(), *map(str, args)],
        capture_output=True,
        timeout=CLI_TIMEOUT,
        preexec_fn=_limit_memory,
        cwd=cwd,
    )


# One case for each kind of damage the issue lists, and every bomb and limit.
SUBPROCESS_CASES = {
    "name-dotdot",
    "name-absolute",
    "name-nul",
    "symlink",
    "char-device",
    "pax-path",
    "second-manifest",
    "unlisted-member",
    "listed-but-absent",
    "corrupt-header-mid-archive",
    "truncated-in-data",
    "huge-declared-member",
    "huge-undeclared-member",
    "truncated-checksum",
    "trailing-junk",
    "forged-content-size-huge",
    "window-2-tib",
    "bomb-within-declared-size",
    "bomb-beyond-declared-size",
    "manifest-duplicate-key",
    "manifest-deep",
    "manifest-oversized",
    "record-not-utf8",
    "record-nan",
    "record-nested-beyond-recursion",
    "record-larger-than-a-frame",
    "record-decodes-to-gigabytes",
    "record-duplicate-id",
}


def test_hostile_bundles_through_the_installed_cli(tmp_path: Path, target_template: Path) -> None:
    """Real subprocesses, each under a 1 GiB address-space limit and a timeout, the bombs
    included (1 GiB of output within the declared sizes, 4 GiB beyond them, an 8 GiB member, a
    frame that would decode to gigabytes): one line on stderr, exit code 1, the database
    untouched, no file created."""
    assert set(CASE_IDS) >= SUBPROCESS_CASES

    def run(case: tuple[str, Build, str, str | None]) -> list[str]:
        name, build, verify_says, import_says = case
        folder = tmp_path / name
        folder.mkdir()
        bundle = folder / "in.kbundle"
        bundle.write_bytes(build())
        target = _copy(target_template, folder / "t.db")
        before = dump_contents(target)
        failures = []
        for args, expected in (
            (("verify", bundle), verify_says),
            (("import", "--db", target, bundle), import_says or verify_says),
        ):
            proc = _run_cli(*args, cwd=folder)
            try:
                line = one_error_line(proc)
                assert expected in line, line
            except AssertionError as exc:
                failures.append(f"{name}: {args[0]}: {exc}")
        if dump_contents(target) != before:
            failures.append(f"{name}: import changed the database")
        leftovers = {p.name for p in folder.iterdir()} - {
            "in.kbundle",
            "t.db",
            "t.db-wal",
            "t.db-shm",
        }
        if leftovers:
            failures.append(f"{name}: files appeared: {sorted(leftovers)}")
        return failures

    with ThreadPoolExecutor(max_workers=max(2, os.cpu_count() or 2)) as pool:
        chosen = [case for case in CASES if case[0] in SUBPROCESS_CASES]
        failures = [failure for found in pool.map(run, chosen) for failure in found]
    assert not failures, "\n".join(failures)
    assert not Path("/tmp/kindling-hostile-abs").exists()


def test_nothing_is_ever_written_outside_the_database(tmp_path: Path) -> None:
    """Members named as paths, links and devices are refused, not extracted: after verify and
    import, no file is left anywhere."""
    work = tmp_path / "work"
    work.mkdir()
    escape = tmp_path / "escaped"
    hostile = {
        "relative": _entity_member(name="../escaped"),
        "absolute": _entity_member(name=str(escape)),
        "symlink": _entity_member(typeflag=b"2", linkname=str(escape).encode()),
        "hardlink": _entity_member(typeflag=b"1", linkname=str(escape).encode()),
        "directory": _entity_member(name="../escaped/", typeflag=b"5"),
    }
    for name, build in hostile.items():
        (tmp_path / f"{name}.kbundle").write_bytes(build())
    for name in hostile:
        one_error_line(_run_cli("verify", tmp_path / f"{name}.kbundle", cwd=work))
        one_error_line(_run_cli("import", "--db", "t.db", tmp_path / f"{name}.kbundle", cwd=work))
    assert not escape.exists()
    # a failed import into a new database leaves no database either: nothing at all
    assert list(work.iterdir()) == []


def test_the_writer_refuses_what_the_reader_would_refuse(tmp_path: Path) -> None:
    def observation(**provenance: Any) -> Observation:
        return Observation(id="o1", kind="message", content="x", ts=1, provenance=provenance)

    out = tmp_path / "out.kbundle"
    refused = {
        "is nan": observation(score=float("nan")),
        "holds a MessagePack bin value": observation(raw=b"x"),
        f"more than {MAX_NESTING_DEPTH} levels deep": observation(d=_nested(MAX_NESTING_DEPTH)),
        "provenance.n holds an integer beyond 64 bits": observation(n=10**21),
        f"more than {MAX_FRAME_VALUES} values": observation(a=[0] * (MAX_FRAME_VALUES + 1)),
    }
    for message, record in refused.items():
        with pytest.raises(RecordError, match="observation o1: ") as caught:
            write_bundle_from_records(out, {"observations": [record]})
        assert message in str(caught.value)
        assert not out.exists()
    deepest = observation(d=_nested(MAX_NESTING_DEPTH - 1))
    write_bundle_from_records(out, {"observations": [deepest]})
    with open_bundle(out) as reader:
        assert list(reader.records()) == [deepest]


def test_a_frame_over_the_value_limit_is_split_and_reads_back(tmp_path: Path) -> None:
    """Many records whose frame would hold more than MAX_FRAME_VALUES values: the writer splits
    the frame, so every bundle it writes is one its reader accepts."""
    values = MAX_FRAME_VALUES // 6
    records = [
        Observation(id=f"o{i}", kind="message", content="x", ts=i, provenance={"a": [0] * values})
        for i in range(8)
    ]
    out = tmp_path / "split.kbundle"
    write_bundle_from_records(out, {"observations": records})
    with open_bundle(out) as reader:
        assert [len(batch) for _, batch in reader.batches()] == [4, 4]
    with open_bundle(out) as reader:
        assert list(reader.records()) == records


# --- the sweep ------------------------------------------------------------------------------------


SWEEP_BUNDLE = VECTORS / "full.kbundle"
SWEEP_CASES = 300


def _content(data: bytes) -> tuple[Any, list[Any]]:
    with open_bundle(io.BytesIO(data)) as reader:
        return reader.manifest, list(reader.records())


def _sweep_cases(data: bytes) -> list[tuple[str, bytes]]:
    """One byte flipped at SWEEP_CASES offsets spread over the whole file (with a different bit
    pattern each time), and the file cut at as many offsets."""
    cases = []
    for n in range(SWEEP_CASES):
        offset = n * len(data) // SWEEP_CASES
        mask = 0xFF if n % 9 == 8 else 1 << (n % 8)
        flipped = bytearray(data)
        flipped[offset] ^= mask
        cases.append((f"flip {offset} ^{mask:#x}", bytes(flipped)))
    for n in range(SWEEP_CASES):
        cut = n * len(data) // SWEEP_CASES
        cases.append((f"cut at {cut}", data[:cut]))
    cases.append(("cut the last byte", data[:-1]))
    return cases


def test_sweep_every_flip_or_cut_is_the_same_content_or_refused_and_changes_nothing(
    tmp_path: Path, target_template: Path
) -> None:
    data = SWEEP_BUNDLE.read_bytes()
    original = _content(data)
    targets = [tmp_path / "empty.db", _copy(target_template, tmp_path / "sample.db")]
    open_store(targets[0]).close()
    conns = [open_store(target) for target in targets]
    dumps = [dump_contents(target) for target in targets]
    accepted = refused = 0
    for n, (name, mutated) in enumerate(_sweep_cases(data)):
        report = verify_bundle(io.BytesIO(mutated))
        if report.ok:  # e.g. a window descriptor flipped to a larger window: same content
            accepted += 1
            assert not name.startswith("cut"), name
            assert _content(mutated) == original, name
            continue
        refused += 1
        which = n % 2
        with pytest.raises(KindlingBundleError):
            import_bundle(conns[which], io.BytesIO(mutated))
        assert dump_contents(targets[which]) == dumps[which], name
    for conn in conns:
        conn.close()
    assert refused >= 2 * SWEEP_CASES - 10  # nearly every change is caught...
    assert accepted + refused == 2 * SWEEP_CASES + 1  # ...and none got through unnoticed


def test_sweep_cases_from_the_cli_are_one_line(tmp_path: Path, target_template: Path) -> None:
    data = SWEEP_BUNDLE.read_bytes()
    picks = [
        (name, mutated)
        for i, (name, mutated) in enumerate(_sweep_cases(data))
        if i % 150 == 3 and not verify_bundle(io.BytesIO(mutated)).ok
    ]
    assert len(picks) >= 3
    target = _copy(target_template, tmp_path / "t.db")
    before = dump_tables(target)
    for name, mutated in picks:
        bundle = tmp_path / "mutated.kbundle"
        bundle.write_bytes(mutated)
        assert "not a valid bundle" in one_error_line(_run_cli("verify", bundle)), name
        one_error_line(_run_cli("import", "--db", target, bundle))
    assert dump_tables(target) == before


# --- the target database --------------------------------------------------------------------------


@pytest.fixture
def good_bundle(tmp_path: Path) -> Path:
    path = tmp_path / "good.kbundle"
    path.write_bytes(_good())
    return path


def test_a_target_that_is_not_sqlite(tmp_path: Path, good_bundle: Path) -> None:
    target = tmp_path / "notes.db"
    target.write_bytes(b"my notes, not a database\n" * 100)
    line = one_error_line(_run_cli("import", "--db", target, good_bundle))
    assert "notes.db: not a SQLite database" in line
    assert target.read_bytes() == b"my notes, not a database\n" * 100


def test_an_already_corrupt_target(tmp_path: Path, target_template: Path, good_bundle: Path):
    """Corruption the opening checks cannot see (a page in the middle): the import fails on it,
    names the database, and writes nothing."""
    target = _copy(target_template, tmp_path / "t.db")
    data = bytearray(target.read_bytes())
    middle = len(data) // 2 // 4096 * 4096
    data[middle : middle + 8192] = b"\xff" * 8192
    target.write_bytes(bytes(data))
    line = one_error_line(_run_cli("import", "--db", target, good_bundle))
    assert "t.db" in line and "corrupt" in line
    assert target.read_bytes() == bytes(data)


def test_a_target_with_a_newer_schema(tmp_path: Path, target_template: Path, good_bundle: Path):
    target = _copy(target_template, tmp_path / "t.db")
    with sqlite3.connect(target) as conn:
        conn.execute("PRAGMA user_version = 6")
    before = dump_tables(target)
    line = one_error_line(_run_cli("import", "--db", target, good_bundle))
    assert "schema version 6 is newer than this tool understands" in line
    assert dump_tables(target) == before


_HOLD_LOCK = """
import sqlite3, sys, time
conn = sqlite3.connect(sys.argv[1], isolation_level=None)
conn.execute("BEGIN IMMEDIATE")
print("locked", flush=True)
time.sleep(float(sys.argv[2]))
conn.execute("ROLLBACK")
"""


def _hold_write_lock(target: Path, seconds: float) -> subprocess.Popen:
    holder = subprocess.Popen(
        [shutil.which("python3") or "python3", "-c", _HOLD_LOCK, str(target), str(seconds)],
        stdout=subprocess.PIPE,
    )
    assert holder.stdout is not None and holder.stdout.readline() == b"locked\n"
    return holder


def test_another_writer_holding_the_lock_past_the_busy_timeout(
    tmp_path: Path, target_template: Path, good_bundle: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    target = _copy(target_template, tmp_path / "t.db")
    before = dump_tables(target)
    monkeypatch.setenv("KINDLING_BUSY_TIMEOUT_MS", "200")
    holder = _hold_write_lock(target, 30)
    try:
        line = one_error_line(_run_cli("import", "--db", target, good_bundle))
    finally:
        holder.kill()
        holder.wait()
    assert "t.db: cannot start a write transaction: database is locked by another process" in line
    assert dump_tables(target) == before


def test_another_writer_that_finishes_within_the_busy_timeout(
    tmp_path: Path, target_template: Path, good_bundle: Path
) -> None:
    """The import waits for the lock (default busy timeout: 5 s) instead of failing."""
    target = _copy(target_template, tmp_path / "t.db")
    holder = _hold_write_lock(target, 0.5)
    proc = _run_cli("import", "--db", target, good_bundle)
    holder.wait()
    assert proc.returncode == 0, proc.stderr.decode()
    conn = open_store(target, readonly=True)
    assert conn.execute("SELECT count(*) FROM observations WHERE id = 'obs-01'").fetchone() == (1,)
    conn.close()


def test_a_bad_busy_timeout_setting_is_one_line(
    tmp_path: Path, good_bundle: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("KINDLING_BUSY_TIMEOUT_MS", "soon")
    line = one_error_line(_run_cli("import", "--db", tmp_path / "t.db", good_bundle))
    assert "KINDLING_BUSY_TIMEOUT_MS='soon' is not a whole number of milliseconds" in line
    assert not (tmp_path / "t.db").exists()


def test_the_spec_states_the_limits_the_code_enforces() -> None:
    """spec/bundle-format.md sections 13.1 and 13.2 name each limit's constant; the numbers must
    agree."""
    from kindling_bundle.format.manifest import MAX_MANIFEST_BYTES
    from kindling_bundle.format.tar import MAX_MEMBER_BYTES, RECORD
    from kindling_bundle.format.zstd_frames import MAX_WINDOW_BYTES
    from kindling_bundle.io.sshsig.wire import MAX_SIGNATURE_BYTES

    spec = (VECTORS.parent / "bundle-format.md").read_text()
    rows = {
        line.split("`")[1]: line
        for line in spec.splitlines()
        if line.startswith("| ") and "`" in line
    }
    for constant, value in {
        "MAX_MANIFEST_BYTES": MAX_MANIFEST_BYTES,
        "MAX_SIGNATURE_BYTES": MAX_SIGNATURE_BYTES,
        "MAX_FRAME_BYTES": MAX_FRAME_BYTES,
        "MAX_FRAME_VALUES": MAX_FRAME_VALUES,
        "MAX_NESTING_DEPTH": MAX_NESTING_DEPTH,
        "MAX_WINDOW_BYTES": MAX_WINDOW_BYTES,
        "RECORD": RECORD,
    }.items():
        assert f"{value:,}" in rows[constant], (constant, value)
    assert "8 GiB - 1" in rows["MAX_MEMBER_BYTES"] and MAX_MEMBER_BYTES == 8 * 2**30 - 1
    feeding = rows["FEED_BLOCKS"]
    assert f"{FEED_BLOCKS} (" in feeding and f"{AHEAD_FEED_BLOCKS} (" in feeding
    assert f"at most {READ_AHEAD} steps ahead" in feeding


class _Trickle(io.RawIOBase):
    """A source that returns at most a few bytes per read, so that every zstd block header
    is, somewhere, cut by the end of what has been read so far."""

    def __init__(self, data: bytes, sizes: tuple[int, ...] = (1, 2, 3, 5, 7)):
        self._data, self._pos, self._sizes, self._reads = data, 0, sizes, 0

    def readable(self) -> bool:
        return True

    def read(self, n: int = -1) -> bytes:
        size = min(n, self._sizes[self._reads % len(self._sizes)])
        self._reads += 1
        chunk = self._data[self._pos : self._pos + size]
        self._pos += len(chunk)
        return chunk


def _decompressed(source: io.RawIOBase | io.BytesIO) -> bytes:
    reader = ZstdFrameReader(source, "vector")  # type: ignore[arg-type]
    parts = []
    while chunk := reader.read(4096):
        parts.append(chunk)
    reader.finish()
    return b"".join(parts)


def test_block_headers_cut_anywhere_by_a_slow_source_read_the_same() -> None:
    bundle = (Path(__file__).parent.parent / "spec" / "vectors" / "full.kbundle").read_bytes()
    expected = zstandard.ZstdDecompressor().decompressobj().decompress(bundle)
    assert _decompressed(_Trickle(bundle)) == expected
    assert _decompressed(io.BytesIO(bundle)) == expected


def test_reading_a_bomb_holds_about_one_megabyte_at_a_time() -> None:
    """Each call decompresses whole blocks, at most FEED_BLOCKS of them (128 KiB out each), so
    64 MiB of zeros from 2 KiB of RLE blocks never sits in memory at once."""
    frame = zstd_frame(zero_blocks(64 << 20))
    reader = ZstdFrameReader(io.BytesIO(frame), "bomb")  # type: ignore[arg-type]
    tracemalloc.start()
    try:
        total = 0
        while chunk := reader.read(1024):
            total += len(chunk)
            if total >= 64 << 20:
                break
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    assert total == 64 << 20
    # one call's output, held until it is read through; 1 KiB slices of this
    # frame would expand to 32 MiB per call
    assert peak < 4 * FEED_BLOCKS * RLE_BLOCK_MAX


@pytest.mark.parametrize(
    ("block", "what"),
    [
        ((3 << 1 | 100 << 3).to_bytes(3, "little") + b"x" * 100, "reserved block type"),
        ((1 << 1 | (RLE_BLOCK_MAX + 1) << 3).to_bytes(3, "little") + b"x", "RLE over 128 KiB"),
    ],
)
def test_a_damaged_block_header_is_damaged_zstd_data(block: bytes, what: str) -> None:
    frame = zstd_frame([raw_block(b"tar bytes"), block])
    with pytest.raises(BundleError, match="damaged zstd data"):
        _decompressed(io.BytesIO(frame))
