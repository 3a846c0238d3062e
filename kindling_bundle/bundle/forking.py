"""When a second process is worth forking, for export (encoder_process) and verify
(decoder_process): on Linux, where fork is safe and cheap, and for enough observations to repay
starting it. Kept apart from both so that verify imports none of export's modules (SQLite)."""

from __future__ import annotations

import multiprocessing
import sys

from kindling_bundle.bundle.format import FRAME_RECORDS

PARALLEL_MIN_ROWS = 16 * FRAME_RECORDS
"""Below this many observations, starting a process costs more than it saves."""


def parallel_available() -> bool:
    return sys.platform.startswith("linux") and "fork" in multiprocessing.get_all_start_methods()
