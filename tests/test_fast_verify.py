"""Verify decides most frames with set operations over the whole frame (RecordRules.clear_run);
it must pass exactly the runs that checking record by record passes, and leave the same state."""

from __future__ import annotations

import random

from kindling_bundle import Capsule, Observation
from kindling_bundle.records import Record
from kindling_bundle.rules import RecordRules


def _random_runs(rng: random.Random) -> list[list[Record]]:
    """Runs of observations, then of capsules: mostly clean, some with a repeated id (within the
    run or from an earlier one), a capsule listing an observation twice, or a missing one."""
    runs: list[list[Record]] = []
    known: list[str] = []
    for n in range(6):
        run: list[Record] = []
        for i in range(rng.randrange(0, 6)):
            oid = f"o{n}-{i}"
            if known and rng.random() < 0.08:
                oid = rng.choice(known)
            if run and rng.random() < 0.05:
                oid = run[-1].id
            run.append(Observation(id=oid, kind="message", content="c", ts=1))
            known.append(oid)
        runs.append(run)
    for n in range(6):
        capsules: list[Record] = []
        for i in range(rng.randrange(0, 5)):
            links = rng.sample(known, k=min(len(known), rng.randrange(0, 4)))
            roll = rng.random()
            if roll < 0.1 and links:
                links.append(links[0])
            elif roll < 0.2:
                links.append("missing")
            cid = f"c{n}-{i}" if rng.random() > 0.08 or not capsules else capsules[0].id
            capsules.append(
                Capsule(id=cid, type="session", intent="i", opened_at=1, observation_ids=links)
            )
        runs.append(capsules)
    return runs


def test_clear_run_passes_exactly_the_runs_that_check_passes_record_by_record() -> None:
    rng = random.Random(11)
    decided = {True: 0, False: 0}
    for _ in range(400):
        for trusted in (True, False):
            fast = RecordRules("the bundle", trusted=lambda entity, t=trusted: t)
            slow = RecordRules("the bundle", trusted=lambda entity, t=trusted: t)
            for run in _random_runs(rng):
                clear = fast.clear_run(run)
                breaches = []
                for record in run:
                    breaches += slow.check(record)
                    slow.add(record)
                assert clear == (not breaches), (run, breaches)
                if clear:
                    fast.add_run(run)
                else:
                    for record in run:
                        fast.check(record)
                        fast.add(record)
                decided[clear] += bool(run)
                assert fast._ids == slow._ids
    assert decided[True] > 100 and decided[False] > 100  # both answers were exercised
