"""Character sets as sorted, disjoint (lo, hi) code point ranges: Go's classes (Perl, POSIX,
case folding) and how a set is written in Python `re`."""

from __future__ import annotations

import re

MAX_CODEPOINT = 0x10FFFF
Ranges = list[tuple[int, int]]


def normalize(ranges: Ranges) -> Ranges:
    out: Ranges = []
    for lo, hi in sorted(ranges):
        if out and lo <= out[-1][1] + 1:
            if hi > out[-1][1]:
                out[-1] = (out[-1][0], hi)
        else:
            out.append((lo, hi))
    return out


def negate(ranges: Ranges) -> Ranges:
    out: Ranges = []
    nxt = 0
    for lo, hi in normalize(ranges):
        if lo > nxt:
            out.append((nxt, lo - 1))
        nxt = hi + 1
    if nxt <= MAX_CODEPOINT:
        out.append((nxt, MAX_CODEPOINT))
    return out


def fold(ranges: Ranges) -> Ranges:
    """Add the other case of every letter in the set (ASCII by range, others one by one)."""
    extra: Ranges = []
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
    return normalize(ranges + extra)


def case_closed(ranges: Ranges) -> bool:
    return normalize(ranges) == fold(ranges)


DIGIT: Ranges = [(0x30, 0x39)]
WORD: Ranges = [(0x30, 0x39), (0x41, 0x5A), (0x5F, 0x5F), (0x61, 0x7A)]
SPACE: Ranges = [(0x09, 0x0A), (0x0C, 0x0D), (0x20, 0x20)]  # Go's \s: no \v
PERL = {"d": DIGIT, "w": WORD, "s": SPACE}
POSIX: dict[str, Ranges] = {
    "alnum": [(0x30, 0x39), (0x41, 0x5A), (0x61, 0x7A)],
    "alpha": [(0x41, 0x5A), (0x61, 0x7A)],
    "ascii": [(0x00, 0x7F)],
    "blank": [(0x09, 0x09), (0x20, 0x20)],
    "cntrl": [(0x00, 0x1F), (0x7F, 0x7F)],
    "digit": DIGIT,
    "graph": [(0x21, 0x7E)],
    "lower": [(0x61, 0x7A)],
    "print": [(0x20, 0x7E)],
    "punct": [(0x21, 0x2F), (0x3A, 0x40), (0x5B, 0x60), (0x7B, 0x7E)],
    "space": [(0x09, 0x0D), (0x20, 0x20)],
    "upper": [(0x41, 0x5A)],
    "word": WORD,
    "xdigit": [(0x30, 0x39), (0x41, 0x46), (0x61, 0x66)],
}
SIMPLE_ESCAPES = {"a": 7, "f": 12, "t": 9, "n": 10, "r": 13, "v": 11}


def class_char(cp: int) -> str:
    ch = chr(cp)
    if ch in "\\]-^[":
        return "\\" + ch
    if cp < 0x20 or cp == 0x7F:
        return f"\\x{cp:02x}"
    if 0xD800 <= cp <= 0xDFFF or cp > 0xFFFF:
        return f"\\U{cp:08x}" if cp > 0xFFFF else f"\\u{cp:04x}"
    return ch


def emit_class(ranges: Ranges) -> str:
    ranges = normalize(ranges)
    if not ranges:
        return "(?!)"  # an empty class matches nothing, as in Go
    if ranges == [(0, MAX_CODEPOINT)]:
        return "[\\s\\S]"
    if len(ranges) == 1 and ranges[0][0] == ranges[0][1]:
        return re.escape(chr(ranges[0][0])) if ranges[0][0] >= 0x20 else class_char(ranges[0][0])
    neg = negate(ranges)
    body, prefix = (neg, "[^") if len(neg) < len(ranges) else (ranges, "[")
    parts = []
    for lo, hi in body:
        if lo == hi:
            parts.append(class_char(lo))
        elif hi == lo + 1:
            parts.append(class_char(lo) + class_char(hi))
        else:
            parts.append(f"{class_char(lo)}-{class_char(hi)}")
    return prefix + "".join(parts) + "]"


def subtract(ranges: Ranges, hole: tuple[int, int]) -> Ranges:
    out: Ranges = []
    for lo, hi in ranges:
        if hi < hole[0] or lo > hole[1]:
            out.append((lo, hi))
            continue
        if lo < hole[0]:
            out.append((lo, hole[0] - 1))
        if hi > hole[1]:
            out.append((hole[1] + 1, hi))
    return out
