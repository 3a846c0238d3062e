"""Secret rules in gitleaks' TOML format: our own file first, then any the user adds.

The format is gitleaks' (`[[rules]]` with id, regex, keywords, entropy, secretGroup, allowlists,
required; a global `[allowlist]` or `[[allowlists]]`), so a team's existing gitleaks config, or
gitleaks' own default one, can be added as it is. Patterns are Go syntax, translated at load time
(re2syntax). Checks that only make sense for files in a repository (`path`, allowlist `paths` and
`commits`) can never hold for a memory record: a rule with a `path` is skipped and said so, an
allowlist's path or commit entries never allow anything.

Our own rules run in Python's `re` (written and tested for it: literal first, every repetition
bounded). A user's file runs in RE2 (google-re2) on the Go pattern itself, as gitleaks runs it
in Go: `re` backtracks, and a pattern such as `(a+)+b`, harmless in Go, takes `re` seconds on
two dozen characters and forever on a long text; RE2 takes time linear in the text whatever the
pattern. (Such a file's patterns are still translated at load time: that checks them and names
what is wrong.)

A later file's rule with an id already loaded replaces it, as a gitleaks config that extends
another does; allowlists of every file apply to every rule (unless they name `targetRules`).
"""

from __future__ import annotations

import hashlib
import re
import tomllib
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal, cast

import re2  # type: ignore[import-untyped]

from kindling_bundle.errors import RulesError
from kindling_bundle.scrub.re2syntax import PatternError, Translation, translate

DEFAULT_RULES = Path(__file__).with_name("rules.toml")

RegexTarget = Literal["secret", "match", "line"]
_NEVER = Translation("(?!)", None, 0)

_TOP_KEYS = {"title", "description", "version", "minVersion", "rules", "allowlist", "allowlists"}
_RULE_KEYS = {
    "id", "description", "regex", "path", "secretGroup", "entropy", "keywords", "tags",
    "allowlist", "allowlists", "required", "skipReport",
}  # fmt: skip
_ALLOW_KEYS = {
    "description", "condition", "commits", "paths", "regexTarget", "regexes", "stopwords",
}  # fmt: skip
_REQUIRED_KEYS = {"id", "withinLines", "withinColumns"}
_RE2_MAX_MEM = 64 << 20
"""RE2's memory budget for one pattern's program and DFA cache (its default is 8 MiB): a
gitleaks pattern with many bounded repetitions can need more. Past it, a search falls back to
RE2's slower automaton, still linear."""


@dataclass(frozen=True)
class Allowlist:
    """Findings this list allows are not secrets (gitleaks semantics, see `allows`)."""

    regexes: re.Pattern[str] | None
    stopwords: tuple[str, ...]
    target: RegexTarget = "secret"
    require_all: bool = False
    """condition = "AND": every check listed must hold (a path or commit check never does)."""
    unmatchable: bool = False
    """An AND list with path or commit checks: it can never allow a memory record's finding."""
    target_rules: frozenset[str] | None = None
    linear: bool = False
    """`regexes` is RE2's (a user's file), which needs text that encodes to UTF-8."""

    def allows(self, secret: str, match: str, line: str) -> bool:
        """Whether this list allows a finding (stopwords look at the secret, as in gitleaks)."""
        if self.unmatchable:
            return False
        text = match if self.target == "match" else line if self.target == "line" else secret
        checks = []
        if self.regexes is not None:
            subject = utf8_safe(text) if self.linear else text
            checks.append(self.regexes.search(subject) is not None if text else False)
        if self.stopwords:
            low = secret.lower()
            checks.append(any(word in low for word in self.stopwords))
        return all(checks) if self.require_all else any(checks)


@dataclass(frozen=True)
class Required:
    """A composite rule's companion: another rule that must match near the primary finding."""

    rule_id: str
    within_lines: int | None = None
    within_columns: int | None = None


@dataclass(frozen=True)
class Rule:
    """One loaded rule; `regex` runs on the text, `folded` (if any) on its lower-cased copy.
    `linear`: `regex` is RE2's (a user's file), run on `utf8_safe(text)`."""

    id: str
    description: str
    regex: re.Pattern[str]
    folded: re.Pattern[str] | None
    secret_group: int
    entropy: float
    keywords: tuple[str, ...]
    allowlists: tuple[Allowlist, ...]
    required: tuple[Required, ...] = ()
    skip_report: bool = False
    source: str = ""
    linear: bool = False


@dataclass(frozen=True)
class RuleSource:
    """One loaded file, as a manifest names it: no patterns, just identity."""

    name: str
    title: str
    version: str
    sha256: str
    rules: int
    skipped: tuple[str, ...] = ()
    """Ids of rules that only match file paths, which a memory record does not have."""


@dataclass(frozen=True)
class RuleSet:
    """Every rule and global allowlist of the loaded files, in load order."""

    rules: tuple[Rule, ...]
    allowlists: tuple[Allowlist, ...]
    sources: tuple[RuleSource, ...] = field(default=())


def load_rules(paths: Sequence[Path], *, include_default: bool = True) -> RuleSet:
    """Our rule file (unless told not to), then each of `paths`; RulesError on the first problem."""
    files = ([DEFAULT_RULES] if include_default else []) + [Path(p) for p in paths]
    if not files:
        raise RulesError("no rule files to load")
    by_id: dict[str, Rule] = {}
    allowlists: list[Allowlist] = []
    sources: list[RuleSource] = []
    for path in files:
        rules, allow, source = _load_file(path)
        for rule in rules:
            by_id.pop(rule.id, None)  # a replaced rule moves to its new place in the order
            by_id[rule.id] = rule
        allowlists += allow
        sources.append(source)
    for rule in by_id.values():
        for req in rule.required:
            if req.rule_id not in by_id:
                raise RulesError(
                    f"{rule.source}: rule {rule.id!r}: required rule {req.rule_id!r} does not exist"
                )
    return RuleSet(tuple(by_id.values()), tuple(allowlists), tuple(sources))


def _load_file(path: Path) -> tuple[list[Rule], list[Allowlist], RuleSource]:
    name = path.name if path == DEFAULT_RULES else str(path)
    try:
        raw = path.read_bytes()
    except OSError as exc:
        raise RulesError(f"{name}: cannot read rule file ({exc.strerror or exc})") from None
    try:
        doc = tomllib.loads(raw.decode("utf-8"))
    except (UnicodeDecodeError, tomllib.TOMLDecodeError) as exc:
        raise RulesError(f"{name}: not a valid TOML file ({exc})") from None
    if "extend" in doc:
        raise RulesError(
            f"{name}: [extend] is not supported; add each rule file with its own --rules"
        )
    _check_keys(doc, _TOP_KEYS, f"{name}: unknown top-level key")
    rules_raw = doc.get("rules", [])
    if not isinstance(rules_raw, list) or not all(isinstance(r, dict) for r in rules_raw):
        raise RulesError(f"{name}: 'rules' must be an array of tables ([[rules]])")
    rules: list[Rule] = []
    skipped: list[str] = []
    seen: set[str] = set()
    linear = path != DEFAULT_RULES
    for index, entry in enumerate(rules_raw):
        rule = _rule(name, index, entry, linear)
        if rule.id in seen:
            raise RulesError(f"{name}: rule {rule.id!r}: defined twice in this file")
        seen.add(rule.id)
        if entry.get("path"):
            skipped.append(rule.id)  # matches file paths only: never a memory record
        else:
            rules.append(rule)
    where = f"{name}: global allowlist"
    allowlists = [
        _allowlist(where, table, global_=True, linear=linear)
        for table in _allowlist_tables(doc, where)
    ]
    source = RuleSource(
        name=name,
        title=_opt_str(doc, "title", name) or path.stem,
        version=_opt_str(doc, "version", name) or "",
        sha256=hashlib.sha256(raw).hexdigest(),
        rules=len(rules),
        skipped=tuple(skipped),
    )
    return rules, [a for a in allowlists if a is not None], source


def _rule(name: str, index: int, entry: dict[str, Any], linear: bool) -> Rule:
    rid = entry.get("id")
    if not isinstance(rid, str) or not rid.strip():
        raise RulesError(f"{name}: rule #{index + 1}: missing or empty 'id'")
    where = f"{name}: rule {rid!r}"
    _check_keys(entry, _RULE_KEYS, f"{where}: unknown key")
    regex_src = _opt_str(entry, "regex", where)
    if not regex_src and not _opt_str(entry, "path", where):
        raise RulesError(f"{where}: has neither a regex nor a path")
    try:
        tr = translate(regex_src) if regex_src else _NEVER  # a path-only rule: skipped anyway
    except PatternError as exc:
        raise RulesError(f"{where}: regex {exc}") from None
    secret_group = entry.get("secretGroup", 0)
    if not isinstance(secret_group, int) or isinstance(secret_group, bool) or secret_group < 0:
        raise RulesError(f"{where}: 'secretGroup' must be a whole number >= 0")
    if secret_group > tr.groups:
        raise RulesError(
            f"{where}: secretGroup {secret_group} but the regex has {tr.groups} capture groups"
        )
    entropy = entry.get("entropy", 0.0)
    if not isinstance(entropy, int | float) or isinstance(entropy, bool) or entropy < 0:
        raise RulesError(f"{where}: 'entropy' must be a number >= 0")
    keywords = _str_list(entry, "keywords", where)
    if any(not k for k in keywords):
        raise RulesError(f"{where}: a keyword is empty")
    _str_list(entry, "tags", where)
    skip_report = entry.get("skipReport", False)
    if not isinstance(skip_report, bool):
        raise RulesError(f"{where}: 'skipReport' must be true or false")
    allow = [
        _allowlist(where, t, global_=False, linear=linear) for t in _allowlist_tables(entry, where)
    ]
    regex = _re2(regex_src) if linear and regex_src else None
    return Rule(
        id=rid,
        description=_opt_str(entry, "description", where) or "",
        regex=regex or re.compile(tr.pattern, re.ASCII),
        folded=re.compile(tr.folded, re.ASCII) if tr.folded is not None and not regex else None,
        secret_group=secret_group,
        entropy=float(entropy),
        keywords=tuple(dict.fromkeys(k.lower() for k in keywords)),
        allowlists=tuple(a for a in allow if a is not None),
        required=_required(entry, where),
        skip_report=skip_report,
        source=name,
        linear=regex is not None,
    )


def _allowlist_tables(table: dict[str, Any], where: str) -> list[dict[str, Any]]:
    """The old single `allowlist` table or the newer `allowlists` array, not both (as gitleaks)."""
    single, many = table.get("allowlist"), table.get("allowlists")
    if single is not None and many is not None:
        raise RulesError(f"{where}: use either 'allowlist' or 'allowlists', not both")
    if single is not None:
        if not isinstance(single, dict):
            raise RulesError(f"{where}: 'allowlist' must be a table")
        return [single]
    if many is None:
        return []
    if not isinstance(many, list) or not all(isinstance(t, dict) for t in many):
        raise RulesError(f"{where}: 'allowlists' must be an array of tables")
    return many


def _allowlist(
    where: str, table: dict[str, Any], *, global_: bool, linear: bool
) -> Allowlist | None:
    """One allowlist, or None when nothing in it can apply to text (paths and commits only)."""
    keys = _ALLOW_KEYS | ({"targetRules"} if global_ else set())
    _check_keys(table, keys, f"{where}: allowlist: unknown key")
    regexes = _str_list(table, "regexes", where)
    stopwords = _str_list(table, "stopwords", where)
    paths = _str_list(table, "paths", where)
    commits = _str_list(table, "commits", where)
    if not (regexes or stopwords or paths or commits):
        raise RulesError(
            f"{where}: an allowlist must list at least one of regexes, stopwords, paths, commits"
        )
    target = _opt_str(table, "regexTarget", where) or "secret"
    if target not in ("secret", "match", "line"):
        raise RulesError(f"{where}: allowlist regexTarget {target!r} is not match or line")
    condition = (_opt_str(table, "condition", where) or "OR").upper()
    if condition not in ("OR", "AND"):
        raise RulesError(f"{where}: allowlist condition {condition!r} is not OR or AND")
    compiled = []
    for source in regexes:
        try:
            compiled.append(translate(source).pattern)
        except PatternError as exc:
            raise RulesError(f"{where}: allowlist regex {source!r}: {exc}") from None
    if not (regexes or stopwords):
        return None  # only paths or commits: never true for a memory record
    targets = _str_list(table, "targetRules", where) if global_ else []
    in_re2 = _re2("|".join(f"(?:{p})" for p in regexes)) if linear and regexes else None
    pattern = in_re2
    if pattern is None and compiled:
        pattern = re.compile("|".join(f"(?:{p})" for p in compiled), re.ASCII)
    return Allowlist(
        regexes=pattern,
        stopwords=tuple(dict.fromkeys(w.lower() for w in stopwords)),
        target=target,  # type: ignore[arg-type]
        require_all=condition == "AND",
        unmatchable=condition == "AND" and bool(paths or commits),
        target_rules=frozenset(targets) if targets else None,
        linear=in_re2 is not None,
    )


def _re2(go_pattern: str) -> re.Pattern[str] | None:
    """The Go pattern compiled by RE2, or None if RE2 cannot (its syntax is Go's, but its
    limits are its own); then the translation runs in `re`. RE2's compiled pattern has what the
    scanner calls of an `re.Pattern` (finditer, match and search with positions in characters,
    groups; its matches' span, start, end, re and string)."""
    options = re2.Options()
    options.max_mem = _RE2_MAX_MEM
    options.log_errors = False
    try:
        return cast("re.Pattern[str]", re2.compile(go_pattern, options))
    except re2.error:
        return None


def utf8_safe(text: str) -> str:
    """`text` with each lone surrogate (which UTF-8 cannot encode, and RE2 reads UTF-8) replaced
    by `?`: one character for one, so every position stays where it was."""
    if text.isascii():
        return text
    try:
        text.encode("utf-8")
    except UnicodeEncodeError:
        return text.encode("utf-8", "replace").decode("utf-8")
    return text


def _required(entry: dict[str, Any], where: str) -> tuple[Required, ...]:
    raw = entry.get("required", [])
    if not isinstance(raw, list) or not all(isinstance(t, dict) for t in raw):
        raise RulesError(f"{where}: 'required' must be an array of tables ([[rules.required]])")
    out = []
    for table in raw:
        _check_keys(table, _REQUIRED_KEYS, f"{where}: required: unknown key")
        rid = table.get("id")
        if not isinstance(rid, str) or not rid:
            raise RulesError(f"{where}: a required rule has no 'id'")
        bounds = []
        for key in ("withinLines", "withinColumns"):
            value = table.get(key)
            if value is not None and (
                not isinstance(value, int) or isinstance(value, bool) or value < 0
            ):
                raise RulesError(f"{where}: required {rid!r}: {key!r} must be a whole number >= 0")
            bounds.append(value)
        out.append(Required(rid, bounds[0], bounds[1]))
    return tuple(out)


def _check_keys(table: dict[str, Any], allowed: set[str], prefix: str) -> None:
    unknown = sorted(set(table) - allowed)
    if unknown:
        raise RulesError(f"{prefix} {unknown[0]!r}")


def _opt_str(table: dict[str, Any], key: str, where: str) -> str | None:
    value = table.get(key)
    if value is not None and not isinstance(value, str):
        raise RulesError(f"{where}: {key!r} must be a string")
    return value


def _str_list(table: dict[str, Any], key: str, where: str) -> list[str]:
    value = table.get(key, [])
    if not isinstance(value, list) or not all(isinstance(v, str) for v in value):
        raise RulesError(f"{where}: {key!r} must be a list of strings")
    return value
