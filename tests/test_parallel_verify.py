"""Verify decodes some observation frames in a second process; the report must not change.

kindling_bundle.parallel.decoder forks a child that decodes and checks the frames it is
handed, answering with their ids (or "not clean"). `workers=2` makes small bundles take that
path: every problem, in the same words and order, whichever process met it.
"""

from __future__ import annotations

import os
import threading
import time
from pathlib import Path
from typing import Any

import msgspec
import pytest
from hostile_tar import Parts, frame, records_frame

from kindling_bundle import Observation, open_bundle
from kindling_bundle.ops.verify import verify_bundle
from kindling_bundle.parallel import decoder, forking

pytestmark = pytest.mark.skipif(
    not forking.fork_is_safe(), reason="the decoder process needs fork (Linux, two CPUs)"
)


@pytest.fixture
def handed_over(monkeypatch: pytest.MonkeyPatch) -> list[int]:
    """The list counts the frames handed to the child (1), or kept here (0)."""
    assert threading.active_count() == 1, (
        f"a thread left by an earlier test: {threading.enumerate()}"
    )
    submitted: list[int] = []
    submit = decoder.DecoderChild._submit

    def counted(self: decoder.DecoderChild, payload: bytes) -> bool:
        handed = submit(self, payload)
        submitted.append(int(handed))
        return handed

    monkeypatch.setattr(decoder.DecoderChild, "_submit", counted)
    return submitted


def _observation(n: int, **fields: Any) -> dict[str, Any]:
    record = {
        "id": f"obs-{n:05d}",
        "kind": "message",
        "content": f"observation {n}",
        "provenance": {"source": "tests", "n": n, "score": n / 7},
        "ts": 1_700_000_000_000 + n,
        "scopeIds": {"sessionId": "s1"},
        "redacted": False,
    }
    record.update(fields)
    return record


def _bundle(tmp_path: Path, frames: list[bytes], count: int) -> Path:
    """The `full` vector with its observations followed by these frames of more."""
    parts = Parts()
    own = records_frame(parts.records["observations"])
    parts.set_data(
        "observations", own + b"".join(frames), len(parts.records["observations"]) + count
    )
    path = tmp_path / "bundle.kbundle"
    path.write_bytes(parts.bundle())
    return path


def _frames(damage: dict[int, Any]) -> tuple[list[bytes], int]:
    """40 frames of 50 observations; `damage[i]` replaces frame i's bytes, or edits its records
    when callable."""
    frames, count = [], 0
    for i in range(40):
        records = [_observation(i * 50 + j) for j in range(50)]
        change = damage.get(i)
        if callable(change):
            change(records)
        frames.append(change if isinstance(change, bytes) else records_frame(records))
        count += len(records)
    return frames, count


def _reports(path: Path) -> tuple[dict, dict]:
    return (
        verify_bundle(path, workers=2).to_dict(),
        verify_bundle(path, workers=1).to_dict(),
    )


def test_a_clean_bundle_is_clean_both_ways(tmp_path: Path, handed_over: list[int]) -> None:
    path = _bundle(tmp_path, *_frames({}))
    parallel, alone = _reports(path)
    assert parallel == alone
    assert parallel["ok"] and parallel["records"]["observations"] > 2000
    assert sum(handed_over) >= 10  # the child really took a share of the frames


def test_every_problem_is_reported_in_the_same_words_and_order(
    tmp_path: Path, handed_over: list[int]
) -> None:
    def repeat_an_earlier_id(records: list[dict]) -> None:
        records[10]["id"] = "obs-00100"

    def bad_kind(records: list[dict]) -> None:
        records[3]["kind"] = "telepathy"
        del records[4]["id"]
        records[4]["ts"] = "yesterday"

    def nan_provenance(records: list[dict]) -> None:
        records[7]["provenance"] = {"score": float("nan")}

    damage: dict[int, Any] = {
        3: repeat_an_earlier_id,
        5: bad_kind,
        6: repeat_an_earlier_id,
        9: nan_provenance,
        11: frame(msgspec.msgpack.encode({"not": "an array"})),
        12: bad_kind,
    }
    frames, count = _frames(damage)
    frames.append(b"\x00\x00")  # a truncated frame header ends the member
    path = _bundle(tmp_path, frames, count)
    parallel, alone = _reports(path)
    assert parallel == alone
    problems = "\n".join(problem["message"] for problem in parallel["problems"])
    for expected in (
        "observation obs-00100 appears more than once",
        "telepathy",
        "record #",
        "field provenance.score is nan",
        "frame is not a MessagePack array of records",
        "truncated frame header",
    ):
        assert expected in problems
    assert sum(handed_over) >= 5


def test_a_child_that_dies_costs_only_speed(
    tmp_path: Path, handed_over: list[int], monkeypatch: pytest.MonkeyPatch
) -> None:
    path = _bundle(tmp_path, *_frames({4: lambda records: records[0].update(kind="bogus")}))
    monkeypatch.setattr(decoder, "_child", lambda *_: os._exit(3))
    parallel, alone = _reports(path)
    assert parallel == alone
    assert "bogus" in "\n".join(problem["message"] for problem in parallel["problems"])


def test_frames_of_every_size_share_a_small_ring_without_overwriting(
    tmp_path: Path, handed_over: list[int], monkeypatch: pytest.MonkeyPatch
) -> None:
    """Frames go through a ring of shared memory that wraps around; one that finds no room is
    decoded here. A frame overwritten while still at the child would come back "not clean" (and
    be decoded again here) or with the wrong ids (and the report would name duplicates)."""
    frames, count = [], 0
    for i in range(60):
        size = 1 + (i * 7) % 23  # 1 to 23 records, some of them long
        records = [_observation(count + j, content="x" * (40 * ((i + j) % 9))) for j in range(size)]
        frames.append(records_frame(records))
        count += size
    ring = 3 * sum(map(len, frames)) // len(frames)
    monkeypatch.setattr(decoder, "RING_BYTES", ring)

    class Slow(decoder.RecordDecoder):  # frames wait at the child, as on a busy machine
        def decode_all(self, payload: Any, first_index: int = 0) -> Any:
            time.sleep(0.002)
            return super().decode_all(payload, first_index)

    monkeypatch.setattr(decoder, "RecordDecoder", Slow)
    answers: list[list[str] | None] = []
    receive = decoder.DecoderChild._receive

    def recorded(self: decoder.DecoderChild) -> Any:
        answer = receive(self)
        answers.append(answer.ids if isinstance(answer, decoder._Clean) else None)
        return answer

    monkeypatch.setattr(decoder.DecoderChild, "_receive", recorded)
    path = _bundle(tmp_path, frames, count)
    parallel, alone = _reports(path)
    assert parallel == alone
    assert parallel["ok"], parallel["problems"]
    assert 10 <= sum(handed_over) < len(handed_over)  # handed over, and some found no room
    assert max(map(len, frames)) > ring // 2
    assert len(answers) == sum(handed_over) and None not in answers  # every frame arrived whole
    answered = [record_id for ids in answers for record_id in ids or []]  # ids, not hashes
    with open_bundle(path) as reader:
        in_bundle = [r.id for r in reader.records() if isinstance(r, Observation)]
    assert [i for i in in_bundle if i in set(answered)] == answered and len(answered) > 100


def test_no_child_while_another_thread_runs(tmp_path: Path, handed_over: list[int]) -> None:
    """fsspec's I/O thread (an s3:// source), or any other, would be copied into a forked child
    in whatever state its locks were: verify stays in one process."""
    path = _bundle(tmp_path, *_frames({}))
    release = threading.Event()
    other = threading.Thread(target=release.wait)
    other.start()
    try:
        threaded = verify_bundle(path, workers=2).to_dict()
    finally:
        release.set()
        other.join()
    assert handed_over == []
    assert threaded == verify_bundle(path, workers=1).to_dict() and threaded["ok"]
