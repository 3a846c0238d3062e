"""An output stream, encrypted (age) when it has recipients.

One place for every writer (export, convert, merge, the dataset commands), and light: the age
modules, and `cryptography` with them, are imported only by an output that is encrypted.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator, Sequence
from typing import TYPE_CHECKING, BinaryIO

if TYPE_CHECKING:
    from kindling_bundle.io.age.recipients import Recipient


@contextlib.contextmanager
def encrypting(out: BinaryIO, recipients: Sequence[Recipient]) -> Iterator[BinaryIO]:
    """`out`, or with recipients a stream that encrypts into it. Its last chunk is written only
    on a clean exit: an output cut short by an error reads as truncated, never as complete."""
    if not recipients:
        yield out
        return
    from kindling_bundle.io.age.payload import open_encrypting_writer

    with open_encrypting_writer(out, recipients) as writer:
        yield writer
