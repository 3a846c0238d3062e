"""A Kindling-like writer, run as its own process beside an import (issue 22): one observation
every 50 ms, inserted with the SQL and connection settings Kindling's store uses (WAL, busy
timeout 5 s), until a stop file appears.

    python tests/kindling_writer.py DB STOP_FILE ID_PREFIX

It prints `ready` once connected, then a line per write, `ok ID WAIT_S UNIX_TIME` or
`failed ID WAIT_S ERROR`, and `done` at the end. tests/test_live_import.py and
bench/live_merge.py both run it, so the test and the benchmark judge the same writer.
"""

from __future__ import annotations

import json
import pathlib
import sqlite3
import sys
import time

PRAGMAS = (
    "journal_mode = WAL",
    "foreign_keys = ON",
    "busy_timeout = 5000",
    "synchronous = NORMAL",
    "cache_size = -64000",
)
INSERT = (
    "INSERT INTO observations (id, kind, content, provenance, ts, scope_ids, redacted, "
    "session_id, repo_id, agent_id, user_id) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)"
)


def main(db: str, stop_file: str, prefix: str) -> None:
    conn = sqlite3.connect(db, isolation_level=None)
    for pragma in PRAGMAS:
        conn.execute("PRAGMA " + pragma)
    stop = pathlib.Path(stop_file)
    scope = json.dumps({"sessionId": "live-session", "repoId": "live-repo"}, separators=(",", ":"))
    provenance = json.dumps({"tool": "bash"}, separators=(",", ":"))
    n = 0
    print("ready", flush=True)
    while not stop.exists():
        oid = f"{prefix}{n}"
        content = f"written by the agent while an import runs, number {n}"
        row = (oid, "tool_call", content, provenance, 1_900_000_000_000 + n, scope, 0,
               "live-session", "live-repo", None, None)  # fmt: skip
        started = time.monotonic()
        try:
            conn.execute(INSERT, row)
        except sqlite3.Error as exc:
            print("failed", oid, time.monotonic() - started, exc, flush=True)
        else:
            print("ok", oid, time.monotonic() - started, time.time(), flush=True)
        n += 1
        time.sleep(0.05)
    print("done", flush=True)


if __name__ == "__main__":
    main(*sys.argv[1:4])
