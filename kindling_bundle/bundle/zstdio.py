"""zstd both ways, with the parameters that keep bundles deterministic and readers strict.

Writing: zstd's multi-threaded mode produces the same bytes for any number of worker threads
>= 1, but not the same bytes as the single-threaded mode (checked by tests/test_bundle.py), so
bundles are always written multi-threaded; the worker count only changes the speed. Frame
checksums are on; the content size is not written (it is unknown while streaming).

Reading: `FrameReader` decompresses exactly one zstd frame and refuses anything else. zstandard's
`stream_reader` returns short output without an error on a truncated stream, so the reader feeds a
`decompressobj` itself and checks that the frame really ended (`eof`) and that nothing follows it,
neither in the same frame's input nor in the source. Input is fed in small slices so that one
call cannot expand into an unbounded amount of memory (zstd expands at most ~32768x: a 1 KiB
slice yields at most 32 MiB), and only as much as the consumer asks for is decompressed.
"""

from __future__ import annotations

import os
from typing import BinaryIO

import zstandard

from kindling_bundle.errors import BundleError

ZSTD_MAGIC = b"\x28\xb5\x2f\xfd"
MIN_LEVEL, MAX_LEVEL = 1, 19
MAX_WINDOW_BYTES = 8 << 20
"""Levels 1-19 use windows of at most 8 MiB; a reader refuses bigger ones (bounded memory)."""

COMPRESSION_THREADS = max(1, min(4, os.cpu_count() or 1))
"""Worker threads for writing; any value >= 1 gives identical output (see module docstring)."""

_READ_BYTES = 64 << 10
_FEED_BYTES = 1 << 10


def compressor(level: int) -> zstandard.ZstdCompressor:
    """The one compressor configuration bundles are written with."""
    if not MIN_LEVEL <= level <= MAX_LEVEL:
        raise ValueError(f"zstd level must be {MIN_LEVEL}..{MAX_LEVEL}, got {level}")
    return zstandard.ZstdCompressor(
        level=level,
        threads=COMPRESSION_THREADS,
        write_checksum=True,
        write_content_size=False,
    )


class FrameReader:
    """Reads the decompressed bytes of the single zstd frame that must make up `source`."""

    def __init__(self, source: BinaryIO, label: str):
        self._source = source
        self._label = label
        self._dobj = zstandard.ZstdDecompressor(max_window_size=MAX_WINDOW_BYTES).decompressobj()
        self._input = memoryview(b"")
        self._buffer = bytearray()
        self._pos = 0
        self._source_done = False
        self._head = b""
        self.compressed_bytes = 0
        self.decompressed_bytes = 0

    def read(self, n: int) -> bytes:
        """Up to `n` bytes; fewer only at the end of the frame."""
        while len(self._buffer) - self._pos < n and self._decompress_more():
            pass
        end = min(self._pos + n, len(self._buffer))
        with memoryview(self._buffer) as view:  # one copy, not two
            chunk = bytes(view[self._pos : end])
        self._pos = end
        self.decompressed_bytes += len(chunk)
        if self._pos > (1 << 20) and self._pos * 2 > len(self._buffer):
            del self._buffer[: self._pos]
            self._pos = 0
        return chunk

    def read_exact(self, n: int, what: str) -> bytes:
        """Exactly `n` bytes, or a BundleError saying the bundle ends inside `what`."""
        chunk = self.read(n)
        if len(chunk) != n:
            raise BundleError(f"{self._label}: truncated: the data ends inside {what}")
        return chunk

    def finish(self) -> None:
        """Check that the frame ends here: no decompressed data left, frame complete, and no
        byte after the frame in the source."""
        if self.read(1):
            raise BundleError(f"{self._label}: unexpected data after the end of the tar archive")
        if self._input or (not self._source_done and self._source_read()):
            raise BundleError(f"{self._label}: unexpected data after the end of the zstd frame")

    def _source_read(self) -> bool:
        """Fetch more compressed input; False at the end of the source."""
        try:
            data = self._source.read(_READ_BYTES)
        except OSError as exc:
            raise BundleError(f"{self._label}: cannot read: {exc}") from None
        if not data:
            self._source_done = True
            return False
        if len(self._head) < len(ZSTD_MAGIC):
            self._head += data[: len(ZSTD_MAGIC) - len(self._head)]
            if not ZSTD_MAGIC.startswith(self._head):
                raise BundleError(f"{self._label}: not a bundle (not zstd-compressed data)")
        self.compressed_bytes += len(data)
        self._input = memoryview(data)
        return True

    def _decompress_more(self) -> bool:
        """Decompress one small slice of input; False once the frame has ended."""
        if self._dobj.eof:
            return False
        if not self._input and not self._source_read():
            if self.compressed_bytes == 0:
                raise BundleError(f"{self._label}: empty file, not a bundle")
            raise BundleError(
                f"{self._label}: truncated: the zstd stream ends before its frame is complete"
            )
        piece, self._input = self._input[:_FEED_BYTES], self._input[_FEED_BYTES:]
        try:
            out = self._dobj.decompress(piece)
        except zstandard.ZstdError as exc:
            raise BundleError(f"{self._label}: damaged zstd data ({exc})") from None
        self._buffer += out
        if self._dobj.eof:
            unused = self._dobj.unused_data
            if unused or self._input:
                self._input = memoryview(bytes(unused) + bytes(self._input))
        return True
