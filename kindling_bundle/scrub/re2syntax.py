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

MAX_CODEPOINT = 0x10FFFF
_REPEAT_LIMIT = 1000  # RE2's own limit on {n,m}
_Ranges = list[tuple[int, int]]


class PatternError(ValueError):
    """A Go pattern we cannot translate; the message says what and where (offset in the pattern)."""


@dataclass(frozen=True)
class Translation:
    """A Go pattern rewritten for Python `re` (compile with re.ASCII for Go's ASCII `\\b`)."""

    pattern: str
    folded: str | None
    """The same pattern for lower-cased text, or None when its meaning depends on case."""
    groups: int


# --- character sets as sorted, disjoint (lo, hi) ranges ------------------------------------


def _normalize(ranges: _Ranges) -> _Ranges:
    out: _Ranges = []
    for lo, hi in sorted(ranges):
        if out and lo <= out[-1][1] + 1:
            if hi > out[-1][1]:
                out[-1] = (out[-1][0], hi)
        else:
            out.append((lo, hi))
    return out


def _negate(ranges: _Ranges) -> _Ranges:
    out: _Ranges = []
    nxt = 0
    for lo, hi in _normalize(ranges):
        if lo > nxt:
            out.append((nxt, lo - 1))
        nxt = hi + 1
    if nxt <= MAX_CODEPOINT:
        out.append((nxt, MAX_CODEPOINT))
    return out


def _fold(ranges: _Ranges) -> _Ranges:
    """Add the other case of every letter in the set (ASCII by range, others one by one)."""
    extra: _Ranges = []
    for lo, hi in ranges:
        for a, b, delta in ((0x41, 0x5A, 32), (0x61, 0x7A, -32)):
            s, e = max(lo, a), min(hi, b)
            if s <= e:
                extra.append((s + delta, e + delta))
        if hi - lo < 512:
            for cp in range(max(lo, 0x80), hi + 1):
                for other in (chr(cp).lower(), chr(cp).upper()):
                    if len(other) == 1 and other != chr(cp):
                        extra.append((ord(other), ord(other)))
    return _normalize(ranges + extra)


def _case_closed(ranges: _Ranges) -> bool:
    return _normalize(ranges) == _fold(ranges)


_DIGIT: _Ranges = [(0x30, 0x39)]
_WORD: _Ranges = [(0x30, 0x39), (0x41, 0x5A), (0x5F, 0x5F), (0x61, 0x7A)]
_SPACE: _Ranges = [(0x09, 0x0A), (0x0C, 0x0D), (0x20, 0x20)]  # Go's \s: no \v
_PERL = {"d": _DIGIT, "w": _WORD, "s": _SPACE}
_POSIX: dict[str, _Ranges] = {
    "alnum": [(0x30, 0x39), (0x41, 0x5A), (0x61, 0x7A)],
    "alpha": [(0x41, 0x5A), (0x61, 0x7A)],
    "ascii": [(0x00, 0x7F)],
    "blank": [(0x09, 0x09), (0x20, 0x20)],
    "cntrl": [(0x00, 0x1F), (0x7F, 0x7F)],
    "digit": _DIGIT,
    "graph": [(0x21, 0x7E)],
    "lower": [(0x61, 0x7A)],
    "print": [(0x20, 0x7E)],
    "punct": [(0x21, 0x2F), (0x3A, 0x40), (0x5B, 0x60), (0x7B, 0x7E)],
    "space": [(0x09, 0x0D), (0x20, 0x20)],
    "upper": [(0x41, 0x5A)],
    "word": _WORD,
    "xdigit": [(0x30, 0x39), (0x41, 0x46), (0x61, 0x66)],
}
_SIMPLE_ESCAPES = {"a": 7, "f": 12, "t": 9, "n": 10, "r": 13, "v": 11}
_META = set("\\.+*?()|[]{}^$")


def _class_char(cp: int) -> str:
    ch = chr(cp)
    if ch in "\\]-^[":
        return "\\" + ch
    if cp < 0x20 or cp == 0x7F:
        return f"\\x{cp:02x}"
    if 0xD800 <= cp <= 0xDFFF or cp > 0xFFFF:
        return f"\\U{cp:08x}" if cp > 0xFFFF else f"\\u{cp:04x}"
    return ch


def _emit_class(ranges: _Ranges) -> str:
    ranges = _normalize(ranges)
    if not ranges:
        return "(?!)"  # an empty class matches nothing, as in Go
    if ranges == [(0, MAX_CODEPOINT)]:
        return "[\\s\\S]"
    if len(ranges) == 1 and ranges[0][0] == ranges[0][1]:
        return re.escape(chr(ranges[0][0])) if ranges[0][0] >= 0x20 else _class_char(ranges[0][0])
    neg = _negate(ranges)
    body, prefix = (neg, "[^") if len(neg) < len(ranges) else (ranges, "[")
    parts = []
    for lo, hi in body:
        if lo == hi:
            parts.append(_class_char(lo))
        elif hi == lo + 1:
            parts.append(_class_char(lo) + _class_char(hi))
        else:
            parts.append(f"{_class_char(lo)}-{_class_char(hi)}")
    return prefix + "".join(parts) + "]"


# --- parse tree -----------------------------------------------------------------------------


@dataclass
class _Set:
    ranges: _Ranges  # already folded when case-insensitive


@dataclass
class _Text:
    python: str  # anchors, \b, \B: the same in both forms


@dataclass
class _Group:
    kind: str  # "capture", "named", "plain"
    name: str | None
    body: _Alt


@dataclass
class _Repeat:
    node: _Node
    lo: int
    hi: int | None
    greedy: bool


@dataclass
class _Alt:
    branches: list[list[_Node]]


_Node = _Set | _Text | _Group | _Repeat | _Alt


@dataclass
class _Flags:
    i: bool = False
    m: bool = False
    s: bool = False
    u: bool = False  # Go's U: swap greedy and lazy


class _Parser:
    def __init__(self, src: str):
        self.src = src
        self.pos = 0
        self.groups = 0
        self.names: set[str] = set()
        self.case_invariant = True

    def fail(self, message: str, at: int | None = None) -> PatternError:
        return PatternError(f"{message} at offset {self.pos if at is None else at}")

    def peek(self, n: int = 0) -> str:
        i = self.pos + n
        return self.src[i] if i < len(self.src) else ""

    def parse(self) -> _Alt:
        alt = self.alternation(_Flags(), top=True)
        if self.pos < len(self.src):
            raise self.fail("unexpected )")
        return alt

    def alternation(self, flags: _Flags, *, top: bool = False) -> _Alt:
        branches: list[list[_Node]] = [[]]
        while self.pos < len(self.src):
            ch = self.src[self.pos]
            if ch == "|":
                self.pos += 1
                branches.append([])
            elif ch == ")":
                if top:
                    raise self.fail("unexpected )")
                break
            else:
                self.item(flags, branches[-1])
        return _Alt(branches)

    def item(self, flags: _Flags, seq: list[_Node]) -> None:
        start = self.pos
        ch = self.src[self.pos]
        if ch in "*+?{":
            if ch == "{" and self.repeat_bounds() is None:
                self.pos += 1
                seq.append(self.literal(ord("{"), flags))
                return
            if not seq:
                raise self.fail(f"missing argument to repetition operator {ch!r}")
            if isinstance(seq[-1], _Repeat):
                raise self.fail("nested repetition operator (RE2 refuses it)")
            lo, hi = self.repetition()
            greedy = True
            if self.peek() == "?":
                self.pos += 1
                greedy = False
            if flags.u:
                greedy = not greedy
            seq.append(_Repeat(seq.pop(), lo, hi, greedy))
            if self.peek() in ("*", "+", "?") or (self.peek() == "{" and self.repeat_bounds()):
                raise self.fail("nested repetition operator (RE2 refuses it)")
            return
        if ch == "(":
            self.group(flags, seq)
            return
        self.pos += 1
        if ch == ".":
            ranges = [(0, MAX_CODEPOINT)] if flags.s else [(0, 9), (11, MAX_CODEPOINT)]
            seq.append(_Set(ranges))
        elif ch == "^":
            seq.append(_Text("(?m:^)" if flags.m else "\\A"))
        elif ch == "$":
            seq.append(_Text("(?m:$)" if flags.m else "\\Z"))
        elif ch == "[":
            seq.append(self.char_class(flags))
        elif ch == "\\":
            self.escape(flags, seq, start)
        else:
            seq.append(self.literal(ord(ch), flags))

    def literal(self, cp: int, flags: _Flags) -> _Set:
        ranges = [(cp, cp)]
        if flags.i:
            return _Set(_fold(ranges))
        if not _case_closed(ranges):
            self.case_invariant = False
        return _Set(ranges)

    def class_set(self, ranges: _Ranges, flags: _Flags) -> _Set:
        if flags.i:
            return _Set(_fold(ranges))
        if not _case_closed(ranges):
            self.case_invariant = False
        return _Set(_normalize(ranges))

    def repeat_bounds(self) -> tuple[int, int | None] | None:
        m = re.compile(r"\{(\d+)(,(\d*))?\}").match(self.src, self.pos)
        if not m:
            return None
        lo = int(m.group(1))
        hi: int | None = lo if m.group(2) is None else (int(m.group(3)) if m.group(3) else None)
        return lo, hi

    def repetition(self) -> tuple[int, int | None]:
        ch = self.src[self.pos]
        if ch != "{":
            self.pos += 1
            return {"*": (0, None), "+": (1, None), "?": (0, 1)}[ch]
        bounds = self.repeat_bounds()
        assert bounds is not None
        lo, hi = bounds
        if lo > _REPEAT_LIMIT or (hi is not None and (hi > _REPEAT_LIMIT or hi < lo)):
            raise self.fail(f"invalid repeat count {{{lo},{'' if hi is None else hi}}}")
        self.pos = self.src.index("}", self.pos) + 1
        return lo, hi

    def group(self, flags: _Flags, seq: list[_Node]) -> None:
        start = self.pos
        self.pos += 1
        kind, name = "capture", None
        if self.peek() == "?":
            rest = self.src[self.pos + 1 :]
            if rest.startswith(("=", "!", "<=", "<!")):
                raise self.fail("lookahead and lookbehind are not RE2 syntax", start)
            if rest.startswith(("P<", "<")):
                self.pos += 3 if rest.startswith("P<") else 2
                end = self.src.find(">", self.pos)
                name = self.src[self.pos : end] if end >= 0 else ""
                if end < 0 or not re.fullmatch(r"[A-Za-z_][A-Za-z0-9_]*", name):
                    raise self.fail(f"invalid capture group name {name!r}", start)
                if name in self.names:
                    raise self.fail(f"duplicate capture group name {name!r}", start)
                self.names.add(name)
                self.pos = end + 1
                kind = "named"
            elif rest.startswith("P="):
                raise self.fail("backreferences are not RE2 syntax", start)
            else:
                m = re.compile(r"\?([imsU]*)(?:-([imsU]*))?([:)])").match(self.src, self.pos)
                if not m or (m.group(2) is not None and not m.group(2)):
                    raise self.fail("unknown group flags or syntax", start)
                new = _Flags(flags.i, flags.m, flags.s, flags.u)
                for letters, value in ((m.group(1), True), (m.group(2) or "", False)):
                    for letter in letters:
                        setattr(new, letter.lower(), value)
                self.pos = m.end()
                if m.group(3) == ")":
                    # (?flags) holds until the end of the enclosing group, as in Go.
                    flags.i, flags.m, flags.s, flags.u = new.i, new.m, new.s, new.u
                    return
                body = self.alternation(new)
                self.close(start)
                seq.append(_Group("plain", None, body))
                return
        if kind == "capture" or kind == "named":
            self.groups += 1
        body = self.alternation(_Flags(flags.i, flags.m, flags.s, flags.u))
        self.close(start)
        seq.append(_Group(kind, name, body))

    def close(self, start: int) -> None:
        if self.peek() != ")":
            raise self.fail("missing closing )", start)
        self.pos += 1

    def escape(self, flags: _Flags, seq: list[_Node], start: int) -> None:
        ch = self.peek()
        if not ch:
            raise self.fail("trailing backslash", start)
        if ch == "Q":
            end = self.src.find("\\E", self.pos + 1)
            text = self.src[self.pos + 1 : end if end >= 0 else len(self.src)]
            self.pos = end + 2 if end >= 0 else len(self.src)
            seq.extend(self.literal(ord(c), flags) for c in text)
            return
        anchors = {"b": "\\b", "B": "\\B", "A": "\\A", "z": "\\Z"}
        if ch in anchors:
            self.pos += 1
            seq.append(_Text(anchors[ch]))
            return
        if ch.lower() in _PERL:
            self.pos += 1
            ranges = _PERL[ch.lower()]
            seq.append(self.class_set(_negate(ranges) if ch.isupper() else ranges, flags))
            return
        seq.append(self.literal(self.escaped_char(start), flags))

    def escaped_char(self, start: int) -> int:
        """The code point of an escape that stands for one character (self.pos after the \\)."""
        ch = self.peek()
        self.pos += 1
        if ch in _SIMPLE_ESCAPES:
            return _SIMPLE_ESCAPES[ch]
        if ch == "x":
            m = re.compile(r"\{([0-9A-Fa-f]{1,6})\}|([0-9A-Fa-f]{2})").match(self.src, self.pos)
            if not m:
                raise self.fail("invalid \\x escape", start)
            self.pos = m.end()
            cp = int(m.group(1) or m.group(2), 16)
            if cp > MAX_CODEPOINT:
                raise self.fail("invalid \\x escape", start)
            return cp
        if ch in "01234567":
            m = re.compile(r"[0-7]{0,2}").match(self.src, self.pos)
            assert m is not None
            if ch != "0" and not m.group():
                raise self.fail("backreferences are not RE2 syntax", start)
            self.pos = m.end()
            return int(ch + m.group(), 8)
        if ch in ("p", "P"):
            raise self.fail("Unicode classes (\\p, \\P) are not supported", start)
        if ch in "89":
            raise self.fail("backreferences are not RE2 syntax", start)
        if ch == "C":
            raise self.fail("\\C (any byte) is not supported", start)
        if ch.isascii() and ch.isalnum():
            raise self.fail(f"invalid escape \\{ch}", start)
        return ord(ch)

    def char_class(self, flags: _Flags) -> _Set:
        start = self.pos - 1
        negated = self.peek() == "^"
        if negated:
            self.pos += 1
        ranges: _Ranges = []
        first = True
        while True:
            ch = self.peek()
            if not ch:
                raise self.fail("missing closing ]", start)
            if ch == "]" and not first:
                self.pos += 1
                break
            first = False
            if ch == "[" and self.peek(1) == ":":
                m = re.compile(r"\[:(\^?)([a-z]+):\]").match(self.src, self.pos)
                if m:
                    if m.group(2) not in _POSIX:
                        raise self.fail(f"invalid character class [:{m.group(2)}:]", start)
                    cls = _POSIX[m.group(2)]
                    ranges += _negate(cls) if m.group(1) else cls
                    self.pos = m.end()
                    continue
            if ch == "\\" and self.peek(1).lower() in _PERL:
                letter = self.peek(1)
                cls = _PERL[letter.lower()]
                ranges += _negate(cls) if letter.isupper() else cls
                self.pos += 2
                continue
            lo = self.class_atom(start)
            hi = lo
            if self.peek() == "-" and self.peek(1) not in ("]", ""):
                self.pos += 1
                hi = self.class_atom(start)
                if hi < lo:
                    raise self.fail("invalid character class range", start)
            ranges.append((lo, hi))
        if flags.i:
            ranges = _fold(ranges)  # Go folds the class first, then negates it
        return self.class_set(_negate(ranges) if negated else ranges, flags)

    def class_atom(self, start: int) -> int:
        ch = self.peek()
        if ch == "\\":
            self.pos += 1
            nxt = self.peek()
            if not nxt:
                raise self.fail("trailing backslash", start)
            if nxt in "bBAzQ" or nxt.lower() in _PERL:
                raise self.fail(f"invalid escape \\{nxt} in character class", start)
            return self.escaped_char(start)
        self.pos += 1
        return ord(ch)


# --- emission -------------------------------------------------------------------------------


def _emit(node: _Node, folded: bool) -> str:
    if isinstance(node, _Set):
        if folded:
            # The set holds both cases of its letters; on lower-cased text a letter such as
            # [kK] is written as the literal k, which `re` searches for much faster.
            lower_only = _normalize(_subtract(node.ranges, (0x41, 0x5A)))
            if len(lower_only) == 1 and lower_only[0][0] == lower_only[0][1]:
                return _emit_class(lower_only)
        return _emit_class(node.ranges)
    if isinstance(node, _Text):
        return node.python
    if isinstance(node, _Group):
        inner = "|".join("".join(_emit(n, folded) for n in b) for b in node.body.branches)
        if node.kind == "named":
            return f"(?P<{node.name}>{inner})"
        return f"({inner})" if node.kind == "capture" else f"(?:{inner})"
    if isinstance(node, _Repeat):
        inner = _emit(node.node, folded)
        single = isinstance(node.node, _Set) and (
            inner.startswith("[") or len(inner) == 1 or (len(inner) == 2 and inner[0] == "\\")
        )
        if not (single or isinstance(node.node, _Group)):
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


def _subtract(ranges: _Ranges, hole: tuple[int, int]) -> _Ranges:
    out: _Ranges = []
    for lo, hi in ranges:
        if hi < hole[0] or lo > hole[1]:
            out.append((lo, hi))
            continue
        if lo < hole[0]:
            out.append((lo, hole[0] - 1))
        if hi > hole[1]:
            out.append((hole[1] + 1, hi))
    return out


def _literal(node: _Node, folded: bool) -> str | None:
    """The node as one escaped character, if it matches exactly one (in this form)."""
    if not isinstance(node, _Set):
        return None
    text = _emit(node, folded)
    return text if len(text) == 1 or (len(text) == 2 and text[0] == "\\") else None


def _emit_branch(branch: list[_Node], folded: bool) -> str:
    """One top-level alternative; a leading `\\b` + literal run moves behind the run.

    `re` searches quickly only for patterns that start with a literal: `\\bghp_` is tried at
    every position, `ghp_(?<=\\bghp_)` (the same matches) jumps from one "ghp_" to the next.
    """
    if len(branch) > 1 and isinstance(branch[0], _Text) and branch[0].python == "\\b":
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
    parser = _Parser(go_pattern)
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
