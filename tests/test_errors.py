"""Errors a caller can act on: verify's problems as data, and one error class per remedy."""

from __future__ import annotations

import io
import json
import subprocess
from collections.abc import Callable
from pathlib import Path

import pytest
from hostile_tar import Parts, archive, compress, member

from kindling_bundle import (
    BundleError,
    BundleValidationError,
    Capsule,
    ImportConflictError,
    IntegrityError,
    MissingReferenceError,
    Observation,
    Pin,
    RecordError,
    UnsupportedVersionError,
    VerifyProblem,
    import_bundle,
    kindling_json_to_bundle,
    open_store,
    read_manifest,
    verify_bundle,
    verify_kindling_json,
    write_bundle_from_records,
)
from kindling_bundle.db.connection import write_transaction
from kindling_bundle.db.importer import import_batch

DATA = Path(__file__).parent / "data"


def where(problem: VerifyProblem) -> tuple[str, str | None, str | None, str | None, str | None]:
    return (problem.kind, problem.member, problem.entity, problem.record_id, problem.field)


def damaged_records() -> bytes:
    """A bundle with a repeated id, a dangling link, an evidence ref that does not resolve, a
    summaries member whose hash the manifest misstates, and an invalid pin."""
    parts = Parts()
    observations = parts.records["observations"]
    parts.set_records("observations", [*observations, dict(observations[0])])
    capsules = parts.records["capsules"]
    capsules[0]["observationIds"].append("ghost")
    parts.set_records("capsules", capsules)
    summaries = parts.records["summaries"]
    summaries[0]["evidenceRefs"].append("gone")
    parts.set_records("summaries", summaries)
    parts.entry("summaries")["sha256"] = "0" * 64
    pins = parts.records["pins"]
    pins[2]["createdAt"] = "later"
    parts.set_records("pins", pins)
    return parts.bundle()


def test_verify_problems_say_kind_member_record_and_field() -> None:
    report = verify_bundle(io.BytesIO(damaged_records()))
    assert [where(p) for p in report.problems] == [
        ("repeated-id", "observations.msgpack", "observations", "obs-01", None),
        ("dangling", "capsules.msgpack", "capsules", "cap-1", None),
        ("member-sha256", "summaries.msgpack", "summaries", None, None),
        ("invalid-record", "pins.msgpack", "pins", "pin-3", "createdAt"),
    ]
    assert [where(w) for w in report.warnings] == [
        ("evidence", "summaries.msgpack", "summaries", "sum-1", None)
    ]
    assert {p.severity for p in report.problems} == {"error"}
    assert report.warnings[0].severity == "warning"
    dangling = report.problems[1]
    assert dangling.detail == "capsule cap-1: linked observation ghost is not in the bundle"
    assert str(dangling) == f"<stream>: capsules.msgpack: {dangling.detail}"
    assert report.messages == [str(p) for p in report.problems]
    assert report.messages[3] == (
        "<stream>: pins.msgpack: pin pin-3: field createdAt: expected `int`, got `str`"
    )


def test_problems_with_the_archive_name_the_member() -> None:
    members = Parts().members()
    without_capsules = archive(*members[:2], *members[3:], member("notes.txt", b"hi"))
    report = verify_bundle(io.BytesIO(compress(without_capsules)))
    assert [where(p) for p in report.problems] == [
        ("unknown-member", "notes.txt", None, None, None),
        ("member-missing", "capsules.msgpack", "capsules", None, None),
    ]
    assert report.messages == [
        "<stream>: unknown member 'notes.txt'",
        "<stream>: member capsules.msgpack is missing",
    ]


def test_damage_that_ends_the_check_is_one_problem_of_its_own_kind() -> None:
    bundle = Parts().bundle()
    (cut,) = verify_bundle(io.BytesIO(bundle[: len(bundle) // 2])).problems
    assert (cut.kind, cut.member, cut.record_id) == ("unreadable", None, None)
    assert str(cut).startswith("<stream>: truncated: ")

    parts = Parts()
    parts.manifest["formatVersion"] = "3.0"  # 2.x: incremental bundles (test_increment.py)
    newer = parts.bundle()
    with pytest.raises(UnsupportedVersionError, match=r"format version 3\.0 is not supported"):
        read_manifest(io.BytesIO(newer))
    assert issubclass(UnsupportedVersionError, BundleError)
    (refused,) = verify_bundle(io.BytesIO(newer)).problems
    assert refused.kind == "unsupported-version"


def test_a_bad_report_raises_one_error_carrying_every_problem() -> None:
    report = verify_bundle(io.BytesIO(damaged_records()))
    with pytest.raises(BundleValidationError) as caught:
        report.raise_for_problems("damaged.kbundle")
    assert str(caught.value) == (
        "damaged.kbundle: not a valid bundle: <stream>: observations.msgpack: observation "
        "obs-01 appears more than once (and 3 more problems)"
    )
    assert caught.value.problems == report.problems and caught.value.report is report
    verify_bundle(io.BytesIO(Parts().bundle())).raise_for_problems()  # valid: no error


def test_cli_verify_json_shows_the_structured_problems(
    run_cli: Callable[..., subprocess.CompletedProcess], tmp_path: Path
) -> None:
    path = tmp_path / "damaged.kbundle"
    path.write_bytes(damaged_records())
    proc = run_cli("verify", path, "--json")
    assert proc.returncode == 1
    result = json.loads(proc.stdout)
    invalid = result["problems"][3]
    assert invalid == {
        "kind": "invalid-record",
        "source": str(path),
        "detail": "pin pin-3: field createdAt: expected `int`, got `str`",
        "member": "pins.msgpack",
        "entity": "pins",
        "record_id": "pin-3",
        "field": "createdAt",
        "severity": "error",
        "message": f"{path}: pins.msgpack: pin pin-3: field createdAt: expected `int`, got `str`",
    }
    assert result["warnings"][0]["kind"] == "evidence"
    assert result["problem_count"] == 4


def test_kindling_json_problems_name_entity_record_and_field(tmp_path: Path) -> None:
    report = verify_kindling_json(DATA / "kindling-default.json")
    assert [where(p) for p in report.problems] == [
        ("dangling", None, "capsules", "cap-s1", None),
        ("dangling", None, "capsules", "cap-s2", None),
        ("dangling", None, "pins", "pin-redacted", None),
    ]
    assert [w.kind for w in report.warnings][-1] == "dangling-hint"

    document = json.loads((DATA / "kindling-full.json").read_bytes())
    document["dataset"]["observations"][4]["ts"] = "noon"
    bad = tmp_path / "bad.json"
    bad.write_text(json.dumps(document))
    (invalid,) = verify_kindling_json(bad).problems
    assert where(invalid) == ("invalid-record", None, "observations", "obs-05", "ts")
    detail = "observations[4] (id obs-05): field ts: Expected `int`, got `str`"
    assert (invalid.detail, str(invalid)) == (detail, f"{bad}: {detail}")

    document["bundleVersion"] = "2.0"
    bad.write_text(json.dumps(document))
    assert [p.kind for p in verify_kindling_json(bad).problems] == ["unsupported-version"]


def test_a_missing_reference_is_its_own_error_naming_the_missing_ids(tmp_path: Path) -> None:
    observation = Observation(id="o1", kind="message", content="alpha", ts=1)
    capsule = Capsule(
        id="c1", type="session", intent="i", opened_at=1, observation_ids=["o1", "g1", "g2"]
    )
    pin = Pin(id="p1", target_type="observation", target_id="ghost", created_at=1)
    for name, streams, missing in (
        ("links.kbundle", {"observations": [observation], "capsules": [capsule]}, ("g1", "g2")),
        ("pin.kbundle", {"observations": [observation], "pins": [pin]}, ("ghost",)),
    ):
        bundle = tmp_path / name
        write_bundle_from_records(bundle, streams)
        for seed in ([], [observation]):  # the bulk path into an empty database, and the other
            conn = open_store(tmp_path / f"{name}-{len(seed)}.db")
            with write_transaction(conn):
                import_batch(conn, seed)
            with pytest.raises(MissingReferenceError) as caught:
                import_bundle(conn, bundle)
            conn.close()
            assert caught.value.missing == missing, name
            assert isinstance(caught.value, ImportConflictError)

    with pytest.raises(MissingReferenceError) as caught:
        kindling_json_to_bundle(DATA / "kindling-default.json", tmp_path / "out.kbundle")
    assert isinstance(caught.value, RecordError)
    assert (caught.value.entity, caught.value.record_id, caught.value.missing) == (
        "capsules",
        "cap-s1",
        ("obs-05",),
    )


def test_a_conflict_is_not_a_missing_reference(tmp_path: Path) -> None:
    observation = Observation(id="o1", kind="message", content="alpha", ts=1)
    bundle = tmp_path / "b.kbundle"
    write_bundle_from_records(bundle, {"observations": [observation]})
    conn = open_store(tmp_path / "t.db")
    with write_transaction(conn):
        import_batch(conn, [Observation(id="o1", kind="message", content="beta", ts=1)])
    with pytest.raises(ImportConflictError) as caught:
        import_bundle(conn, bundle, conflict="error")
    conn.close()
    assert not isinstance(caught.value, MissingReferenceError)


def test_an_integrity_failure_carries_the_problems(tmp_path: Path) -> None:
    bundle = tmp_path / "b.kbundle"
    observation = Observation(id="o1", kind="message", content="alpha", ts=1)
    capsule = Capsule(id="c1", type="session", intent="i", opened_at=1, observation_ids=["o1"])
    write_bundle_from_records(bundle, {"observations": [observation], "capsules": [capsule]})
    conn = open_store(tmp_path / "t.db")
    conn.execute(  # a trigger of someone else's that breaks what Kindling promises
        "CREATE TRIGGER shift AFTER INSERT ON capsule_observations BEGIN "
        "UPDATE capsule_observations SET seq = seq + 5 WHERE capsule_id = new.capsule_id; END"
    )
    with pytest.raises(IntegrityError) as caught:
        import_bundle(conn, bundle)
    conn.close()
    assert [(p.kind, p.entity, p.id) for p in caught.value.problems] == [
        ("seq_gap", "capsules", "c1")
    ]
    assert "seq_gap capsules c1" in str(caught.value)
