"""Find secrets in text and replace them, fast enough to run on every record of an export.

Most texts hold no secret, so the work goes into rejecting them quickly: one pass of RE2's
multi-pattern matcher looks for every rule's keywords at once, in any case (gitleaks'
prefilter), and a rule's own pattern (Python `re`) runs only on texts holding one of its
keywords.

Work per text is bounded: patterns run over windows of at most `window + overlap` characters
(a match is kept by the window it starts in, and one that reaches a window's end is matched
again from its start against the whole text), so no pattern sees more than one window at once.
Patterns come from rule files whose syntax (RE2's) has no backreferences and no nested
repetition (re2syntax refuses them), so no pattern backtracks without bound within a window.

Here: the `Scanner` (texts, then records' free-text fields) and the `Scrubber` (a scanner on a
record stream, counting). The keyword prefilter is in `prefilter`, what findings look like and
how they are masked and counted in `findings`.
"""

from __future__ import annotations

import math
import re
from collections import Counter
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import msgspec

from kindling_bundle.records import Capsule, Observation, Pin, Record, Summary, entity_of
from kindling_bundle.scrub.findings import Finding, RecordFinding, ScrubTally, mask, redaction
from kindling_bundle.scrub.prefilter import KeywordPrefilter
from kindling_bundle.scrub.rules import (
    Allowlist,
    Rule,
    RuleSet,
    RuleSource,
    load_rules,
    utf8_safe,
)

WINDOW = 64 * 1024
OVERLAP = 4 * 1024


def shannon_entropy(text: str) -> float:
    """Bits per character, as gitleaks computes it (over characters, not bytes)."""
    n = len(text)
    if not n:
        return 0.0
    return -sum(c / n * math.log2(c / n) for c in Counter(text).values())


@dataclass(slots=True)
class _Raw:
    """A rule's finding before overlaps are merged: secret span and the whole match's span."""

    start: int
    end: int
    match_start: int
    match_end: int


class _Text:
    """One text being scanned, with what every rule run on it shares."""

    __slots__ = ("lowered", "memo", "text")

    def __init__(self, text: str, lowered: str):
        self.text = text
        # Folded patterns need the lower-cased text to line up with the original, character for
        # character; a few characters (such as 'İ') lower-case to two, and then they cannot run.
        self.lowered = lowered if len(lowered) == len(text) else None
        self.memo: dict[int, list[_Raw]] = {}


class Scanner:
    """A loaded rule set, ready to find and scrub secrets; deterministic, and safe to share."""

    def __init__(self, rules: RuleSet, *, window: int = WINDOW, overlap: int = OVERLAP):
        if window < 1 or overlap < 0:
            raise ValueError("window must be >= 1 and overlap >= 0")
        self.rules = rules
        self.window = window
        self.overlap = overlap
        self._rules = rules.rules
        self._index = {rule.id: i for i, rule in enumerate(self._rules)}
        self._folded = [
            r.folded is not None and r.folded.pattern != r.regex.pattern for r in self._rules
        ]
        by_keyword: dict[str, list[int]] = {}
        always: list[int] = []
        for i, rule in enumerate(self._rules):
            if rule.skip_report:
                continue  # runs only as another rule's companion
            if not rule.keywords:
                always.append(i)
            for kw in rule.keywords:
                by_keyword.setdefault(kw, []).append(i)
        self._always = always
        self._by_keyword = by_keyword
        self._prefilter = KeywordPrefilter(list(by_keyword))
        # For JSON text (provenance as one string): what a keyword looks like once JSON escapes
        # it is unknown, so such a keyword is looked for up to its first escaped character. A
        # string under a key is scanned as `key="value"` (_find_in_value), where the JSON text
        # has `key":"value`: so the keyword is also cut at its first `=`.
        json_safe = {re.split(r'["\\=\x00-\x1f]', kw, maxsplit=1)[0] for kw in by_keyword}
        self._json_always = bool(always) or "" in json_safe
        self._json_prefilter = KeywordPrefilter(sorted(json_safe - {""}))
        self._global = list(rules.allowlists)

    @classmethod
    def load(cls, extra_rules: Sequence[Path] = (), *, include_default: bool = True) -> Scanner:
        """Our rules plus each of `extra_rules` (gitleaks-format TOML); RulesError if invalid."""
        return cls(load_rules(extra_rules, include_default=include_default))

    @property
    def name(self) -> str:
        """The title of the first rule file (ours, unless the default set was left out)."""
        return self.rules.sources[0].title

    @property
    def version(self) -> str:
        return self.rules.sources[0].version

    @property
    def sources(self) -> tuple[RuleSource, ...]:
        return self.rules.sources

    # --- text ---------------------------------------------------------------------------

    def find(self, text: str) -> list[Finding]:
        """Every secret in `text`, in order, overlapping findings merged into one."""
        if not text:
            return []
        keywords = self._prefilter.present(text.encode("utf-8", "surrogatepass"))
        if not keywords and not self._always:
            return []  # most texts: no keyword, no rule to run
        candidates = self._candidates(keywords)
        return self._find(text, text.lower(), candidates) if candidates else []

    def scrub(self, text: str) -> tuple[str, list[Finding]]:
        """`text` with every finding replaced by `[REDACTED:<rule-id>]`, and the findings."""
        findings = self.find(text)
        return _replace(text, findings), findings

    def _candidates(self, keywords: set[str]) -> list[int]:
        if not keywords:
            return list(self._always)
        chosen = set(self._always)
        for kw in keywords:
            chosen.update(self._by_keyword[kw])
        return sorted(chosen)

    def _find(self, text: str, lowered: str, candidates: list[int]) -> list[Finding]:
        state = _Text(text, lowered)
        raws: list[tuple[int, int, int]] = []
        for i in candidates:
            for raw in self._reported(i, state):
                raws.append((raw.start, i, raw.end))
        if not raws:
            return []
        raws.sort()
        merged: list[Finding] = []
        cur_start, cur_rule, cur_end = raws[0]
        for start, rule, end in raws[1:]:
            if start < cur_end:
                cur_end = max(cur_end, end)
                continue
            merged.append(Finding(self._rules[cur_rule].id, cur_start, cur_end))
            cur_start, cur_rule, cur_end = start, rule, end
        merged.append(Finding(self._rules[cur_rule].id, cur_start, cur_end))
        return merged

    def _reported(self, i: int, state: _Text) -> list[_Raw]:
        """Rule i's findings, with a composite rule's companions checked."""
        rule = self._rules[i]
        if not rule.required:
            return self._raw(i, state)
        companions = []
        for req in rule.required:
            found = self._raw(self._index[req.rule_id], state)
            if not found:
                return []  # the companion is missing: the primary pattern need not even run
            companions.append((req, found))
        text = state.text
        kept = []
        for raw in self._raw(i, state):
            line, col = _line_col(text, raw.match_start)
            if all(
                any(
                    _near(req.within_lines, req.within_columns, line, col, text, c.match_start)
                    for c in found
                )
                for req, found in companions
            ):
                kept.append(raw)
        return kept

    def _raw(self, i: int, state: _Text) -> list[_Raw]:
        cached = state.memo.get(i)
        if cached is not None:
            return cached
        rule = self._rules[i]
        text = state.text
        lowered = state.lowered if self._folded[i] else None
        if lowered is not None:
            assert rule.folded is not None
            pattern, subject = rule.folded, lowered
        elif rule.linear:
            pattern, subject = rule.regex, utf8_safe(text)
        else:
            pattern, subject = rule.regex, text
        out: list[_Raw] = []
        for m in self._matches(pattern, subject):
            start, end = _secret_span(m, rule.secret_group)
            if start >= end:
                continue
            secret = text[start:end]
            if rule.entropy and shannon_entropy(secret) <= rule.entropy:
                continue
            if self._allowed(rule, text, secret, m.start(), m.end()):
                continue
            out.append(_Raw(start, end, m.start(), m.end()))
        state.memo[i] = out
        return out

    def _matches(self, pattern: re.Pattern[str], subject: str) -> Iterator[re.Match[str]]:
        n = len(subject)
        window, overlap = self.window, self.overlap
        if n <= window + overlap:
            yield from pattern.finditer(subject)
            return
        start = 0
        while start < n:
            accept = start + window
            stop = min(n, accept + overlap)
            last = start
            for m in pattern.finditer(subject, start, stop):
                if m.start() >= accept:
                    break
                if m.end() == stop and stop < n:
                    # It may go on past this window (or only matched because the window ended).
                    full = pattern.match(subject, m.start())
                    if full is None:
                        continue
                    m = full
                yield m
                last = max(last, m.end())
            start = max(accept, last)

    def _allowed(self, rule: Rule, text: str, secret: str, mstart: int, mend: int) -> bool:
        lists: list[Allowlist] = [
            a for a in self._global if a.target_rules is None or rule.id in a.target_rules
        ]
        lists += rule.allowlists
        if not lists:
            return False
        match = text[mstart:mend]
        line = ""
        if any(a.target == "line" for a in lists):
            line = text[text.rfind("\n", 0, mstart) + 1 : _line_end(text, mend)]
        return any(a.allows(secret, match, line) for a in lists)

    # --- records ------------------------------------------------------------------------

    def scrub_record(self, record: Record) -> tuple[Record, list[RecordFinding]]:
        """The record with secrets redacted in its free-text fields, and what was found.

        Observation content and every string in its provenance (at any depth), capsule intent,
        summary content, pin reason. Ids, timestamps, scope ids and everything else stay as
        they are; a record without findings is returned as is (the same object).
        """
        entity = entity_of(record)
        findings: list[RecordFinding] = []
        changes: dict[str, Any] = {}

        def text_field(name: str, value: str | None) -> None:
            if not value:
                return
            new, found = self.scrub(value)
            if found:
                changes[name] = new
                findings.extend(
                    RecordFinding(entity, record.id, name, f.rule_id, mask(value[f.start : f.end]))
                    for f in found
                )

        if isinstance(record, Observation):
            text_field("content", record.content)
            if record.provenance and self._provenance_candidates(record.provenance):
                new_prov = self._scrub_tree(
                    record.provenance, "provenance", None, entity, record.id, findings
                )
                if new_prov is not record.provenance:
                    changes["provenance"] = new_prov
        elif isinstance(record, Capsule):
            text_field("intent", record.intent)
        elif isinstance(record, Summary):
            text_field("content", record.content)
        elif isinstance(record, Pin):
            text_field("reason", record.reason)
        if not changes:
            return record, findings
        return msgspec.structs.replace(record, **changes), findings

    def _provenance_candidates(self, provenance: dict[str, Any]) -> bool:
        """Whether any rule could find anything in the provenance: one pass over its JSON."""
        if self._json_always:
            return True
        try:
            blob = msgspec.json.encode(provenance)
        except (TypeError, ValueError, msgspec.EncodeError):
            return True
        return bool(self._json_prefilter.present(blob))

    def _scrub_tree(
        self,
        value: Any,
        path: str,
        key: str | None,
        entity: str,
        record_id: str,
        findings: list[RecordFinding],
    ) -> Any:
        """The value with secrets in its strings redacted; the same object if none were."""
        if isinstance(value, str):
            found = self._find_in_value(value, key)
            if not found:
                return value
            findings.extend(
                RecordFinding(entity, record_id, path, f.rule_id, mask(value[f.start : f.end]))
                for f in found
            )
            return _replace(value, found)
        if isinstance(value, dict):
            out: dict[Any, Any] | None = None
            for k, v in value.items():
                new = self._scrub_tree(v, f"{path}.{k}", str(k), entity, record_id, findings)
                if new is not v:
                    if out is None:
                        out = dict(value)
                    out[k] = new
            return value if out is None else out
        if isinstance(value, list):
            items: list[Any] | None = None
            for index, v in enumerate(value):
                new = self._scrub_tree(v, f"{path}[{index}]", None, entity, record_id, findings)
                if new is not v:
                    if items is None:
                        items = list(value)
                    items[index] = new
            return value if items is None else items
        return value

    def _find_in_value(self, value: str, key: str | None) -> list[Finding]:
        """Findings in a string value; under a key, scanned as `key="value"`, so that
        {"DB_PASSWORD": "hunter2"} is found as DB_PASSWORD="hunter2" would be."""
        if key is None or len(key) > 100 or any(c in value for c in '"\\\r\n'):
            return self.find(value)
        offset = len(key) + 2
        text = f'{key}="{value}"'
        found = []
        for f in self.find(text):
            start, end = max(f.start, offset), min(f.end, offset + len(value))
            if start < end:
                found.append(Finding(f.rule_id, start - offset, end - offset))
        return found


class Scrubber:
    """A scanner applied to record streams on their way out (export, convert, merge), counting
    what it replaced; `tally.manifest(scanner)` is what a bundle's manifest says of it."""

    def __init__(self, scanner: Scanner):
        self.scanner = scanner
        self.tally = ScrubTally()

    def records(self, records: Iterable[Record]) -> Iterator[Record]:
        """Each record scrubbed (`Scanner.scrub_record`), in order."""
        scrub = self.scanner.scrub_record
        add = self.tally.add
        for record in records:
            new, findings = scrub(record)
            if findings:
                add(findings)
            yield new

    def manifest(self) -> dict[str, Any]:
        return self.tally.manifest(self.scanner)


def _secret_span(m: re.Match[str], group: int) -> tuple[int, int]:
    if group:
        return m.span(group)
    if m.re.groups:
        for g in range(1, m.re.groups + 1):
            start, end = m.span(g)
            if end > start:
                return start, end
    start, end = m.span()
    text = m.string
    while start < end and text[start] == "\n":
        start += 1
    while end > start and text[end - 1] == "\n":
        end -= 1
    return start, end


def _line_end(text: str, pos: int) -> int:
    end = text.find("\n", pos)
    return len(text) if end < 0 else end


def _line_col(text: str, pos: int) -> tuple[int, int]:
    return text.count("\n", 0, pos), pos - (text.rfind("\n", 0, pos) + 1)


def _near(
    within_lines: int | None,
    within_columns: int | None,
    line: int,
    col: int,
    text: str,
    other: int,
) -> bool:
    other_line, other_col = _line_col(text, other)
    if within_lines is not None and abs(line - other_line) > within_lines:
        return False
    return within_columns is None or abs(col - other_col) <= within_columns


def _replace(text: str, findings: Sequence[Finding]) -> str:
    if not findings:
        return text
    parts = []
    pos = 0
    for f in findings:
        parts.append(text[pos : f.start])
        parts.append(redaction(f.rule_id))
        pos = f.end
    parts.append(text[pos:])
    return "".join(parts)
