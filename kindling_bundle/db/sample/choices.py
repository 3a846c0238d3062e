"""The choices every builder of realistic text makes, within the session being written.

A `Chooser` holds what a run of observations shares (the session's repository, the adapter that
records it, the files it keeps coming back to, the open workflow node) and picks from the corpus
with `rng` alone: paths as an agent sees them, real names, excerpts, grep hits, prose, requests.
"""

from __future__ import annotations

import bisect
import math
import random
import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import TypeVar

from kindling_bundle.db.sample.corpus import SHOWN_STDLIB, Corpus, Repo, SourceFile, stdlib_corpus

_T = TypeVar("_T")

# Length of the generated text before truncation: log-normal, (median, sigma) per kind. The
# short kinds (node starts and ends, node errors) have the fixed shapes the adapters write.
_LENGTHS: dict[str, tuple[float, float]] = {
    "message": (260.0, 1.1),
    "tool_call": (700.0, 1.35),
    "command": (550.0, 1.35),
    "file_diff": (1500.0, 1.05),
    "error": (1100.0, 0.8),
    "node_output": (300.0, 0.9),
    "node_end": (1200.0, 1.0),
}
SENTENCE_END = re.compile(r"(?<=[.!?])\s+(?=[A-Z`])")
_UNICODE = (
    "merci, ça marche",
    "danke schön — läuft",
    "日本語のログも確認して",
    "проверь ещё раз",
    "λ-calculus naïve café",
    "✅ done",
    "🚀 ship it",
    "½ of the tests → green",
)
_ASKS = (
    "Fix the failing test around `{name}` in {path}",
    "Why does `{name}` raise {error} here? Traceback below.",
    "Refactor `{name}` in {path} so it no longer does two jobs",
    "Add tests for `{name}` ({path}), including the edge cases",
    "Read {path} and explain what `{name}` does",
    "Rename `{name}` and update every caller",
    "Make `{name}` faster; it shows up in the profile",
    "Document `{name}`: {sentence}",
    "Review my change to {path} before I commit",
    "{sentence} Can you check whether `{name}` handles that?",
)
_ERRORS = (
    "AttributeError",
    "KeyError",
    "TypeError",
    "ValueError",
    "IndexError",
    "RuntimeError",
    "AssertionError",
    "UnicodeDecodeError",
)
_NODE_VERBS = (
    "Test",
    "Validate",
    "Build",
    "Compile",
    "Deploy",
    "Release",
    "Analyze",
    "Lint",
    "Debug",
    "Diagnose",
    "Implement",
    "Create",
    "Refactor",
    "Optimize",
    "Summarize",
    "Fetch",
    "Plan",
)


@dataclass
class Session:
    """The one repository, adapter and few files a session of the sample works with."""

    repo: Repo
    adapter: str  # "claude-code" or "opencode"
    working: list[int]  # the files this session keeps coming back to
    in_repo: frozenset[int]
    head: int  # the repository's newest commit when the session began


@dataclass
class Node:
    """The PocketFlow node open in the session: its observations and capsule share these."""

    name: str
    node_id: str
    node_type: str
    flow_id: str
    intent: str


@dataclass
class Chooser:
    """The session being written and the choices made in it; every choice comes from `rng`."""

    rng: random.Random
    corpus: Corpus = field(default_factory=stdlib_corpus)

    def __post_init__(self) -> None:
        self._by_root = {repo.root: repo for repo in self.corpus.repos}
        self._heads = {repo.name: 30 for repo in self.corpus.repos}
        self.session = self._new_session({})
        self.node: Node | None = None

    def begin_session(self, scope: Mapping[str, str]) -> None:
        """A session works in one repository and keeps returning to a few of its files."""
        self.session = self._new_session(scope)
        self.node = None

    # choices shared by the builders ----------------------------------------------------------

    def _new_session(self, scope: Mapping[str, str]) -> Session:
        rng = self.rng
        repo = self._by_root.get(scope.get("repoId", ""), self.corpus.repos[0])
        agent = scope.get("agentId", "claude-code")
        if agent.startswith("claude"):
            adapter = "claude-code"
        elif agent.startswith("opencode"):
            adapter = "opencode"
        else:
            adapter = pick(rng, ("claude-code", "opencode"))
        working = rng.sample(repo.files, min(len(repo.files), rng.randint(2, 9)))
        self._heads[repo.name] += rng.randint(0, 3)  # its history grows as sessions pass
        return Session(repo, adapter, working, frozenset(repo.files), self._heads[repo.name])

    def length(self, kind: str) -> int:
        median, sigma = _LENGTHS[kind]
        return max(40, int(self.rng.lognormvariate(math.log(median), sigma)))

    def pick_file(self, *, in_repo: bool = False) -> int:
        """Mostly a file of the session, sometimes of its repository, seldom of the library."""
        rng, session = self.rng, self.session
        roll = rng.random()
        if roll < 0.8:
            return pick(rng, session.working)
        if roll < 0.95 or in_repo:
            return pick(rng, session.repo.files)
        return rng.randrange(len(self.corpus.paths))

    def _in_repo(self, index: int) -> bool:
        return index in self.session.in_repo

    def shown(self, index: int) -> str:
        """A file's path as an agent sees it: relative inside the repository, else absolute."""
        path = self.corpus.paths[index]
        return f"src/{path}" if self._in_repo(index) else f"{SHOWN_STDLIB}/{path}"

    def absolute(self, index: int) -> str:
        path = self.corpus.paths[index]
        if self._in_repo(index):
            return f"{self.session.repo.root}/src/{path}"
        return f"{SHOWN_STDLIB}/{path}"

    def span(self, source: SourceFile, length: int) -> tuple[int, int]:
        """A run of lines of about `length` characters."""
        count = len(source.lines)
        if count == 0:
            return 0, 0
        average = max(8.0, source.size / count)
        want = max(1, min(count, int(length / average)))
        start = self.rng.randrange(count - want + 1)
        return start, start + want

    def a_def(self, source: SourceFile) -> tuple[int, str, str] | None:
        return pick(self.rng, source.defs) if source.defs else None

    def symbol(self, index: int | None = None) -> str:
        """A real function or class name, from a file of the session when possible."""
        rng = self.rng
        for _ in range(4):
            found = self.a_def(self.corpus.file(self.pick_file() if index is None else index))
            if found:
                return found[2]
            index = None
        return pick(rng, ("main", "run", "parse", "load", "close"))

    def prose(self, length: int) -> str:
        """Paragraphs of real documentation, about `length` characters."""
        rng, corpus = self.rng, self.corpus
        parts: list[str] = []
        total = 0
        attempts = 0
        while total < length and attempts < 200:
            attempts += 1
            index = self.pick_file() if rng.random() < 0.5 else pick(rng, corpus.prose_files)
            prose = corpus.file(index).prose
            if prose:
                paragraph = pick(rng, prose)
                parts.append(paragraph)
                total += len(paragraph) + 2
        text = "\n\n".join(parts) or "No documentation."
        return text if len(text) <= length * 2 else _cut_at_sentence(text, length)

    def sentence(self) -> str:
        paragraph = self.prose(80)
        sentences = SENTENCE_END.split(paragraph)
        return pick(self.rng, sentences)[:300]

    def ask(self) -> str:
        rng = self.rng
        index = self.pick_file()
        text = pick(rng, _ASKS).format(
            name=self.symbol(index),
            path=self.shown(index),
            error=pick(rng, _ERRORS),
            sentence=self.sentence(),
        )
        if rng.random() < 0.08:
            text += f" ({pick(rng, _UNICODE)})"
        return text

    def duration(self, low: int = 5, high: int = 120_000) -> int:
        return min(high, max(low, int(self.rng.lognormvariate(math.log(400), 1.5))))

    def flow_id(self) -> str:
        return f"flow-{self.session.repo.name}-{self.rng.randint(1, 4)}"

    def node_name(self) -> str:
        words = re.split(r"_+", self.symbol())
        return pick(self.rng, _NODE_VERBS) + "".join(w[:1].upper() + w[1:] for w in words if w)

    # excerpts of real files ------------------------------------------------------------------

    def excerpt(self, length: int, *, numbered: bool) -> tuple[int, int, int, str]:
        """(file, first line, line count, text) of a run of a real file."""
        index = self.pick_file()
        source = self.corpus.file(index)
        start, end = self.span(source, length)
        lines = source.lines[start:end]
        if numbered:
            text = "\n".join(f"{n:>6}\t{line}" for n, line in enumerate(lines, start + 1))
        else:
            text = "\n".join(lines)
        return index, start + 1, end - start, text

    def grep(self, length: int) -> tuple[str, str, str]:
        """(pattern, folder, `grep -rn` output) for a name used in the session's files."""
        rng = self.rng
        pattern = self.symbol()
        files = list(self.session.working)
        rng.shuffle(files)
        found: list[str] = []
        total = 0
        for index in files:
            source = self.corpus.file(index)
            text, starts, lines = source.text, source.starts, source.lines
            shown = self.shown(index)
            found_at = text.find(pattern)
            while found_at >= 0 and total <= length:
                at = bisect.bisect_right(starts, found_at) - 1
                hit = f"{shown}:{at + 1}:{lines[at]}"
                found.append(hit)
                total += len(hit)
                found_at = text.find(pattern, starts[at + 1]) if at + 1 < len(starts) else -1
            if total > length:
                break
        folder = self.shown(files[0]).rsplit("/", 1)[0] if files else "."
        return pattern, folder, "\n".join(found)


def pick(rng: random.Random, items: Sequence[_T]) -> _T:
    """rng.choice at a third of its cost (it is called a dozen times an observation)."""
    return items[int(rng.random() * len(items))]


def _cut_at_sentence(text: str, length: int) -> str:
    end = text.find(". ", length)
    return text if end < 0 else text[: end + 1]
