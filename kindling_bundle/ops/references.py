"""Reference closure: pass a foreign-key-ordered record stream through the record rules
(`format.stream_rules`), so what conversions and merges write verifies and imports."""

from __future__ import annotations

from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field
from typing import Any

import msgspec

from kindling_bundle.errors import MissingReferenceError, RecordError
from kindling_bundle.format.stream_rules import RecordRules
from kindling_bundle.kindling_json.reader import DANGLING_HINT
from kindling_bundle.records import Capsule, Record, Summary

_LISTED_EXAMPLES = 10


@dataclass
class DanglingReport:
    """References to records that are not in the dataset, dropped with `drop_dangling`."""

    links: int = 0
    """Capsule links to observations that are not there (the link is dropped)."""
    summaries: int = 0
    """Summaries of capsules that are not there (the summary is dropped)."""
    pins: int = 0
    """Pins whose target is not there (the pin is dropped)."""
    examples: list[str] = field(default_factory=list)

    @property
    def total(self) -> int:
        return self.links + self.summaries + self.pins

    def note(self, text: str) -> None:
        if len(self.examples) < _LISTED_EXAMPLES:
            self.examples.append(text)

    def to_dict(self) -> dict[str, Any]:
        return {
            "links": self.links,
            "summaries": self.summaries,
            "pins": self.pins,
            "examples": self.examples,
        }


class ReferenceGuard:
    """Passes a foreign-key-ordered stream through the record rules (`format.stream_rules`),
    so what is written verifies and imports.

    A breach raises a RecordError naming `name` and the record (a MissingReferenceError for a
    dangling reference, naming the missing ids). With `drop`, a dangling reference
    is left out instead and counted in `report`: removed from the record (a capsule link), or the
    record is (a summary, a pin). Evidence refs are left alone: Kindling keeps them when
    observations go away, and the integrity report lists them as warnings.
    """

    def __init__(
        self,
        *,
        drop: bool,
        name: str,
        report: DanglingReport,
        place: str = "the dataset",
    ):
        self.rules = RecordRules(place)
        self.drop = drop
        self.name = name
        self.report = report

    def check(self, record: Record) -> Record | None:
        """The record, repaired when `drop` is set; None when it must be left out."""
        breaches = self.rules.check(record)
        if breaches:
            dangling = None
            for breach in breaches:
                if breach.rule == "dangling" and self.drop:
                    dangling = breach
                elif breach.rule == "dangling":
                    raise MissingReferenceError(
                        f"{self.name}: {breach.text} ({DANGLING_HINT})",
                        entity=breach.entity,
                        record_id=breach.record_id,
                        missing=breach.missing,
                    )
                elif not breach.warning:
                    raise RecordError(
                        f"{self.name}: {breach.text}",
                        entity=breach.entity,
                        record_id=breach.record_id,
                    )
            if dangling is not None:
                self.report.note(dangling.text)
                if type(record) is not Capsule:
                    if type(record) is Summary:
                        self.report.summaries += 1
                    else:
                        self.report.pins += 1
                    return None
                self.report.links += len(dangling.missing)
                absent = set(dangling.missing)
                kept = [o for o in record.observation_ids if o not in absent]
                record = msgspec.structs.replace(record, observation_ids=kept)
        self.rules.add(record)
        return record


def close_references(
    records: Iterable[Record],
    *,
    drop: bool,
    name: str,
    report: DanglingReport | None = None,
) -> Iterator[Record]:
    """Pass a foreign-key-ordered stream through the record rules (see ReferenceGuard): a
    repeated id, a repeated capsule link, a second summary of a capsule or (without `drop`) a
    dangling reference raises RecordError.

    Memory: the 64-bit hash of every id (`format.hashset`)."""
    guard = ReferenceGuard(
        drop=drop, name=name, report=report if report is not None else DanglingReport()
    )
    for record in records:
        kept = guard.check(record)
        if kept is not None:
            yield kept
