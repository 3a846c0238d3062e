"""HashSet answers exactly as a Python set would, before and after its members move into the
sorted array (YOUNG_MAX is lowered here so that they move many times)."""

from __future__ import annotations

import random

import pytest

from kindling_bundle import Observation
from kindling_bundle.format import hashset
from kindling_bundle.format.hashset import HashSet
from kindling_bundle.format.stream_rules import RecordRules


@pytest.fixture
def small_young(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(hashset, "YOUNG_MAX", 64)


@pytest.mark.usefixtures("small_young")
def test_answers_as_a_python_set_through_many_merges() -> None:
    rng = random.Random(5)
    universe = [hash(f"id-{n}") for n in range(3000)] + [-(2**63), 2**63 - 1, 0, -1, -2]
    ours, oracle = HashSet(), set()
    for step in range(2500):
        sample = rng.sample(universe, rng.randrange(0, 40))
        roll = rng.random()
        if roll < 0.4:
            ours.update(iter(sample))  # any iterable, as the rules pass map objects
            oracle.update(sample)
        elif roll < 0.5 and sample:
            ours.add(sample[0])
            oracle.add(sample[0])
        assert ours.isdisjoint(sample) == oracle.isdisjoint(sample), step
        assert ours.issuperset(sample) == oracle.issuperset(sample), step
        probe = rng.choice(universe)
        assert (probe in ours) == (probe in oracle), step
    assert ours._count > 1000  # most members did move into the sorted array
    assert all(value in ours for value in oracle)
    absent = [value for value in universe if value not in oracle]
    assert absent and not any(value in ours for value in absent)


@pytest.mark.usefixtures("small_young")
def test_a_repeated_id_is_found_among_members_long_since_merged() -> None:
    rules = RecordRules("the bundle")

    records = [Observation(id=f"o{n}", kind="message", content="c", ts=1) for n in range(1000)]
    for start in range(0, 1000, 100):
        run = records[start : start + 100]
        assert rules.clear_run(run)
        rules.add_run(run)
    again = Observation(id="o3", kind="message", content="again", ts=2)
    assert not rules.clear_run([again])
    assert [b.text for b in rules.check(again)] == ["observation o3 appears more than once"]


def test_a_set_expected_to_stay_small_stays_a_python_set_until_it_outgrows_the_estimate() -> None:
    hashes = [hash(f"id-{n}") for n in range(70_000)]
    expected = HashSet(expected=60_000)
    expected.update(hashes[:60_000])
    assert expected._count == 0  # all in the Python set: no NumPy needed
    expected.update(hashes[60_000:])
    assert expected._count == 70_000  # more than the manifest said: merged as usual
    assert all(value in expected for value in hashes[::97])
    unknown = HashSet()
    unknown.update(hashes[:60_000])
    assert unknown._count >= 32_768
