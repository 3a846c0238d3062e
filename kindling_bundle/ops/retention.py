"""Which snapshots a retention policy keeps, with restic's semantics (`restic forget --keep-*`).

Snapshots are taken newest first. `last N` keeps the N newest. Each of `daily`, `weekly` and
`monthly N` keeps, for the N most recent days (ISO weeks, months) that have snapshots, the newest
snapshot of that period. The rules combine: a snapshot is kept if any rule keeps it, and each
rule counts only the periods it kept a snapshot for. As restic does since 0.16, a rule that still
has periods left when it reaches the oldest snapshot keeps that one too (so that a young archive
keeps its longest history). Periods are taken in UTC. The policy alone
decides what is *wanted*; ops.forget also keeps every bundle a wanted snapshot's chain needs.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime


@dataclass(frozen=True)
class Policy:
    """How many of each to keep (0: that rule keeps nothing)."""

    last: int = 0
    daily: int = 0
    weekly: int = 0
    monthly: int = 0

    def __post_init__(self) -> None:
        for name in ("last", "daily", "weekly", "monthly"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int) or value < 0:
                raise ValueError(f"keep {name} must be a whole number >= 0, got {value!r}")

    @property
    def empty(self) -> bool:
        return not (self.last or self.daily or self.weekly or self.monthly)


def _moment(ms: int) -> datetime:
    return datetime.fromtimestamp(ms / 1000, tz=UTC)


def _day(ms: int) -> tuple[int, ...]:
    moment = _moment(ms)
    return moment.year, moment.month, moment.day


def _week(ms: int) -> tuple[int, ...]:
    year, week, _ = _moment(ms).isocalendar()
    return year, week


def _month(ms: int) -> tuple[int, ...]:
    moment = _moment(ms)
    return moment.year, moment.month


def keep(times: Sequence[int], policy: Policy) -> dict[int, list[str]]:
    """For snapshots created at `times` (epoch ms; any order), the index of each kept one and
    the rules that keep it ("last", "daily", "weekly", "monthly", or "oldest daily" and so on
    for the oldest snapshot kept because a rule had periods left)."""
    rules: list[tuple[str, int, Callable[[int], tuple[int, ...]] | None]] = [
        ("last", policy.last, None),
        ("daily", policy.daily, _day),
        ("weekly", policy.weekly, _week),
        ("monthly", policy.monthly, _month),
    ]
    left = {name: count for name, count, _ in rules}
    previous: dict[str, tuple[int, ...] | None] = {name: None for name, _, _ in rules}
    kept: dict[int, list[str]] = {}
    newest_first = sorted(range(len(times)), key=lambda i: (times[i], i), reverse=True)
    oldest = newest_first[-1] if newest_first else None
    for index in newest_first:
        for name, _, period in rules:
            if left[name] <= 0:
                continue
            bucket = (index,) if period is None else period(times[index])
            reason = name
            if bucket == previous[name]:
                if index != oldest:
                    continue
                reason = f"oldest {name}"
            previous[name] = bucket
            left[name] -= 1
            kept.setdefault(index, []).append(reason)
    return kept
