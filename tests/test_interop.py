"""Interoperability with Kindling's own JSON export files, and diff and merge of datasets.

The fixtures in tests/data/ were written by tests/data/make_kindling_exports.mjs the way Kindling
writes them (its exportDatabase mapping, createExportBundle wrapper and JSON.stringify).
"""

from __future__ import annotations

import io
import json
import re
import subprocess
import tempfile
import tracemalloc
from pathlib import Path

import pytest

from conftest import dump_tables
from kindling_bundle import (
    import_bundle,
    read_manifest,
    verify_bundle,
    write_bundle,
    write_bundle_from_records,
)
from kindling_bundle.db.connection import open_store
from kindling_bundle.db.export import ExportStreamOptions
from kindling_bundle.db.integrity import verify_import_integrity
from kindling_bundle.errors import BundleError, ImportConflictError, RecordError
from kindling_bundle.io.sniff import peek_format
from kindling_bundle.kindling_json.reader import (
    KindlingJsonReader,
    open_kindling_json,
    verify_kindling_json,
)
from kindling_bundle.kindling_json.writer import write_kindling_json
from kindling_bundle.ops.convert import (
    bundle_to_kindling_json,
    export_kindling_json,
    import_kindling_json,
    kindling_json_to_bundle,
)
from kindling_bundle.ops.datasets import entity_streams
from kindling_bundle.ops.merge import diff_datasets, merge_datasets
from kindling_bundle.ops.references import DanglingReport
from kindling_bundle.ops.write import BundleOptions
from kindling_bundle.records import ENTITY_TYPES, Capsule, Observation, Pin, Summary

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
        (b"SQLite format 3\x00", "database"),
        (b"SQLite format", None),
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


# -- JSON <-> bundle <-> database ------------------------------------------------------------


def test_json_to_bundle_to_database_to_json_gives_the_same_file(tmp_path: Path):
    """Every entity type and relationship survives, byte for byte, including redacted rows."""
    bundle = tmp_path / "full.kbundle"
    manifest = kindling_json_to_bundle(FULL, bundle)
    assert manifest.created_at == 1767225800000  # the export's own exportedAt
    assert verify_bundle(bundle).ok
    conn = open_store(tmp_path / "restored.db")
    report = import_bundle(conn, bundle)
    assert report.integrity.ok
    assert {e: c.inserted for e, c in report.counts.items()} == {
        "observations": 12,
        "capsules": 3,
        "summaries": 2,
        "pins": 3,
    }
    out = tmp_path / "again.json"
    export_kindling_json(conn, out, exported_at=1767225800000)
    conn.close()
    assert out.read_bytes() == FULL.read_bytes()


def test_the_same_json_converts_to_the_same_bundle(tmp_path: Path):
    first, second = tmp_path / "1.kbundle", tmp_path / "2.kbundle"
    kindling_json_to_bundle(SCOPED_PRETTY, first)
    kindling_json_to_bundle(SCOPED_PRETTY, second)
    assert first.read_bytes() == second.read_bytes()
    manifest = read_manifest(first)
    assert manifest.export_filter.scope_ids == {"sessionId": "s-1"}
    assert [e.records for e in manifest.entities] == [9, 2, 2, 1]


def test_kindlings_default_export_without_redacted_rows_needs_drop_dangling(tmp_path: Path):
    bundle = tmp_path / "default.kbundle"
    with pytest.raises(RecordError) as caught:
        kindling_json_to_bundle(DEFAULT, bundle)
    message = str(caught.value)
    assert message.startswith(f"{DEFAULT}: capsule cap-s1: linked observation obs-05 is not")
    assert "--drop-dangling" in message and "redacted" in message
    assert not bundle.exists() and list(tmp_path.iterdir()) == []

    dangling = DanglingReport()
    kindling_json_to_bundle(DEFAULT, bundle, drop_dangling=True, dangling=dangling)
    assert (dangling.links, dangling.summaries, dangling.pins) == (2, 0, 1)
    assert verify_bundle(bundle).ok
    conn = open_store(tmp_path / "restored.db")
    assert import_bundle(conn, bundle).integrity.ok
    out = tmp_path / "again.json"
    export_kindling_json(conn, out, exported_at=0)
    conn.close()
    # The same dataset, less exactly the references to what the file did not hold.
    expected = load_ordered(DEFAULT)["dataset"]
    for capsule in expected["capsules"]:
        capsule["observationIds"] = [
            o for o in capsule["observationIds"] if o not in ("obs-05", "obs-10")
        ]
    expected["pins"] = [p for p in expected["pins"] if p["id"] != "pin-redacted"]
    again = load_ordered(out)["dataset"]
    for entity in ENTITY_TYPES:
        assert again[entity] == expected[entity], entity


def test_importing_json_is_all_or_nothing_with_bundle_semantics(tmp_path: Path, sample_copy):
    before = dump_tables(sample_copy)
    spool = tmp_path / "spool"
    spool.mkdir()
    conn = open_store(sample_copy)
    with pytest.raises(RecordError, match="capsule cap-s1: linked observation obs-05"):
        import_kindling_json(conn, DEFAULT, spool_dir=str(spool))
    conn.close()
    assert dump_tables(sample_copy) == before
    assert list(spool.iterdir()) == []  # the temporary bundle is gone

    conn = open_store(tmp_path / "new.db")
    report, dangling = import_kindling_json(conn, FULL)
    assert report.source == str(FULL) and report.integrity.ok and dangling.total == 0
    assert sum(c.inserted for c in report.counts.values()) == 20
    again, _ = import_kindling_json(conn, FULL, conflict="error")
    assert sum(c.unchanged for c in again.counts.values()) == 20
    dry, _ = import_kindling_json(conn, SCOPED_PRETTY, dry_run=True)
    assert dry.dry_run and sum(c.unchanged for c in dry.counts.values()) == 14
    conn.close()


def test_a_filtered_json_export_is_referentially_closed(tmp_path: Path, sample_db: Path):
    conn = open_store(sample_db, readonly=True)
    ts = sorted(o.ts for o in records_of_db(conn)["observations"])
    dest = tmp_path / "window.json"
    window = ExportStreamOptions(from_ts=ts[len(ts) // 3], to_ts=ts[len(ts) // 2])
    counts = export_kindling_json(conn, dest, window)
    conn.close()
    report = verify_kindling_json(dest)
    assert report.ok, report.problems
    assert report.records == counts and 0 < counts["observations"] < len(ts)


def records_of_db(conn) -> dict[str, list]:
    stream = io.BytesIO()
    export_kindling_json(conn, stream)
    stream.seek(0)
    return records_of(stream)


def test_json_import_errors_name_the_users_file(tmp_path: Path, run_cli):
    db = tmp_path / "memory.db"
    assert run_cli("import", "--db", db, FULL).returncode == 0
    data = records_of(FULL)
    data["observations"][0] = msgspec_replace(data["observations"][0], content="changed")
    changed = write_dataset(tmp_path / "chg.json", data)
    refused = run_cli("import", "--db", db, "--conflict", "error", changed)
    assert refused.returncode == 1
    line = one_error_line(refused)
    assert line.startswith(f"{changed}: ") and "obs-01" in line, line
    assert "kbundle" not in line and tempfile.gettempdir() + "/kindling-json" not in line


def test_a_database_exports_to_json_and_back_without_loss(tmp_path: Path, sample_db: Path):
    conn = open_store(sample_db, readonly=True)
    bundle = tmp_path / "sample.kbundle"
    write_bundle(conn, bundle, BundleOptions(created_at=1_700_000_000_000))
    direct = tmp_path / "direct.json"
    counts = export_kindling_json(conn, direct, exported_at=1_700_000_000_000)
    conn.close()
    via_bundle = tmp_path / "via-bundle.json"
    assert bundle_to_kindling_json(bundle, via_bundle) == counts
    assert via_bundle.read_bytes() == direct.read_bytes()
    again = tmp_path / "again.kbundle"
    kindling_json_to_bundle(direct, again)
    # The same entity members; only the manifest's source differs (a database, a JSON file).
    original, converted = read_manifest(bundle), read_manifest(again)
    assert converted.entities == original.entities
    assert converted.created_at == original.created_at
    assert (original.source.schema_generation, converted.source.schema_generation) == (5, None)
    assert diff_datasets(sample_db, direct).identical


def test_verify_reports_every_problem_of_a_json_export(tmp_path: Path):
    assert verify_kindling_json(FULL).ok
    report = verify_kindling_json(DEFAULT)
    assert not report.ok
    assert [p.removeprefix(f"{DEFAULT}: ") for p in report.messages] == [
        "capsule cap-s1: linked observation obs-05 is not in the file",
        "capsule cap-s2: linked observation obs-10 is not in the file",
        "pin pin-redacted: target observation obs-10 is not in the file",
    ]
    assert any("evidence observation obs-05" in w for w in report.warning_messages)

    document = load_ordered(FULL)
    observations = document["dataset"]["observations"]
    observations[2]["kind"] = "thought"
    observations[4]["ts"] = "noon"
    observations.append(dict(observations[0]))
    document["dataset"]["summaries"].append(
        {**document["dataset"]["summaries"][0], "id": "sum-twice"}
    )
    report = verify_kindling_json(write_json(tmp_path / "bad.json", document))
    problems = " | ".join(report.messages)
    assert report.problem_count == 4, problems
    assert "observations[2] (id obs-03): field kind" in problems
    assert "observations[4] (id obs-05): field ts" in problems
    assert "observation obs-01 appears more than once" in problems
    assert "summary sum-twice: capsule cap-node already has a summary" in problems

    truncated = tmp_path / "cut.json"
    truncated.write_bytes(FULL.read_bytes()[:-10])
    report = verify_kindling_json(truncated)
    assert not report.ok and "JSON ends early" in report.messages[-1]


# -- diff ------------------------------------------------------------------------------------


def records_of(path: Path) -> dict[str, list]:
    records, _ = read_all(path)
    return by_entity(records)


def write_dataset(path: Path, streams: dict[str, list]) -> Path:
    write_kindling_json(path, streams, exported_at=1767225900000)
    return path


def test_diff_of_a_bundle_with_itself_reports_no_change(tmp_path: Path):
    bundle = tmp_path / "full.kbundle"
    kindling_json_to_bundle(FULL, bundle)
    report = diff_datasets(bundle, bundle)
    assert report.identical
    assert {e: d.same for e, d in report.entities.items()} == {
        "observations": 12,
        "capsules": 3,
        "summaries": 2,
        "pins": 3,
    }
    assert diff_datasets(FULL, bundle).identical  # a JSON export and its bundle
    assert diff_datasets(SCOPED_PRETTY, FULL).identical is False


def test_diff_counts_added_removed_changed_and_same_per_entity(tmp_path: Path):
    data = records_of(FULL)
    observations = data["observations"]
    observations[0] = msgspec_replace(observations[0], content="edited")
    del observations[-1]  # obs-12
    observations.append(Observation(id="obs-13", kind="message", content="new", ts=1))
    data["capsules"][2] = msgspec_replace(data["capsules"][2], status="closed", closed_at=5)
    data["pins"].append(
        Pin(id="pin-new", target_type="observation", target_id="obs-13", created_at=1)
    )
    data["pins"] = data["pins"][1:]  # pin-obs removed
    other = write_dataset(tmp_path / "other.json", data)
    bundle = tmp_path / "other.kbundle"
    kindling_json_to_bundle(other, bundle)
    report = diff_datasets(FULL, bundle).to_dict()
    counts = {
        entity: [diff[k] for k in ("added", "removed", "changed", "same")]
        for entity, diff in report["entities"].items()
    }
    assert counts == {
        "observations": [1, 1, 1, 10],
        "capsules": [0, 0, 1, 2],
        "summaries": [0, 0, 0, 2],
        "pins": [1, 1, 0, 2],
    }
    examples = report["entities"]["observations"]["examples"]
    assert examples == {"added": ["obs-13"], "removed": ["obs-12"], "changed": ["obs-01"]}
    assert report["identical"] is False


def test_diff_refuses_a_side_with_an_id_twice(tmp_path: Path):
    data = records_of(FULL)
    data["pins"].append(data["pins"][0])
    twice = write_dataset(tmp_path / "twice.json", data)
    with pytest.raises(RecordError, match=r"twice.json: pin pin-obs appears more than once"):
        diff_datasets(FULL, twice)


def msgspec_replace(record, **changes):
    import msgspec

    return msgspec.structs.replace(record, **changes)


# -- merge -----------------------------------------------------------------------------------


@pytest.fixture
def overlapping(tmp_path: Path) -> tuple[Path, Path]:
    """Two bundles that share most records: B edits obs-02 and pin-obs, drops obs-12, and adds
    a capsule with its own observation and a summary."""
    a = records_of(FULL)
    b = records_of(FULL)
    b["observations"][1] = msgspec_replace(b["observations"][1], content="B's version")
    del b["observations"][-1]
    b["observations"].append(
        Observation(id="obs-b", kind="message", content="only in B", ts=T0 + 500)
    )
    b["capsules"].append(
        Capsule(
            id="cap-b",
            type="session",
            intent="B",
            opened_at=T0 + 499,
            observation_ids=["obs-b", "obs-01"],
        )
    )
    b["summaries"].append(
        Summary(id="sum-b", capsule_id="cap-b", content="B", confidence=0.5, created_at=T0 + 501)
    )
    b["pins"][0] = msgspec_replace(b["pins"][0], reason="B's reason")
    paths = []
    for name, data in (("a", a), ("b", b)):
        json_path = write_dataset(tmp_path / f"{name}.json", data)
        bundle = tmp_path / f"{name}.kbundle"
        kindling_json_to_bundle(json_path, bundle)
        paths.append(bundle)
    return paths[0], paths[1]


T0 = 1767225600000


def merged_records(path: Path) -> dict[str, dict]:
    out = path.with_suffix(".json")
    bundle_to_kindling_json(path, out)
    return {entity: {r.id: r for r in records} for entity, records in records_of(out).items()}


@pytest.mark.parametrize("conflict", ["skip", "overwrite"])
def test_merge_of_overlapping_bundles_is_their_union(tmp_path: Path, overlapping, conflict):
    a, b = overlapping
    dest = tmp_path / "merged.kbundle"
    report = merge_datasets([a, b], dest, conflict=conflict, created_at=T0)
    assert verify_bundle(dest).ok
    merged = merged_records(dest)
    assert {e: len(r) for e, r in merged.items()} == {
        "observations": 13,  # 12 of A (obs-12 only there), plus obs-b
        "capsules": 4,
        "summaries": 3,
        "pins": 3,
    }
    winner = "B's version" if conflict == "overwrite" else "Read src/tokenizer.ts"
    assert merged["observations"]["obs-02"].content == winner
    reason = "B's reason" if conflict == "overwrite" else "the failing test"
    assert merged["pins"]["pin-obs"].reason == reason
    assert merged["capsules"]["cap-b"].observation_ids == ["obs-b", "obs-01"]
    stats = report.entities
    assert (stats["observations"].conflicts, stats["observations"].duplicates) == (1, 10)
    assert stats["observations"].conflict_ids == ["obs-02"]
    assert (stats["pins"].conflicts, stats["pins"].records) == (1, 3)
    # In Kindling's export order, and importable into an empty database with a clean report.
    observations = list(merged["observations"].values())
    assert [o.id for o in observations] == [
        o.id for o in sorted(observations, key=lambda o: (o.ts, o.id))
    ]
    conn = open_store(tmp_path / "merged.db")
    assert import_bundle(conn, dest).integrity.ok
    assert verify_import_integrity(conn).ok
    conn.close()


def test_merge_with_conflict_error_names_the_id_and_writes_nothing(tmp_path: Path, overlapping):
    a, b = overlapping
    dest = tmp_path / "merged.kbundle"
    with pytest.raises(ImportConflictError) as caught:
        merge_datasets([a, b], dest, conflict="error")
    assert str(caught.value) == f"observation obs-02 differs between {a} and {b} (--conflict error)"
    assert not dest.exists()
    # Identical overlaps are no conflict: a bundle merged with itself is itself.
    report = merge_datasets([a, a], dest, conflict="error", created_at=T0)
    assert diff_datasets(a, dest).identical
    assert report.entities["observations"].duplicates == 12


def test_merge_moves_pins_of_a_second_summary_of_one_capsule(tmp_path: Path):
    a = records_of(FULL)
    b = records_of(FULL)
    b["summaries"] = [
        Summary(id="sum-s1-b", capsule_id="cap-s1", content="B", confidence=0.1, created_at=T0)
    ]
    b["pins"] = [Pin(id="pin-b", target_type="summary", target_id="sum-s1-b", created_at=T0)]
    pa = write_dataset(tmp_path / "a.json", a)
    pb = write_dataset(tmp_path / "b.json", b)
    for conflict, kept, lost in (
        ("skip", "sum-s1", "sum-s1-b"),
        ("overwrite", "sum-s1-b", "sum-s1"),
    ):
        dest = tmp_path / f"{conflict}.kbundle"
        report = merge_datasets([pa, pb], dest, conflict=conflict)
        merged = merged_records(dest)
        assert kept in merged["summaries"] and lost not in merged["summaries"]
        targets = {p.id: p.target_id for p in merged["pins"].values() if p.target_type == "summary"}
        assert targets == {"pin-sum": kept, "pin-b": kept}
        assert report.moved_pins == 1
        assert verify_bundle(dest).ok
    with pytest.raises(ImportConflictError, match="capsule cap-s1 has two summaries: sum-s1"):
        merge_datasets([pa, pb], tmp_path / "error.kbundle", conflict="error")


def test_merge_closes_references_over_the_union(tmp_path: Path):
    dest = tmp_path / "merged.kbundle"
    # DEFAULT alone dangles; FULL holds what it names.
    merge_datasets([DEFAULT, FULL], dest)
    assert diff_datasets(FULL, dest).identical
    before = dest.read_bytes()
    with pytest.raises(
        RecordError,
        match=r"default.json: capsule cap-s2: linked observation obs-10 is not in any input",
    ):
        merge_datasets([DEFAULT, SCOPED_PRETTY], dest)
    assert dest.read_bytes() == before  # a failed merge leaves the destination alone
    report = merge_datasets([DEFAULT, SCOPED_PRETTY], dest, drop_dangling=True)
    # SCOPED_PRETTY holds obs-05 (session s-1); obs-10 is in neither.
    assert (report.dangling.links, report.dangling.pins) == (1, 1)
    assert verify_bundle(dest).ok


def test_what_verify_refuses_no_conversion_or_merge_writes(tmp_path: Path, run_cli):
    """One set of record rules: a file verify refuses is refused by convert, merge and import,
    and a bundle verify refuses does not become a JSON export."""
    data = records_of(FULL)
    capsule = data["capsules"][0]
    data["capsules"][0] = msgspec_replace(
        capsule, observation_ids=[*capsule.observation_ids, capsule.observation_ids[0]]
    )
    linked_twice = write_dataset(tmp_path / "linked-twice.json", data)
    data = records_of(FULL)
    data["observations"].append(msgspec_replace(data["observations"][0], content="again"))
    id_twice = write_dataset(tmp_path / "id-twice.json", data)
    twice = f"lists observation {capsule.observation_ids[0]} more than once"
    for path, expected in [(linked_twice, twice), (id_twice, "obs-01 appears more than once")]:
        report = verify_kindling_json(path)
        assert not report.ok and any(expected in p for p in report.messages), report.messages
        bundle = tmp_path / "out.kbundle"
        with pytest.raises(RecordError, match=expected):
            kindling_json_to_bundle(path, bundle)
        assert not bundle.exists()
        refused = run_cli("convert", path, bundle)
        assert refused.returncode == 1 and expected in one_error_line(refused), refused.stderr
        assert not bundle.exists()
    # Merge settles a repeated id by its strategy, but a capsule's links are its content.
    refused = run_cli("merge", FULL, linked_twice, bundle, "--conflict", "overwrite")
    assert refused.returncode == 1 and twice in one_error_line(refused), refused.stderr
    assert not bundle.exists()
    with pytest.raises(RecordError, match=twice):
        merge_datasets([linked_twice], tmp_path / "merged.kbundle")

    streams = records_of(FULL)
    streams["summaries"].append(streams["summaries"][0])
    bundle = tmp_path / "id-twice.kbundle"
    write_bundle_from_records(bundle, streams)
    assert not verify_bundle(bundle).ok
    out = tmp_path / "out.json"
    with pytest.raises(RecordError, match=r"id-twice.kbundle: summary \S+ appears more than once"):
        bundle_to_kindling_json(bundle, out)
    assert not out.exists()


# -- the command line ------------------------------------------------------------------------


def one_error_line(process: subprocess.CompletedProcess) -> str:
    lines = process.stderr.decode().splitlines()
    assert len(lines) == 1, lines
    assert lines[0].startswith("kindling-bundle: error: ")
    return lines[0].removeprefix("kindling-bundle: error: ")


def test_cli_converts_both_ways_through_pipes(run_cli):
    to_bundle = run_cli("convert", "-", "-", input=FULL.read_bytes())
    assert to_bundle.returncode == 0, to_bundle.stderr
    assert to_bundle.stdout[:4] == b"\x28\xb5\x2f\xfd"
    assert b"wrote - (bundle): 12 observations" in to_bundle.stderr
    back = run_cli("convert", "-", "-", "--quiet", input=to_bundle.stdout)
    assert back.returncode == 0 and back.stderr == b""
    assert back.stdout == FULL.read_bytes()


def test_cli_import_verify_and_export_speak_kindling_json(run_cli, tmp_path: Path, sample_copy):
    verify = run_cli("verify", DEFAULT)
    assert verify.returncode == 1
    assert one_error_line(verify) == (
        f"{DEFAULT}: not a valid Kindling JSON export: capsule cap-s1: linked observation "
        "obs-05 is not in the file (and 2 more problems)"
    )
    assert run_cli("verify", FULL).stdout.decode() == f"{FULL}: valid (20 records)\n"

    before = dump_tables(sample_copy)
    refused = run_cli("import", "--db", sample_copy, "-", input=DEFAULT.read_bytes())
    assert refused.returncode == 1
    assert "<stdin>: capsule cap-s1: linked observation obs-05" in one_error_line(refused)
    assert "--drop-dangling" in one_error_line(refused)
    assert dump_tables(sample_copy) == before

    db = tmp_path / "new.db"
    dropped = run_cli("import", "--db", db, "--drop-dangling", "--json", DEFAULT)
    assert dropped.returncode == 0, dropped.stderr
    result = json.loads(dropped.stdout)
    assert result["dangling"]["links"] == 2 and result["dangling"]["pins"] == 1
    assert result["counts"]["observations"]["inserted"] == 10
    full = run_cli("import", "--db", db, "--conflict", "overwrite", FULL)
    assert full.returncode == 0, full.stderr

    out = tmp_path / "out.json"
    export = run_cli(
        "export", "--db", db, "--format", "kindling-json", "--created-at", "1767225800000", out
    )
    assert export.returncode == 0, export.stderr
    assert out.read_bytes() == FULL.read_bytes()  # Kindling's own file, byte for byte


def test_cli_diff_and_merge(run_cli, overlapping, tmp_path: Path):
    a, b = overlapping
    same = run_cli("diff", a, a, "--json")
    assert same.returncode == 0 and json.loads(same.stdout)["identical"] is True
    table = run_cli("diff", a, b).stdout.decode().splitlines()
    assert table[0].split() == ["entity", "added", "removed", "changed", "same"]
    assert table[1].split() == ["observations", "1", "1", "1", "10"]
    assert "  changed: obs-02" in table and table[-1] == "the datasets differ"

    out = tmp_path / "merged.kbundle"
    failed = run_cli("merge", a, b, out, "--conflict", "error")
    assert failed.returncode == 1 and not out.exists()
    assert (
        one_error_line(failed)
        == f"observation obs-02 differs between {a} and {b} (--conflict error)"
    )
    merged = run_cli("merge", a, b, out, "--conflict", "overwrite", "--json")
    assert merged.returncode == 0, merged.stderr
    assert json.loads(merged.stdout)["entities"]["observations"]["records"] == 13
    assert run_cli("verify", out).returncode == 0
    again = run_cli("merge", a, b, out)
    assert again.returncode == 2 and "exists" in one_error_line(again)
    assert run_cli("merge", a, out).returncode == 2  # two inputs and OUT, at least


def test_cli_names_the_position_of_invalid_json(run_cli, tmp_path: Path):
    bad = tmp_path / "bad.json"
    bad.write_bytes(FULL.read_bytes()[:2000])
    for command in (
        ("verify", bad),
        ("import", "--db", tmp_path / "x.db", bad),
        ("convert", bad, tmp_path / "x.kbundle"),
    ):
        process = run_cli(*command)
        assert process.returncode == 1
        line = one_error_line(process)
        assert line.startswith(f"{bad}: ")
        assert "JSON ends early at line 1, column 2001 (byte 2000)" in line
    assert not (tmp_path / "x.kbundle").exists()


@pytest.mark.parametrize("change", ["insert", "redact"])
def test_merge_notices_a_database_written_to_between_its_passes(
    tmp_path: Path, monkeypatch, change
):
    from kindling_bundle.db.connection import write_transaction
    from kindling_bundle.db.writes import insert_observation, redact_observation
    from kindling_bundle.ops import merge as merge_module

    db = tmp_path / "live.db"
    conn = open_store(db)
    import_kindling_json(conn, FULL)
    conn.close()
    first_pass = merge_module._Merger.build_index

    def then_write(self) -> None:
        first_pass(self)
        writer = open_store(db)
        with write_transaction(writer):
            if change == "insert":
                insert_observation(
                    writer, Observation(id="obs-00", kind="message", content="x", ts=1)
                )
            else:
                redact_observation(writer, "obs-03")
        writer.close()

    monkeypatch.setattr(merge_module._Merger, "build_index", then_write)
    dest = tmp_path / "merged.kbundle"
    with pytest.raises(BundleError, match=rf"{db}: changed while it was being merged"):
        merge_datasets([db, FULL], dest)
    assert not dest.exists()


class _Trickle(io.RawIOBase):
    """A stream that returns at most a few bytes per read, so every value crosses reads."""

    def __init__(self, data: bytes, sizes: list[int]):
        self._data = data
        self._sizes = sizes
        self._at = 0
        self._reads = 0

    def readable(self) -> bool:
        return True

    def read(self, n: int = -1) -> bytes:
        size = self._sizes[self._reads % len(self._sizes)]
        self._reads += 1
        chunk = self._data[self._at : self._at + min(size, n if n >= 0 else size)]
        self._at += len(chunk)
        return chunk


@pytest.mark.parametrize("sizes", [[1], [2, 3, 5, 7, 11, 13], [4096, 1, 1]])
@pytest.mark.parametrize("fixture", [FULL, SCOPED_PRETTY])
def test_values_split_across_reads_parse_the_same(fixture: Path, sizes: list[int]):
    expected, _ = read_all(fixture)
    for data in (fixture.read_bytes(), b"\xef\xbb\xbf" + fixture.read_bytes()):  # with a BOM too
        records = list(KindlingJsonReader(_Trickle(data, sizes)).records())
        assert records == expected
