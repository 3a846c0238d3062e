"""What verify found in a bundle or a Kindling JSON export: problems a caller can act on.

Each problem says what kind it is, where (the source; the member, entity, record id and field,
as far as they apply) and what exactly is wrong (`detail`); its one-line text, which the CLI
prints, is derived from those. Kinds:

- the data cannot be read on (the check ends there): `unreadable`, `unsupported-version`;
- a bundle's members: `unknown-member`, `repeated-member`, `member-order`, `member-missing`,
  `member-size`, `member-sha256`, `member-count`, `framing` (the rest of the member cannot be
  split into record frames), `bad-frame` (a record frame that is not an array of records);
- a record: `invalid-record`, and the record rules of `format.stream_rules`: `repeated-id`,
  `repeated-link`, `dangling`, `second-summary`, `evidence` (a warning), and an increment's
  (`format.increment`): `order` (tombstones out of order), `deleted-and-written`;
- `chain-link`: a bundle of a chain given to verify does not follow the one before it (a
  missing, reordered or foreign link), or could not be checked as a link;
- `dangling-hint` (a warning): how to convert or import despite dangling references.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from typing import Any, Literal

from kindling_bundle.errors import (
    BundleError,
    BundleValidationError,
    RecordError,
    SignatureError,
    UnsupportedVersionError,
)
from kindling_bundle.format.manifest import ENTITY_MEMBERS, Manifest
from kindling_bundle.format.reader import FramingError
from kindling_bundle.format.signature import signature_to_dict
from kindling_bundle.format.stream_rules import Breach, Rule
from kindling_bundle.io.sshsig.verification import Signer

Severity = Literal["error", "warning"]
ProblemKind = (
    Rule
    | Literal[
        "unreadable",
        "unsupported-version",
        "unknown-member",
        "repeated-member",
        "member-order",
        "member-missing",
        "member-size",
        "member-sha256",
        "member-count",
        "framing",
        "bad-frame",
        "invalid-record",
        "dangling-hint",
        "signature",
        "chain-link",
    ]
)

MAX_LISTED = 200
"""Problems (and warnings) listed in a report; the counts include those left out."""

_ABOUT_A_MEMBER = frozenset({"unknown-member", "repeated-member", "member-order", "member-missing"})
"""Kinds about a member as a whole, whose detail names it; the others are inside the member."""
_MEMBER_ENTITIES = {member: entity for entity, member in ENTITY_MEMBERS.items()}


@dataclass(frozen=True)
class VerifyProblem:
    """One problem (or warning) verify found; `str()` is its one-line text."""

    kind: ProblemKind
    source: str
    """The bundle or file, as messages name it."""
    detail: str
    """What is wrong, naming the record where there is one."""
    member: str | None = None
    entity: str | None = None
    record_id: str | None = None
    field: str | None = None
    """The record's field at fault, where one is (its wire name, e.g. `scopeIds`)."""
    severity: Severity = "error"

    def __str__(self) -> str:
        if self.member is None or self.kind in _ABOUT_A_MEMBER:
            return f"{self.source}: {self.detail}"
        return f"{self.source}: {self.member}: {self.detail}"

    def to_dict(self) -> dict[str, Any]:
        """A JSON-ready form (the fields, and `message`, the text), for the CLI's --json."""
        return {**asdict(self), "message": str(self)}


@dataclass
class VerifyReport:
    """What verify found. `ok` means no problem at all (warnings allowed)."""

    source: str
    manifest: Manifest | None = None
    problems: list[VerifyProblem] = field(default_factory=list)
    problem_count: int = 0
    warnings: list[VerifyProblem] = field(default_factory=list)
    warning_count: int = 0
    records: dict[str, int] = field(default_factory=dict)
    """Records decoded and valid, per entity."""
    dataset: str = "bundle"
    """What was verified, as messages name it: "bundle" or "Kindling JSON export"."""
    signer: Signer | None = None
    """Who signed the bundle (None: unsigned, or the manifest was not read)."""

    @property
    def ok(self) -> bool:
        return self.problem_count == 0

    @property
    def messages(self) -> list[str]:
        """The listed problems' one-line texts."""
        return [str(problem) for problem in self.problems]

    @property
    def warning_messages(self) -> list[str]:
        return [str(warning) for warning in self.warnings]

    def add(self, problem: VerifyProblem) -> None:
        """Count the problem (or warning); list it while fewer than MAX_LISTED are."""
        if problem.severity == "warning":
            self.warning_count += 1
            if len(self.warnings) < MAX_LISTED:
                self.warnings.append(problem)
        else:
            self.problem_count += 1
            if len(self.problems) < MAX_LISTED:
                self.problems.append(problem)

    def problem(
        self,
        kind: ProblemKind,
        detail: str,
        *,
        member: str | None = None,
        entity: str | None = None,
        record_id: str | None = None,
        field: str | None = None,
        severity: Severity = "error",
    ) -> None:
        """Add a problem of this report's source; an entity member's entity goes without
        saying."""
        if entity is None and member is not None:
            entity = _MEMBER_ENTITIES.get(member)
        self.add(
            VerifyProblem(kind, self.source, detail, member, entity, record_id, field, severity)
        )

    def failed(self, error: BundleError | SignatureError, *, member: str | None = None) -> None:
        """Add the error that ended the check, or the check of `member` (a FramingError)."""
        kind: ProblemKind = "unreadable"
        if isinstance(error, SignatureError):
            kind = "signature"
        elif isinstance(error, FramingError):
            kind = "framing"
        elif isinstance(error, UnsupportedVersionError):
            kind = "unsupported-version"
        self.problem(kind, self._detail(error, member), member=member)

    def invalid(self, error: RecordError | BundleError, *, member: str | None = None) -> None:
        """Add an invalid record (a RecordError), or a record frame that holds no records to
        check (a BundleError)."""
        detail = self._detail(error, member)
        if isinstance(error, RecordError):
            self.problem(
                "invalid-record",
                detail,
                member=member,
                entity=error.entity,
                record_id=error.record_id,
                field=error.field,
            )
        else:
            self.problem("bad-frame", detail, member=member)

    def breach(self, breach: Breach, *, member: str | None = None) -> None:
        """Add a record rule the record breaks (a warning for an evidence ref)."""
        self.problem(
            breach.rule,
            breach.text,
            member=member,
            entity=breach.entity,
            record_id=breach.record_id,
            severity="warning" if breach.warning else "error",
        )

    def raise_for_problems(self, name: str | None = None) -> None:
        """Raise BundleValidationError, its message the first problem and how many more, unless
        `ok`. `name` names the source in the message instead of `source`."""
        if self.ok:
            return
        name = name or self.source
        first = str(self.problems[0]).removeprefix(f"{name}: ")
        more = self.problem_count - 1
        message = f"{name}: not a valid {self.dataset}: {first}" + (
            f" (and {more} more {'problem' if more == 1 else 'problems'})" if more else ""
        )
        raise BundleValidationError(message, report=self)

    def to_dict(self) -> dict[str, Any]:
        """A JSON-ready form, for the CLI's --json."""
        return {
            "source": self.source,
            "ok": self.ok,
            "problems": [problem.to_dict() for problem in self.problems],
            "problem_count": self.problem_count,
            "warnings": [warning.to_dict() for warning in self.warnings],
            "warning_count": self.warning_count,
            "records": self.records,
            "manifest": self.manifest.to_dict() if self.manifest else None,
            "signature": signature_to_dict(self.signer) if self.manifest else None,
        }

    def _detail(self, error: Exception, member: str | None) -> str:
        """The error's message after the place it names (this source, and the member)."""
        where = ": ".join([self.source, *([member] if member is not None else [])]) + ": "
        message = str(error)
        return message[len(where) :] if message.startswith(where) else message
