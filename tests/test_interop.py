"""Interoperability with Kindling's own JSON export files, and diff and merge of datasets.

The fixtures in tests/data/ were written by tests/data/make_kindling_exports.mjs the way Kindling
writes them (its exportDatabase mapping, createExportBundle wrapper and JSON.stringify).
"""

from __future__ import annotations

import io
import json
import re
import subprocess
import tracemalloc
from pathlib import Path

import pytest

from kindling_bundle.errors import BundleError, RecordError
from kindling_bundle.kindling_json import (
    KindlingJsonReader,
    entity_streams,
    open_kindling_json,
    peek_format,
    write_kindling_json,
)
from kindling_bundle.records import ENTITY_TYPES, Observation

DATA = Path(__file__).parent / "data"
FULL = DATA / "kindling-full.json"
DEFAULT = DATA / "kindling-default.json"
SCOPED_PRETTY = DATA / "kindling-scoped-pretty.json"


def read_all(src, **kwargs) -> tuple[list, object]:
    with open_kindling_json(src, **kwargs) as reader:
        records = list(reader.records())
    return records, reader.info


def by_entity(records) -> dict[str, list]:
    return {
        entity: [r for r in records if isinstance(r, cls)] for entity, cls in ENTITY_TYPES.items()
    }


def write_json(path: Path, document) -> Path:
    path.write_text(json.dumps(document, ensure_ascii=False, separators=(",", ":")))
    return path


def load_ordered(path: Path) -> dict:
    return json.loads(path.read_bytes())


# -- reading Kindling's JSON -----------------------------------------------------------------


def test_reads_every_entity_and_relationship_as_kindling_wrote_them():
    records, info = read_all(FULL)
    assert info.bundle_version == "1.0" and info.exported_at == 1767225800000
    assert info.scope is None
    assert info.counts == {"observations": 12, "capsules": 3, "summaries": 2, "pins": 3}
    grouped = by_entity(records)
    # Foreign-key order, each entity in file order.
    assert records == [
        *grouped["observations"],
        *grouped["capsules"],
        *grouped["summaries"],
        *grouped["pins"],
    ]
    obs = {o.id: o for o in grouped["observations"]}
    assert obs["obs-05"].redacted and obs["obs-05"].content == "[redacted]"
    assert obs["obs-02"].scope_ids == {"sessionId": "s-1", "repoId": "r-1", "taskId": "t-9"}
    assert list(obs["obs-02"].provenance) == ["tool", "args", "ok", "ratio", "big", "tiny", "none"]
    assert obs["obs-02"].provenance["big"] == 1e21
    caps = {c.id: c for c in grouped["capsules"]}
    assert caps["cap-s1"].observation_ids == ["obs-03", "obs-01", "obs-02", "obs-05", "obs-04"]
    assert caps["cap-s2"].status == "open" and caps["cap-s2"].closed_at is None  # left out
    assert caps["cap-node"].type == "pocketflow_node"
    sums = {s.id: s for s in grouped["summaries"]}
    assert sums["sum-node"].confidence == 1.0 and sums["sum-s1"].evidence_refs == [
        "obs-03",
        "obs-05",
    ]
    pins = {p.id: p for p in grouped["pins"]}
    assert pins["pin-sum"].target_type == "summary" and pins["pin-sum"].reason is None
    assert pins["pin-obs"].expires_at is None and pins["pin-sum"].expires_at == 1767312000000


def test_pretty_printed_scoped_export_with_metadata():
    records, info = read_all(SCOPED_PRETTY)
    assert info.scope == {"sessionId": "s-1"}
    assert info.counts == {"observations": 9, "capsules": 2, "summaries": 2, "pins": 1}
    compact, _ = read_all(FULL)
    full_by_id = {(type(r), r.id): r for r in compact}
    assert all(full_by_id[(type(r), r.id)] == r for r in records)


@pytest.mark.parametrize("fixture", [FULL, DEFAULT])
def test_written_json_is_byte_identical_to_kindlings(fixture: Path):
    exported_at = load_ordered(fixture)["exportedAt"]
    with open_kindling_json(fixture) as reader:
        out = io.BytesIO()
        streams = dict(entity_streams(reader.records()))
        counts = write_kindling_json(out, streams, exported_at=exported_at)
    assert out.getvalue() == fixture.read_bytes()
    assert counts == reader.info.counts


def test_written_json_keeps_scope_and_leaves_absent_values_out(tmp_path: Path):
    records, info = read_all(SCOPED_PRETTY)
    dest = tmp_path / "out.json"
    write_kindling_json(dest, by_entity(records), exported_at=5, scope=info.scope)
    document = load_ordered(dest)
    assert list(document) == ["bundleVersion", "exportedAt", "dataset"]
    assert list(document["dataset"])[:3] == ["version", "exportedAt", "scope"]
    original = load_ordered(SCOPED_PRETTY)["dataset"]
    for entity in ENTITY_TYPES:
        assert document["dataset"][entity] == original[entity]
    pin = document["dataset"]["pins"][0]
    assert list(pin) == ["id", "targetType", "targetId", "reason", "createdAt", "scopeIds"]
    assert [list(tmp_path.iterdir())] == [[dest]]  # no temporary file left behind


def test_lists_in_any_order_come_out_in_foreign_key_order(tmp_path: Path):
    document = load_ordered(FULL)
    dataset = document["dataset"]
    document["dataset"] = {
        "pins": dataset["pins"],
        "summaries": dataset["summaries"],
        "version": "1.0",
        "capsules": dataset["capsules"],
        "observations": dataset["observations"],
    }
    shuffled = write_json(
        tmp_path / "shuffled.json", {"dataset": document["dataset"], "bundleVersion": "1.0"}
    )
    records, info = read_all(shuffled, spool_dir=str(tmp_path))
    expected, _ = read_all(FULL)
    assert records == expected
    assert info.exported_at is None and info.dataset_exported_at is None
    assert sorted(p.name for p in tmp_path.iterdir()) == ["shuffled.json"]  # spools are gone


def test_reads_from_a_pipe_after_detecting_the_format():
    process = subprocess.Popen(["cat", str(FULL)], stdout=subprocess.PIPE)
    try:
        kind, stream = peek_format(process.stdout)
        assert kind == "kindling-json"
        records = list(KindlingJsonReader(stream, name="<stdin>").records())
    finally:
        process.stdout.close()
        process.wait()
    assert len(records) == 20


@pytest.mark.parametrize(
    ("head", "expected"),
    [
        (b"\x28\xb5\x2f\xfd\x00", "bundle"),
        (b'\n  {"bundleVersion"', "kindling-json"),
        (b'\xef\xbb\xbf{"a"', "kindling-json"),
        (b"SQLite format 3\x00", None),
        (b"", None),
    ],
)
def test_format_is_detected_by_content(head: bytes, expected):
    kind, stream = peek_format(io.BytesIO(head + b"rest"))
    assert kind == expected
    assert stream.read() == head + b"rest"


# -- invalid input ---------------------------------------------------------------------------


def error_of(path: Path, **kwargs) -> str:
    with pytest.raises((BundleError, RecordError)) as caught:
        read_all(path, **kwargs)
    message = str(caught.value)
    assert "\n" not in message and message.startswith(str(path))
    return message


@pytest.mark.parametrize("cut", [1, 30, 200, 1500, -40, -2])
def test_truncated_json_names_where_it_ends(tmp_path: Path, cut: int):
    data = FULL.read_bytes()
    data = data[:cut]
    path = tmp_path / "cut.json"
    path.write_bytes(data)
    message = error_of(path)
    assert f"JSON ends early at line 1, column {len(data) + 1} (byte {len(data)})" in message
    assert "truncated" in message


def test_invalid_json_inside_a_record_names_line_column_and_byte(tmp_path: Path):
    text = SCOPED_PRETTY.read_text()
    bad_at = text.index('"node plan started"')
    text = text[:bad_at] + "'node plan started'" + text[bad_at + 19 :]
    path = tmp_path / "bad.json"
    path.write_text(text)
    byte = len(text[:bad_at].encode())
    line = text[:bad_at].count("\n") + 1
    column = byte - len(text[: text.rindex("\n", 0, bad_at) + 1].encode()) + 1
    message = error_of(path)
    assert f"invalid JSON at line {line}, column {column} (byte {byte})" in message
    assert "observations" in message


@pytest.mark.parametrize(
    ("mutate", "expected"),
    [
        (
            lambda d: d["dataset"]["observations"][3].update(kind="thought"),
            r"observations\[3\] \(id obs-04\): field kind: Invalid enum value 'thought'",
        ),
        (
            lambda d: d["dataset"]["capsules"][1].pop("openedAt"),
            r"capsules\[1\] \(id cap-node\): Object missing required field `openedAt`",
        ),
        (
            lambda d: d["dataset"]["summaries"][0].update(confidence=1.5),
            r"summaries\[0\] \(id sum-node\): field confidence: Expected `float` <= 1.0",
        ),
        (
            lambda d: d["dataset"]["pins"][2].update(targetType="capsule"),
            r"pins\[2\] \(id pin-redacted\): field targetType",
        ),
        (
            lambda d: d["dataset"]["observations"][0]["scopeIds"].update(repoId=7),
            r"observations\[0\] \(id obs-01\): field scopeIds: Expected `str`, got `int`",
        ),
        (
            lambda d: d["dataset"]["observations"][0].pop("id"),
            r"observations\[0\]: Object missing required field `id`",
        ),
    ],
)
def test_invalid_record_names_file_entity_index_id_and_field(tmp_path: Path, mutate, expected):
    document = load_ordered(FULL)
    mutate(document)
    path = write_json(tmp_path / "bad.json", document)
    with pytest.raises(RecordError) as caught:
        read_all(path)
    assert re.search(expected, str(caught.value)), str(caught.value)
    assert str(caught.value).startswith(f"{path}: ")


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("", "JSON ends early at line 1, column 1 (byte 0)"),
        (
            "[1, 2]",
            "not a Kindling JSON export (it must be a JSON object, beginning with '{'; "
            "found b'[1, 2]' at line 1, column 1 (byte 0))",
        ),
        ('{"bundleVersion": "1.0"}', "no 'dataset' field"),
        ('{"bundleVersion": "2.0", "dataset": {}}', "bundleVersion '2.0' is not supported"),
        (
            '{"bundleVersion": "1.0", "dataset": {"version": "1.0", "observations": []}}',
            "the dataset has no 'capsules', 'summaries', 'pins'",
        ),
        (
            '{"bundleVersion": "1.0", "dataset": {"observations": {}}}',
            'line 1, column 54 (byte 53): "observations" must be a list',
        ),
        (
            '{"bundleVersion": "1.0", "bundleVersion": "1.0"}',
            "line 1, column 26 (byte 25): duplicate key 'bundleVersion'",
        ),
        (
            '{"bundleVersion": "1.0" "dataset": {}}',
            "line 1, column 25 (byte 24): expected ',' or '}' in the top-level object",
        ),
        (
            '{"bundleVersion": "1.0", "exportedAt": "yesterday", "dataset": {}}',
            "exportedAt: Expected `int`, got `str`",
        ),
        (
            '{"bundleVersion": "1.0", "dataset": {"version": "1.0", "observations": [], '
            '"capsules": [], "summaries": [], "pins": [{"id": "p"]}]}}',
            "line 1, column 128 (byte 127): expected ',' or '}' (in record 0 of pins)",
        ),
        (
            '{"bundleVersion": "1.0", "dataset": {"version": "1.0", "observations": [], '
            '"capsules": [], "summaries": [], "pins": []}} x',
            "line 1, column 122 (byte 121): unexpected data after the end",
        ),
    ],
)
def test_structural_errors_are_one_clear_line(tmp_path: Path, text: str, expected: str):
    path = tmp_path / "doc.json"
    path.write_text(text)
    assert expected in error_of(path)


def test_a_record_over_the_size_limit_is_refused_with_its_position(tmp_path: Path):
    document = load_ordered(FULL)
    document["dataset"]["observations"][1]["content"] = "x" * 5000
    path = write_json(tmp_path / "big.json", document)
    start = path.read_bytes().index(b'{"id":"obs-02"')
    with pytest.raises(BundleError) as caught, path.open("rb") as handle:
        list(KindlingJsonReader(handle, name="big.json", max_value_bytes=4096).records())
    message = str(caught.value)
    assert f"(byte {start})" in message and "larger than the" in message


def test_a_large_export_streams_in_bounded_memory(tmp_path: Path):
    """About 24 MB of JSON read through a pipe-like stream keeps the heap under 8 MB."""
    path = tmp_path / "large.json"
    content = "lorem ipsum dolor sit amet " * 40
    with path.open("wb") as out:
        out.write(
            b'{"bundleVersion":"1.0","exportedAt":1,"dataset":{"version":"1.0","observations":['
        )
        for i in range(20000):
            obs = Observation(
                id=f"o{i:06d}", kind="message", content=content, ts=i, provenance={"i": i}
            )
            out.write(
                (b"," if i else b"")
                + json.dumps(
                    {
                        "id": obs.id,
                        "kind": obs.kind,
                        "content": obs.content,
                        "provenance": obs.provenance,
                        "ts": obs.ts,
                        "scopeIds": {},
                        "redacted": False,
                    },
                    separators=(",", ":"),
                ).encode()
            )
        out.write(b'],"capsules":[],"summaries":[],"pins":[]}}')
    assert path.stat().st_size > 20_000_000
    tracemalloc.start()
    try:
        with path.open("rb") as handle:
            count = sum(1 for _ in KindlingJsonReader(handle).records())
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    assert count == 20000
    assert peak < 8_000_000, peak
