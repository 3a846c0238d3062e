"""How many processes share an export's encoding or a verify's decoding: the one decision.

`workers` is what the caller asked for (BundleOptions.workers, verify_bundle's `workers`, the
CLI's --workers): "auto" forks a second process for a large enough member, 1 never forks, and
any larger number forks whatever the size. Either way the result is byte for byte (export) or
word for word (verify) what one process makes; a second process only changes the time. The work
splits in two at most, so 3 or more mean 2.
"""

from __future__ import annotations

from typing import Literal

from kindling_bundle.format.manifest import FRAME_RECORDS
from kindling_bundle.parallel.forking import fork_is_safe

Workers = Literal["auto"] | int

AUTO_MIN_ROWS = 16 * FRAME_RECORDS
"""With "auto", below this many observations starting a process costs more than it saves."""


def check_workers(workers: object) -> Workers:
    """`workers` if it is "auto" or a whole number >= 1; otherwise ValueError."""
    if workers == "auto":
        return "auto"
    if isinstance(workers, bool) or not isinstance(workers, int) or workers < 1:
        raise ValueError(f'workers must be "auto" or a whole number >= 1, got {workers!r}')
    return workers


def choose_workers(workers: Workers, observations: int) -> int:
    """The processes to use, 1 or 2, for a member of about `observations` records: 2 only where
    a child may be forked safely now (parallel.forking)."""
    if workers == 1 or not fork_is_safe():
        return 1
    if workers == "auto" and observations < AUTO_MIN_ROWS:
        return 1
    return 2
