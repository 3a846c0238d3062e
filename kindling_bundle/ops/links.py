"""The bundles of a chain (spec section 16.5): naming them, knowing their SHA-256 before anything
is written, reading their manifests, checking the links, and verifying a chain.

A chain's bundles may be read more than once (their manifests first, every link checked, then
their records), so each is a `BundleRef`: a label, a way to open its stored bytes again, the
SHA-256 it must have, and how to read it (ReadOptions: the identities that open an encrypted
one, whom to trust). A link is named by the SHA-256 of its bundle, which for an encrypted
bundle is its plaintext's (spec 16.2): what a reader hashes is what it decrypted, so the same
chain links the same whether it is stored encrypted or not, and the hash is checked on exactly
the bytes the records come from.
"""

from __future__ import annotations

import contextlib
import functools
import io
from collections.abc import Callable, Iterator, Mapping, Sequence
from contextlib import AbstractContextManager
from dataclasses import dataclass, field
from typing import Any, BinaryIO

from kindling_bundle.errors import (
    BundleError,
    CiphertextError,
    EncryptionError,
    KindlingBundleError,
    SignatureError,
)
from kindling_bundle.format.increment import (
    HashingReader,
    IncrementManifest,
    Link,
    check_chain,
    check_link,
)
from kindling_bundle.format.manifest import Manifest
from kindling_bundle.format.reader import BundleReader
from kindling_bundle.format.verify_report import VerifyProblem, VerifyReport
from kindling_bundle.io.read_options import ReadOptions
from kindling_bundle.io.sniff import open_input
from kindling_bundle.io.storage import STDIO, open_source
from kindling_bundle.ops.verify import verify_bundle

Opener = Callable[[], AbstractContextManager[BinaryIO]]


@dataclass(frozen=True)
class BundleRef:
    """A bundle of a chain that can be opened (more than once) and read: a path or a URL.

    `opener` gives its stored bytes (an age file, for an encrypted bundle); `open` and `reader`
    give the bundle itself, decrypted with `options.identities` as it is read. `sha256`, of the
    bundle (the plaintext of an encrypted one), is given when known before reading (an
    archive's names carry it; `hashed` reads it first), and then what is read must match it.
    `options.signature`: whom to trust, checked wherever the bundle is read."""

    label: str
    opener: Opener
    sha256: str | None = None
    options: ReadOptions = field(default_factory=ReadOptions)

    @contextlib.contextmanager
    def open(self) -> Iterator[BinaryIO]:
        """The bundle's bytes (NoIdentityError, NoMatchingIdentityError for an encrypted one
        that the identities do not open)."""
        with self.opener() as stored:
            yield open_input(stored, self.options, label=self.label).stream

    @contextlib.contextmanager
    def reader(self) -> Iterator[tuple[BundleReader, HashingReader]]:
        """A BundleReader over the bundle (its signature checked as `options` says), and the
        stream under it, which hashes what the reader reads."""
        with self.open() as plain:
            hashing = HashingReader(plain)
            with BundleReader(
                hashing,  # type: ignore[arg-type]
                name=self.label,
                signature=self.options.signature,
            ) as reader:
                yield reader, hashing

    def check_sha256(self, actual: str) -> None:
        """Refuse a bundle whose bytes no longer hash as its name or link says."""
        if self.sha256 is not None and actual != self.sha256:
            raise BundleError(
                f"{self.label}: its SHA-256 is {actual}, not {self.sha256} as its name or link "
                "says (the file was replaced or damaged since)"
            )


def key_problem(exc: BaseException) -> bool:
    """Whether `exc` says the keys are wrong (no identity, none that opens the bundle, a key
    that cannot be used) rather than the bundle: such an error stops a command over many
    bundles at once instead of being reported against each."""
    return isinstance(exc, EncryptionError) and not isinstance(exc, CiphertextError)


# --- naming the bundles of a chain ----------------------------------------------------------


def bundle_ref(
    target: str,
    storage_options: Mapping[str, Any] | None = None,
    *,
    sha256: str | None = None,
    options: ReadOptions | None = None,
) -> BundleRef:
    """A bundle of a chain given as a path or URL (standard input cannot be one: a chain's
    bundles may be read twice), read with `options`."""
    if target == STDIO:
        raise BundleError("a bundle of a chain, or a base, cannot come from standard input")
    opener = functools.partial(open_source, target, storage_options=storage_options)
    return BundleRef(target, opener, sha256, options or ReadOptions())


def hashed(ref: BundleRef) -> BundleRef:
    """The ref with its SHA-256, read through now if it was not known (decrypting an encrypted
    one), so that a wrong link is refused before anything is written."""
    if ref.sha256 is not None:
        return ref
    with ref.open() as stream:
        hashing = HashingReader(stream)
        while hashing.read(1 << 20):
            pass
    return BundleRef(ref.label, ref.opener, hashing.hexdigest(), ref.options)


def manifest_of(ref: BundleRef) -> Manifest:
    """The bundle's manifest (only its first members are read), its signature checked."""
    with ref.reader() as (reader, _):
        return reader.read_manifest()


def read_links(refs: Sequence[BundleRef]) -> list[Link]:
    """Each ref's manifest, with its known SHA-256."""
    links = []
    for position, ref in enumerate(refs, 1):
        try:
            links.append(Link(ref.label, ref.sha256 or "", manifest_of(ref)))
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


def verify_chain(refs: Sequence[BundleRef]) -> ChainVerifyReport:
    """Verify each bundle of a chain completely (as `verify_bundle`, read with each ref's
    options), and the links between them: each increment's base is the bundle before it, in the
    same chain, and only the first bundle may be a full one (a chain may also be increments
    alone, each on the one before). Never raises for a bad bundle; raises an EncryptionError
    when an encrypted one cannot be opened (no identity, or none that opens it: it is not the
    bundle that is wrong)."""
    result = ChainVerifyReport()
    previous: Link | None = None
    full: Link | None = None
    for position, ref in enumerate(refs, 1):
        report, digest = _verify_one(ref)
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


def _verify_one(ref: BundleRef) -> tuple[VerifyReport, str]:
    """The bundle's report, and the SHA-256 of the bundle read (decrypted, if it was)."""
    trust = ReadOptions(signature=ref.options.signature)
    try:
        with ref.open() as plain:
            stream = HashingReader(plain)
            report = verify_bundle(stream, options=trust)  # type: ignore[arg-type]
    except KindlingBundleError as exc:  # the file cannot be opened or read at all
        if key_problem(exc):
            raise
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


def stream_ref(stream: BinaryIO, label: str, options: ReadOptions | None = None) -> BundleRef:
    """A bundle that can be read once only (standard input): enough to apply one increment."""
    return BundleRef(label, lambda: contextlib.nullcontext(stream), None, options or ReadOptions())
