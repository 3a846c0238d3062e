"""The standard library's Python sources as the sample's corpus: listed once, read file by file.

Each package (or run of top-level modules) becomes a repository of the sample; each file is read
on first use and analysed once: its lines, where they start, its defs and classes, its docstring
paragraphs and its long lines.
"""

from __future__ import annotations

import functools
import importlib
import itertools
import os
import re
import sys
import sysconfig
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path

from kindling_bundle.errors import KindlingBundleError

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
SHOWN_STDLIB = f"/usr/lib/python{sys.version_info[0]}.{sys.version_info[1]}"
"""Where library files appear to live in the text, whatever the real prefix of this Python."""

DEF = re.compile(r"^(\s*)(?:async\s+)?(def|class)\s+([A-Za-z_]\w*)")
_DOCSTRING = re.compile(r'^[ \t]*[rRuU]?(?:"""(.*?)"""|\'\'\'(.*?)\'\'\')', re.S | re.M)
_WORDY = re.compile(r"[A-Za-z]{3,}")

USERS = ("alice", "bob", "chen", "dana", "emeka", "farah", "gus", "hiro", "ines", "jonas")
"""The sample's people: they own its repositories and appear as its users."""


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
            if ("def " in line or "class " in line) and (match := DEF.match(line)):
                defs.append((i, match[2], match[3]))
        prose = _paragraphs(match[1] or match[2] or "" for match in _DOCSTRING.finditer(text))
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
    return _paragraphs(str(page) for page in topics.values())


def _paragraphs(texts: Iterable[str]) -> list[str]:
    """The paragraphs of `texts` that read as prose, whitespace folded: long and wordy enough."""
    paragraphs = []
    for text in texts:
        for paragraph in text.split("\n\n"):
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
        Repo(name.strip("_"), USERS[i % len(USERS)], files) for i, (name, files) in enumerate(named)
    ]


@functools.cache
def stdlib_corpus() -> Corpus:
    """The corpus of this Python's standard library, one per process."""
    return Corpus(Path(sysconfig.get_paths()["stdlib"]))
