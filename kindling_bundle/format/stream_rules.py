"""The rules a record stream must keep for an import to take it, checked in one place.

A dataset (a bundle, a Kindling JSON export, a merge or a conversion in progress) is a stream of
records in foreign-key order. It can be imported only when: no id appears twice within an entity;
no capsule lists the same observation twice; every capsule link, summary capsule and pin target
is in the stream; no capsule has two summaries. Summary evidence refs that are not in the stream
are only warnings: Kindling keeps evidence lists when observations are deleted, and the integrity
report lists them as warnings too.

`RecordRules` is the one checker: bundle verify and JSON verify report what it finds; conversions,
merges and bundle-to-JSON refuse it (or, for dangling references, drop them on request), through
`ops.references.ReferenceGuard`. So whatever one of them writes, the others accept, and import
(which enforces the same rules against the database) takes it.

Memory: the 64-bit hash of every id seen (`format.hashset`).
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass
from itertools import chain
from operator import attrgetter
from typing import Literal, cast

from kindling_bundle.format.hashset import SET_ONLY_MAX, HashSet
from kindling_bundle.records import (
    ENTITY_TYPES,
    SINGULAR,
    Capsule,
    Pin,
    Record,
    Summary,
    entity_of,
)

Rule = Literal[
    "repeated-id",
    "repeated-link",
    "dangling",
    "second-summary",
    "evidence",
    "order",  # an increment's tombstones (format.increment)
    "deleted-and-written",  # an increment's record that also has a tombstone
]

_LISTED_IDS = 5
_ID = attrgetter("id")
_LINKS = attrgetter("observation_ids")
_CAPSULE = attrgetter("capsule_id")
_EVIDENCE = attrgetter("evidence_refs")


@dataclass(frozen=True)
class Breach:
    """One rule a record breaks; `text` names the record and says what is wrong."""

    entity: str
    record_id: str
    rule: Rule
    text: str
    missing: tuple[str, ...] = ()
    """For a dangling reference: the ids that are not there."""

    @property
    def warning(self) -> bool:
        """Only a warning (an evidence ref): an import takes the record as it is."""
        return self.rule == "evidence"


def first_repeated(values: Sequence[str]) -> str | None:
    """The first value that appears a second time, or None."""
    seen: set[str] = set()
    for value in values:
        if value in seen:
            return value
        seen.add(value)
    return None


class RecordRules:
    """Checks records in foreign-key order against the records added before them.

    `place` names the dataset in messages ("the bundle", "the file", ...). References into an
    entity for which `trusted(entity)` is false are not checked (verify uses this for an entity
    with damaged records, so one damaged member does not drown the report in echoes).
    `expected`: records each entity should hold, where known (hashset.HashSet says why).
    """

    def __init__(
        self,
        place: str,
        *,
        trusted: Callable[[str], bool] | None = None,
        expected: Mapping[str, int] | None = None,
    ):
        self.place = place
        self._trusted = trusted
        # All in Python sets, or none: a few large sets beside NumPy would cost more than either.
        sizes = dict(expected or {})
        if sum(sizes.values()) + sizes.get("summaries", 0) > SET_ONLY_MAX:
            sizes = {}
        self._ids = {entity: HashSet(sizes.get(entity)) for entity in ENTITY_TYPES}
        self._summarised = HashSet(sizes.get("summaries"))

    def check(self, record: Record) -> list[Breach]:
        """Every rule the record breaks; it is not counted as present until `add`."""
        entity = entity_of(record)
        breaches: list[Breach] = []
        if hash(record.id) in self._ids[entity]:
            text = f"{SINGULAR[entity]} {record.id} appears more than once"
            breaches.append(Breach(entity, record.id, "repeated-id", text))
        if type(record) is Capsule:
            twice = first_repeated(record.observation_ids)
            if twice is not None:
                text = f"capsule {record.id} lists observation {twice} more than once"
                breaches.append(Breach(entity, record.id, "repeated-link", text))
            missing = self._missing("observations", record.observation_ids)
            if missing:
                if len(missing) == 1:
                    what = f"linked observation {missing[0]} is"
                else:
                    listed = ", ".join(missing[:_LISTED_IDS])
                    more = len(missing) - _LISTED_IDS
                    what = f"linked observations {listed}" + (
                        f" (and {more} more) are" if more > 0 else " are"
                    )
                text = f"capsule {record.id}: {what} not in {self.place}"
                breaches.append(Breach(entity, record.id, "dangling", text, tuple(missing)))
        elif type(record) is Summary:
            capsule = record.capsule_id
            if self._missing("capsules", [capsule]):
                text = f"summary {record.id}: capsule {capsule} is not in {self.place}"
                breaches.append(Breach(entity, record.id, "dangling", text, (capsule,)))
            if hash(capsule) in self._summarised:
                text = (
                    f"summary {record.id}: capsule {capsule} already has a summary in {self.place}"
                )
                breaches.append(Breach(entity, record.id, "second-summary", text))
            for ref in self._missing("observations", record.evidence_refs):
                text = f"summary {record.id}: evidence observation {ref} is not in {self.place}"
                breaches.append(Breach(entity, record.id, "evidence", text, (ref,)))
        elif type(record) is Pin:
            target = "observations" if record.target_type == "observation" else "summaries"
            if self._missing(target, [record.target_id]):
                text = (
                    f"pin {record.id}: target {record.target_type} {record.target_id} is not in "
                    f"{self.place}"
                )
                breaches.append(Breach(entity, record.id, "dangling", text, (record.target_id,)))
        return breaches

    def clear_run(self, records: Sequence[Record]) -> bool:
        """True if checking and adding these records one by one, in order, would find nothing
        (not even a warning): then `add_run` adds them all. Set operations over the whole run
        decide the usual case (new ids; references all present, distinct where they must be),
        a tenth of the cost of `check` and `add` per record. False means "maybe": check them
        one by one, which says exactly what is wrong."""
        kinds = set(map(type, records))
        if len(kinds) != 1:
            return not records
        kind = kinds.pop()
        if not self.clear_new_ids(entity_of(records[0]), list(map(hash, map(_ID, records)))):
            return False
        if kind is Capsule:
            links = list(map(_LINKS, records))
            if any(len(set(linked)) != len(linked) for linked in links):
                return False
            return self._present("observations", chain.from_iterable(links))
        if kind is Summary:
            capsules = list(map(hash, map(_CAPSULE, records)))
            return (
                len(set(capsules)) == len(capsules)
                and self._summarised.isdisjoint(capsules)
                and self._present("capsules", map(_CAPSULE, records))
                and self._present("observations", chain.from_iterable(map(_EVIDENCE, records)))
            )
        if kind is Pin:
            pins = cast("Sequence[Pin]", records)  # a run of one type, as `kinds` says
            on_observations = [p.target_id for p in pins if p.target_type == "observation"]
            on_summaries = [p.target_id for p in pins if p.target_type != "observation"]
            return self._present("observations", on_observations) and self._present(
                "summaries", on_summaries
            )
        return True

    def clear_new_ids(self, entity: str, hashes: list[int]) -> bool:
        """True if these id hashes (of a run of the entity's records) are distinct and new. For
        observations, which reference nothing, that is all `clear_run` asks, so a process that
        decoded them elsewhere need only send their ids (parallel.decoder), hashed here; then
        `add_ids` adds them."""
        return len(set(hashes)) == len(hashes) and self._ids[entity].isdisjoint(hashes)

    def add_ids(self, entity: str, hashes: list[int]) -> None:
        self._ids[entity].update(hashes)

    def add_run(self, records: Sequence[Record]) -> None:
        """`add` each of a run that `clear_run` passed."""
        if records:
            self._ids[entity_of(records[0])].update(map(hash, map(_ID, records)))
            if type(records[0]) is Summary:
                self._summarised.update(map(hash, map(_CAPSULE, records)))

    def add(self, record: Record) -> None:
        """Count the record as present: later references to it resolve, its id is taken."""
        self._ids[entity_of(record)].add(hash(record.id))
        if type(record) is Summary:
            self._summarised.add(hash(record.capsule_id))

    def _present(self, entity: str, wanted: Iterable[str]) -> bool:
        """Every one of `wanted` is in the entity, or the entity is not trusted."""
        if self._trusted is not None and not self._trusted(entity):
            return True
        return self._ids[entity].issuperset(list(map(hash, wanted)))

    def _missing(self, entity: str, wanted: Sequence[str]) -> list[str]:
        if not wanted or (self._trusted is not None and not self._trusted(entity)):
            return []
        ids = self._ids[entity]
        return [value for value in wanted if hash(value) not in ids]
