"""`kindling-bundle recover`: finish what a killed import into a database in use left behind."""

from __future__ import annotations

from dataclasses import asdict
from pathlib import Path

import click

from kindling_bundle.cli.options import common_options, db_option, default_db
from kindling_bundle.cli.output import Output
from kindling_bundle.db.connection import open_store
from kindling_bundle.db.journal import recover
from kindling_bundle.errors import KindlingBundleError


@click.command("recover")
@db_option
@common_options
def recover_(db: Path | None, out: Output) -> None:
    """Undo an import into the database that did not finish (its process was killed, or the
    disk filled up while undoing it), so that the database is as it was before that import,
    with what other programs wrote meanwhile. Every command that writes to a database does
    this first; `check` says when it is needed."""
    db_path = db or default_db()
    if not db_path.exists():
        raise KindlingBundleError(f"{db_path}: no such database")
    conn = open_store(db_path)
    try:
        recovered = recover(conn)
    finally:
        conn.close()
    if recovered is None:
        out.line(f"{db_path}: no unfinished import, nothing to recover")
        out.result({"database": str(db_path), "recovered": None})
        return
    found, counts = recovered
    if found.committed:
        out.line(f"{db_path}: removed the undo journal of a finished import of {found.source}")
    else:
        out.line(
            f"{db_path}: undid the unfinished import of {found.source}: removed {counts.removed} "
            f"rows it had inserted, restored {counts.restored} it had changed"
            + (f", kept {counts.kept} that other writers changed since" if counts.kept else "")
        )
    out.result(
        {
            "database": str(db_path),
            "recovered": {
                "source": found.source,
                "started_at": found.started_at,
                "pid": found.pid,
                "host": found.host,
                "committed": found.committed,
                **asdict(counts),
            },
        }
    )
