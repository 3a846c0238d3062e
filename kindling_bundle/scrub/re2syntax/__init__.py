"""Translate Go (RE2) regular expressions, as gitleaks-format rule files hold them, to Python `re`.

The syntaxes differ where it matters: Go allows `(?i)` anywhere and scopes it to the enclosing
group, spells end of text `\\z`, has POSIX classes (`[[:alpha:]]`), `\\Q...\\E` quoting, the `U`
(ungreedy) flag and ASCII-only `\\d \\s \\w`. We parse the Go syntax and write Python that spells
every flag out (a case-insensitive letter becomes `[aA]`, `.` under `s` becomes a class), so the
result needs no inline flags and means what the rule's author meant in Go.

What RE2 itself refuses (lookaround, backreferences, possessive or nested repetition) is refused
here too: a rule file that loads for us then also loads in gitleaks, and a rule cannot backtrack
without bound through a backreference.

A pattern whose meaning does not depend on letter case (all its letters are case-insensitive,
or its classes hold both cases) also gets a "folded" form to run on lower-cased text: there,
literal letters stay literals, which `re` finds far faster than `[aA]` classes.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

from kindling_bundle.scrub.re2syntax.charsets import emit_class, normalize, subtract
from kindling_bundle.scrub.re2syntax.parser import (
    CharSet,
    Group,
    Node,
    Parser,
    PatternError,
    Repeat,
    Text,
)

__all__ = ["PatternError", "Translation", "translate"]


@dataclass(frozen=True)
class Translation:
    """A Go pattern rewritten for Python `re` (compile with re.ASCII for Go's ASCII `\\b`)."""

    pattern: str
    folded: str | None
    """The same pattern for lower-cased text, or None when its meaning depends on case."""
    groups: int


# --- emission -------------------------------------------------------------------------------


def _emit(node: Node, folded: bool) -> str:
    if isinstance(node, CharSet):
        if folded:
            # The set holds both cases of its letters; on lower-cased text a letter such as
            # [kK] is written as the literal k, which `re` searches for much faster.
            lower_only = normalize(subtract(node.ranges, (0x41, 0x5A)))
            if len(lower_only) == 1 and lower_only[0][0] == lower_only[0][1]:
                return emit_class(lower_only)
        return emit_class(node.ranges)
    if isinstance(node, Text):
        return node.python
    if isinstance(node, Group):
        inner = "|".join("".join(_emit(n, folded) for n in b) for b in node.body.branches)
        if node.kind == "named":
            return f"(?P<{node.name}>{inner})"
        return f"({inner})" if node.kind == "capture" else f"(?:{inner})"
    if isinstance(node, Repeat):
        inner = _emit(node.node, folded)
        single = isinstance(node.node, CharSet) and (
            inner.startswith("[") or len(inner) == 1 or (len(inner) == 2 and inner[0] == "\\")
        )
        if not (single or isinstance(node.node, Group)):
            inner = f"(?:{inner})"
        lo, hi = node.lo, node.hi
        ops = {(0, None): "*", (1, None): "+", (0, 1): "?"}
        if (lo, hi) in ops:
            op = ops[(lo, hi)]
        elif hi is None:
            op = f"{{{lo},}}"
        elif lo == hi:
            op = f"{{{lo}}}"
        else:
            op = f"{{{lo},{hi}}}"
        return inner + op + ("" if node.greedy else "?")
    parts = ["".join(_emit(n, folded) for n in branch) for branch in node.branches]
    return parts[0] if len(parts) == 1 else "(?:" + "|".join(parts) + ")"


def _literal(node: Node, folded: bool) -> str | None:
    """The node as one escaped character, if it matches exactly one (in this form)."""
    if not isinstance(node, CharSet):
        return None
    text = _emit(node, folded)
    return text if len(text) == 1 or (len(text) == 2 and text[0] == "\\") else None


def _emit_branch(branch: list[Node], folded: bool) -> str:
    """One top-level alternative; a leading `\\b` + literal run moves behind the run.

    `re` searches quickly only for patterns that start with a literal: `\\bghp_` is tried at
    every position, `ghp_(?<=\\bghp_)` (the same matches) jumps from one "ghp_" to the next.
    """
    if len(branch) > 1 and isinstance(branch[0], Text) and branch[0].python == "\\b":
        run = []
        for node in branch[1:]:
            lit = _literal(node, folded)
            if lit is None:
                break
            run.append(lit)
        if run:
            head = "".join(run)
            rest = "".join(_emit(n, folded) for n in branch[1 + len(run) :])
            return f"{head}(?<=\\b{head}){rest}"
    return "".join(_emit(n, folded) for n in branch)


def translate(go_pattern: str) -> Translation:
    """Rewrite one Go pattern for Python; PatternError says why it cannot be."""
    parser = Parser(go_pattern)
    tree = parser.parse()
    top = "|".join(_emit_branch(b, False) for b in tree.branches)
    folded = None
    if parser.case_invariant:
        folded = "|".join(_emit_branch(b, True) for b in tree.branches)
    for text in (top, folded):
        if text is not None:
            try:
                re.compile(text, re.ASCII)
            except re.error as exc:  # a construct we translated wrongly: say so, do not crash
                raise PatternError(f"cannot be translated ({exc})") from None
    return Translation(top, folded, parser.groups)
