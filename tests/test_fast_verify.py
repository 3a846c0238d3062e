"""Verify decides most frames with set operations over the whole frame (RecordRules.clear_run);
it must pass exactly the runs that checking record by record passes, and leave the same state."""

from __future__ import annotations

import random

from kindling_bundle import Capsule, Observation, Pin, Summary
from kindling_bundle.format.stream_rules import RecordRules
from kindling_bundle.records import Record


def _pick(rng: random.Random, known: list[str], fallback: str) -> str:
    return rng.choice(known) if known and rng.random() > 0.1 else fallback


def _random_runs(rng: random.Random) -> list[list[Record]]:
    """Runs of each entity in foreign-key order: mostly clean, some with a repeated id (within
    the run or from an earlier one), a capsule listing an observation twice, a second summary of
    a capsule, an evidence ref or other reference that is not there."""
    runs: list[list[Record]] = []
    known: dict[str, list[str]] = {"o": [], "c": [], "s": [], "p": []}

    def new_id(prefix: str, n: int, i: int, run: list[Record]) -> str:
        if known[prefix] and rng.random() < 0.06:
            return rng.choice(known[prefix])
        if run and rng.random() < 0.04:
            return run[-1].id
        return f"{prefix}{n}-{i}"

    for n in range(5):
        run: list[Record] = []
        for i in range(rng.randrange(0, 6)):
            oid = new_id("o", n, i, run)
            run.append(Observation(id=oid, kind="message", content="c", ts=1))
            known["o"].append(oid)
        runs.append(run)
    for n in range(5):
        run = []
        for i in range(rng.randrange(0, 5)):
            links = rng.sample(known["o"], k=min(len(known["o"]), rng.randrange(0, 4)))
            roll = rng.random()
            if roll < 0.1 and links:
                links.append(links[0])
            elif roll < 0.2:
                links.append("missing")
            cid = new_id("c", n, i, run)
            run.append(
                Capsule(id=cid, type="session", intent="i", opened_at=1, observation_ids=links)
            )
            known["c"].append(cid)
        runs.append(run)
    for n in range(4):
        run = []
        for i in range(rng.randrange(0, 4)):
            sid = new_id("s", n, i, run)
            evidence = [_pick(rng, known["o"], "gone")] if rng.random() < 0.5 else []
            run.append(
                Summary(
                    id=sid,
                    capsule_id=_pick(rng, known["c"], "no-capsule"),
                    content="s",
                    confidence=0.5,
                    created_at=1,
                    evidence_refs=evidence,
                )
            )
            known["s"].append(sid)
        runs.append(run)
    for n in range(3):
        run = []
        for i in range(rng.randrange(0, 4)):
            on_observation = rng.random() < 0.5
            target = _pick(rng, known["o" if on_observation else "s"], "nowhere")
            pid = new_id("p", n, i, run)
            known["p"].append(pid)
            run.append(
                Pin(
                    id=pid,
                    target_type="observation" if on_observation else "summary",
                    target_id=target,
                    created_at=1,
                )
            )
        runs.append(run)
    return runs


def _answers(rules: RecordRules, probes: list[Record]) -> list[list[str]]:
    """What the rules say of each probe record now: what it repeats and what it misses."""
    return [[breach.text for breach in rules.check(probe)] for probe in probes]


def test_clear_run_passes_exactly_the_runs_that_check_passes_record_by_record() -> None:
    rng = random.Random(11)
    decided = {kind: {True: 0, False: 0} for kind in (Observation, Capsule, Summary, Pin)}
    for _ in range(300):
        for trusted in (True, False):
            fast = RecordRules("the bundle", trusted=lambda entity, t=trusted: t)
            slow = RecordRules("the bundle", trusted=lambda entity, t=trusted: t)
            runs = _random_runs(rng)
            for run in runs:
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
                if run:
                    decided[type(run[0])][clear] += 1
            # Both now hold the same ids and summarised capsules: every record of every run,
            # checked again, draws the same answers from both.
            probes = [record for run in runs for record in run]
            assert _answers(fast, probes) == _answers(slow, probes)
    for kind, answers in decided.items():  # both answers were exercised for every entity
        assert answers[True] > 50 and answers[False] > 50, (kind.__name__, answers)
