"""The payload: ChaCha20-Poly1305 chunks of 64 KiB under counter nonces whose last byte flags
the final chunk (age's STREAM), written by `EncryptingWriter` and read by `DecryptingReader`.

A chunk's plaintext is given out only once it authenticated, and the end only once the final
chunk did, so a stream cut at a chunk boundary is detected, never taken for a shorter one.
"""

from __future__ import annotations

import hmac
import io
import os
from collections.abc import Callable, Sequence
from typing import TYPE_CHECKING, BinaryIO

from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives.ciphers.aead import AESGCM, AESOCB3, ChaCha20Poly1305

from kindling_bundle.errors import (
    CiphertextError,
    NoIdentityError,
    NoMatchingIdentityError,
    RecipientError,
    TruncatedCiphertextError,
)
from kindling_bundle.io.age.encoding import b64encode, damaged
from kindling_bundle.io.age.header import INTRO, AgeHeader, Readable, Source, open_source
from kindling_bundle.io.age.primitives import CHUNK, FILE_KEY_BYTES, TAG, hkdf
from kindling_bundle.io.age.recipients import Recipient

if TYPE_CHECKING:
    from _typeshed import ReadableBuffer, WriteableBuffer

    from kindling_bundle.io.age.identities import Identity

_SEALED_CHUNK = CHUNK + TAG
_NONCE_BYTES = 16

Aead = ChaCha20Poly1305 | AESOCB3 | AESGCM
"""age's payload is ChaCha20-Poly1305. A SealedSpool, which nothing else reads, uses AES-OCB3
(faster than ChaCha20 on CPUs with AES instructions), or AES-GCM where the OpenSSL underneath
lacks OCB3 (LibreSSL)."""


def _chunk_nonce(counter: int, last: bool) -> bytes:
    return (counter << 8 | last).to_bytes(12, "big")


class Sealer:
    """Seals what it is given into chunks, keeping the last (up to a whole chunk) until `finish`,
    because only then is it known to be the final one."""

    def __init__(self, aead: Aead, out: Callable[[bytes], object]):
        self._aead = aead
        self._out = out
        self._counter = 0
        self._pending = bytearray()
        self.written = 0

    def write(self, data: ReadableBuffer) -> int:
        view = memoryview(data).cast("B")
        size = len(view)
        self.written += size
        if self._pending:
            room = CHUNK - len(self._pending)
            if size <= room:
                self._pending += view
                return size
            self._pending += view[:room]
            view = view[room:]
            self._seal(self._pending, last=False)
            self._pending = bytearray()
        while len(view) > CHUNK:
            self._seal(view[:CHUNK], last=False)
            view = view[CHUNK:]
        self._pending += view
        return size

    def finish(self) -> None:
        self._seal(self._pending, last=True)
        self._pending = bytearray()

    def _seal(self, plaintext: bytes | bytearray | memoryview, *, last: bool) -> None:
        self._out(self._aead.encrypt(_chunk_nonce(self._counter, last), plaintext, None))
        self._counter += 1


class Opener:
    """Opens chunks one at a time; a chunk's plaintext is given out only once it authenticated,
    and the end only once the final chunk did (with nothing after it)."""

    def __init__(self, aead: Aead, source: Source, label: str):
        self._aead = aead
        self._source = source
        self._label = label
        self._counter = 0
        self._done = False
        self._error: CiphertextError | None = None

    def next(self) -> bytes | None:
        """The next chunk's plaintext, or None at the authenticated end."""
        if self._error is not None:
            raise self._error
        if self._done:
            return None
        try:
            return self._next()
        except CiphertextError as exc:
            self._error = exc
            raise

    def _next(self) -> bytes:
        sealed = self._source.read(_SEALED_CHUNK)
        where = f"chunk {self._counter + 1} (from plaintext byte {self._counter * CHUNK:,})"
        if not sealed:
            raise TruncatedCiphertextError(
                f"{self._label}: the encrypted stream ends before its final chunk, after "
                f"{self._counter * CHUNK:,} bytes of plaintext: cut short"
            )
        plaintext = None
        if len(sealed) == _SEALED_CHUNK:
            plaintext = self._open(sealed, last=False)
        if plaintext is None:
            if len(sealed) == TAG and self._counter:
                raise CiphertextError(f"{self._label}: {where} is an empty final chunk: damaged")
            plaintext = self._open(sealed, last=True)
            if plaintext is None:
                raise CiphertextError(
                    f"{self._label}: {where} does not authenticate: the file was altered or "
                    "damaged, or cut short"
                )
            if self._source.read(1):
                raise CiphertextError(f"{self._label}: data after the final chunk: damaged")
            self._done = True
        self._counter += 1
        return plaintext

    def _open(self, sealed: bytes, *, last: bool) -> bytes | None:
        if len(sealed) < TAG:
            return None
        try:
            return self._aead.decrypt(_chunk_nonce(self._counter, last), sealed, None)
        except InvalidTag:
            return None


class EncryptingWriter(io.BufferedIOBase, BinaryIO):
    """Encrypts what is written to it into `dest`. `close()` (or leaving a `with` block cleanly)
    writes the final chunk and flushes `dest`, which it never closes. Leaving a `with` block by an
    exception, `abort()`, or being garbage-collected unclosed writes no final chunk, so the
    output stays detectably incomplete rather than passing for a shorter plaintext."""

    def __init__(self, dest: BinaryIO, sealer: Sealer):
        super().__init__()
        self._dest = dest
        self._sealer = sealer
        self._ended = False  # the final chunk was written, or never will be

    def writable(self) -> bool:
        return True

    def write(self, data: ReadableBuffer) -> int:
        if self.closed:
            raise ValueError("write to a closed EncryptingWriter")
        return self._sealer.write(data)

    def tell(self) -> int:
        """Plaintext bytes written so far."""
        return self._sealer.written

    def flush(self) -> None:
        if not self.closed and not self._ended:  # after abort(), `dest` may be gone
            self._dest.flush()

    def close(self) -> None:
        if self.closed:
            return
        if self._ended:
            super().close()
            return
        self._ended = True  # whatever happens below, never a second final chunk
        try:
            self._sealer.finish()
            self._dest.flush()
        finally:
            super().close()

    def abort(self) -> None:
        """Stop without the final chunk: readers will call the output cut short."""
        self._ended = True
        super().close()

    def __exit__(self, exc_type: object, exc: object, traceback: object) -> None:
        if exc_type is not None:
            self.abort()
        else:
            self.close()

    def __del__(self) -> None:
        if not self.closed:
            self.abort()


def open_encrypting_writer(dest: BinaryIO, recipients: Sequence[Recipient]) -> EncryptingWriter:
    """A binary stream whose plaintext goes encrypted, to every recipient, into `dest`. The
    header and nonce are written at once; then at most one chunk (64 KiB) is held in memory."""
    if not recipients:
        raise RecipientError("no recipients given: at least one is needed to encrypt")
    file_key = os.urandom(FILE_KEY_BYTES)
    stanzas = b"".join(recipient._wrap(file_key).encode() for recipient in recipients)
    authenticated = INTRO + stanzas + b"---"
    mac = hmac.digest(hkdf(file_key, b"", b"header"), authenticated, "sha256")
    nonce = os.urandom(_NONCE_BYTES)
    dest.write(authenticated + b" " + b64encode(mac) + b"\n" + nonce)
    payload = ChaCha20Poly1305(hkdf(file_key, nonce, b"payload"))
    return EncryptingWriter(dest, Sealer(payload, dest.write))


class ChunkReader(io.BufferedIOBase, BinaryIO):
    """Plaintext read through an Opener, one chunk in memory at a time (no opener: empty)."""

    def __init__(self, opener: Opener | None):
        super().__init__()
        self._opener = opener
        self._chunk = b""
        self._offset = 0
        self._position = 0

    def readable(self) -> bool:
        return True

    def tell(self) -> int:
        """Plaintext bytes read so far."""
        return self._position

    def read1(self, size: int | None = -1, /) -> bytes:
        if self.closed:
            raise ValueError("read from a closed stream")
        if self._offset >= len(self._chunk):
            chunk = None if self._opener is None else self._opener.next()
            if chunk is None:
                return b""
            self._chunk, self._offset = chunk, 0
        if size is None or size < 0 or (self._offset == 0 and size >= len(self._chunk)):
            piece = self._chunk[self._offset :] if self._offset else self._chunk
        else:
            piece = self._chunk[self._offset : self._offset + size]
        self._offset += len(piece)
        self._position += len(piece)
        return piece

    def read(self, size: int | None = -1, /) -> bytes:
        pieces = []
        left = -1 if size is None or size < 0 else size
        while left:
            piece = self.read1(left)
            if not piece:
                break
            pieces.append(piece)
            if left > 0:
                left -= len(piece)
        return pieces[0] if len(pieces) == 1 else b"".join(pieces)

    def readinto(self, buffer: WriteableBuffer) -> int:
        view = memoryview(buffer).cast("B")
        data = self.read(len(view))
        view[: len(data)] = data
        return len(data)


class DecryptingReader(ChunkReader):
    """The plaintext of an age file, read through, one chunk (64 KiB) in memory at a time.
    Every piece it returns has authenticated, but damage or truncation further on is found only
    when reading reaches it (a CiphertextError instead of the end), so nothing read may be
    committed before `read` has returned b"". Closing it does not close the source. `header` is
    what the header showed (the recipient count, for `inspect`); `name` is the label its errors
    use, as a file's name is, so that readers of the plaintext name it the same way."""

    def __init__(self, opener: Opener, header: AgeHeader, name: str):
        super().__init__(opener)
        self.header = header
        self._name = name

    @property
    def name(self) -> str:
        return self._name


def open_envelope(src: Readable, identities: Sequence[Identity], label: str) -> DecryptingReader:
    source, header = open_source(src, label)
    info = header.info
    counted = f"{info.recipients} recipient{'s' if info.recipients != 1 else ''}"
    if not identities:
        raise NoIdentityError(
            f"{label}: encrypted (age) to {counted}, and no identity was given to open it",
            recipients=info.recipients,
            stanza_types=info.stanza_types,
        )
    file_key = None
    ordered = sorted(identities, key=lambda identity: identity.asks_passphrase)
    for identity in ordered:
        file_key = identity._unwrap(header.stanzas, label)
        if file_key is not None:
            break
    if file_key is None:
        tried = ", ".join(identity.description for identity in ordered[:3])
        more = f" and {len(ordered) - 3} more" if len(ordered) > 3 else ""
        message = (
            f"{label}: none of the identities given opens it (encrypted to {counted}; "
            f"tried {tried}{more})"
        )
        if info.stanza_types == ("scrypt",):
            message = (
                f"{label}: encrypted with a passphrase (age -p), not to a key: pipe "
                "`age -d` into the command instead"
            )
        raise NoMatchingIdentityError(
            message, recipients=info.recipients, stanza_types=info.stanza_types
        )
    if len(file_key) != FILE_KEY_BYTES:
        raise damaged(label, "a stanza holds no 16-byte file key")
    mac = hmac.digest(hkdf(file_key, b"", b"header"), header.authenticated, "sha256")
    if not hmac.compare_digest(mac, header.mac):
        raise CiphertextError(f"{label}: the age header was altered (its MAC does not match)")
    nonce = source.read(_NONCE_BYTES)
    if len(nonce) != _NONCE_BYTES:
        raise TruncatedCiphertextError(f"{label}: the encrypted stream ends after its header")
    payload = ChaCha20Poly1305(hkdf(file_key, nonce, b"payload"))
    return DecryptingReader(Opener(payload, source, label), info, label)


def open_decrypting_reader(
    src: BinaryIO, identities: Sequence[Identity], *, label: str = "<stream>"
) -> DecryptingReader:
    """The plaintext of the age file `src` (binary or armored) as a readable binary stream.
    The header is read and a file key found now: NoIdentityError if `identities` is empty (it
    carries the recipient count), NoMatchingIdentityError if none opens it, CiphertextError
    (TruncatedCiphertextError) if it is damaged (cut short). Identities that need a passphrase
    are tried last, and ask for it only if they could open a stanza of the header. `label` names
    `src` in errors."""
    return open_envelope(src, identities, label)
