"""Realistic text for sample memory, drawn from the Python standard library that runs this code.

Word salad flatters every tool that compresses or indexes text: a couple of thousand distinct
terms compress and index far better than an agent's real memory, which is source code, diffs,
tracebacks, command output and prose. Everything here is cut from files that ship with every
Python (the standard library's sources, its docstrings and pydoc's topics), so the sample needs
no download, and a seed gives the same text on the same Python build. Provenance is shaped as
Kindling's Claude Code, OpenCode and PocketFlow adapters write it, content opens as they format
it (then carries the tool's result, which the Claude Code adapter keeps only for commands), and
content is truncated where the Claude Code adapter truncates it.

Pure: no SQLite here. `RealisticText` answers the sample generator's questions (which kind,
what content and provenance, which intent, which summary) one record at a time.
"""

from __future__ import annotations

import base64
import bisect
import calendar
import configparser
import datetime
import difflib
import fractions
import functools
import gzip
import hashlib
import importlib
import io
import ipaddress
import itertools
import json
import math
import os
import random
import re
import shlex
import statistics
import string
import sys
import sysconfig
import tarfile
import textwrap
import tomllib
import traceback
import urllib.parse
import uuid
import zipfile
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TypeVar
from xml.etree import ElementTree

from kindling_bundle.errors import KindlingBundleError

_T = TypeVar("_T")

MAX_CONTENT = 50_000
"""Kindling's Claude Code adapter keeps this many characters of content, then a notice."""
MAX_TOOL_RESULT = 10_000
"""... and this many of a tool's result or a user's prompt."""
MAX_SUBAGENT_OUTPUT = 5_000
"""... and this many of a subagent's output."""
NODE_BOUND = 500
"""PocketFlow's adapter bounds a node's input and output to this many characters."""

KIND_WEIGHTS: dict[str, int] = {
    "message": 30,
    "tool_call": 28,
    "command": 14,
    "file_diff": 8,
    "error": 4,
    "node_start": 4,
    "node_end": 4,
    "node_output": 6,
    "node_error": 2,
}

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

# Folders of the standard library that Linux distributions ship as separate packages, or that
# hold the test suite: left out so that the text is the same wherever this Python version runs.
_SKIPPED_DIRS = frozenset(
    {
        "__pycache__",
        "site-packages",
        "dist-packages",
        "test",
        "tests",
        "idlelib",
        "tkinter",
        "turtledemo",
        "lib2to3",
        "distutils",
        "ensurepip",
        "lib-dynload",
    }
)
_SKIPPED_FILES = ("_sysconfigdata", "sitecustomize", "usercustomize")
_SHOWN_STDLIB = f"/usr/lib/python{sys.version_info[0]}.{sys.version_info[1]}"
"""Where library files appear to live in the text, whatever the real prefix of this Python."""

_DEF = re.compile(r"^(\s*)(?:async\s+)?(def|class)\s+([A-Za-z_]\w*)")
_DOCSTRING = re.compile(r'^[ \t]*[rRuU]?(?:"""(.*?)"""|\'\'\'(.*?)\'\'\')', re.S | re.M)
_IDENT = re.compile(r"\b[a-z_][a-z0-9_]{3,}\b")
_WORDY = re.compile(r"[A-Za-z]{3,}")
_STATEMENT = re.compile(
    r"(?:return|raise|yield|if|elif|for|while|with|del|assert|await)\b|[\w.\[\]]+\s*[-+*/|]?=[^=]|[\w.]+\("
)
"""A line a traceback could show: a statement or a call, not a comment or a docstring."""
_SENTENCE_END = re.compile(r"(?<=[.!?])\s+(?=[A-Z`])")

_USERS = ("alice", "bob", "chen", "dana", "emeka", "farah", "gus", "hiro", "ines", "jonas")
_AGENTS = (
    "claude-code",
    "claude-code/subagent",
    "opencode",
    "opencode/build",
    "codex",
    "aider",
    "pocketflow-runner",
    "ci-bot",
)
_MODELS = ("claude-sonnet-4", "claude-opus-4", "gpt-5", "gpt-4.1", "qwen3-coder", "kimi-k2")
_SUBAGENTS = ("general-purpose", "Explore", "Plan", "code-reviewer", "test-runner")
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
_NODE_TYPES = ("llm", "tool", "batch", "async", "flow")
# PocketFlow's adapter derives a capsule's intent from the node's name and type, first match wins.
_INTENT_RULES = (
    (re.compile(r"test|spec|validate", re.I), "test"),
    (re.compile(r"build|compile|bundle", re.I), "build"),
    (re.compile(r"deploy|publish|release", re.I), "deploy"),
    (re.compile(r"analyze|check|lint", re.I), "analyze"),
    (re.compile(r"debug|investigate|diagnose", re.I), "debug"),
    (re.compile(r"implement|create|develop", re.I), "implement"),
    (re.compile(r"refactor|improve|optimize", re.I), "refactor"),
)
_CLAUDE_TOOLS = (
    ("Read", 34),
    ("Grep", 16),
    ("Glob", 8),
    ("Task", 6),
    ("WebFetch", 5),
    ("WebSearch", 3),
    ("TodoWrite", 5),
    ("Skill", 1),
)
_OPENCODE_TOOLS = (("read", 40), ("grep", 18), ("glob", 10), ("webfetch", 6), ("todowrite", 6))
_RENAMES = ("cached", "checked", "safe", "v2", "impl", "inner", "fast", "raw", "new", "old")


def cap(content: str, limit: int = MAX_CONTENT) -> str:
    """Truncate as Kindling's Claude Code adapter does: `limit` characters, then a notice."""
    if len(content) <= limit:
        return content
    return f"{content[:limit]}\n\n[Truncated {len(content) - limit} characters]"


def _bounded(text: str, limit: int = NODE_BOUND) -> str:
    """Bound as PocketFlow's adapter bounds a node's input and output."""
    return text if len(text) <= limit else text[:limit] + "... [truncated]"


@dataclass
class SourceFile:
    """One file of the standard library, read and analysed on first use."""

    path: str  # relative to the library's root, with forward slashes
    size: int
    text: str  # with "\n" line ends
    lines: list[str]
    starts: list[int]  # where each line starts in `text`, for grep
    defs: list[tuple[int, str, str]]  # (line index, "def" or "class", name)
    def_lines: list[int]  # line indexes of `defs`, for bisect
    prose: list[str]  # docstring paragraphs, whitespace folded
    long_lines: list[int]  # indexes of lines longer than 88 characters, for lint output


@dataclass
class Repo:
    """A repository of the sample: one package (or a run of top-level modules) of the library."""

    name: str
    owner: str
    files: list[int]  # indexes into Corpus.paths

    @property
    def root(self) -> str:
        return f"/home/{self.owner}/work/{self.name}"


class Corpus:
    """The standard library's Python sources, listed once and read lazily, file by file.

    Everything a generator takes from it is addressed by (file index, position in that file), so
    what was read before (by an earlier sample in the same process) never changes a choice."""

    def __init__(self, root: Path) -> None:
        self.root = root
        self.paths: list[str] = []
        self.sizes: list[int] = []
        for folder, dirs, names in os.walk(root):
            # "config-3.11-x86_64-linux-gnu" and the like describe one build, not the library
            dirs[:] = sorted(d for d in dirs if d not in _SKIPPED_DIRS and "-" not in d)
            for name in sorted(names):
                if name.endswith(".py") and not name.startswith(_SKIPPED_FILES):
                    full = Path(folder, name)
                    self.paths.append(full.relative_to(root).as_posix())
                    self.sizes.append(full.stat().st_size)
        if not self.paths:  # a Python that ships its library as bytecode only
            raise KindlingBundleError(f"{root}: no Python sources to make sample text from")
        self._files: dict[int, SourceFile] = {}
        self.repos = _repos(self.paths)
        with_prose = [i for i, p in enumerate(self.paths) if not p.startswith("encodings/")]
        self.prose_files = with_prose

    def file(self, index: int) -> SourceFile:
        cached = self._files.get(index)
        if cached is None:
            cached = self._files[index] = self._read(index)
        return cached

    def _read(self, index: int) -> SourceFile:
        path = self.paths[index]
        with (self.root / path).open(encoding="utf-8", errors="replace", newline=None) as handle:
            text = handle.read()
        lines = text.split("\n")
        starts = list(itertools.accumulate((len(line) + 1 for line in lines[:-1]), initial=0))
        defs: list[tuple[int, str, str]] = []
        for i, line in enumerate(lines):
            if ("def " in line or "class " in line) and (match := _DEF.match(line)):
                defs.append((i, match[2], match[3]))
        prose: list[str] = []
        for match in _DOCSTRING.finditer(text):
            for paragraph in (match[1] or match[2] or "").split("\n\n"):
                folded = " ".join(paragraph.split())
                if len(folded) >= 30 and len(_WORDY.findall(folded)) >= 4:
                    prose.append(folded)
        if path == "pydoc_data/topics.py":
            prose = _topics()
        long_lines = [i for i, line in enumerate(lines) if len(line) > 88]
        def_lines = [d[0] for d in defs]
        size = self.sizes[index]
        return SourceFile(path, size, text, lines, starts, defs, def_lines, prose, long_lines)


def _topics() -> list[str]:
    """pydoc's topic pages (the language reference as plain text), as paragraphs."""
    try:
        topics = importlib.import_module("pydoc_data.topics").topics
    except ImportError:
        return []
    paragraphs = []
    for page in topics.values():
        for paragraph in str(page).split("\n\n"):
            folded = " ".join(paragraph.split())
            if len(folded) >= 30 and len(_WORDY.findall(folded)) >= 4:
                paragraphs.append(folded)
    return paragraphs


def _repos(paths: Sequence[str]) -> list[Repo]:
    """Each package is a repository; top-level modules form repositories of 16 in name order."""
    packages: dict[str, list[int]] = {}
    modules: list[int] = []
    for index, path in enumerate(paths):
        if "/" in path:
            packages.setdefault(path.split("/", 1)[0], []).append(index)
        else:
            modules.append(index)
    named = list(packages.items())
    for start in range(0, len(modules), 16):
        chunk = modules[start : start + 16]
        named.append((paths[chunk[0]].removesuffix(".py").strip("_") + "-tools", chunk))
    named.sort()
    return [
        Repo(name.strip("_"), _USERS[i % len(_USERS)], files)
        for i, (name, files) in enumerate(named)
    ]


@functools.cache
def stdlib_corpus() -> Corpus:
    """The corpus of this Python's standard library, one per process."""
    return Corpus(Path(sysconfig.get_paths()["stdlib"]))


# Real failures, raised by real calls into the standard library: their tracebacks are what a
# user pastes. Each is built once per process (only the library's frames are kept).
_FAILING_CALLS: tuple[Callable[[], object], ...] = (
    lambda: json.loads('{"retries": 3, "timeout": 2.5,}'),
    lambda: json.loads("[1, 2, 3"),
    lambda: datetime.datetime.strptime("2026-13-01", "%Y-%m-%d"),
    lambda: ipaddress.ip_address("300.1.2.3"),
    lambda: ipaddress.ip_network("10.0.0.1/24"),
    lambda: tomllib.loads("[tool.ruff]\nline-length = \n"),
    lambda: shlex.split('git commit -m "unterminated'),
    lambda: base64.b64decode("aGVsbG8gd29ybGQ", validate=True),
    lambda: urllib.parse.urlsplit("http://[::1/index.html"),
    lambda: fractions.Fraction("3/0"),
    lambda: re.compile(r"(?P<name>[a-z]+"),
    lambda: statistics.mean([]),
    lambda: uuid.UUID("not-a-uuid"),
    lambda: ElementTree.fromstring("<config><item></config>"),
    lambda: calendar.monthrange(2026, 13),
    lambda: string.Template("deploy $target to $region").substitute(target="prod"),
    lambda: importlib.import_module("kindling_sample_missing_module"),
    lambda: gzip.decompress(b"this is not gzip data"),
    lambda: zipfile.ZipFile(io.BytesIO(b"PK\x03\x04 truncated archive")),
    lambda: tarfile.open(fileobj=io.BytesIO(b"\0" * 100 + b"not a tar" * 70)),  # noqa: SIM115
    lambda: configparser.ConfigParser().read_string("[db]\nhost = a\nhost = b\n"),
    lambda: textwrap.TextWrapper(width=0).wrap("text"),
    lambda: compile("def handler(event:\n    return event", "handler.py", "exec"),
    lambda: int("12a"),
    lambda: float("1,5"),
    lambda: {"retries": 3}["timeout"],
    lambda: [1, 2, 3][7],
    lambda: "abc" + 1,  # type: ignore[operator]
    lambda: b"\xff\xfe\xfa".decode("utf-8"),
)


@functools.cache
def real_tracebacks() -> tuple[tuple[str, str, str], ...]:
    """(exception type, message, whole traceback text) of each failing call, paths as shown."""
    root = sysconfig.get_paths()["stdlib"]
    ours = f'  File "{__file__}"'
    found = []
    for call in _FAILING_CALLS:
        try:
            call()
        except Exception as exc:  # every call above fails; each is a sample, not an error
            chunks = traceback.TracebackException.from_exception(exc).format()
            text = "".join(c for c in chunks if not c.startswith(ours)).replace(root, _SHOWN_STDLIB)
            message = traceback.format_exception_only(exc)[-1].strip()
            found.append((type(exc).__name__, message, text))
    return tuple(found)


@dataclass
class _Session:
    repo: Repo
    adapter: str  # "claude-code" or "opencode"
    working: list[int]  # the files this session keeps coming back to
    in_repo: frozenset[int]
    head: int  # the repository's newest commit when the session began


@dataclass
class _Node:
    name: str
    node_id: str
    node_type: str
    flow_id: str
    intent: str


@dataclass
class RealisticText:
    """Realistic observations, intents and summaries; every choice comes from `rng`."""

    rng: random.Random
    corpus: Corpus = field(default_factory=stdlib_corpus)

    def __post_init__(self) -> None:
        self.repos = [repo.root for repo in self.corpus.repos]
        self.agents = list(_AGENTS)
        self.users = list(_USERS)
        self._by_root = {repo.root: repo for repo in self.corpus.repos}
        self._heads = {repo.name: 30 for repo in self.corpus.repos}
        self._kinds = list(KIND_WEIGHTS)
        self._kind_weights = list(KIND_WEIGHTS.values())
        self._session = self._new_session({})
        self._node: _Node | None = None

    # the generator's questions -------------------------------------------------------------

    def kind(self) -> str:
        return self.rng.choices(self._kinds, self._kind_weights)[0]

    def begin_session(self, scope: Mapping[str, str]) -> None:
        """A session works in one repository and keeps returning to a few of its files."""
        self._session = self._new_session(scope)
        self._node = None

    def observation(self, kind: str) -> tuple[str, dict[str, Any]]:
        """Content and provenance of one observation of `kind`."""
        content, provenance = _BUILDERS[kind](self)
        return cap(content), provenance

    def intent(self, capsule_type: str) -> str:
        if capsule_type == "pocketflow_node":
            return self._node.intent if self._node else "general"
        if self._session.adapter == "claude-code" and self.rng.random() < 0.35:
            return "Claude Code session"
        return self._ask()

    def summary(self, capsule_type: str, intent: str) -> str:
        rng = self.rng
        if capsule_type == "pocketflow_node":
            name = self._node_name()
            outcome = (
                f"completed successfully: {_bounded(self._prose(200), 200)}"
                if rng.random() < 0.85
                else f"failed: {_pick(rng, real_tracebacks())[1]}"
            )
            confidence = f" [confidence: {rng.randint(20, 100)}%]" if rng.random() < 0.8 else ""
            return f"Node '{name}' ({intent}) {outcome}{confidence}"
        session = self._session
        files = ", ".join(self._shown(i) for i in rng.sample(session.working, len(session.working)))
        parts = [
            f"{intent.rstrip('.?')}." if intent != "Claude Code session" else "",
            f"Worked in {session.repo.name} on {files}.",
            self._prose(rng.randint(120, 900)),
        ]
        if rng.random() < 0.6:
            passed = rng.randint(3, 900)
            parts.append(f"Tests: {passed} passed, {_pick(rng, (0, 0, 0, 1, 2))} failed.")
        return " ".join(p for p in parts if p)

    # choices shared by the builders ----------------------------------------------------------

    def _new_session(self, scope: Mapping[str, str]) -> _Session:
        rng = self.rng
        repo = self._by_root.get(scope.get("repoId", ""), self.corpus.repos[0])
        agent = scope.get("agentId", "claude-code")
        if agent.startswith("claude"):
            adapter = "claude-code"
        elif agent.startswith("opencode"):
            adapter = "opencode"
        else:
            adapter = _pick(rng, ("claude-code", "opencode"))
        working = rng.sample(repo.files, min(len(repo.files), rng.randint(2, 9)))
        self._heads[repo.name] += rng.randint(0, 3)  # its history grows as sessions pass
        return _Session(repo, adapter, working, frozenset(repo.files), self._heads[repo.name])

    def _length(self, kind: str) -> int:
        median, sigma = _LENGTHS[kind]
        return max(40, int(self.rng.lognormvariate(math.log(median), sigma)))

    def _pick_file(self, *, in_repo: bool = False) -> int:
        """Mostly a file of the session, sometimes of its repository, seldom of the library."""
        rng, session = self.rng, self._session
        roll = rng.random()
        if roll < 0.8:
            return _pick(rng, session.working)
        if roll < 0.95 or in_repo:
            return _pick(rng, session.repo.files)
        return rng.randrange(len(self.corpus.paths))

    def _in_repo(self, index: int) -> bool:
        return index in self._session.in_repo

    def _shown(self, index: int) -> str:
        """A file's path as an agent sees it: relative inside the repository, else absolute."""
        path = self.corpus.paths[index]
        return f"src/{path}" if self._in_repo(index) else f"{_SHOWN_STDLIB}/{path}"

    def _absolute(self, index: int) -> str:
        path = self.corpus.paths[index]
        if self._in_repo(index):
            return f"{self._session.repo.root}/src/{path}"
        return f"{_SHOWN_STDLIB}/{path}"

    def _span(self, source: SourceFile, length: int) -> tuple[int, int]:
        """A run of lines of about `length` characters."""
        count = len(source.lines)
        if count == 0:
            return 0, 0
        average = max(8.0, source.size / count)
        want = max(1, min(count, int(length / average)))
        start = self.rng.randrange(count - want + 1)
        return start, start + want

    def _a_def(self, source: SourceFile) -> tuple[int, str, str] | None:
        return _pick(self.rng, source.defs) if source.defs else None

    def _name(self, index: int | None = None) -> str:
        """A real function or class name, from a file of the session when possible."""
        rng = self.rng
        for _ in range(4):
            found = self._a_def(self.corpus.file(self._pick_file() if index is None else index))
            if found:
                return found[2]
            index = None
        return _pick(rng, ("main", "run", "parse", "load", "close"))

    def _prose(self, length: int) -> str:
        """Paragraphs of real documentation, about `length` characters."""
        rng, corpus = self.rng, self.corpus
        parts: list[str] = []
        total = 0
        attempts = 0
        while total < length and attempts < 200:
            attempts += 1
            index = self._pick_file() if rng.random() < 0.5 else _pick(rng, corpus.prose_files)
            prose = corpus.file(index).prose
            if prose:
                paragraph = _pick(rng, prose)
                parts.append(paragraph)
                total += len(paragraph) + 2
        text = "\n\n".join(parts) or "No documentation."
        return text if len(text) <= length * 2 else _cut_at_sentence(text, length)

    def _sentence(self) -> str:
        paragraph = self._prose(80)
        sentences = _SENTENCE_END.split(paragraph)
        return _pick(self.rng, sentences)[:300]

    def _ask(self) -> str:
        rng = self.rng
        index = self._pick_file()
        text = _pick(rng, _ASKS).format(
            name=self._name(index),
            path=self._shown(index),
            error=_pick(rng, _ERRORS),
            sentence=self._sentence(),
        )
        if rng.random() < 0.08:
            text += f" ({_pick(rng, _UNICODE)})"
        return text

    def _duration(self, low: int = 5, high: int = 120_000) -> int:
        return min(high, max(low, int(self.rng.lognormvariate(math.log(400), 1.5))))

    def _flow_id(self) -> str:
        return f"flow-{self._session.repo.name}-{self.rng.randint(1, 4)}"

    def _commit_subject(self, repo: Repo, commit: int) -> str:
        """The subject of a commit: the first sentence of a docstring, chosen by the commit."""
        chooser = random.Random(f"{repo.name}@{commit}")
        for _ in range(8):
            prose = self.corpus.file(chooser.choice(repo.files)).prose
            if prose:
                return _SENTENCE_END.split(chooser.choice(prose), 1)[0].rstrip(".")[:72]
        return f"Update {repo.name}"

    def _node_name(self) -> str:
        words = re.split(r"_+", self._name())
        return _pick(self.rng, _NODE_VERBS) + "".join(w[:1].upper() + w[1:] for w in words if w)

    # excerpts of real files ------------------------------------------------------------------

    def _excerpt(self, length: int, *, numbered: bool) -> tuple[int, int, int, str]:
        """(file, first line, line count, text) of a run of a real file."""
        index = self._pick_file()
        source = self.corpus.file(index)
        start, end = self._span(source, length)
        lines = source.lines[start:end]
        if numbered:
            text = "\n".join(f"{n:>6}\t{line}" for n, line in enumerate(lines, start + 1))
        else:
            text = "\n".join(lines)
        return index, start + 1, end - start, text

    def _grep(self, length: int) -> tuple[str, str, str]:
        """(pattern, folder, `grep -rn` output) for a name used in the session's files."""
        rng = self.rng
        pattern = self._name()
        files = list(self._session.working)
        rng.shuffle(files)
        found: list[str] = []
        total = 0
        for index in files:
            source = self.corpus.file(index)
            text, starts, lines = source.text, source.starts, source.lines
            shown = self._shown(index)
            found_at = text.find(pattern)
            while found_at >= 0 and total <= length:
                at = bisect.bisect_right(starts, found_at) - 1
                hit = f"{shown}:{at + 1}:{lines[at]}"
                found.append(hit)
                total += len(hit)
                found_at = text.find(pattern, starts[at + 1]) if at + 1 < len(starts) else -1
            if total > length:
                break
        folder = self._shown(files[0]).rsplit("/", 1)[0] if files else "."
        return pattern, folder, "\n".join(found)

    def _diff(self, index: int, length: int) -> tuple[str, int, int]:
        """A unified diff (difflib's, with git's headers) of an edit to a real file."""
        rng, source = self.rng, self.corpus.file(index)
        lines = source.lines
        shown = self._shown(index)
        if len(lines) < 8 or rng.random() < 0.06:  # a new file
            start, end = self._span(source, length)
            body = [f"+{line}" for line in lines[start:end]]
            head = f"diff --git a/{shown} b/{shown}\nnew file mode 100644\n"
            head += f"index 0000000..{_hash(shown, 0)}\n--- /dev/null\n+++ b/{shown}\n"
            return head + f"@@ -0,0 +1,{len(body)} @@\n" + "\n".join(body), len(body), 0
        hunks: list[str] = []
        added = removed = 0
        edits = max(1, min(60, int(length / 500)))
        sites = sorted(rng.sample(range(len(lines) - 1), min(edits, len(lines) - 1)))
        delta = 0
        last_end = -10  # no site is too close to the start
        for site in sites:
            if site - 3 <= last_end + 3:
                continue
            stop = min(len(lines), site + rng.randint(1, 6))
            replacement = self._edit(source, site, stop)
            lo, hi = max(0, site - 3), min(len(lines), stop + 3)
            old = lines[lo:hi]
            new = lines[lo:site] + replacement + lines[stop:hi]
            matcher = difflib.SequenceMatcher(None, old, new, autojunk=False)
            for group in matcher.get_grouped_opcodes(3):
                a0, a1 = group[0][1], group[-1][2]
                b0, b1 = group[0][3], group[-1][4]
                context = self._enclosing(source, lo + a0)
                body = [f"@@ -{_range(lo + a0, a1 - a0)} +{_range(lo + b0 + delta, b1 - b0)} @@"]
                body[0] += f" {context}" if context else ""
                for tag, i1, i2, j1, j2 in group:
                    if tag == "equal":
                        body.extend(f" {line}" for line in old[i1:i2])
                        continue
                    body.extend(f"-{line}" for line in old[i1:i2])
                    body.extend(f"+{line}" for line in new[j1:j2])
                    removed += i2 - i1
                    added += j2 - j1
                hunks.append("\n".join(body))
            delta += len(new) - len(old)
            last_end = stop
        version = rng.randrange(16)  # git's blob ids: a file has a few versions, not one a diff
        blobs = f"{_hash(shown, version)}..{_hash(shown, version + 1)}"
        head = f"diff --git a/{shown} b/{shown}\nindex {blobs} 100644\n"
        return head + f"--- a/{shown}\n+++ b/{shown}\n" + "\n".join(hunks), added, removed

    def _edit(self, source: SourceFile, start: int, stop: int) -> list[str]:
        """What an agent writes in place of lines [start, stop): renamed, moved, new or none."""
        rng = self.rng
        old = source.lines[start:stop]
        roll = rng.random()
        if roll < 0.35:
            names = _IDENT.findall("\n".join(old))
            if names:
                name = _pick(rng, names)
                renamed = f"{name}_{_pick(rng, _RENAMES)}"
                return [line.replace(name, renamed) for line in old]
        if roll < 0.55:
            return []
        indent = old[0][: len(old[0]) - len(old[0].lstrip())] if old else ""
        if roll < 0.8:
            at, to = self._span(source, rng.randint(60, 600))
            moved = textwrap.dedent("\n".join(source.lines[at:to])).split("\n")
            return old + [indent + line if line else "" for line in moved]
        comment = textwrap.wrap(self._sentence(), 76 - len(indent))
        return [f"{indent}# {line}" for line in comment] + old

    def _enclosing(self, source: SourceFile, line: int) -> str:
        """The def or class line git shows after a hunk's header: the last one above the hunk."""
        at = bisect.bisect_left(source.def_lines, line) - 1
        return source.lines[source.defs[at][0]].strip()[:80] if at >= 0 else ""

    def _traceback(self, length: int) -> tuple[str, str, str]:
        """(type, message, text): a real failure, under frames of the session's own code."""
        rng = self.rng
        name, message, real = _pick(rng, real_tracebacks())
        frames: list[str] = []
        total = len(real)
        attempts = 0
        while (total < length or not frames) and len(frames) < 40 and attempts < 200:
            attempts += 1
            index = self._pick_file()
            source = self.corpus.file(index)
            found = self._a_def(source)
            if not found or found[1] != "def":
                continue
            first = found[0] + rng.randint(1, 12)
            code = ""
            for at in range(first, min(first + 8, len(source.lines))):
                line = source.lines[at]
                code = line.strip()
                if _DEF.match(line):
                    code = ""
                    break
                if _STATEMENT.match(code):
                    break
            if not _STATEMENT.match(code):
                continue
            frame = f'  File "{self._absolute(index)}", line {at + 1}, in {found[2]}\n    {code}\n'
            frames.append(frame)
            total += len(frame)
        head = "Traceback (most recent call last):\n"
        text = head + "".join(frames) + real.removeprefix(head)
        return name, message, text


def _pick(rng: random.Random, items: Sequence[_T]) -> _T:
    """rng.choice at a third of its cost (it is called a dozen times an observation)."""
    return items[int(rng.random() * len(items))]


def _hash(name: str, version: int) -> str:
    """A short git id for (name, version): the same everywhere, as a real id is."""
    return hashlib.sha1(f"{name}@{version}".encode()).hexdigest()[:7]


def _node_id(name: str) -> str:
    """A workflow node keeps its id from run to run."""
    return f"node-{hashlib.sha1(name.encode()).hexdigest()[:8]}"


def _range(start: int, length: int) -> str:
    """A unified diff's line range (1-based), as difflib writes it."""
    if length == 1:
        return f"{start + 1}"
    return f"{start if length == 0 else start + 1},{length}"


def _cut_at_sentence(text: str, length: int) -> str:
    end = text.find(". ", length)
    return text if end < 0 else text[: end + 1]


# builders: one per observation kind, each (content, provenance) ----------------------------


def _message(t: RealisticText) -> tuple[str, dict[str, Any]]:
    rng = t.rng
    length = t._length("message")
    if t._session.adapter == "claude-code" or rng.random() < 0.4:
        text = t._ask()
        if length > 200:
            pasted = t._excerpt(length, numbered=False)[3] if rng.random() < 0.5 else ""
            text += "\n\n" + (pasted or t._prose(length))
        text = cap(text, MAX_TOOL_RESULT)
        return text, {"role": "user", "length": len(text)}
    text = t._prose(length)
    if rng.random() < 0.3:
        code = t._excerpt(rng.randint(100, 1500), numbered=False)[3]
        text += f"\n\n```python\n{textwrap.dedent(code)}\n```"
    output_tokens = len(text) // 4 + rng.randint(0, 50)
    provenance: dict[str, Any] = {
        "role": "assistant",
        "model": _pick(rng, _MODELS),
        "usage": {
            "inputTokens": rng.randint(2_000, 180_000),
            "outputTokens": output_tokens,
            "cacheReadTokens": rng.randint(0, 150_000),
        },
    }
    if rng.random() < 0.5:
        provenance["costUsd"] = round(rng.uniform(0.0005, 0.9), 6)
    return text, provenance


def _tool_call(t: RealisticText) -> tuple[str, dict[str, Any]]:
    rng = t.rng
    length = t._length("tool_call")
    claude = t._session.adapter == "claude-code"
    names, weights = zip(*(_CLAUDE_TOOLS if claude else _OPENCODE_TOOLS), strict=True)
    tool = rng.choices(names, weights)[0]
    key = tool.lower()
    args: dict[str, Any]
    failed = rng.random() < 0.04
    error = _pick(rng, ("File does not exist.", "Permission denied", "Timed out")) if failed else ""
    if key == "read":
        index, first, count, result = t._excerpt(length, numbered=True)
        path = t._absolute(index)
        detail = [f"File: {path}"]
        args = {"file_path": path, "offset": first, "limit": count}
        provenance: dict[str, Any] = {"filePath": path}
    elif key == "grep":
        pattern, folder, result = t._grep(length)
        detail = [f"Pattern: {pattern}", f"Path: {folder}"]
        args = {"pattern": pattern, "path": folder, "output_mode": "content", "-n": True}
        provenance = {"pattern": pattern, "path": folder}
    elif key == "glob":
        repo = t._session.repo
        folder = t._shown(_pick(rng, repo.files)).rsplit("/", 1)[0]
        pattern = _pick(rng, ("**/*.py", "*.py", "**/test_*.py", "**/__init__.py"))
        listed = [t._absolute(i) for i in repo.files]
        result = "\n".join(listed[: max(1, length // 60)])
        detail = [f"Pattern: {pattern}", f"Path: {folder}"]
        args = {"pattern": pattern, "path": folder}
        provenance = {"pattern": pattern, "path": folder}
    elif key == "task":
        subagent, description = _pick(rng, _SUBAGENTS), t._ask()[:120]
        result = t._prose(length)
        detail = [f"Agent: {subagent}", f"Task: {description}"]
        args = {"subagent_type": subagent, "description": description, "prompt": t._ask()}
        provenance = {"subagentType": subagent, "description": description}
    elif key == "webfetch":
        module = t.corpus.paths[t._pick_file()].removesuffix(".py").replace("/", ".")
        url = f"https://docs.python.org/3/library/{module.removesuffix('.__init__')}.html"
        result = f"# {module}\n\n" + t._prose(length)
        detail = [f"URL: {url}"]
        args = {"url": url, "prompt": t._sentence()}
        provenance = {"url": url}
    elif key == "websearch":
        query = " ".join(t._sentence().split()[:8])
        result = "[Result not captured]"
        detail = [f"Query: {query}"]
        args = {"query": query}
        provenance = {"query": query}
    else:  # TodoWrite, Skill: the adapter lists their input keys; results are JSON
        todos = [
            {
                "content": t._ask()[:100],
                "status": _pick(rng, ("pending", "in_progress", "completed")),
                "activeForm": t._sentence()[:60],
            }
            for _ in range(rng.randint(1, 8))
        ]
        result = json.dumps({"todos": todos}, indent=2, ensure_ascii=False)
        args = {"todos": todos} if key == "todowrite" else {"skill": "pdf", "args": "--help"}
        detail = [f"Input keys: {', '.join(args)}"]
        provenance = {"inputKeys": list(args)}
    if failed:
        result = ""
    if claude:
        parts = [f"Tool: {tool}", *detail, result]
        if failed:
            parts.append(f"Error: {error}")
        content = "\n\n".join(p for p in parts if p)
        return content, {"toolName": tool, "hasError": failed, **provenance}
    parts = [f"Tool: {tool}", result, f"Error: {error}" if failed else ""]
    opencode: dict[str, Any] = {"toolName": tool, "args": args, "durationMs": t._duration()}
    if failed:
        opencode["error"] = error
    return "\n\n".join(p for p in parts if p), opencode


def _command(t: RealisticText) -> tuple[str, dict[str, Any]]:
    rng = t.rng
    length = t._length("command")
    command, stdout, stderr, exit_code = _pick(rng, _COMMANDS)(t, length)
    if t._session.adapter == "claude-code":
        result = stdout + (f"\n{stderr}" if stderr else "")
        content = f"Tool: Bash\n\n$ {command}\n\n{cap(result, MAX_TOOL_RESULT)}".rstrip()
        return content, {
            "toolName": "Bash",
            "hasError": exit_code != 0,
            "command": command.split()[0],
            "exitCode": exit_code,
        }
    parts = [
        f"$ {command}",
        stdout,
        f"stderr: {stderr}" if stderr else "",
        f"Exit code: {exit_code}",
    ]
    return "\n\n".join(p for p in parts if p), {
        "command": command,
        "exitCode": exit_code,
        "cwd": t._session.repo.root,
        "durationMs": t._duration(20, 600_000),
        "output": {"stdoutBytes": len(stdout.encode()), "stderrBytes": len(stderr.encode())},
    }


def _file_diff(t: RealisticText) -> tuple[str, dict[str, Any]]:
    rng = t.rng
    length = t._length("file_diff")
    count = 1 if rng.random() < 0.8 else rng.randint(2, 4)
    files = [t._pick_file(in_repo=True) for _ in range(count)]
    files = list(dict.fromkeys(files))
    diffs, added, removed = [], 0, 0
    for index in files:
        diff, plus, minus = t._diff(index, length // len(files))
        diffs.append(diff)
        added, removed = added + plus, removed + minus
    if t._session.adapter == "claude-code":
        tool = "Write" if removed == 0 and rng.random() < 0.5 else "Edit"
        action = "Created/overwrote file" if tool == "Write" else "Edited file"
        path = t._absolute(files[0])
        content = f"Tool: {tool}\n\nFile: {path}\n\nAction: {action}\n\n" + "\n".join(diffs)
        provenance: dict[str, Any] = {"toolName": tool, "hasError": False, "filePath": path}
        if tool == "Edit":
            provenance["hasOldString"] = True
        return content, provenance
    paths = [t._shown(i) for i in files]
    listed = "\n".join(f"  {p}" for p in paths)
    content = f"Modified files:\n{listed}\n\n+{added} -{removed}\n\n" + "\n".join(diffs)
    return content, {"paths": paths, "additions": added, "deletions": removed}


def _error(t: RealisticText) -> tuple[str, dict[str, Any]]:
    rng = t.rng
    name, message, text = t._traceback(t._length("error"))
    source = _pick(rng, ("tool", "runtime", "test", "lsp"))
    if source == "test":
        test = f"test_{t._name()}"
        text = f"{'_' * 20} {test} {'_' * 20}\n\n{text}\nFAILED tests/{test}.py::{test} - {message}"
    provenance: dict[str, Any] = {"source": source, "errorType": name, "hasStack": True}
    if t._session.adapter == "opencode" and rng.random() < 0.3:
        provenance["stack"] = text[-2000:]
    return text, provenance


def _node_start(t: RealisticText) -> tuple[str, dict[str, Any]]:
    rng = t.rng
    name = t._node_name()
    node_type = _pick(rng, _NODE_TYPES)
    intent = next((i for rule, i in _INTENT_RULES if rule.search(f"{name} {node_type}")), "general")
    t._node = node = _Node(name, _node_id(name), node_type, t._flow_id(), intent)
    index = t._pick_file()
    given = {"path": t._shown(index), "symbol": t._name(index), "question": t._sentence()}
    return f"Node started: {name}", {
        "nodeName": node.name,
        "nodeId": node.node_id,
        "nodeType": node.node_type,
        "flowId": node.flow_id,
        "input": _bounded(json.dumps(given)),
    }


def _current_node(t: RealisticText) -> _Node:
    if t._node is None:  # the node began before this sample's window
        name = t._node_name()
        t._node = _Node(name, _node_id(name), "llm", t._flow_id(), "general")
    return t._node


def _node_output(t: RealisticText) -> tuple[str, dict[str, Any]]:
    node = _current_node(t)
    length = t._length("node_output")
    if t.rng.random() < 0.5:
        output = t._prose(length)
    else:
        output = json.dumps({"summary": t._sentence(), "files": [t._shown(t._pick_file())]})
    return _bounded(output), {"nodeName": node.name, "nodeId": node.node_id, "status": "success"}


def _node_error(t: RealisticText) -> tuple[str, dict[str, Any]]:
    node = _current_node(t)
    t._node = None
    _, message, stack = t._traceback(t._length("error"))
    return message.split(": ", 1)[-1], {
        "nodeName": node.name,
        "nodeId": node.node_id,
        "status": "failed",
        "stack": stack,
    }


def _node_end(t: RealisticText) -> tuple[str, dict[str, Any]]:
    rng = t.rng
    if t._node is None and t._session.adapter == "claude-code" and rng.random() < 0.5:
        agent_type = _pick(rng, _SUBAGENTS)
        output = cap(t._prose(t._length("node_end")), MAX_SUBAGENT_OUTPUT)
        content = f"Subagent: {agent_type}\n\nOutput:\n{output}"
        return content, {"agentType": agent_type, "hasOutput": True, "outputLength": len(output)}
    node = _current_node(t)
    t._node = None
    status = "failed" if rng.random() < 0.1 else "success"
    return f"Node {status}: {node.name}", {
        "nodeName": node.name,
        "nodeId": node.node_id,
        "status": status,
    }


_BUILDERS: dict[str, Callable[[RealisticText], tuple[str, dict[str, Any]]]] = {
    "message": _message,
    "tool_call": _tool_call,
    "command": _command,
    "file_diff": _file_diff,
    "error": _error,
    "node_start": _node_start,
    "node_end": _node_end,
    "node_output": _node_output,
    "node_error": _node_error,
}


# commands: each (command line, stdout, stderr, exit code) ---------------------------------

_CommandResult = tuple[str, str, str, int]


def _cmd_show(t: RealisticText, length: int) -> _CommandResult:
    index, first, count, text = t._excerpt(length, numbered=False)
    path = t._shown(index)
    command = _pick(
        t.rng,
        (f"sed -n '{first},{first + count - 1}p' {path}", f"cat {path}", f"head -n {count} {path}"),
    )
    return command, text, "", 0


def _cmd_grep(t: RealisticText, length: int) -> _CommandResult:
    pattern, folder, hits = t._grep(length)
    return f'grep -rn "{pattern}" {folder}', hits, "", 0 if hits else 1


def _cmd_git_log(t: RealisticText, length: int) -> _CommandResult:
    """A window of the repository's one history: a commit has the same id and subject in every
    log that shows it, as in a real repository."""
    repo = t._session.repo
    lines = []
    total = 0
    commit = t._session.head - _pick(t.rng, (0, 0, 0, 1, 2, 5, 20))
    while total < length and commit > 0:
        line = f"{_hash(repo.name, commit)} {t._commit_subject(repo, commit)}"
        lines.append(line)
        total += len(line) + 1
        commit -= 1
    return f"git log --oneline -n {len(lines)}", "\n".join(lines), "", 0


def _cmd_git_status(t: RealisticText, length: int) -> _CommandResult:
    rng = t.rng
    files = t._session.working
    lines = [f"On branch {_pick(rng, ('main', 'fix/' + t._name(), 'feature/' + t._name()))}"]
    lines.append("Changes not staged for commit:")
    lines += [f"\tmodified:   {t._shown(i)}" for i in files[: rng.randint(1, len(files))]]
    if rng.random() < 0.5:
        lines += ["", "Untracked files:", f"\ttests/test_{t._name()}.py"]
    stat = [f" {t._shown(i)} | {rng.randint(1, 90)} {'+' * rng.randint(1, 20)}" for i in files]
    if rng.random() < 0.5:
        return "git status", "\n".join(lines), "", 0
    return "git diff --stat", "\n".join(stat), "", 0


def _cmd_ls(t: RealisticText, length: int) -> _CommandResult:
    rng, corpus = t.rng, t.corpus
    repo = t._session.repo
    month = _pick(rng, calendar.month_abbr[1:])
    rows = [f"total {sum(corpus.sizes[i] for i in repo.files) // 1024}"]
    for index in repo.files[: max(3, length // 70)]:
        day, hour = rng.randint(1, 28), rng.randint(0, 23)
        name = corpus.paths[index].rsplit("/", 1)[-1]
        size = corpus.sizes[index]
        rows.append(
            f"-rw-r--r-- 1 {repo.owner} staff {size:>7} {month} {day:>2} {hour:02}:14 {name}"
        )
    return f"ls -la {t._shown(repo.files[0]).rsplit('/', 1)[0]}", "\n".join(rows), "", 0


def _cmd_wc(t: RealisticText, length: int) -> _CommandResult:
    files = t._session.working
    counts = [(len(t.corpus.file(i).lines), t._shown(i)) for i in files]
    rows = [f"{n:>6} {p}" for n, p in counts] + [f"{sum(n for n, _ in counts):>6} total"]
    return "wc -l " + " ".join(p for _, p in counts), "\n".join(rows), "", 0


def _cmd_pytest(t: RealisticText, length: int) -> _CommandResult:
    rng = t.rng
    passed, failed = rng.randint(5, 1500), _pick(rng, (0, 0, 0, 1, 2, 5))
    seconds = round(rng.uniform(0.2, 240.0), 2)
    lines = []
    for index in t._session.working:
        module = t.corpus.paths[index].rsplit("/", 1)[-1].removesuffix(".py").strip("_")
        lines.append(f"tests/test_{module}.py {'.' * rng.randint(1, 60)}")
    stdout = "\n".join(lines)
    module = lines[-1].split(".py", 1)[0].removeprefix("tests/test_")
    if failed:
        _, message, text = t._traceback(length)
        test = f"test_{t._name()}"
        stdout += f"\n\n{'=' * 30} FAILURES {'=' * 30}\n{'_' * 20} {test} {'_' * 20}\n\n{text}"
        stdout += f"\nFAILED tests/test_{module}.py::{test} - {message}"
    summary = f"{failed} failed, {passed} passed" if failed else f"{passed} passed"
    stdout += f"\n{'=' * 20} {summary} in {seconds}s {'=' * 20}"
    return "python -m pytest -q tests/", stdout, "", 1 if failed else 0


def _cmd_help(t: RealisticText, length: int) -> _CommandResult:
    index = t._pick_file()
    source = t.corpus.file(index)
    module = t.corpus.paths[index].removesuffix(".py").replace("/", ".").removesuffix(".__init__")
    found = t._a_def(source)
    if not found:
        return f"python -c 'import {module}'", "", "", 0
    at, what, name = found
    signature = source.lines[at].strip().removeprefix("async ").removesuffix(":")
    body = t._prose(length) if source.prose else ""
    what = "class" if what == "class" else "function"
    help_text = f"Help on {what} {name} in module {module}:\n\n{signature}\n"
    help_text += textwrap.indent(body, "    ")
    return f'python -c "import {module}; help({module}.{name})"', help_text, "", 0


def _cmd_lint(t: RealisticText, length: int) -> _CommandResult:
    rng = t.rng
    found = []
    total = 0
    for index in t._session.working:
        source = t.corpus.file(index)
        for at in source.long_lines:
            width = len(source.lines[at])
            hit = f"{t._shown(index)}:{at + 1}:89: E501 Line too long ({width} > 88)"
            found.append(hit)
            total += len(hit)
            if total > length:
                break
        if total > length:
            break
    if rng.random() < 0.5:
        summary = f"Found {len(found)} errors." if found else "All checks passed!"
        return "ruff check .", "\n".join([*found, summary]), "", 1 if found else 0
    count = len(t._session.working)
    if not found:
        return "mypy --strict src", f"Success: no issues found in {count} source files", "", 0
    errors = [
        f"{hit.split(':', 2)[0]}:{hit.split(':', 2)[1]}: error: Function is missing a type "
        f"annotation  [no-untyped-def]\n    def {t._name()}(...)"
        for hit in found[: max(1, length // 120)]
    ]
    tail = f"Found {len(errors)} errors in {count} files (checked {count} source files)"
    return "mypy --strict src", "\n".join([*errors, tail]), "", 1


def _cmd_run(t: RealisticText, length: int) -> _CommandResult:
    _, _, text = t._traceback(length)
    index = t._pick_file()
    return f"python {t._shown(index)}", "", text, 1


def _cmd_missing(t: RealisticText, length: int) -> _CommandResult:
    tool = _pick(t.rng, ("pnpm", "cargo", "uv", "poetry", "bazel"))
    return f"{tool} test", "", f"bash: line 1: {tool}: command not found", 127


_COMMANDS: tuple[Callable[[RealisticText, int], _CommandResult], ...] = (
    _cmd_show,
    _cmd_show,
    _cmd_grep,
    _cmd_grep,
    _cmd_git_log,
    _cmd_git_status,
    _cmd_ls,
    _cmd_wc,
    _cmd_pytest,
    _cmd_pytest,
    _cmd_help,
    _cmd_lint,
    _cmd_run,
    _cmd_missing,
)
