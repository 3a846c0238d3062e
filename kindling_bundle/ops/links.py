"""The bundles of a chain (spec section 16.5): naming them, knowing their SHA-256 before anything
is written, reading their manifests, checking the links, and verifying a chain.

A chain's bundles may be read more than once (their manifests first, every link checked, then
their records), so each is a `BundleRef`: a label, a way to open it again, and the SHA-256 it
must have.
"""

from __future__ import annotations

import contextlib
import functools
import io
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, BinaryIO

from kindling_bundle.errors import (
    BundleError,
    KindlingBundleError,
    SignatureError,
)
from kindling_bundle.format.increment import (
    HashingReader,
    IncrementManifest,
    Link,
    check_chain,
    check_link,
    file_sha256,
)
from kindling_bundle.format.manifest import Manifest
from kindling_bundle.format.reader import BundleReader
from kindling_bundle.format.verify_report import VerifyProblem, VerifyReport
from kindling_bundle.io.read_options import ReadOptions
from kindling_bundle.io.storage import STDIO, is_url, open_source
from kindling_bundle.ops.read import read_manifest
from kindling_bundle.ops.state import (
    BundleRef,
)
from kindling_bundle.ops.verify import verify_bundle

# --- naming the bundles of a chain ----------------------------------------------------------


def bundle_ref(
    target: str,
    storage_options: Mapping[str, Any] | None = None,
    *,
    sha256: str | None = None,
) -> BundleRef:
    """A bundle of a chain given as a path or URL (standard input cannot be one: a chain's
    bundles may be read twice)."""
    if target == STDIO:
        raise BundleError("a bundle of a chain, or a base, cannot come from standard input")
    opener = functools.partial(open_source, target, storage_options=storage_options)
    return BundleRef(target, opener, sha256)


def hashed(ref: BundleRef) -> BundleRef:
    """The ref with its SHA-256, read now if it was not known (a local file is hashed where it
    lies; a URL is read through once), so that a wrong link is refused before anything is
    written."""
    if ref.sha256 is not None:
        return ref
    if not is_url(ref.label):
        try:
            return BundleRef(ref.label, ref.open, file_sha256(ref.label))
        except OSError as exc:
            raise BundleError(f"{ref.label}: cannot open: {exc.strerror}") from None
    with ref.open() as stream:
        hashing = HashingReader(stream)
        while hashing.read(1 << 20):
            pass
    return BundleRef(ref.label, ref.open, hashing.hexdigest())


def read_links(refs: Sequence[BundleRef]) -> list[Link]:
    """Each ref's manifest (only the first member is read), with its known SHA-256."""
    links = []
    for position, ref in enumerate(refs, 1):
        try:
            with ref.open() as stream:
                links.append(Link(ref.label, ref.sha256 or "", read_manifest(stream)))
        except BundleError as exc:
            raise BundleError(f"link {position}, {exc}") from None
    return links


def prepare_chain(refs: Sequence[BundleRef], *, full: bool) -> tuple[list[BundleRef], list[Link]]:
    """Hash every bundle and read every manifest, then check the links: a chain that starts with
    a full bundle (`full`), or increments each on the one before. Nothing has been written
    when this refuses a link (the BundleError names it)."""
    refs = [hashed(ref) for ref in refs]
    links = read_links(refs)
    if full:
        check_chain(links)
        return refs, links
    for position, link in enumerate(links, 1):
        if not link.increment:
            raise BundleError(
                f"link {position}, {link.describe()}: is a full bundle; to restore a chain, "
                "give its full bundle first and import it into an empty database"
            )
        if position > 1:
            check_link(links[position - 2], link, position, _full_of(links[0]))
    return refs, links


def _full_of(link: Link) -> Link:
    """A stand-in for the full bundle of `link`'s chain (only its SHA-256 is compared)."""
    manifest = link.manifest
    assert isinstance(manifest, IncrementManifest)
    return Link("its full bundle", manifest.base.full_sha256, manifest)


# --- verifying a chain ----------------------------------------------------------------------


@dataclass
class ChainVerifyReport:
    """Each bundle's own report (and the SHA-256 of what was read of it), and what is wrong
    with the links between them (problems of kind `chain-link`, the bundle at fault their
    source)."""

    reports: list[VerifyReport] = field(default_factory=list)
    digests: list[str] = field(default_factory=list)
    link_problems: list[VerifyProblem] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        return not self.link_problems and all(report.ok for report in self.reports)

    def to_dict(self) -> dict[str, Any]:
        return {
            "ok": self.ok,
            "bundles": [
                {**report.to_dict(), "sha256": digest}
                for report, digest in zip(self.reports, self.digests, strict=True)
            ],
            "link_problems": [problem.to_dict() for problem in self.link_problems],
        }


def verify_chain(
    refs: Sequence[BundleRef], *, options: ReadOptions | None = None
) -> ChainVerifyReport:
    """Verify each bundle of a chain completely (as `verify_bundle`, read with `options`), and
    the links between them: each increment's base is the bundle before it, in the same chain,
    and only the first bundle may be a full one (a chain may also be increments alone, each on
    the one before). Never raises for a bad bundle."""
    result = ChainVerifyReport()
    previous: Link | None = None
    full: Link | None = None
    for position, ref in enumerate(refs, 1):
        report, digest = _verify_one(ref, options)
        result.reports.append(report)
        result.digests.append(digest)
        if report.manifest is None or not report.ok:
            detail = f"link {position}: not a valid bundle, so its links are not checked"
            result.link_problems.append(VerifyProblem("chain-link", ref.label, detail))
            previous = None
            continue
        link = Link(ref.label, digest, report.manifest)
        if full is None:
            full = _full_of(link) if link.increment else link
        if previous is not None:
            try:
                check_link(previous, link, position, full)
            except BundleError as exc:
                detail = str(exc).removeprefix(f"{ref.label}: ")
                result.link_problems.append(VerifyProblem("chain-link", ref.label, detail))
        previous = link
    return result


def _verify_one(ref: BundleRef, options: ReadOptions | None) -> tuple[VerifyReport, str]:
    try:
        with ref.open() as raw:
            stream = HashingReader(raw)
            report = verify_bundle(stream, options=options)  # type: ignore[arg-type]
    except KindlingBundleError as exc:  # the file cannot be opened or read at all
        report = VerifyReport(ref.label)
        if isinstance(exc, BundleError | SignatureError):
            report.failed(exc)
        else:
            report.problem("unreadable", str(exc).removeprefix(f"{ref.label}: "))
        return report, ""
    report.source = ref.label
    return report, stream.hexdigest()


# --- telling an increment from a full bundle on a stream -----------------------------------


class _Recording(io.RawIOBase):
    """Reads through to `stream`, keeping a copy of what was read (for `peek_manifest`)."""

    def __init__(self, stream: BinaryIO):
        self._stream = stream
        self.seen = bytearray()
        self.name = getattr(stream, "name", "<stream>")

    def readable(self) -> bool:
        return True

    def readinto(self, buffer: Any) -> int:
        data = self._stream.read(len(buffer))
        buffer[: len(data)] = data
        self.seen += data
        return len(data)


def peek_manifest(stream: BinaryIO, name: str | None = None) -> tuple[Manifest, BinaryIO]:
    """A bundle stream's manifest, and the stream to read the whole bundle from: the same one
    rewound if it can seek, else one that gives back the bytes read first (standard input)."""
    if stream.seekable():
        start = stream.tell()
        with BundleReader(stream, name=name) as reader:
            manifest = reader.read_manifest()
        stream.seek(start)
        return manifest, stream
    recording = _Recording(stream)
    with BundleReader(io.BufferedReader(recording), name=name or recording.name) as reader:
        manifest = reader.read_manifest()
    replay = _Replay(bytes(recording.seen), stream)
    return manifest, io.BufferedReader(replay)


class _Replay(io.RawIOBase):
    """Gives back bytes already read from a stream, then the rest of it."""

    def __init__(self, head: bytes, rest: BinaryIO):
        self._head = memoryview(head)
        self._rest = rest
        self.name = getattr(rest, "name", "<stream>")

    def readable(self) -> bool:
        return True

    def readinto(self, buffer: Any) -> int:
        if self._head:
            n = min(len(buffer), len(self._head))
            buffer[:n] = self._head[:n]
            self._head = self._head[n:]
            return n
        data = self._rest.read(len(buffer))
        buffer[: len(data)] = data
        return len(data)


def stream_ref(stream: BinaryIO, label: str) -> BundleRef:
    """A bundle that can be read once only (standard input): enough to apply one increment."""
    return BundleRef(label, lambda: contextlib.nullcontext(stream))
