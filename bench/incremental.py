"""Benchmark incremental bundles and the archive (issue 21) on the realistic sample.

For each size: a copy of the cached sample database is backed up to an archive folder (a full
bundle), then seven working days follow, each adding 1% new observations (in new sessions, each
closed with a summary) and changing about 0.5% of all records (redactions, open capsules closed,
summaries replaced, pins deleted), each followed by a backup (an increment). Measured, with the
real CLI as subprocesses:

- size:     the first increment against the full bundle it is based on (target <= 3%);
- compute:  `export --base FULL` of the first day's changes (reading the base bundle, no cache)
            and `backup` (the daily path: the base's hashes come from the local cache), each
            against `export` of the same database (target <= 1.5x);
- restore:  `restore ARCHIVE latest` (the full bundle and 7 increments) against `import` of one
            full bundle of the same final state (target <= 1.3x), ours and the other alternating;
- memory:   the peak resident memory of each of our commands (target <= 150 MB).

    .venv/bin/python bench/incremental.py --sizes 200000 --output -
    (bench/run.py runs it after its own benchmark, writing its section of bench/RESULTS.md)
"""

from __future__ import annotations

import argparse
import os
import random
import shutil
import sqlite3
import statistics
import sys
import time
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path

BENCH = Path(__file__).resolve().parent
sys.path.insert(0, str(BENCH))

import run as common  # noqa: E402 - the benchmark's helpers: timed runs, cached samples

BEGIN, END = "<!-- incremental:begin -->", "<!-- incremental:end -->"
DAYS = 7
DAY_MS = 86_400_000
START_MS = 1_780_000_000_000
TARGETS = {"size": 0.03, "compute": 1.5, "restore": 1.3}
MEMORY_LIMIT_MB = 150

TABLES = ("observations", "capsules", "capsule_observations", "summaries", "pins")


@dataclass
class Result:
    observations: int
    full_bytes: int = 0
    increment_bytes: list[int] = field(default_factory=list)
    changed_share: float = 0.0
    new_share: float = 0.0
    times: dict[str, list[float]] = field(default_factory=dict)
    peaks: dict[str, float] = field(default_factory=dict)

    def add(self, name: str, run: common.Run) -> None:
        self.times.setdefault(name, []).append(run.seconds)
        self.peaks[name] = max(self.peaks.get(name, 0.0), run.peak_mb)
        print(
            f"bench: {self.observations:>9,} {name:<16} {run.seconds:7.2f} s {run.peak_mb:7.1f} MB",
            flush=True,
        )

    def median(self, name: str) -> float:
        return statistics.median(self.times[name])


def work_day(db: Path, day: int, n: int) -> tuple[int, int]:
    """One day of work on the database: (records new, records changed)."""
    from kindling_bundle.db.connection import open_store, write_transaction
    from kindling_bundle.db.writes import (
        close_capsule,
        create_capsule,
        delete_pin,
        insert_observations,
        insert_summary,
        redact_observation,
        replace_summary,
    )
    from kindling_bundle.records import Capsule, Observation, Summary

    rng = random.Random(day)
    now = START_MS + day * DAY_MS
    new_observations = n // 100
    per_session = 50
    conn = open_store(db)
    try:
        with write_transaction(conn):
            observations = [
                Observation(
                    id=f"day{day}-obs{i}",
                    kind=rng.choice(["message", "tool_call", "command", "file_diff"]),
                    content=" ".join(rng.choice(_WORDS) for _ in range(rng.randint(20, 200))),
                    provenance={"tool": "bench", "day": day, "i": i},
                    ts=now + i * 1000,
                    scope_ids={"sessionId": f"day{day}-s{i // per_session}", "repoId": "bench"},
                )
                for i in range(new_observations)
            ]
            insert_observations(conn, observations)
            sessions = 0
            for start in range(0, new_observations, per_session):
                cid = f"day{day}-s{start // per_session}"
                ids = [o.id for o in observations[start : start + per_session]]
                create_capsule(
                    conn,
                    Capsule(
                        id=cid,
                        type="session",
                        intent="bench work",
                        status="closed",
                        opened_at=now + start * 1000,
                        closed_at=now + (start + per_session) * 1000,
                        scope_ids={"sessionId": cid, "repoId": "bench"},
                        observation_ids=ids,
                    ),
                )
                insert_summary(
                    conn,
                    Summary(
                        id=f"{cid}-summary",
                        capsule_id=cid,
                        content="what the session did",
                        confidence=0.8,
                        created_at=now + (start + per_session) * 1000,
                        evidence_refs=ids[:3],
                    ),
                )
                sessions += 1
            changed = 0
            for (oid,) in conn.execute(
                "SELECT id FROM observations WHERE redacted = 0 ORDER BY random() LIMIT ?",
                (n * 4 // 1000,),
            ).fetchall():
                redact_observation(conn, oid)
                changed += 1
            for (cid,) in conn.execute(
                "SELECT id FROM capsules WHERE status = 'open' ORDER BY random() LIMIT ?",
                (n // 2000,),
            ).fetchall():
                close_capsule(conn, cid, now)
                changed += 1
            for sid, cid in conn.execute(
                "SELECT id, capsule_id FROM summaries s WHERE NOT EXISTS (SELECT 1 FROM pins "
                "WHERE target_type = 'summary' AND target_id = s.id) ORDER BY random() LIMIT ?",
                (n * 4 // 10000,),
            ).fetchall():
                replace_summary(
                    conn,
                    Summary(
                        id=f"{sid}-day{day}",
                        capsule_id=cid,
                        content="a better summary",
                        confidence=0.9,
                        created_at=now,
                    ),
                )
                changed += 2  # one gone, one new
            for (pid,) in conn.execute(
                "SELECT id FROM pins ORDER BY random() LIMIT ?", (n * 2 // 10000,)
            ).fetchall():
                delete_pin(conn, pid)
                changed += 1
    finally:
        conn.close()
    return new_observations + 2 * sessions, changed


_WORDS = [
    "the",
    "agent",
    "ran",
    "tests",
    "parser",
    "module",
    "found",
    "failing",
    "case",
    "tokenizer",
    "config",
    "cache",
]


def total_records(db: Path) -> int:
    conn = sqlite3.connect(f"file:{db}?mode=ro", uri=True)
    try:
        return sum(
            conn.execute(f"SELECT count(*) FROM {t}").fetchone()[0]
            for t in ("observations", "capsules", "summaries", "pins")
        )
    finally:
        conn.close()


def counts(db: Path) -> list[int]:
    conn = sqlite3.connect(f"file:{db}?mode=ro", uri=True)
    try:
        return [conn.execute(f"SELECT count(*) FROM {t}").fetchone()[0] for t in TABLES]
    finally:
        conn.close()


def bench_size(n: int, runs: int, cache: Path, work: Path) -> Result:
    cli = str(common.CLI)
    result = Result(n)
    source = common.sample_database("realistic", n, cache).path
    db = work / "incremental.db"
    common.remove_database(db)
    shutil.copy(source, db)
    archive = work / "archive"
    shutil.rmtree(archive, ignore_errors=True)
    state_cache = work / "state-cache"
    shutil.rmtree(state_cache, ignore_errors=True)
    os.environ["KINDLING_BUNDLE_CACHE"] = str(state_cache)
    full = work / "incremental-full.kbundle"

    def backup(day: int) -> common.Run:
        stamp = str(START_MS + day * DAY_MS + 3_600_000)
        return common.timed(
            [cli, "backup", "-q", "--db", str(db), str(archive), "--created-at", stamp]
        )

    result.add("backup full", backup(0))
    common.timed([cli, "export", "-q", "--db", str(db), str(full)])
    result.full_bytes = full.stat().st_size
    before = total_records(db)
    new, changed = work_day(db, 1, n)
    result.new_share, result.changed_share = new / before, changed / before
    common.warm(db)
    increment = work / "incremental-inc.kbundle"
    for i in range(runs):
        order = ["export", "export --base"] if i % 2 == 0 else ["export --base", "export"]
        for name in order:
            if name == "export":
                result.add(
                    name,
                    common.timed([cli, "export", "-q", "--db", str(db), str(work / "x.kbundle")]),
                )
            else:
                os.environ["KINDLING_BUNDLE_CACHE"] = "off"
                argv = [cli, "export", "-q", "--db", str(db), "--base", str(full), str(increment)]
                result.add(name, common.timed(argv))
                os.environ["KINDLING_BUNDLE_CACHE"] = str(state_cache)
    result.add("backup", backup(1))
    result.increment_bytes.append(next(archive.glob("*-incr-*")).stat().st_size)
    for day in range(2, DAYS + 1):
        work_day(db, day, n)
        result.add("backup", backup(day))
    final = work / "incremental-final.kbundle"
    common.timed([cli, "export", "-q", "--db", str(db), str(final)])
    ours, theirs = work / "restored-chain.db", work / "restored-full.db"
    for i in range(runs):
        for which in ["chain", "full"] if i % 2 == 0 else ["full", "chain"]:
            if which == "chain":
                common.remove_database(ours)
                result.add(
                    "restore chain",
                    common.timed([cli, "restore", "-q", str(archive), "--db", str(ours)]),
                )
            else:
                common.remove_database(theirs)
                result.add(
                    "import final",
                    common.timed([cli, "import", "-q", "--db", str(theirs), str(final)]),
                )
    if counts(ours) != counts(db) or counts(theirs) != counts(db):
        sys.exit(f"bench: a restore differs from the source: {counts(ours)} {counts(db)}")
    for path in (ours, theirs, db):
        common.remove_database(path)
    shutil.rmtree(archive, ignore_errors=True)
    shutil.rmtree(state_cache, ignore_errors=True)
    return result


def verdict(ok: bool) -> str:
    return "yes" if ok else "**no**"


def report(results: list[Result], runs: int, elapsed: float) -> str:
    lines = [
        f"Measured {datetime.now(UTC):%Y-%m-%d %H:%M} UTC on {common.machine()}.",
        f"Timings are medians of {runs} runs, ours and the other alternating. Whole benchmark: "
        f"{elapsed / 60:.1f} min.",
        "",
        "| observations | measure | ours | against | ratio | target | met |",
        "|---:|---|---:|---:|---:|---:|:---:|",
    ]
    for r in results:
        size = r.increment_bytes[0] / r.full_bytes
        lines.append(
            f"| {r.observations:,} | first increment's size ({r.new_share:.1%} new, "
            f"{r.changed_share:.2%} changed) | {r.increment_bytes[0] / 1e6:.2f} MB | "
            f"{r.full_bytes / 1e6:.1f} MB full | {size:.2%} | <= 3% | "
            f"{verdict(size <= TARGETS['size'])} |"
        )
        export = r.median("export")
        for name, label in (("export --base", "`export --base FULL` (reads the base)"),
                            ("backup", "`backup` (the base's hashes cached)")):  # fmt: skip
            ratio = r.median(name) / export
            lines.append(
                f"| {r.observations:,} | {label} | {r.median(name):.2f} s | {export:.2f} s "
                f"export | {ratio:.2f}x | <= 1.5x | {verdict(ratio <= TARGETS['compute'])} |"
            )
        ratio = r.median("restore chain") / r.median("import final")
        lines.append(
            f"| {r.observations:,} | `restore` of full + {DAYS} increments | "
            f"{r.median('restore chain'):.2f} s | {r.median('import final'):.2f} s import of "
            f"the final full | {ratio:.2f}x | <= 1.3x | {verdict(ratio <= TARGETS['restore'])} |"
        )
    lines += [
        "",
        f"Peak resident memory of our commands (target: <= {MEMORY_LIMIT_MB} MB):",
        "",
        "| command | " + " | ".join(f"{r.observations:,}" for r in results) + " | met |",
        "|---|" + "---:|" * len(results) + ":---:|",
    ]
    for name in ("backup full", "export --base", "backup", "restore chain"):
        peaks = [r.peaks[name] for r in results]
        lines.append(
            f"| {name} | " + " | ".join(f"{p:.0f} MB" for p in peaks) + " | "
            f"{verdict(max(peaks) <= MEMORY_LIMIT_MB)} |"
        )
    sizes = ", ".join(
        f"{r.observations:,}: " + " / ".join(f"{b / 1e3:.0f} kB" for b in r.increment_bytes)
        for r in results
    )
    lines += ["", f"Each day's backup: {sizes}."]
    return "\n".join(lines) + "\n"


def write_report(text: str, output: str) -> None:
    if output == "-":
        print(text)
        return
    path = Path(output)
    previous = path.read_text() if path.exists() else ""
    if BEGIN not in previous:
        previous += f"\n## Incremental bundles and the archive (issue 21)\n\n{BEGIN}\n{END}\n"
    head, rest = previous.split(BEGIN, 1)
    tail = rest.split(END, 1)[1]
    path.write_text(f"{head}{BEGIN}\n{text}{END}{tail}")
    print(f"bench: wrote {path}")


def run(sizes: list[int], runs: int, cache: Path, output: str) -> None:
    """Benchmark each size and write the report (bench/run.py calls this)."""
    work = cache / "work"
    work.mkdir(parents=True, exist_ok=True)
    started = time.perf_counter()
    results = [bench_size(n, runs, cache, work) for n in sorted(sizes)]
    write_report(report(results, runs, time.perf_counter() - started), output)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--sizes", type=int, nargs="+", default=[200_000, 1_000_000])
    parser.add_argument("--runs", type=int, default=3)
    parser.add_argument("--cache", type=Path, default=BENCH / "cache")
    parser.add_argument("--output", default=str(BENCH / "RESULTS.md"), help="or - for stdout")
    args = parser.parse_args()
    args.cache.mkdir(parents=True, exist_ok=True)
    common.compile_bytecode()
    run(args.sizes, args.runs, args.cache, args.output)


if __name__ == "__main__":
    main()
