"""Benchmark kindling-bundle against the obvious alternative: `sqlite3 .dump` piped through zstd.

Not a test: it takes minutes and its numbers depend on the machine. It runs the real CLI as
subprocesses (what users run) and, in the same run and alternating with them, the baseline
pipelines, on sample databases made with `kindling-bundle sample` (cached in bench/cache/):

- export:  `kindling-bundle export --db DB out.kbundle`
           vs  `sqlite3 DB .dump | zstd -3 > out.sql.zst`
- import:  `kindling-bundle import --db new.db out.kbundle` (FTS and the integrity check included)
           vs  `zstd -dc out.sql.zst | sqlite3 new.db`
- verify:  `kindling-bundle verify out.kbundle`  vs  `zstd -dc out.kbundle | sha256sum`
- size:    out.kbundle  vs  out.sql.zst

Each timing is the median of the runs; the ratio is ours / baseline. Peak resident memory of
each of our commands comes from the kernel (wait4's ru_maxrss of the child). The results, with
the machine and date, replace the generated part of bench/RESULTS.md (between its markers).

    .venv/bin/python bench/run.py                        # the full benchmark (200k and 1M)
    .venv/bin/python bench/run.py --sizes 20000 --output -   # a quick look while developing
"""

from __future__ import annotations

import argparse
import compileall
import os
import platform
import shutil
import sqlite3
import statistics
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path

BENCH = Path(__file__).resolve().parent
REPO = BENCH.parent
CLI = Path(sys.executable).parent / "kindling-bundle"
SEED = 1
BEGIN, END = "<!-- bench:begin -->", "<!-- bench:end -->"

# ours / baseline, at most (the targets of issue 7)
TARGETS = {"export": 1.0, "import": 1.0, "verify": 2.0, "size": 0.6}
MEMORY_LIMIT_MB = 150
MEMORY_GROWTH = 1.2
GNU_TIME = "/usr/bin/time" if Path("/usr/bin/time").exists() else None


@dataclass
class Run:
    seconds: float
    peak_mb: float


@dataclass
class SizeResult:
    observations: int
    ours: dict[str, list[Run]] = field(default_factory=dict)
    baseline: dict[str, list[Run]] = field(default_factory=dict)
    bundle_bytes: int = 0
    dump_bytes: int = 0

    def median(self, side: str, op: str) -> float:
        return statistics.median(r.seconds for r in getattr(self, side)[op])

    def peak(self, op: str) -> float:
        return max(r.peak_mb for r in self.ours[op])

    def ratio(self, op: str) -> float:
        if op == "size":
            return self.bundle_bytes / self.dump_bytes
        return self.median("ours", op) / self.median("baseline", op)


def timed(argv: list[str], *, shell: bool = False) -> Run:
    """Run a command to completion: its wall time, and the peak RSS of its biggest process.

    The peak comes from GNU time when installed, else from wait4. (A child's ru_maxrss counts
    from the fork, so through wait4 a small command reports at least this script's own RSS.)"""
    command = ["/bin/sh", "-c", argv[0]] if shell else argv
    with tempfile.NamedTemporaryFile("r") as peak_file:
        if GNU_TIME:
            command = [GNU_TIME, "-f", "%M", "-o", peak_file.name, *command]
        started = time.perf_counter()
        proc = subprocess.Popen(command, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
        stderr = proc.stderr.read() if proc.stderr else b""
        _, status, usage = os.wait4(proc.pid, 0)
        elapsed = time.perf_counter() - started
        proc.returncode = os.waitstatus_to_exitcode(status)
        if proc.returncode != 0:
            shown = argv[0] if shell else " ".join(argv)
            sys.exit(f"bench: `{shown}` failed ({proc.returncode}): {stderr.decode().strip()}")
        peak_kib = int(peak_file.read().split()[-1]) if GNU_TIME else usage.ru_maxrss
    return Run(elapsed, peak_kib / 1024)


def remove_database(path: Path) -> None:
    for suffix in ("", "-wal", "-shm", "-journal"):
        Path(f"{path}{suffix}").unlink(missing_ok=True)


def sample_database(n: int, cache: Path) -> Path:
    """The cached sample database of `n` observations, made with the CLI when absent."""
    path = cache / f"sample-{n}.db"
    if not path.exists():
        print(f"bench: generating {path} ({n:,} observations; minutes for a million)", flush=True)
        partial = cache / f"sample-{n}.partial.db"
        remove_database(partial)
        timed([str(CLI), "sample", str(partial), "-n", str(n), "--seed", str(SEED), "--quiet"])
        os.replace(partial, path)
    return path


def compile_bytecode() -> None:
    """Compile our modules to bytecode first, as installing a package does. In an editable
    checkout under PYTHONDONTWRITEBYTECODE=1 (set on some machines, this one included) nothing
    caches it, and every command compiled ~20 modules from source: ~40 ms a run, which no
    installed copy pays. (Python still reads bytecode files under that variable.)"""
    compileall.compile_dir(REPO / "kindling_bundle", quiet=1)


def warm(path: Path) -> None:
    """Read a file once so that both sides start with it in the page cache."""
    with path.open("rb") as handle:
        while handle.read(1 << 24):
            pass


def bench_size(n: int, runs: int, cache: Path, work: Path) -> SizeResult:
    db = sample_database(n, cache)
    warm(db)
    result = SizeResult(n)
    bundle, dump = work / "out.kbundle", work / "out.sql.zst"
    ours_db, base_db = work / "ours.db", work / "baseline.db"
    commands = {
        "export": (
            lambda: timed([str(CLI), "export", "--quiet", "--db", str(db), str(bundle)]),
            lambda: timed([f"sqlite3 '{db}' .dump | zstd -q -3 > '{dump}'"], shell=True),
        ),
        "import": (
            lambda: timed([str(CLI), "import", "--quiet", "--db", str(ours_db), str(bundle)]),
            lambda: timed([f"zstd -dc '{dump}' | sqlite3 '{base_db}'"], shell=True),
        ),
        "verify": (
            lambda: timed([str(CLI), "verify", "--quiet", str(bundle)]),
            lambda: timed([f"zstd -dc '{bundle}' | sha256sum"], shell=True),
        ),
    }
    for op, (ours, baseline) in commands.items():
        result.ours[op], result.baseline[op] = [], []
        for i in range(runs):
            if op == "import":
                remove_database(ours_db)
                remove_database(base_db)
            # alternate which side goes first, so neither always inherits a warmer cache
            order = [("ours", ours), ("baseline", baseline)]
            for side, command in order if i % 2 == 0 else reversed(order):
                run = command()
                getattr(result, side)[op].append(run)
                if op == "import" and side == "ours":
                    check_restored(db, ours_db)
                print(
                    f"bench: {n:>9,} {op:<6} {side:<8} {run.seconds:7.2f} s {run.peak_mb:7.1f} MB",
                    flush=True,
                )
    result.bundle_bytes, result.dump_bytes = bundle.stat().st_size, dump.stat().st_size
    remove_database(ours_db)
    remove_database(base_db)
    return result


def check_restored(source: Path, restored: Path) -> None:
    """The benchmark means nothing unless our import restored every row."""
    tables = ("observations", "capsules", "capsule_observations", "summaries", "pins")
    counts = []
    for path in (source, restored):
        conn = sqlite3.connect(f"file:{path}?mode=ro", uri=True)
        counts.append([conn.execute(f"SELECT count(*) FROM {t}").fetchone()[0] for t in tables])
        conn.close()
    if counts[0] != counts[1]:
        sys.exit(f"bench: the restored database differs from the source: {counts}")


def machine() -> str:
    cpu = platform.processor() or platform.machine()
    with open("/proc/cpuinfo") as info:
        for line in info:
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    with open("/proc/meminfo") as info:
        mem_kb = int(next(line for line in info if line.startswith("MemTotal")).split()[1])
    zstd_version = subprocess.run(["zstd", "-V"], capture_output=True, text=True).stdout.strip()
    commit = subprocess.run(
        ["git", "-C", str(REPO), "rev-parse", "--short", "HEAD"], capture_output=True, text=True
    ).stdout.strip()
    return (
        f"{os.cpu_count()} cores ({cpu}), {mem_kb / 1024 / 1024:.1f} GiB memory, "
        f"{platform.system()} {platform.release()}; Python {platform.python_version()}, "
        f"SQLite {sqlite3.sqlite_version}, {zstd_version.split(',')[0].strip('* ')}; "
        f"kindling-bundle at {commit or 'unknown commit'}"
    )


def verdict(ok: bool) -> str:
    return "yes" if ok else "**no**"


def report(results: list[SizeResult], runs: dict[int, int], elapsed: float) -> str:
    lines = [
        f"Measured {datetime.now(UTC):%Y-%m-%d %H:%M} UTC on {machine()}.",
        f"Runs per size: {', '.join(f'{n:,}: {r}' for n, r in runs.items())} (medians; ours and "
        f"the baseline alternate). Whole benchmark: {elapsed / 60:.1f} min.",
        "",
        "| observations | operation | ours | baseline | ours / baseline | target | met |",
        "|---:|---|---:|---:|---:|---:|:---:|",
    ]
    for r in results:
        for op in ("export", "import", "verify"):
            ratio = r.ratio(op)
            lines.append(
                f"| {r.observations:,} | {op} | {r.median('ours', op):.2f} s | "
                f"{r.median('baseline', op):.2f} s | {ratio:.2f}x | <= {TARGETS[op]:.1f}x | "
                f"{verdict(ratio <= TARGETS[op])} |"
            )
        ratio = r.ratio("size")
        lines.append(
            f"| {r.observations:,} | size | {r.bundle_bytes / 1e6:.1f} MB | "
            f"{r.dump_bytes / 1e6:.1f} MB | {ratio:.2f}x | <= {TARGETS['size']:.1f}x | "
            f"{verdict(ratio <= TARGETS['size'])} |"
        )
    lines += [
        "",
        f"Peak resident memory of our commands (target: <= {MEMORY_LIMIT_MB} MB at every size, "
        f"and at most {MEMORY_GROWTH}x the figure at the smallest size):",
        "",
        "| command | " + " | ".join(f"{r.observations:,}" for r in results) + " | growth | met |",
        "|---|" + "---:|" * len(results) + "---:|:---:|",
    ]
    for op in ("export", "import", "verify"):
        peaks = [r.peak(op) for r in results]
        growth = peaks[-1] / peaks[0]
        ok = max(peaks) <= MEMORY_LIMIT_MB and growth <= MEMORY_GROWTH
        lines.append(
            f"| {op} | " + " | ".join(f"{p:.0f} MB" for p in peaks) + f" | {growth:.2f}x | "
            f"{verdict(ok)} |"
        )
    return "\n".join(lines) + "\n"


def write_report(text: str, output: str) -> None:
    if output == "-":
        print(text)
        return
    path = Path(output)
    previous = path.read_text() if path.exists() else f"# Benchmark results\n\n{BEGIN}\n{END}\n"
    if BEGIN not in previous or END not in previous:
        sys.exit(f"bench: {path} lacks the {BEGIN} ... {END} markers")
    head, rest = previous.split(BEGIN, 1)
    tail = rest.split(END, 1)[1]
    path.write_text(f"{head}{BEGIN}\n{text}{END}{tail}")
    print(f"bench: wrote {path}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--sizes", type=int, nargs="+", default=[200_000, 1_000_000])
    parser.add_argument(
        "--runs",
        type=int,
        default=5,
        help="runs per size and side [default: 5; a 1,000,000 import takes ~45 s, and this VM's "
        "speed drifts over minutes, so fewer let one slow spell decide a median]",
    )
    parser.add_argument("--cache", type=Path, default=BENCH / "cache")
    parser.add_argument("--output", default=str(BENCH / "RESULTS.md"), help="or - for stdout")
    args = parser.parse_args()
    for tool in ("sqlite3", "zstd", "sha256sum"):
        if shutil.which(tool) is None:
            sys.exit(f"bench: the baseline needs `{tool}` on PATH")
    if not CLI.exists():
        sys.exit(f"bench: {CLI} not found; run with the project's .venv/bin/python")
    args.cache.mkdir(parents=True, exist_ok=True)
    work = args.cache / "work"
    work.mkdir(exist_ok=True)
    compile_bytecode()
    started = time.perf_counter()
    runs = dict.fromkeys(sorted(args.sizes), args.runs)
    results = [bench_size(n, r, args.cache, work) for n, r in runs.items()]
    write_report(report(results, runs, time.perf_counter() - started), args.output)
    import incremental  # issue 21: increments and the archive, in a section of their own

    incremental.run(args.sizes, min(args.runs, 3), args.cache, args.output)


if __name__ == "__main__":
    main()
