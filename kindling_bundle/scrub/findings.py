"""What a scan reports and a scrub leaves behind, none of it secret: findings (spans and rule
ids), a record's findings with masked previews, counts for a manifest, and the redaction text."""

from __future__ import annotations

from collections import Counter
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from kindling_bundle.scrub.scanner import Scanner


@dataclass(frozen=True, slots=True)
class Finding:
    """A secret at text[start:end], found by rule `rule_id`."""

    rule_id: str
    start: int
    end: int


@dataclass(frozen=True, slots=True)
class RecordFinding:
    """A secret in one field of one record; `preview` is masked (see `mask`)."""

    entity: str
    id: str
    field: str
    rule_id: str
    preview: str


@dataclass
class ScrubTally:
    """Counts over many records, for a manifest or a report: never any secret material."""

    records: int = 0
    """Records with at least one finding."""
    by_rule: Counter[str] = field(default_factory=Counter)

    def add(self, findings: Sequence[RecordFinding]) -> None:
        if findings:
            self.records += 1
            self.by_rule.update(f.rule_id for f in findings)

    def merge(self, records: int, by_rule: Mapping[str, int]) -> None:
        """Add another tally's counts (a worker process's, say)."""
        self.records += records
        self.by_rule.update(by_rule)

    @property
    def findings(self) -> int:
        return sum(self.by_rule.values())

    def manifest(self, scanner: Scanner) -> dict[str, Any]:
        """What a bundle's manifest can say about its scrubbing: the rule files (by name,
        version and digest; a user's file by its base name only, not its local path) and the
        counts. Deterministic: keys and rules in sorted order."""
        return {
            "ruleSet": {"name": scanner.name, "version": scanner.version},
            "ruleFiles": [
                {
                    "name": Path(src.name).name,
                    "title": src.title,
                    "version": src.version,
                    "sha256": src.sha256,
                    "rules": src.rules,
                }
                for src in scanner.sources
            ],
            "records": self.records,
            "findings": self.findings,
            "byRule": dict(sorted(self.by_rule.items())),
        }


def redaction(rule_id: str) -> str:
    """What replaces a secret found by `rule_id`."""
    return f"[REDACTED:{rule_id}]"


# Known public prefixes of token formats: a preview may show them, they say what the token is.
_PUBLIC_PREFIXES = (
    "github_pat_", "ghp_", "gho_", "ghu_", "ghs_", "ghr_", "glpat-", "glptt-", "gldt-", "glrt-",
    "sk-ant-api03-", "sk-ant-admin01-", "sk-ant-", "sk-proj-", "sk-svcacct-", "sk-admin-",
    "sk-or-v1-", "sk_live_", "rk_live_", "sk_test_", "rk_test_", "whsec_", "sk-", "xoxb-",
    "xoxp-", "xoxa-", "xoxe.xoxp-", "xoxe-", "xapp-", "npm_", "pypi-", "hf_", "SG.", "hvs.",
    "hvb.", "AGE-SECRET-KEY-1", "AKIA", "ASIA", "AIza", "GOCSPX-", "ya29.", "dop_v1_", "shpat_",
    "lin_api_", "PMAK-", "sntrys_", "glsa_", "NRAK-", "ATATT3", "dp.pt.", "dckr_pat_", "eyJ",
)  # fmt: skip


def mask(secret: str) -> str:
    """A preview that identifies a secret without giving it away: `ghp_…a1f3`.

    At most 4 characters from each end of a long secret, 2 of a medium one, none of a short
    one (a password of 10 characters shows nothing); a known public prefix such as `ghp_` or the
    header line of a private key is shown whole. Control characters never appear.
    """
    head = ""
    if secret.startswith("-----BEGIN"):
        end = secret.find("-----", 10)
        head = secret[: end + 5] if end > 0 else "-----BEGIN"
        return _printable(head) + "…"
    for prefix in _PUBLIC_PREFIXES:
        if secret.startswith(prefix):
            head = prefix
            break
    rest = secret[len(head) :]
    n = len(rest)
    show = 4 if n >= 24 else 2 if n >= 12 else 0
    if head:
        return _printable(head + "…" + (rest[-show:] if show else ""))
    if not show:
        return "…"
    return _printable(rest[:show] + "…" + rest[-show:])


def _printable(text: str) -> str:
    return "".join(ch if ch.isprintable() else "·" for ch in text)
