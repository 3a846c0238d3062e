"""Loading secret rules: gitleaks' TOML format, Go pattern syntax, and the errors a user sees."""

from __future__ import annotations

import re
import time
from pathlib import Path

import pytest

from kindling_bundle.errors import RulesError
from kindling_bundle.scrub import Scanner, load_rules, translate
from kindling_bundle.scrub.re2syntax import PatternError

GO_CONSTRUCTS = r"""
title = "team rules"
version = "3"

[allowlist]
description = "global"
stopwords = ["notreal"]

[[rules]]
id = "mid-flags"
description = "(?i) in the middle of a pattern holds to the end of its group"
regex = '''\bACME_(?i)key_([[:alnum:]]{12})\z'''
keywords = ["acme_"]

[[rules]]
id = "quoted"
regex = '''\Qcfg.v1*\E=(?P<value>[[:xdigit:]]{16})'''
secretGroup = 1
keywords = ["cfg.v1"]

[[rules]]
id = "dotall-group"
regex = '''BEGIN(?s:.{1,40}?)END:([a-z]{8})'''
keywords = ["begin"]
[rules.allowlist]
regexTarget = "line"
regexes = ['''(?i)example only''']

[[rules]]
id = "ungreedy"
regex = '''(?U)tok=(\w+)x'''
keywords = ["tok="]
entropy = 2.0
[[rules.allowlists]]
condition = "AND"
regexTarget = "match"
regexes = ['''tok=test''']
stopwords = ["estf"]

[[rules]]
id = "pair-secret"
regex = '''pw:([a-z0-9]{10})'''
keywords = ["pw:"]
[[rules.required]]
id = "pair-user"
withinLines = 1

[[rules]]
id = "pair-user"
regex = '''user:[a-z]{3,}'''
keywords = ["user:"]
skipReport = true

[[rules]]
id = "only-paths"
path = '''(?i)\.p12$'''
"""


def write(tmp_path: Path, text: str, name: str = "rules.toml") -> Path:
    path = tmp_path / name
    path.write_text(text, encoding="utf-8")
    return path


def found(scanner: Scanner, text: str) -> list[tuple[str, str]]:
    return [(f.rule_id, text[f.start : f.end]) for f in scanner.find(text)]


def test_a_file_written_for_go_loads_and_means_what_it_means_in_go(tmp_path: Path) -> None:
    scanner = Scanner.load([write(tmp_path, GO_CONSTRUCTS)], include_default=False)
    assert scanner.name == "team rules" and scanner.version == "3"
    assert scanner.sources[0].skipped == ("only-paths",)
    # (?i) mid-pattern: "key_" may be any case, "ACME_" may not; \z is the end of the text.
    assert found(scanner, "x ACME_KEY_abcdef123456") == [("mid-flags", "abcdef123456")]
    assert found(scanner, "x acme_key_abcdef123456") == []
    assert found(scanner, "x ACME_key_abcdef123456 and more") == []
    # \Q...\E quotes metacharacters; secretGroup picks the named group.
    assert found(scanner, "cfg.v1*=00ff00ff00ff00ff") == [("quoted", "00ff00ff00ff00ff")]
    assert found(scanner, "cfgXv1*=00ff00ff00ff00ff") == []
    # (?s:...) lets . cross lines inside the group only; a line allowlist drops the finding.
    assert found(scanner, "BEGIN\nstuff\nEND:abcdefgh") == [("dotall-group", "abcdefgh")]
    assert found(scanner, "BEGIN\nstuff\nEND:abcdefgh example only") == []
    # (?U) swaps greedy and lazy: \w+ stops at the first x.
    assert found(scanner, "tok=abcdexyzx") == [("ungreedy", "abcde")]
    # An AND allowlist needs both its regex and a stopword; the global stopword applies too.
    assert found(scanner, "tok=testfabcx") == []
    assert found(scanner, "tok=testabcdx") == [("ungreedy", "testabcd")]
    assert found(scanner, "tok=notrealx") == []
    # A composite rule reports only with its companion within a line; the companion is silent.
    assert found(scanner, "user:alice\npw:0123456789") == [("pair-secret", "0123456789")]
    assert found(scanner, "user:alice\n\n\npw:0123456789") == []
    assert found(scanner, "pw:0123456789") == []


NESTED = r"""
[[rules]]
id = "nested"
regex = '''zz((?:a+)+)b'''
keywords = ["zz"]

[[rules.allowlists]]
regexTarget = "line"
regexes = ['''(?:x+)+y''']
"""


def test_a_users_pattern_that_would_backtrack_without_bound_runs_in_linear_time(
    tmp_path: Path,
) -> None:
    # In Python's `re`, `(a+)+b` on two dozen a's and no b takes seconds, and it doubles with
    # each a; Go (and gitleaks) match it in linear time, and so must we.
    scanner = Scanner.load([write(tmp_path, NESTED)], include_default=False)
    start = time.process_time()
    assert found(scanner, "zz" + "a" * 25) == []
    assert time.process_time() - start < 1.0
    assert found(scanner, "zz" + "a" * 50_000) == []
    assert found(scanner, "zz" + "a" * 30 + "b " + "x" * 50_000) == [("nested", "a" * 30)]
    assert time.process_time() - start < 2.0
    assert found(scanner, "zz" + "a" * 30 + "b xxy") == []  # the line allowlist holds


def test_a_users_pattern_finds_secrets_at_their_places_around_lone_surrogates(
    tmp_path: Path,
) -> None:
    scanner = Scanner.load([write(tmp_path, NESTED)], include_default=False)
    text = "\ud800 é😀 zzaaab \udfff zzab"
    assert found(scanner, text) == [("nested", "aaa"), ("nested", "a")]


def test_keywords_decide_which_rules_run(tmp_path: Path) -> None:
    rules = """
[[rules]]
id = "needs-keyword"
regex = '''secret[0-9]+'''
keywords = ["zebra"]
"""
    scanner = Scanner.load([write(tmp_path, rules)], include_default=False)
    assert found(scanner, "secret123") == []
    assert found(scanner, "ZEBRA: secret123") == [("needs-keyword", "secret123")]


def test_a_later_file_adds_rules_and_replaces_a_rule_of_the_same_id(tmp_path: Path) -> None:
    extra = write(
        tmp_path,
        """
[[rules]]
id = "github-pat"
regex = '''ghp_[a-z]{8}'''
keywords = ["ghp_"]

[[rules]]
id = "internal-token"
regex = '''itk-[0-9a-f]{24}'''
keywords = ["itk-"]
""",
    )
    scanner = Scanner.load([extra])
    assert scanner.name == "kindling-bundle secrets" and scanner.version
    assert [s.name for s in scanner.sources] == ["rules.toml", str(extra)]
    assert found(scanner, "itk-0123456789abcdef01234567") == [
        ("internal-token", "itk-0123456789abcdef01234567")
    ]
    assert found(scanner, "ghp_abcdefgh") == [("github-pat", "ghp_abcdefgh")]
    assert found(scanner, "DATABASE_URL=postgres://app:Tr0ub4dor3x@db/app") != []  # ours stay


@pytest.mark.parametrize(
    ("body", "message"),
    [
        ("[[rules]]\nid = 'x'\nregex = '''a(?=b)'''", "rule 'x': regex lookahead"),
        ("[[rules]]\nid = 'x'\nregex = '''(a)\\1'''", "rule 'x': regex backreferences"),
        ("[[rules]]\nid = 'x'\nregex = '''\\pL+'''", "rule 'x': regex Unicode classes"),
        ("[[rules]]\nid = 'x'\nregex = '''a{1,5000}'''", "rule 'x': regex invalid repeat count"),
        ("[[rules]]\nid = 'x'\nregex = '''(a'''", "rule 'x': regex missing closing )"),
        ("[[rules]]\nid = 'x'\nregex = 'a'\nsecretGroup = 2", "rule 'x': secretGroup 2 but"),
        ("[[rules]]\nid = 'x'\nregex = 'a'\nkeyword = ['a']", "rule 'x': unknown key 'keyword'"),
        ("[[rules]]\nid = 'x'\nregex = 'a'\nentropy = 'high'", "rule 'x': 'entropy' must be"),
        ("[[rules]]\nid = 'x'", "rule 'x': has neither a regex nor a path"),
        ("[[rules]]\nregex = 'a'", "rule #1: missing or empty 'id'"),
        (
            "[[rules]]\nid = 'x'\nregex = 'a'\n[[rules.required]]\nid = 'nope'",
            "rule 'x': required rule 'nope' does not exist",
        ),
        (
            "[[rules]]\nid = 'x'\nregex = 'a'\n[rules.allowlist]\nregexTarget = 'file'\n"
            "regexes = ['b']",
            "regexTarget 'file'",
        ),
        ("[[rules]]\nid = 'x'\nregex = 'a'\n[rules.allowlist]\n", "must list at least one"),
        ("[[rules]]\nid = 'x'\nregex = 'a'\n[[rules]]\nid = 'x'\nregex = 'b'", "defined twice"),
        ("[extend]\nuseDefault = true", "[extend] is not supported"),
        ("title = 'x\n", "not a valid TOML file"),
    ],
)
def test_an_invalid_file_is_refused_in_one_line_naming_rule_and_problem(
    tmp_path: Path, body: str, message: str
) -> None:
    path = write(tmp_path, body)
    with pytest.raises(RulesError) as info:
        load_rules([path])
    text = str(info.value)
    assert str(path) in text and message in text
    assert "\n" not in text


def test_a_missing_file_is_refused(tmp_path: Path) -> None:
    with pytest.raises(RulesError, match="cannot read rule file"):
        load_rules([tmp_path / "absent.toml"])


def test_our_rules_load_and_every_one_of_them_runs_fast_from_a_literal() -> None:
    rules = load_rules([])
    assert len(rules.rules) >= 40 and rules.sources[0].skipped == ()
    slow = [
        r.id
        for r in rules.rules
        if r.keywords and not re.match(r"[\w<>:/-]", (r.folded or r.regex).pattern.lstrip("\\"))
    ]
    # The few that start with a class only run where a rare keyword occurs.
    assert set(slow) <= {
        "aws-secret-key-near-id", "azure-storage-key", "terraform-cloud-token",
        "telegram-bot-token", "cli-short-password", "secret-assignment", "password-assignment",
        "api-key-assignment", "auth-assignment", "key-assignment", "stripe-key",
    }  # fmt: skip


@pytest.mark.parametrize(
    ("go", "text", "matches"),
    [
        (r"a(?i)b|c", "aB", True),
        (r"a(?i)b|c", "C", True),  # the flag holds past | until the group ends
        (r"(?:a(?i)b)c", "aBC", False),
        (r"[[:^digit:]]+", "abc", True),
        (r"\x{41}\101\x42", "AAB", True),
        (r"[^\D]", "7", True),
        (r"(?m)^x$", "a\nx\nb", True),
        (r"^x$", "a\nx\nb", False),
        (r"x$", "x\n", False),  # Go's $ without m is the end of the text, not before a \n
        (r"a.b", "a\nb", False),
        (r"\s", "\v", False),  # Go's \s has no vertical tab
    ],
)
def test_go_semantics_survive_translation(go: str, text: str, matches: bool) -> None:
    assert bool(re.search(translate(go).pattern, text, re.ASCII)) is matches


def test_a_case_insensitive_pattern_gets_a_form_for_lower_cased_text() -> None:
    tr = translate(r"(?i)\bToken[=:]([A-Z0-9]{4})")
    assert tr.folded is not None and tr.folded.startswith("token(?<=\\btoken)")
    assert re.search(tr.folded, "my_token=ab12".lower()) is None  # \b: '_' is a word character
    assert re.search(tr.folded, "x token=AB12".lower()) is not None
    assert translate(r"Token").folded is None


def test_pattern_errors_say_where() -> None:
    with pytest.raises(PatternError, match="at offset 3"):
        translate(r"abc(?<=x)")
