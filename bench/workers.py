"""What a second process earns: export and verify with --workers 1 against --workers auto.

Not a test: it runs the real CLI as subprocesses on the cached sample databases of bench/run.py,
alternating the two sides (which goes first alternates too, so neither always inherits a warmer
cache), and prints each run and the medians: wall time, and CPU time of the command with its
worker. On a shared machine the alternation is what makes the two sides comparable, and the CPU
time shows what the second process costs in all.

    .venv/bin/python bench/workers.py --sizes 200000 1000000 --runs 5
"""

from __future__ import annotations

import argparse
import os
import statistics
import subprocess
import sys
import time
from pathlib import Path

from run import BENCH, CLI, compile_bytecode, sample_database, warm

SIDES = ("1", "auto")


def timed(argv: list[str]) -> tuple[float, float]:
    """Wall seconds, and CPU seconds of the command and the processes it waited for."""
    started = time.perf_counter()
    proc = subprocess.Popen(argv, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    stderr = proc.stderr.read() if proc.stderr else b""
    _, status, usage = os.wait4(proc.pid, 0)
    elapsed = time.perf_counter() - started
    if os.waitstatus_to_exitcode(status) != 0:
        sys.exit(f"bench: `{' '.join(argv)}` failed: {stderr.decode().strip()}")
    return elapsed, usage.ru_utime + usage.ru_stime


def bench(n: int, runs: int, cache: Path, work: Path) -> dict[tuple[str, str], list[tuple]]:
    db = sample_database(n, cache)
    warm(db)
    bundle = str(work / f"workers-{n}.kbundle")
    commands = {
        "export": lambda w: [str(CLI), "export", "-q", "--workers", w, "--db", str(db), bundle],
        "verify": lambda w: [str(CLI), "verify", "-q", "--workers", w, bundle],
    }
    results: dict[tuple[str, str], list[tuple]] = {}
    for op, argv in commands.items():
        for i in range(runs):
            for workers in SIDES if i % 2 == 0 else reversed(SIDES):
                wall, cpu = timed(argv(workers))
                results.setdefault((op, workers), []).append((wall, cpu))
                shown = f"{n:>9,} {op:<6} --workers {workers:<4}"
                print(f"bench: {shown} {wall:6.2f} s, CPU {cpu:6.2f} s", flush=True)
    return results


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--sizes", type=int, nargs="+", default=[200_000, 1_000_000])
    parser.add_argument("--runs", type=int, default=5)
    parser.add_argument("--cache", type=Path, default=BENCH / "cache")
    args = parser.parse_args()
    if not CLI.exists():
        sys.exit(f"bench: {CLI} not found; run with the project's .venv/bin/python")
    args.cache.mkdir(parents=True, exist_ok=True)
    work = args.cache / "work"
    work.mkdir(exist_ok=True)
    compile_bytecode()
    lines = [
        "| observations | operation | --workers 1 | --workers auto | auto / 1 | CPU 1 | CPU auto |",
        "|---:|---|---:|---:|---:|---:|---:|",
    ]
    for n in sorted(args.sizes):
        results = bench(n, args.runs, args.cache, work)
        for op in ("export", "verify"):
            (one, cpu_one), (auto, cpu_auto) = (
                [statistics.median(run[k] for run in results[op, w]) for k in (0, 1)] for w in SIDES
            )
            lines.append(
                f"| {n:,} | {op} | {one:.2f} s | {auto:.2f} s | {auto / one:.2f}x | "
                f"{cpu_one:.2f} s | {cpu_auto:.2f} s |"
            )
    print(f"\nMedians of {args.runs} runs a side:\n\n" + "\n".join(lines))


if __name__ == "__main__":
    main()
