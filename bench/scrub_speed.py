"""How fast and how well the secret scanner works, outside the bundle pipeline (issue 20).

Prints the labelled corpus's score (planted secrets found, benign texts changed) and the scan
throughput over real developer text: this Python's own standard library sources, whole files
and cut into 4 KB texts, and the content of a sample database if one is given. For scale it
times msgpack encoding plus zstd compression of the same texts, the heart of a plain export.

    .venv/bin/python bench/scrub_speed.py
    .venv/bin/python bench/scrub_speed.py --db bench/cache/sample-200000.db --rules gitleaks.toml

`--rules FILE` also scores that gitleaks-format file on its own (e.g. gitleaks' default config)
and with ours. Times are CPU seconds of this process, the best of three runs.
"""

from __future__ import annotations

import argparse
import sqlite3
import sysconfig
import time
from collections.abc import Callable, Sequence
from pathlib import Path

import msgspec
import zstandard

from kindling_bundle.scrub import Scanner
from kindling_bundle.scrub.corpus import Score, evaluate, make_corpus


def best_of(fn: Callable[[], object], runs: int = 3) -> float:
    times = []
    for _ in range(runs):
        start = time.process_time()
        fn()
        times.append(time.process_time() - start)
    return min(times)


def throughput(name: str, scanner: Scanner, texts: Sequence[str]) -> None:
    size = sum(len(t.encode("utf-8", "surrogatepass")) for t in texts) / 1e6
    scan = best_of(lambda: [scanner.find(t) for t in texts])
    encoder = msgspec.msgpack.Encoder()
    compressor = zstandard.ZstdCompressor(level=3)
    baseline = best_of(lambda: compressor.compress(b"".join(encoder.encode(t) for t in texts)))
    per_text = 1e6 * scan / len(texts)
    print(
        f"{name:32} {len(texts):>7} texts {size:7.1f} MB  scan {size / scan:6.1f} MB/s "
        f"({per_text:5.1f} us/text)  msgpack+zstd {size / baseline:6.1f} MB/s"
    )


def report(name: str, score: Score) -> None:
    print(
        f"{name:32} found {score.found}/{score.secrets} ({100 * score.recall:.1f}%)  "
        f"benign changed {score.flagged}/{score.benign} ({100 * score.false_positive_rate:.2f}%)"
    )


def stdlib_texts() -> tuple[list[str], list[str]]:
    root = Path(sysconfig.get_paths()["stdlib"])
    files = [p.read_text("utf-8", "replace") for p in sorted(root.glob("*.py"))]
    chunks = [f[i : i + 4096] for f in files for i in range(0, len(f), 4096)]
    return files, chunks


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--db", type=Path, help="a Kindling database (kindling-bundle sample)")
    parser.add_argument("--rules", type=Path, help="a gitleaks-format rule file to compare")
    args = parser.parse_args()
    scanner = Scanner.load()
    corpus = make_corpus()
    report(f"{scanner.name} {scanner.version}", evaluate(scanner, corpus))
    if args.rules:
        report(args.rules.name, evaluate(Scanner.load([args.rules], include_default=False), corpus))
        report(f"ours + {args.rules.name}", evaluate(Scanner.load([args.rules]), corpus))
    files, chunks = stdlib_texts()
    throughput("stdlib *.py, whole files", scanner, files)
    throughput("stdlib *.py, 4 KB texts", scanner, chunks)
    if args.db:
        with sqlite3.connect(f"file:{args.db}?mode=ro", uri=True) as conn:
            contents = [row[0] for row in conn.execute("SELECT content FROM observations")]
        throughput(f"{args.db.name} content", scanner, contents)


if __name__ == "__main__":
    main()
