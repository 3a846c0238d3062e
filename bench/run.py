"""Benchmark kindling-bundle against the obvious alternative: `sqlite3 .dump` piped through zstd.

Not a test: it takes minutes and its numbers depend on the machine. It runs the real CLI as
subprocesses (what users run) and, in the same run and alternating with them, the baseline
pipelines, on sample databases made with `kindling-bundle sample` (cached in bench/cache/, by
text profile and size): the realistic text (Python's own sources, diffs, tracebacks, command
output and prose) at 200,000 and 1,000,000 observations, and the small-vocabulary word salad at
200,000, a hard case for ours because it suits the baseline:

- export:  `kindling-bundle export --db DB out.kbundle`
           vs  `sqlite3 DB .dump | zstd -3 > out.sql.zst`
- import:  `kindling-bundle import --db new.db out.kbundle` (FTS and the integrity check included)
           vs  `zstd -dc out.sql.zst | sqlite3 new.db`
- verify:  `kindling-bundle verify out.kbundle`  vs  `zstd -dc out.kbundle | sha256sum`
- size:    out.kbundle  vs  out.sql.zst
- secrets: `export --scrub` and `scan DB` vs a plain `export` of the same database (issue 20), on
           the realistic sample of each --scrub-sizes, and the rules' score on the labelled corpus
- encrypted: `export -r KEY` and `verify -i KEY` vs the same commands on a plain bundle (issue 18),
           with their peak memory, at each of --sizes

Each timing is the median of the runs; the ratio is ours / baseline. Peak resident memory of
each of our commands comes from the kernel (wait4's ru_maxrss of the child). Each dataset's
content size (MB of observation text) and full-text vocabulary (distinct terms of the FTS
index, by fts5vocab) are reported with it. The results, with the machine and date, replace the
generated parts of bench/RESULTS.md (between their markers: the main tables, the secrets section
and the encryption section each have their own, so `--scrub` or `--encryption` rewrites only
its own).

    .venv/bin/python bench/run.py                        # the full benchmark
    .venv/bin/python bench/run.py --sizes 20000 --small-sizes --scrub-sizes 20000 --output -
    .venv/bin/python bench/run.py --encryption --sizes 200000  # encrypted vs plain (issue 18)
    .venv/bin/python bench/run.py --scrub                      # scrub and scan (issue 20)
"""

from __future__ import annotations

import argparse
import compileall
import json
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

# ours / baseline, at most, by text profile (the targets of issue 17)
TARGETS = {
    "realistic": {"export": 0.7, "import": 0.8, "verify": 1.3, "size": 0.5},
    "small-vocabulary": {"export": 1.0, "import": 1.0, "verify": 2.0, "size": 1.0},
}
# issue 20: at most this many times a plain export; the corpus score, at least / at most
SCRUB_TARGETS = {"export --scrub": 2.0, "scan": 1.5}
CORPUS_RECALL, CORPUS_BENIGN_CHANGED = 0.98, 0.01
MEMORY_LIMIT_MB = 150
MEMORY_GROWTH = 1.2
GNU_TIME = "/usr/bin/time" if Path("/usr/bin/time").exists() else None


@dataclass
class Run:
    seconds: float
    peak_mb: float


@dataclass
class Dataset:
    """A cached sample database and what it holds."""

    text: str
    observations: int
    path: Path
    content_mb: float
    vocabulary: int
    generated_s: float  # how long `kindling-bundle sample` took to make it (when first cached)

    @property
    def label(self) -> str:
        return f"{self.text} {self.observations:,}"


@dataclass
class SizeResult:
    dataset: Dataset
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

    def target(self, op: str) -> float:
        return TARGETS[self.dataset.text][op]


def timed(argv: list[str], *, shell: bool = False, ok: tuple[int, ...] = (0,)) -> Run:
    """Run a command to completion: its wall time, and the peak RSS of its biggest process.
    An exit code not in `ok` ends the benchmark.

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
        if proc.returncode not in ok:
            shown = argv[0] if shell else " ".join(argv)
            sys.exit(f"bench: `{shown}` failed ({proc.returncode}): {stderr.decode().strip()}")
        peak_kib = int(peak_file.read().split()[-1]) if GNU_TIME else usage.ru_maxrss
    return Run(elapsed, peak_kib / 1024)


def remove_database(path: Path) -> None:
    for suffix in ("", "-wal", "-shm", "-journal"):
        Path(f"{path}{suffix}").unlink(missing_ok=True)


def sample_database(text: str, n: int, cache: Path) -> Dataset:
    """The cached sample database of `n` observations of `text`, made with the CLI when absent,
    with its content size and vocabulary (measured once, kept beside it)."""
    path = cache / f"sample-{text}-{n}.db"
    facts = cache / f"sample-{text}-{n}.json"
    generated = None
    if not path.exists():
        print(f"bench: generating {path} ({n:,} observations; minutes for a million)", flush=True)
        partial = cache / f"sample-{text}-{n}.partial.db"
        remove_database(partial)
        command = [str(CLI), "sample", str(partial), "-n", str(n), "--seed", str(SEED)]
        made = timed([*command, "--text", text, "--quiet"])
        os.replace(partial, path)
        facts.unlink(missing_ok=True)
        generated = made.seconds
    if not facts.exists():
        conn = sqlite3.connect(f"file:{path}?mode=ro", uri=True)
        content = conn.execute("SELECT sum(length(CAST(content AS BLOB))) FROM observations")
        content_bytes = content.fetchone()[0] or 0
        conn.execute(
            "CREATE VIRTUAL TABLE temp.vocabulary USING fts5vocab(main, observations_fts, row)"
        )
        vocabulary = conn.execute("SELECT count(*) FROM temp.vocabulary").fetchone()[0]
        conn.close()
        known = {"content_mb": content_bytes / 1e6, "vocabulary": vocabulary}
        facts.write_text(json.dumps({**known, "generated_s": generated or float("nan")}))
    known = json.loads(facts.read_text())
    return Dataset(text, n, path, known["content_mb"], known["vocabulary"], known["generated_s"])


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


def bench_size(dataset: Dataset, runs: int, work: Path) -> SizeResult:
    db, label = dataset.path, dataset.label
    warm(db)
    result = SizeResult(dataset)
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
                    f"bench: {label:>26} {op:<6} {side:<8} {run.seconds:7.2f} s "
                    f"{run.peak_mb:7.1f} MB",
                    flush=True,
                )
    result.bundle_bytes, result.dump_bytes = bundle.stat().st_size, dump.stat().st_size
    remove_database(ours_db)
    remove_database(base_db)
    return result


@dataclass
class ScrubResult:
    dataset: Dataset
    runs: dict[str, list[Run]] = field(default_factory=dict)

    def median(self, op: str) -> float:
        return statistics.median(r.seconds for r in self.runs[op])

    def ratio(self, op: str) -> float:
        return self.median(op) / self.median("export")

    def peak(self, op: str) -> float:
        return max(run.peak_mb for run in self.runs[op])


def bench_scrub(dataset: Dataset, runs: int, work: Path) -> ScrubResult:
    """`export --scrub` and `scan` against a plain export of the same database, in turn
    (scan exits 1 when it finds something, as it does on the realistic sample)."""
    db, bundle = dataset.path, work / "scrub.kbundle"
    warm(db)
    commands = {
        "export": [str(CLI), "export", "--quiet", "--db", str(db), str(bundle)],
        "export --scrub": [str(CLI), "export", "--quiet", "--scrub", "--db", str(db), str(bundle)],
        "scan": [str(CLI), "scan", "--quiet", str(db)],
    }
    result = ScrubResult(dataset, {op: [] for op in commands})
    for i in range(runs):
        order = list(commands.items())
        for op, argv in order[i % len(order) :] + order[: i % len(order)]:
            run = timed(argv, ok=(0, 1))
            result.runs[op].append(run)
            print(
                f"bench: {dataset.label:>26} {op:<15} {run.seconds:7.2f} s {run.peak_mb:7.1f} MB",
                flush=True,
            )
    bundle.unlink(missing_ok=True)
    return result


def scrub_report(results: list[ScrubResult], runs: int) -> str:
    """The secrets section (between its own markers): the corpus score, then each size's
    times against a plain export of the same database, with each command's peak memory."""
    from kindling_bundle.scrub import Scanner
    from kindling_bundle.scrub.corpus import evaluate

    scanner = Scanner.load()
    score = evaluate(scanner)
    clean = score.false_positive_rate <= CORPUS_BENIGN_CHANGED
    lines = [
        f"Measured {datetime.now(UTC):%Y-%m-%d %H:%M} UTC on {machine()}; {runs} runs a command "
        f"(medians; the commands take turns), {load_average()}.",
        "",
        f"Corpus: the rules ({scanner.name} {scanner.version}) found {score.found} of "
        f"{score.secrets} planted secrets ({score.recall:.1%}; target >= {CORPUS_RECALL:.0%}: "
        f"{verdict(score.recall >= CORPUS_RECALL)}) and changed {score.flagged} of "
        f"{score.benign} benign texts ({score.false_positive_rate:.2%}; target <= "
        f"{CORPUS_BENIGN_CHANGED:.0%}: {verdict(clean)}).",
    ]
    if results:
        lines += [
            "",
            "| sample text | observations | command | ours | plain export | ours / plain | target "
            "| met | peak memory | plain export's peak |",
            "|---|---:|---|---:|---:|---:|---:|:---:|---:|---:|",
        ]
    for r in results:
        for op, target in SCRUB_TARGETS.items():
            ratio = r.ratio(op)
            lines.append(
                f"| {r.dataset.text} | {r.dataset.observations:,} | {op} | {r.median(op):.2f} s "
                f"| {r.median('export'):.2f} s | {ratio:.2f}x | <= {target:.1f}x "
                f"| {verdict(ratio <= target)} | {r.peak(op):.0f} MB | {r.peak('export'):.0f} MB |"
            )
    return "\n".join(lines) + "\n"


SCRUB_BEGIN, SCRUB_END = "<!-- bench:scrub:begin -->", "<!-- bench:scrub:end -->"
ENCRYPTION_TARGET = 1.15
ENCRYPTION_BEGIN, ENCRYPTION_END = (
    "<!-- bench:encryption:begin -->",
    "<!-- bench:encryption:end -->",
)


@dataclass
class EncryptionResult:
    observations: int
    runs: dict[tuple[str, str], list[Run]] = field(default_factory=dict)
    """(operation, "plain" or "encrypted"): the runs."""

    def median(self, op: str, side: str) -> float:
        return statistics.median(r.seconds for r in self.runs[op, side])

    def peak(self, op: str, side: str) -> float:
        return max(r.peak_mb for r in self.runs[op, side])

    def ratio(self, op: str) -> float:
        return self.median(op, "encrypted") / self.median(op, "plain")


def bench_encryption(n: int, runs: int, cache: Path, work: Path) -> EncryptionResult:
    """Encrypted export and verify against the same commands on the plain bundle (issue 18:
    at most ENCRYPTION_TARGET times as long), to a key `age-keygen` makes for the run."""
    db = sample_database("realistic", n, cache).path
    warm(db)
    key = work / "age-key.txt"
    key.unlink(missing_ok=True)
    timed(["age-keygen", "-o", str(key)])
    public = subprocess.run(["age-keygen", "-y", str(key)], capture_output=True, text=True)
    plain, sealed = work / "plain.kbundle", work / "encrypted.kbundle"
    export = [str(CLI), "export", "--quiet", "--db", str(db)]
    commands = {
        "export": (
            lambda: timed([*export, str(plain)]),
            lambda: timed([*export, "-r", public.stdout.strip(), str(sealed)]),
        ),
        "verify": (
            lambda: timed([str(CLI), "verify", "--quiet", str(plain)]),
            lambda: timed([str(CLI), "verify", "--quiet", "-i", str(key), str(sealed)]),
        ),
    }
    result = EncryptionResult(n)
    for op, (without, with_key) in commands.items():
        for i in range(runs):
            order = [("plain", without), ("encrypted", with_key)]
            for side, command in order if i % 2 == 0 else reversed(order):
                run = command()
                result.runs.setdefault((op, side), []).append(run)
                print(
                    f"bench: {n:>9,} {op:<6} {side:<9} {run.seconds:7.2f} s {run.peak_mb:7.1f} MB",
                    flush=True,
                )
    for path in (plain, sealed, key):
        path.unlink(missing_ok=True)
    return result


def encryption_report(results: list[EncryptionResult], runs: int) -> str:
    """The encryption section: times against plain, and peak memory across the sizes (issue 7's
    bounds, which issue 18 keeps for encrypted bundles)."""
    lines = [
        f"Measured {datetime.now(UTC):%Y-%m-%d %H:%M} UTC on {machine()}; {runs} runs a side "
        f"(medians; the sides alternate), {load_average()}.",
        "",
        "| observations | operation | encrypted | plain | encrypted / plain | target | met "
        "| peak memory | plain's peak |",
        "|---:|---|---:|---:|---:|---:|:---:|---:|---:|",
    ]
    for r in results:
        for op in ("export", "verify"):
            ratio = r.ratio(op)
            lines.append(
                f"| {r.observations:,} | {op} | {r.median(op, 'encrypted'):.2f} s | "
                f"{r.median(op, 'plain'):.2f} s | {ratio:.2f}x | <= {ENCRYPTION_TARGET:.2f}x | "
                f"{verdict(ratio <= ENCRYPTION_TARGET)} | {r.peak(op, 'encrypted'):.0f} MB | "
                f"{r.peak(op, 'plain'):.0f} MB |"
            )
    if results:
        sizes = " | ".join(f"{r.observations:,}" for r in results)
        lines += [
            "",
            f"Peak memory of the encrypted commands (target: <= {MEMORY_LIMIT_MB} MB at every "
            f"size, and at most {MEMORY_GROWTH}x from the smallest to the largest):",
            "",
            f"| command | {sizes} | growth | met |",
            "|---|" + "---:|" * len(results) + "---:|:---:|",
        ]
    for op in ("export", "verify") if results else ():
        peaks = [r.peak(op, "encrypted") for r in results]
        growth = peaks[-1] / peaks[0]
        ok = max(peaks) <= MEMORY_LIMIT_MB and growth <= MEMORY_GROWTH
        cells = " | ".join(f"{p:.0f} MB" for p in peaks)
        flag = "-r" if op == "export" else "-i"
        lines.append(f"| {op} {flag} | {cells} | {growth:.2f}x | {verdict(ok)} |")
    return "\n".join(lines) + "\n"


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


def load_average() -> str:
    """The machine's load while measuring: on a shared machine it says how far to trust a time."""
    one, five, fifteen = os.getloadavg()
    return f"load average {one:.1f} / {five:.1f} / {fifteen:.1f} at the end"


def verdict(ok: bool) -> str:
    return "yes" if ok else "**no**"


def report(results: list[SizeResult], runs: int, elapsed: float) -> str:
    lines = [
        f"Measured {datetime.now(UTC):%Y-%m-%d %H:%M} UTC on {machine()}.",
        f"Runs per dataset and side: {runs} (medians; ours and the baseline alternate). Whole "
        f"benchmark: {elapsed / 60:.1f} min.",
        "",
        "| sample text | observations | content | FTS vocabulary | database | generated in |",
        "|---|---:|---:|---:|---:|---:|",
    ]
    for r in results:
        d = r.dataset
        made = "cached" if d.generated_s != d.generated_s else f"{d.generated_s:.0f} s"  # NaN
        lines.append(
            f"| {d.text} | {d.observations:,} | {d.content_mb:.1f} MB | {d.vocabulary:,} terms | "
            f"{d.path.stat().st_size / 1e6:.0f} MB | {made} |"
        )
    lines += [
        "",
        "| sample text | observations | operation | ours | baseline | ours / baseline | target "
        "| met |",
        "|---|---:|---|---:|---:|---:|---:|:---:|",
    ]
    for r in results:
        head = f"| {r.dataset.text} | {r.dataset.observations:,}"
        for op in ("export", "import", "verify"):
            ratio = r.ratio(op)
            lines.append(
                f"{head} | {op} | {r.median('ours', op):.2f} s | "
                f"{r.median('baseline', op):.2f} s | {ratio:.2f}x | <= {r.target(op):.1f}x | "
                f"{verdict(ratio <= r.target(op))} |"
            )
        ratio = r.ratio("size")
        lines.append(
            f"{head} | size | {r.bundle_bytes / 1e6:.1f} MB | "
            f"{r.dump_bytes / 1e6:.1f} MB | {ratio:.2f}x | <= {r.target('size'):.1f}x | "
            f"{verdict(ratio <= r.target('size'))} |"
        )
    realistic = [r for r in results if r.dataset.text == "realistic"] or results
    lines += [
        "",
        f"Peak resident memory of our commands (target: <= {MEMORY_LIMIT_MB} MB on every dataset, "
        f"and at most {MEMORY_GROWTH}x from the smallest to the largest realistic sample):",
        "",
        "| command | " + " | ".join(r.dataset.label for r in results) + " | growth | met |",
        "|---|" + "---:|" * len(results) + "---:|:---:|",
    ]
    for op in ("export", "import", "verify"):
        peaks = [r.peak(op) for r in results]
        growth = realistic[-1].peak(op) / realistic[0].peak(op)
        ok = max(peaks) <= MEMORY_LIMIT_MB and growth <= MEMORY_GROWTH
        lines.append(
            f"| {op} | " + " | ".join(f"{p:.0f} MB" for p in peaks) + f" | {growth:.2f}x | "
            f"{verdict(ok)} |"
        )
    return "\n".join(lines) + "\n"


def write_report(text: str, output: str, begin: str = BEGIN, end: str = END) -> None:
    if output == "-":
        print(text)
        return
    path = Path(output)
    previous = path.read_text() if path.exists() else f"# Benchmark results\n\n{begin}\n{end}\n"
    if begin not in previous or end not in previous:
        sys.exit(f"bench: {path} lacks the {begin} ... {end} markers")
    head, rest = previous.split(begin, 1)
    tail = rest.split(end, 1)[1]
    path.write_text(f"{head}{begin}\n{text}{end}{tail}")
    print(f"bench: wrote {path}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument(
        "--sizes",
        type=int,
        nargs="+",
        default=[200_000, 1_000_000],
        help="observations of the realistic samples [default: 200000 1000000]",
    )
    parser.add_argument(
        "--small-sizes",
        type=int,
        nargs="*",
        default=[200_000],
        help="observations of the small-vocabulary samples (none: leave them out) "
        "[default: 200000]",
    )
    parser.add_argument(
        "--scrub-sizes",
        type=int,
        nargs="*",
        default=[200_000],
        help="observations of the realistic samples on which `export --scrub` and `scan` are "
        "timed against a plain export (none: leave them out) [default: 200000]",
    )
    parser.add_argument(
        "--runs",
        type=int,
        default=5,
        help="runs per size and side [default: 5; a 1,000,000 import takes ~45 s, and this VM's "
        "speed drifts over minutes, so fewer let one slow spell decide a median]",
    )
    parser.add_argument("--cache", type=Path, default=BENCH / "cache")
    parser.add_argument("--output", default=str(BENCH / "RESULTS.md"), help="or - for stdout")
    parser.add_argument(
        "--encryption",
        action="store_true",
        help="only the encryption section: encrypted export and verify against plain ones at "
        "each of --sizes (needs age-keygen); with --scrub, both sections",
    )
    parser.add_argument(
        "--scrub",
        action="store_true",
        help="only the secrets section: `export --scrub` and `scan` at each of --scrub-sizes, "
        "and the corpus score",
    )
    parser.add_argument(
        "--live-merge",
        type=int,
        default=200_000,
        metavar="N",
        help="then the merge beside a Kindling writer at N observations (bench/live_merge.py; "
        "0 to skip) [default: 200000]",
    )
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
    only = args.scrub or args.encryption
    if args.scrub or not only:
        scrubs = [
            bench_scrub(sample_database("realistic", n, args.cache), args.runs, work)
            for n in sorted(args.scrub_sizes)
        ]
        write_report(scrub_report(scrubs, args.runs), args.output, SCRUB_BEGIN, SCRUB_END)
    if args.encryption or not only:
        encrypted = [bench_encryption(n, args.runs, args.cache, work) for n in sorted(args.sizes)]
        report_text = encryption_report(encrypted, args.runs)
        write_report(report_text, args.output, ENCRYPTION_BEGIN, ENCRYPTION_END)
    if only:
        return
    started = time.perf_counter()
    wanted = [("realistic", n) for n in sorted(args.sizes)]
    wanted += [("small-vocabulary", n) for n in sorted(args.small_sizes)]
    datasets = [sample_database(text, n, args.cache) for text, n in wanted]
    results = [bench_size(dataset, args.runs, work) for dataset in datasets]
    elapsed = time.perf_counter() - started
    write_report(report(results, args.runs, elapsed), args.output)
    if args.live_merge:
        import live_merge

        live_merge.write_section(live_merge.bench(args.live_merge, 1, args.cache), args.output)
    import incremental  # issue 21: increments and the archive, in a section of their own

    incremental.run(args.sizes, min(args.runs, 3), args.cache, args.output)


if __name__ == "__main__":
    main()
