"""Sealed temporary files: spooled plaintext that never reaches the disk."""

from __future__ import annotations

import io
import os
import tempfile
from typing import TYPE_CHECKING, BinaryIO

from cryptography.exceptions import UnsupportedAlgorithm
from cryptography.hazmat.primitives.ciphers.aead import AESGCM, AESOCB3

from kindling_bundle.io.age.header import Source
from kindling_bundle.io.age.payload import Aead, ChunkReader, Opener, Sealer

if TYPE_CHECKING:
    from _typeshed import ReadableBuffer, WriteableBuffer


def _spool_cipher() -> Aead:
    key = AESOCB3.generate_key(256)
    try:
        return AESOCB3(key)
    except UnsupportedAlgorithm:
        return AESGCM(key)


_SPOOL_IO = 1 << 20  # a spool file is written and read in pieces this big: fewer system calls


class _FileAt:
    """Reads a file by offset (pread), so reading ignores the shared file position."""

    def __init__(self, fd: int):
        self._fd = fd
        self._at = 0
        self._block = memoryview(b"")

    def read(self, size: int, /) -> bytes:
        if not self._block:
            self._block = memoryview(os.pread(self._fd, max(size, _SPOOL_IO), self._at))
            self._at += len(self._block)
        data = self._block[:size].tobytes()
        self._block = self._block[size:]
        return data


class SealedSpool(io.BufferedIOBase, BinaryIO):
    """An anonymous temporary file that holds only ciphertext: what is written is sealed in
    64 KiB chunks (AES-256-OCB3) under a random key that exists only in this process's memory
    (and in forked children), so spooled plaintext never reaches the disk and is unreadable once
    the process ends. Written once, then read: the first read or `seek` seals the final chunk;
    seeking forward decrypts and skips, seeking back starts again from the beginning.

    A forked child may be the writer: it writes and calls `finish()` (which flushes), and the
    parent, having written nothing itself, then reads what the child left in the file."""

    def __init__(self, directory: str | os.PathLike[str] | None = None, *, prefix: str = ".spool-"):
        super().__init__()
        self._file = tempfile.TemporaryFile(  # noqa: SIM115
            dir=directory, prefix=prefix, buffering=_SPOOL_IO
        )
        self._aead = _spool_cipher()
        self._sealer: Sealer | None = Sealer(self._aead, self._file.write)
        self._reader: ChunkReader | None = None

    def writable(self) -> bool:
        return self._sealer is not None

    def readable(self) -> bool:
        return True

    def seekable(self) -> bool:
        return True

    def write(self, data: ReadableBuffer) -> int:
        if self.closed:
            raise ValueError("write to a closed SealedSpool")
        if self._sealer is None:
            raise io.UnsupportedOperation("a SealedSpool is written once, then read")
        return self._sealer.write(data)

    def flush(self) -> None:
        """Sealed whole chunks go to the file; the last partial one waits for `finish`."""
        if not self.closed:
            self._file.flush()

    def finish(self) -> None:
        """Seal the final chunk (the writer's last word; reading does it implicitly)."""
        if self._sealer is not None:
            if self._sealer.written:
                self._sealer.finish()
            self._sealer = None
            self._file.flush()

    def tell(self) -> int:
        if self._sealer is not None:
            return self._sealer.written
        return 0 if self._reader is None else self._reader.tell()

    def seek(self, offset: int, whence: int = io.SEEK_SET, /) -> int:
        if whence == io.SEEK_CUR:
            offset += self.tell()
        elif whence != io.SEEK_SET:
            raise io.UnsupportedOperation("a SealedSpool seeks from its start or position only")
        if offset < 0:
            raise ValueError(f"negative seek position {offset}")
        reader = self._reading()
        if offset < reader.tell():
            reader = self._reading(restart=True)
        while reader.tell() < offset:
            if not reader.read1(offset - reader.tell()):
                break
        return reader.tell()

    def read1(self, size: int | None = -1, /) -> bytes:
        return self._reading().read1(size)

    def read(self, size: int | None = -1, /) -> bytes:
        return self._reading().read(size)

    def readinto(self, buffer: WriteableBuffer) -> int:
        return self._reading().readinto(buffer)

    def written_elsewhere(self) -> ChunkReader:
        """A reader of what another process (forked from this one, or this one's parent) wrote
        and finished: it reads the file, and this copy's own writing state, stale since the
        fork, is left alone (finishing it here would write a chunk into the file)."""
        if self.closed:
            raise ValueError("read from a closed SealedSpool")
        return self._file_reader()

    def _reading(self, *, restart: bool = False) -> ChunkReader:
        if self.closed:
            raise ValueError("read from a closed SealedSpool")
        self.finish()
        if self._reader is None or restart:
            self._reader = self._file_reader()
        return self._reader

    def _file_reader(self) -> ChunkReader:
        source = Source(_FileAt(self._file.fileno()))
        empty = not source.peek(1)  # nothing was written, here or by a forked child
        return ChunkReader(None if empty else Opener(self._aead, source, "sealed temporary file"))

    def close(self) -> None:
        if not self.closed:
            super().close()
            self._file.close()
            self._sealer = None
            self._reader = None
