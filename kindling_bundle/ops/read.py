"""Opening a bundle for reading, encrypted or not: the one road every bundle reader takes.

An input is opened and sniffed (`io.sniff.open_input`); an age-encrypted one is decrypted with
the identities in `ReadOptions` as it is read, and the bundle reader gets the plaintext. The
bundle reader checks that the zstd frame ends where the source ends, so reading a bundle through
(`batches`, `records`) reaches the end of the authenticated stream before it returns: nothing
read from a damaged or truncated ciphertext can be taken for a whole bundle.
"""

from __future__ import annotations

import os
from contextlib import ExitStack
from pathlib import Path
from typing import BinaryIO

from kindling_bundle.errors import BundleError
from kindling_bundle.format.manifest import Manifest
from kindling_bundle.format.reader import BundleReader, BundleSource, source_label
from kindling_bundle.io.read_options import ReadOptions
from kindling_bundle.io.sniff import open_input


def open_reader(
    src: BundleSource, *, options: ReadOptions | None = None, name: str | None = None
) -> BundleReader:
    """A BundleReader over a bundle (a path or a readable binary stream, read once), its
    manifest not read yet; an encrypted bundle is opened with `options.identities`
    (NoIdentityError, NoMatchingIdentityError, CiphertextError). Messages name it `name` when
    given. Use it as a context manager: it closes what it opened."""
    label = name or source_label(src)
    with ExitStack() as stack:
        stream: BinaryIO
        if isinstance(src, str | os.PathLike):
            try:
                stream = stack.enter_context(Path(src).open("rb"))
            except OSError as exc:
                raise BundleError(f"{label}: cannot open: {exc.strerror}") from None
        else:
            stream = src
        opened = open_input(stream, options, label=label)
        signature = (options or ReadOptions()).signature
        return BundleReader(
            opened.stream, name=label, signature=signature, closing=stack.pop_all().close
        )


def open_bundle(
    src: BundleSource, *, name: str | None = None, options: ReadOptions | None = None
) -> BundleReader:
    """A reader over a bundle, its manifest already read and validated, and its signature
    checked (`options.signature`: whom to trust; `reader.signer`: who signed, None if unsigned).

    Use it as a context manager; iterate `batches()` or `records()` to stream every record with
    every check applied. Works on non-seekable streams (one forward pass). An encrypted bundle
    is opened with `options.identities`."""
    reader = open_reader(src, options=options, name=name)
    try:
        reader.read_manifest()
    except BaseException:
        reader.close()
        raise
    return reader


def read_manifest(src: BundleSource, *, options: ReadOptions | None = None) -> Manifest:
    """The manifest of a bundle, reading only the first member and the signature member (never
    the entity data), the signature checked as `open_bundle` checks it; of an encrypted bundle,
    only as much as decrypts it.

    From a stream, this consumes the stream's first bytes."""
    with open_reader(src, options=options) as reader:
        return reader.read_manifest()
