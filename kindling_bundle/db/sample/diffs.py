"""Diffs as git shows them: edits to real files (renames, moves, new lines, deletions) written
as unified diffs with git's headers and the enclosing def after each hunk."""

from __future__ import annotations

import bisect
import difflib
import hashlib
import re
import textwrap

from kindling_bundle.db.sample.choices import Chooser, pick
from kindling_bundle.db.sample.corpus import SourceFile

_IDENT = re.compile(r"\b[a-z_][a-z0-9_]{3,}\b")
_RENAMES = ("cached", "checked", "safe", "v2", "impl", "inner", "fast", "raw", "new", "old")


def unified_diff(t: Chooser, index: int, length: int) -> tuple[str, int, int]:
    """A unified diff (difflib's, with git's headers) of an edit to a real file."""
    rng, source = t.rng, t.corpus.file(index)
    lines = source.lines
    shown = t.shown(index)
    if len(lines) < 8 or rng.random() < 0.06:  # a new file
        start, end = t.span(source, length)
        body = [f"+{line}" for line in lines[start:end]]
        head = f"diff --git a/{shown} b/{shown}\nnew file mode 100644\n"
        head += f"index 0000000..{git_id(shown, 0)}\n--- /dev/null\n+++ b/{shown}\n"
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
        replacement = _edit(t, source, site, stop)
        lo, hi = max(0, site - 3), min(len(lines), stop + 3)
        old = lines[lo:hi]
        new = lines[lo:site] + replacement + lines[stop:hi]
        matcher = difflib.SequenceMatcher(None, old, new, autojunk=False)
        for group in matcher.get_grouped_opcodes(3):
            a0, a1 = group[0][1], group[-1][2]
            b0, b1 = group[0][3], group[-1][4]
            context = _enclosing(source, lo + a0)
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
    blobs = f"{git_id(shown, version)}..{git_id(shown, version + 1)}"
    head = f"diff --git a/{shown} b/{shown}\nindex {blobs} 100644\n"
    return head + f"--- a/{shown}\n+++ b/{shown}\n" + "\n".join(hunks), added, removed


def _edit(t: Chooser, source: SourceFile, start: int, stop: int) -> list[str]:
    """What an agent writes in place of lines [start, stop): renamed, moved, new or none."""
    rng = t.rng
    old = source.lines[start:stop]
    roll = rng.random()
    if roll < 0.35:
        names = _IDENT.findall("\n".join(old))
        if names:
            name = pick(rng, names)
            renamed = f"{name}_{pick(rng, _RENAMES)}"
            return [line.replace(name, renamed) for line in old]
    if roll < 0.55:
        return []
    indent = old[0][: len(old[0]) - len(old[0].lstrip())] if old else ""
    if roll < 0.8:
        at, to = t.span(source, rng.randint(60, 600))
        moved = textwrap.dedent("\n".join(source.lines[at:to])).split("\n")
        return old + [indent + line if line else "" for line in moved]
    comment = textwrap.wrap(t.sentence(), 76 - len(indent))
    return [f"{indent}# {line}" for line in comment] + old


def _enclosing(source: SourceFile, line: int) -> str:
    """The def or class line git shows after a hunk's header: the last one above the hunk."""
    at = bisect.bisect_left(source.def_lines, line) - 1
    return source.lines[source.defs[at][0]].strip()[:80] if at >= 0 else ""


def git_id(name: str, version: int) -> str:
    """A short git id for (name, version): the same everywhere, as a real id is."""
    return hashlib.sha1(f"{name}@{version}".encode()).hexdigest()[:7]


def _range(start: int, length: int) -> str:
    """A unified diff's line range (1-based), as difflib writes it."""
    if length == 1:
        return f"{start + 1}"
    return f"{start if length == 0 else start + 1},{length}"
