"""forget: remove the snapshots a retention policy (ops.retention) does not keep, except every
bundle a kept snapshot's chain needs, newest first, so that an interrupted forget never leaves an
increment without its base."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

from kindling_bundle.format.increment import IncrementManifest
from kindling_bundle.ops.archive import Archive, Snapshot
from kindling_bundle.ops.retention import Policy, keep


@dataclass
class ForgetReport:
    """What forget keeps (and why) and removes."""

    archive: str
    kept: list[tuple[Snapshot, list[str]]] = field(default_factory=list)
    removed: list[Snapshot] = field(default_factory=list)
    dry_run: bool = False

    def to_dict(self) -> dict[str, Any]:
        return {
            "archive": self.archive,
            "dry_run": self.dry_run,
            "keep": [{**s.to_dict(), "reasons": reasons} for s, reasons in self.kept],
            "remove": [s.to_dict() for s in self.removed],
        }


def forget(archive: Archive, policy: Policy, *, dry_run: bool = False) -> ForgetReport:
    """Remove the snapshots the policy does not keep (ops.retention), except every bundle a kept
    snapshot's chain needs. Newest first, so that an interruption leaves no increment without
    its base. With `dry_run`, only report."""
    if policy.empty:
        raise ValueError("no policy given: say what to keep (--keep-last, --keep-daily, ...)")
    catalogue = archive.snapshots()
    wanted = keep([snap.created_at for snap in catalogue], policy)
    reasons: dict[str, list[str]] = {
        catalogue[index].name: list(why) for index, why in wanted.items()
    }
    for index in sorted(wanted):
        snap = catalogue[index]
        for base in _reachable_chain(archive, snap, catalogue)[:-1]:
            reasons.setdefault(base.name, []).append(f"base of {snap.id}")
    report = ForgetReport(archive.url, dry_run=dry_run)
    for snap in catalogue:
        if snap.name in reasons:
            report.kept.append((snap, _unique(reasons[snap.name])))
        else:
            report.removed.append(snap)
    if not dry_run:
        for snap in reversed(report.removed):
            archive.folder.delete(snap.name)
    return report


def _reachable_chain(
    archive: Archive, snap: Snapshot, catalogue: Sequence[Snapshot]
) -> list[Snapshot]:
    """As much of the snapshot's chain as the archive holds (its bases back to a missing one),
    oldest first: a broken chain's bundles are kept, not deleted, in case the base turns up."""
    by_sha = {s.sha256: s for s in catalogue}
    chain = [snap]
    while chain[0].increment and len(chain) <= len(catalogue):
        manifest = archive.manifest(chain[0])
        assert isinstance(manifest, IncrementManifest)
        base = by_sha.get(manifest.base.sha256)
        if base is None:
            break
        chain.insert(0, base)
    return chain


def _unique(values: list[str]) -> list[str]:
    return list(dict.fromkeys(values))
