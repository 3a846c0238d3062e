"""A labelled corpus for measuring the scanner: fake secrets in realistic surroundings, and
benign developer text that looks like secrets to a careless rule.

Everything is made from a seeded random generator at run time, so the repository holds no
secret-looking string, and the same seed gives the same corpus on every machine. Planted texts
say where each secret is; a secret counts as found only when findings cover all of it. The
benign texts carry what real memory is full of: commit hashes, sha256/sha512 integrity strings,
UUIDs, base64 blobs, public keys and fingerprints, minified code, diffs, lockfiles, image
digests, and the many NAME=value lines that are not secrets (PWD, TOKENIZERS_PARALLELISM, ...).

Here: the corpus and how a scanner scores on it. The texts come from `fakes` (the seeded
generator and the builder of planted texts), `planted` (the kinds of planted secret) and `benign`.
"""

from __future__ import annotations

import random
from collections.abc import Callable
from dataclasses import dataclass, field

from kindling_bundle.scrub.corpus.benign import BENIGN
from kindling_bundle.scrub.corpus.fakes import Gen, Planted
from kindling_bundle.scrub.corpus.planted import PLANTERS
from kindling_bundle.scrub.findings import Finding
from kindling_bundle.scrub.scanner import Scanner

__all__ = ["Corpus", "Planted", "Score", "evaluate", "evaluate_with", "make_corpus"]


@dataclass(frozen=True)
class Corpus:
    planted: tuple[Planted, ...]
    benign: tuple[str, ...]


@dataclass
class Score:
    """How a scanner did on a corpus: recall on planted secrets, false positives on benign texts."""

    secrets: int = 0
    found: int = 0
    benign: int = 0
    flagged: int = 0
    by_kind: dict[str, list[int]] = field(default_factory=dict)
    """kind -> [found, planted]"""
    missed: list[tuple[str, str]] = field(default_factory=list)
    """(kind, text) of planted texts with a secret not fully covered."""
    false_positives: list[tuple[str, str]] = field(default_factory=list)
    """(rule id, benign text) for each benign text that a rule changed."""

    @property
    def recall(self) -> float:
        return self.found / self.secrets if self.secrets else 1.0

    @property
    def false_positive_rate(self) -> float:
        return self.flagged / self.benign if self.benign else 0.0


def evaluate(scanner: Scanner, corpus: Corpus | None = None) -> Score:
    """Run the scanner over a corpus (the default one if none is given) and score it."""
    return evaluate_with(scanner.find, corpus or make_corpus())


def evaluate_with(find: Callable[[str], list[Finding]], corpus: Corpus) -> Score:
    """Score any finder that returns findings with start/end (for comparing rule sets)."""
    score = Score()
    for item in corpus.planted:
        findings = find(item.text)
        counts = score.by_kind.setdefault(item.kind, [0, 0])
        all_found = True
        for start, end in item.spans:
            score.secrets += 1
            counts[1] += 1
            if _covered(findings, start, end):
                score.found += 1
                counts[0] += 1
            else:
                all_found = False
        if not all_found:
            score.missed.append((item.kind, item.text))
    for text in corpus.benign:
        score.benign += 1
        findings = find(text)
        if findings:
            score.flagged += 1
            score.false_positives.append((findings[0].rule_id, text))
    return score


def _covered(findings: list[Finding], start: int, end: int) -> bool:
    pos = start
    for f in sorted(findings, key=lambda f: f.start):
        if f.start <= pos < f.end:
            pos = f.end
        if pos >= end:
            return True
    return pos >= end


def make_corpus(seed: int = 20, *, repeat: int = 24, benign: int = 1600) -> Corpus:
    """`repeat` texts of each planted kind (most hold one secret, some two) and `benign` texts."""
    rng = random.Random(seed)
    gen = Gen(rng)
    planted = []
    for _ in range(repeat):
        for kind, make in PLANTERS.items():
            planted.append(make(gen).done(kind))
    benign_texts = [rng.choice(BENIGN)(gen) for _ in range(benign)]
    return Corpus(tuple(planted), tuple(benign_texts))
