"""The issue's targets on the labelled corpus: at least 98% of planted secrets found, at most 1%
of benign developer texts changed."""

from __future__ import annotations

from kindling_bundle.scrub import Scanner, load_rules
from kindling_bundle.scrub.corpus import evaluate, make_corpus


def test_the_corpus_is_deterministic_and_big_enough() -> None:
    corpus = make_corpus()
    assert corpus == make_corpus()
    assert corpus != make_corpus(seed=21)
    kinds = {item.kind for item in corpus.planted}
    secrets = sum(len(item.spans) for item in corpus.planted)
    assert len(kinds) >= 25 and secrets >= 500 and len(corpus.benign) >= 1500
    for item in corpus.planted:
        assert item.spans and all(0 <= s < e <= len(item.text) for s, e in item.spans)


def test_our_rules_meet_the_targets() -> None:
    score = evaluate(Scanner.load())
    missed = [kind for kind, _ in score.missed]
    assert score.recall >= 0.98, f"recall {score.recall:.3f}, missed kinds {sorted(set(missed))}"
    flagged = sorted({rule for rule, _ in score.false_positives})
    assert score.false_positive_rate <= 0.01, f"{score.flagged} benign texts changed by {flagged}"


def test_the_score_falls_when_rules_are_missing() -> None:
    rules = load_rules([])
    keep = tuple(r for r in rules.rules if r.id not in {"private-key", "password-assignment"})
    weaker = Scanner(type(rules)(keep, rules.allowlists, rules.sources))
    score = evaluate(weaker)
    assert score.recall < 0.98
    assert score.by_kind["pem-key-file"][0] == 0
