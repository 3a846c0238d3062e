"""A progress line on standard error for long commands: records and bytes done, rate, time left.

Drawn only when standard error is a terminal, at most a few times a second, so piping or
redirecting output never mixes progress into it and a fast command pays almost nothing.
"""

from __future__ import annotations

import sys
import time
from typing import TextIO


def _size(n: float) -> str:
    for unit in ("B", "KiB", "MiB", "GiB"):
        if n < 1024 or unit == "GiB":
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.1f} {unit}"
        n /= 1024
    return f"{n:.1f} GiB"


def _duration(seconds: float) -> str:
    seconds = int(seconds)
    return f"{seconds // 60}:{seconds % 60:02d}"


class Progress:
    """Call it with (records_done, bytes_done); set `total_records` when it becomes known."""

    def __init__(
        self,
        label: str,
        *,
        total_records: int | None = None,
        stream: TextIO | None = None,
        enabled: bool | None = None,
    ):
        self.label = label
        self.total_records = total_records
        self.stream = stream or sys.stderr
        self.enabled = self.stream.isatty() if enabled is None else enabled
        self.started = time.monotonic()
        self._last_draw = 0.0
        self._drawn = False

    def __call__(self, records: int, nbytes: int) -> None:
        if not self.enabled:
            return
        now = time.monotonic()
        if self._drawn and now - self._last_draw < 0.2:
            return
        self._last_draw = now
        elapsed = max(now - self.started, 1e-6)
        rate = records / elapsed
        text = f"{self.label}: {records:,} records, {_size(nbytes)}, {rate:,.0f} rec/s"
        if self.total_records:
            share = min(records / self.total_records, 1.0)
            text = f"{self.label}: {share:4.0%} {records:,}/{self.total_records:,} records, "
            text += f"{_size(nbytes)}, {rate:,.0f} rec/s"
            if rate > 0 and records < self.total_records:
                text += f", {_duration((self.total_records - records) / rate)} left"
        self.stream.write("\r\x1b[2K" + text)
        self.stream.flush()
        self._drawn = True

    def close(self) -> None:
        """Erase the line, so the command's own output starts on a clean line."""
        if self._drawn:
            self.stream.write("\r\x1b[2K")
            self.stream.flush()
            self._drawn = False
