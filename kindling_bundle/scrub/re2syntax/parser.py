"""Go's (RE2's) pattern syntax parsed into a small tree, with Go's flags applied as it is read,
so that what is emitted needs no inline flags."""

from __future__ import annotations

import re
from dataclasses import dataclass

from kindling_bundle.scrub.re2syntax.charsets import (
    MAX_CODEPOINT,
    PERL,
    POSIX,
    SIMPLE_ESCAPES,
    Ranges,
    case_closed,
    fold,
    negate,
    normalize,
)

_REPEAT_LIMIT = 1000  # RE2's own limit on {n,m}


class PatternError(ValueError):
    """A Go pattern we cannot translate; the message says what and where (offset in the pattern)."""


@dataclass
class CharSet:
    ranges: Ranges  # already folded when case-insensitive


@dataclass
class Text:
    python: str  # anchors, \b, \B: the same in both forms


@dataclass
class Group:
    kind: str  # "capture", "named", "plain"
    name: str | None
    body: Alt


@dataclass
class Repeat:
    node: Node
    lo: int
    hi: int | None
    greedy: bool


@dataclass
class Alt:
    branches: list[list[Node]]


Node = CharSet | Text | Group | Repeat | Alt


@dataclass
class Flags:
    i: bool = False
    m: bool = False
    s: bool = False
    u: bool = False  # Go's U: swap greedy and lazy


class Parser:
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

    def parse(self) -> Alt:
        alt = self.alternation(Flags(), top=True)
        if self.pos < len(self.src):
            raise self.fail("unexpected )")
        return alt

    def alternation(self, flags: Flags, *, top: bool = False) -> Alt:
        branches: list[list[Node]] = [[]]
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
        return Alt(branches)

    def item(self, flags: Flags, seq: list[Node]) -> None:
        start = self.pos
        ch = self.src[self.pos]
        if ch in "*+?{":
            if ch == "{" and self.repeat_bounds() is None:
                self.pos += 1
                seq.append(self.literal(ord("{"), flags))
                return
            if not seq:
                raise self.fail(f"missing argument to repetition operator {ch!r}")
            if isinstance(seq[-1], Repeat):
                raise self.fail("nested repetition operator (RE2 refuses it)")
            lo, hi = self.repetition()
            greedy = True
            if self.peek() == "?":
                self.pos += 1
                greedy = False
            if flags.u:
                greedy = not greedy
            seq.append(Repeat(seq.pop(), lo, hi, greedy))
            if self.peek() in ("*", "+", "?") or (self.peek() == "{" and self.repeat_bounds()):
                raise self.fail("nested repetition operator (RE2 refuses it)")
            return
        if ch == "(":
            self.group(flags, seq)
            return
        self.pos += 1
        if ch == ".":
            ranges = [(0, MAX_CODEPOINT)] if flags.s else [(0, 9), (11, MAX_CODEPOINT)]
            seq.append(CharSet(ranges))
        elif ch == "^":
            seq.append(Text("(?m:^)" if flags.m else "\\A"))
        elif ch == "$":
            seq.append(Text("(?m:$)" if flags.m else "\\Z"))
        elif ch == "[":
            seq.append(self.char_class(flags))
        elif ch == "\\":
            self.escape(flags, seq, start)
        else:
            seq.append(self.literal(ord(ch), flags))

    def literal(self, cp: int, flags: Flags) -> CharSet:
        ranges = [(cp, cp)]
        if flags.i:
            return CharSet(fold(ranges))
        if not case_closed(ranges):
            self.case_invariant = False
        return CharSet(ranges)

    def class_set(self, ranges: Ranges, flags: Flags) -> CharSet:
        if flags.i:
            return CharSet(fold(ranges))
        if not case_closed(ranges):
            self.case_invariant = False
        return CharSet(normalize(ranges))

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

    def group(self, flags: Flags, seq: list[Node]) -> None:
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
                new = Flags(flags.i, flags.m, flags.s, flags.u)
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
                seq.append(Group("plain", None, body))
                return
        if kind == "capture" or kind == "named":
            self.groups += 1
        body = self.alternation(Flags(flags.i, flags.m, flags.s, flags.u))
        self.close(start)
        seq.append(Group(kind, name, body))

    def close(self, start: int) -> None:
        if self.peek() != ")":
            raise self.fail("missing closing )", start)
        self.pos += 1

    def escape(self, flags: Flags, seq: list[Node], start: int) -> None:
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
            seq.append(Text(anchors[ch]))
            return
        if ch.lower() in PERL:
            self.pos += 1
            ranges = PERL[ch.lower()]
            seq.append(self.class_set(negate(ranges) if ch.isupper() else ranges, flags))
            return
        seq.append(self.literal(self.escaped_char(start), flags))

    def escaped_char(self, start: int) -> int:
        """The code point of an escape that stands for one character (self.pos after the \\)."""
        ch = self.peek()
        self.pos += 1
        if ch in SIMPLE_ESCAPES:
            return SIMPLE_ESCAPES[ch]
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

    def char_class(self, flags: Flags) -> CharSet:
        start = self.pos - 1
        negated = self.peek() == "^"
        if negated:
            self.pos += 1
        ranges: Ranges = []
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
                    if m.group(2) not in POSIX:
                        raise self.fail(f"invalid character class [:{m.group(2)}:]", start)
                    cls = POSIX[m.group(2)]
                    ranges += negate(cls) if m.group(1) else cls
                    self.pos = m.end()
                    continue
            if ch == "\\" and self.peek(1).lower() in PERL:
                letter = self.peek(1)
                cls = PERL[letter.lower()]
                ranges += negate(cls) if letter.isupper() else cls
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
            ranges = fold(ranges)  # Go folds the class first, then negates it
        return self.class_set(negate(ranges) if negated else ranges, flags)

    def class_atom(self, start: int) -> int:
        ch = self.peek()
        if ch == "\\":
            self.pos += 1
            nxt = self.peek()
            if not nxt:
                raise self.fail("trailing backslash", start)
            if nxt in "bBAzQ" or nxt.lower() in PERL:
                raise self.fail(f"invalid escape \\{nxt} in character class", start)
            return self.escaped_char(start)
        self.pos += 1
        return ord(ch)
