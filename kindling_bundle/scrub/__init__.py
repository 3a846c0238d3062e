"""Secret detection and redaction for memory leaving the machine (issue 20).

Pure: no SQLite and no bundle I/O, so export, convert, merge and scan can all use it. Rules are
gitleaks-format TOML (ours in rules.toml, users' added with --rules); Scanner finds and scrubs.
"""

from kindling_bundle.scrub.findings import (
    Finding,
    RecordFinding,
    ScrubTally,
    mask,
    redaction,
)
from kindling_bundle.scrub.re2syntax import PatternError, Translation, translate
from kindling_bundle.scrub.rules import DEFAULT_RULES, RuleSet, RuleSource, load_rules
from kindling_bundle.scrub.scanner import Scanner, Scrubber, shannon_entropy

__all__ = [
    "DEFAULT_RULES",
    "Finding",
    "PatternError",
    "RecordFinding",
    "RuleSet",
    "RuleSource",
    "Scanner",
    "ScrubTally",
    "Scrubber",
    "Translation",
    "load_rules",
    "mask",
    "redaction",
    "shannon_entropy",
    "translate",
]
