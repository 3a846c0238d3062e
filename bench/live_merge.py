"""Benchmark scenario of issue 22: merging a bundle into a memory Kindling is writing to.

A Kindling-like writer (a separate process inserting one observation every 50 ms with the SQL
and connection settings of Kindling's store, busy timeout 5 s) runs while `kindling-bundle
import` merges a bundle of N observations (other ids: a sample made with another seed) into a
database of N observations. Targets: no failed write, the writer's longest wait <= 1.5 s, and
the merge <= 2.0x the time of importing the same bundle into a database that does not exist.
Merge and the new-database import alternate; medians of the runs. The load average of the
machine is recorded with the figures (this is a shared machine).

    .venv/bin/python bench/live_merge.py --size 200000          # prints the section
    .venv/bin/python bench/run.py ...                            # runs it too, see --live-merge
"""

from __future__ import annotations

import argparse
import os
import shutil
import sqlite3
import statistics
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

BENCH = Path(__file__).resolve().parent
CLI = Path(sys.executable).parent / "kindling-bundle"
TARGET_SEED, BUNDLE_SEED = 1, 2
MAX_WAIT_S = 1.5
MAX_RATIO = 2.0
BEGIN, END = "<!-- live-merge:begin -->", "<!-- live-merge:end -->"

WRITER = BENCH.parent / "tests" / "kindling_writer.py"
"""The Kindling-like writer the tests run, too."""
WRITER_PREFIX = "bench-live-"


@dataclass
class Merge:
    seconds: float
    writes: int
    failed: int
    longest_wait: float


def _remove(path: Path) -> None:
    for suffix in ("", "-wal", "-shm", "-journal"):
        Path(f"{path}{suffix}").unlink(missing_ok=True)


def _run(argv: list[str]) -> float:
    started = time.perf_counter()
    subprocess.run(argv, check=True, stdout=subprocess.DEVNULL)
    return time.perf_counter() - started


def inputs(n: int, cache: Path) -> tuple[Path, Path]:
    """The target database (seed 1, realistic text: bench/run.py's sample) and the bundle (seed
    2), made with the CLI and cached."""
    target = cache / f"sample-realistic-{n}.db"
    other = cache / f"sample-{n}-seed{BUNDLE_SEED}.db"
    bundle = cache / f"incoming-{n}.kbundle"
    for path, seed in ((target, TARGET_SEED), (other, BUNDLE_SEED)):
        if not path.exists():
            print(f"bench: generating {path}", flush=True)
            partial = path.with_suffix(".partial.db")
            _remove(partial)
            _run([str(CLI), "sample", str(partial), "-n", str(n), "--seed", str(seed), "-q"])
            os.replace(partial, path)
    if not bundle.exists():
        _run([str(CLI), "export", "--db", str(other), str(bundle), "-q"])
    return target, bundle


def merge_with_writer(target: Path, bundle: Path, work: Path) -> Merge:
    """Merge `bundle` into a copy of `target` while the Kindling-like writer writes."""
    db = work / "merge.db"
    _remove(db)
    shutil.copy(target, db)
    stop = work / "stop"
    stop.unlink(missing_ok=True)
    writer = subprocess.Popen(
        [sys.executable, str(WRITER), str(db), str(stop), WRITER_PREFIX],
        stdout=subprocess.PIPE,
        text=True,
    )
    assert writer.stdout is not None and writer.stdout.readline() == "ready\n"
    time.sleep(0.5)  # the writer is in its stride before the merge starts
    try:
        seconds = _run([str(CLI), "import", "--quiet", "--db", str(db), str(bundle)])
    finally:
        time.sleep(0.5)
        stop.touch()
        out, _ = writer.communicate(timeout=60)
    lines = [line.split() for line in out.splitlines() if line != "done"]
    waits = [float(line[2]) for line in lines]
    failed = sum(line[0] == "failed" for line in lines)
    ok = len(lines) - failed
    conn = sqlite3.connect(f"file:{db}?mode=ro", uri=True)
    kept = conn.execute("SELECT count(*) FROM observations WHERE id LIKE ?", (WRITER_PREFIX + "%",))
    if kept.fetchone()[0] != ok:
        sys.exit("bench: the merge lost rows the writer committed")
    conn.close()
    _remove(db)
    return Merge(seconds, len(lines), failed, max(waits))


def bench(n: int, runs: int, cache: Path) -> str:
    """Run the scenario `runs` times at `n` observations; the section for RESULTS.md."""
    target, bundle = inputs(n, cache)
    with tempfile.TemporaryDirectory(dir=cache) as folder:
        work = Path(folder)
        merges: list[Merge] = []
        news: list[float] = []
        loads = [os.getloadavg()[0]]
        for i in range(runs):
            for side in ("merge", "new") if i % 2 == 0 else ("new", "merge"):
                if side == "merge":
                    merges.append(merge_with_writer(target, bundle, work))
                    shown = (
                        f"{merges[-1].seconds:.2f} s, longest wait {merges[-1].longest_wait:.3f} s"
                    )
                else:
                    fresh = work / "new.db"
                    _remove(fresh)
                    news.append(
                        _run([str(CLI), "import", "--quiet", "--db", str(fresh), str(bundle)])
                    )
                    shown = f"{news[-1]:.2f} s"
                loads.append(os.getloadavg()[0])
                print(f"bench: live merge {n:,} {side:<5} {shown}", flush=True)
    merge_s = statistics.median(m.seconds for m in merges)
    new_s = statistics.median(news)
    failed = sum(m.failed for m in merges)
    writes = sum(m.writes for m in merges)
    longest = max(m.longest_wait for m in merges)
    ratio = merge_s / new_s
    return "\n".join(
        [
            f"Merge of a {n:,}-observation bundle (new ids) into a {n:,}-observation database "
            f"while a Kindling-like writer inserts one observation every 50 ms (busy timeout "
            f"5 s); {runs} runs a side, medians. Load average (1 min) during the runs: "
            f"{min(loads):.1f} to {max(loads):.1f} on {os.cpu_count()} cores.",
            "",
            "| measure | value | target | met |",
            "|---|---:|---:|:---:|",
            f"| failed writes | {failed} of {writes} | 0 | {_met(failed == 0)} |",
            f"| longest writer wait | {longest:.2f} s | <= {MAX_WAIT_S} s | "
            f"{_met(longest <= MAX_WAIT_S)} |",
            f"| merge, with the writer | {merge_s:.2f} s | | |",
            f"| import into a new database | {new_s:.2f} s | | |",
            f"| merge / new | {ratio:.2f}x | <= {MAX_RATIO}x | {_met(ratio <= MAX_RATIO)} |",
            "",
        ]
    )


def _met(ok: bool) -> str:
    return "yes" if ok else "**no**"


def write_section(text: str, output: str) -> None:
    """Print the section, or put it between its markers in `output`."""
    if output == "-":
        print(text)
        return
    path = Path(output)
    previous = path.read_text()
    if BEGIN not in previous or END not in previous:
        previous += f"\n{BEGIN}\n{END}\n"
    head, rest = previous.split(BEGIN, 1)
    path.write_text(f"{head}{BEGIN}\n{text}{END}{rest.split(END, 1)[1]}")
    print(f"bench: wrote {path}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--size", type=int, default=200_000)
    parser.add_argument("--runs", type=int, default=1)
    parser.add_argument("--cache", type=Path, default=BENCH / "cache")
    parser.add_argument("--output", default="-", help="RESULTS.md to update, or - for stdout")
    args = parser.parse_args()
    args.cache.mkdir(parents=True, exist_ok=True)
    write_section(bench(args.size, args.runs, args.cache), args.output)


if __name__ == "__main__":
    main()
