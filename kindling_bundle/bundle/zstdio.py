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

The frame header is checked before anything is decompressed: a bundle's frame has a content
checksum (without one, damage to the manifest and tar headers would go unnoticed), needs no
dictionary, and a window of at most MAX_WINDOW_BYTES (the window is memory the decoder must
allocate; a header may claim up to 2 TiB). The content size a header may claim is never used to
allocate anything; zstd checks it against the data. Once the manifest is known, `limit` caps the
decompressed output at what the manifest declares, so a bomb is refused as soon as it exceeds it.
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
_COMPACT_BYTES = 1 << 20
_HEADER_PREFIX = 5  # magic and frame header descriptor: enough to know the header's size


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
        self._header_checked = False
        self.compressed_bytes = 0
        self.decompressed_bytes = 0
        self.limit: int | None = None
        """The most decompressed bytes the consumer may read; more is refused (see `read`)."""

    def read(self, n: int) -> bytes:
        """Up to `n` bytes; fewer only at the end of the frame. A BundleError if the frame holds
        more than `limit` bytes and this read would go past it."""
        if self.limit is not None and self.decompressed_bytes + n > self.limit:
            n = self._up_to_limit()
        while len(self._buffer) - self._pos < n and self._decompress_more():
            pass
        end = min(self._pos + n, len(self._buffer))
        with memoryview(self._buffer) as view:  # one copy, not two
            chunk = bytes(view[self._pos : end])
        self._pos = end
        self.decompressed_bytes += len(chunk)
        self._compact()
        return chunk

    def skip(self, n: int, what: str) -> None:
        """Discard exactly `n` bytes without copying them out (cheap even for gigabytes)."""
        if self.limit is not None and self.decompressed_bytes + n > self.limit:
            raise self._over_limit()
        take = min(n, len(self._buffer) - self._pos)
        self._pos += take
        self.decompressed_bytes += take
        n -= take
        if n:
            self._buffer.clear()
            self._pos = 0
        while n:  # the buffer is used up: decompress and drop, keeping only what follows
            out = self._decompress_piece()
            if out is None:
                raise BundleError(f"{self._label}: truncated: the data ends inside {what}")
            take = min(n, len(out))
            self.decompressed_bytes += take
            n -= take
            if take < len(out):
                self._buffer = bytearray(out[take:])
                self._pos = 0
        self._compact()

    def _up_to_limit(self) -> int:
        """How much of a read that reaches past `limit` may be served: what is left before the
        limit, provided the frame really ends there."""
        assert self.limit is not None
        allowed = max(0, self.limit - self.decompressed_bytes)
        while len(self._buffer) - self._pos <= allowed and self._decompress_more():
            pass
        if len(self._buffer) - self._pos > allowed:
            raise self._over_limit()
        return allowed

    def _over_limit(self) -> BundleError:
        return BundleError(
            f"{self._label}: the archive holds more data than its manifest declares "
            f"(at most {self.limit} bytes)"
        )

    def _compact(self) -> None:
        if self._pos > _COMPACT_BYTES and self._pos * 2 > len(self._buffer):
            del self._buffer[: self._pos]
            self._pos = 0

    def read_exact(self, n: int, what: str) -> bytes:
        """Exactly `n` bytes, or a BundleError saying the bundle ends inside `what`."""
        chunk = self.read(n)
        if len(chunk) != n:
            raise BundleError(f"{self._label}: truncated: the data ends inside {what}")
        return chunk

    def finish(self) -> None:
        """Check that the frame ends here: no decompressed data left, frame complete, and no
        byte after the frame in the source."""
        self.limit = None  # a stray byte here deserves the more precise message below
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
        self._input = memoryview(bytes(self._input) + data) if self._input else memoryview(data)
        return True

    def _peek(self, n: int) -> bytes:
        """The next `n` bytes of input, left in place; truncation if the source has fewer."""
        while len(self._input) < n and self._source_read():
            pass
        if len(self._input) < n:
            raise BundleError(
                f"{self._label}: truncated: the zstd stream ends before its frame is complete"
            )
        return bytes(self._input[:n])

    def _check_frame_header(self) -> None:
        """Refuse a frame header that no bundle writer produces, before decompressing."""
        try:
            size = zstandard.frame_header_size(self._peek(_HEADER_PREFIX))
            params = zstandard.get_frame_parameters(self._peek(size))
        except zstandard.ZstdError as exc:
            if "too much memory" in str(exc):  # a window beyond what this zstd build decodes
                raise self._window_error("more than 2 GiB") from None
            raise BundleError(f"{self._label}: damaged zstd frame header ({exc})") from None
        if not params.has_checksum:
            raise BundleError(
                f"{self._label}: the zstd frame has no content checksum (bundles are written "
                "with one, which protects the manifest and the tar headers)"
            )
        if params.dict_id:
            raise BundleError(f"{self._label}: the zstd frame needs a dictionary; bundles use none")
        if params.window_size > MAX_WINDOW_BYTES:
            raise self._window_error(f"{params.window_size:,} bytes")
        self._header_checked = True

    def _window_error(self, size: str) -> BundleError:
        return BundleError(
            f"{self._label}: the zstd frame asks for a window of {size}, more than the "
            f"{MAX_WINDOW_BYTES:,} bytes bundles may use (a decoder must allocate it)"
        )

    def _decompress_more(self) -> bool:
        """Decompress one small slice of input into the buffer; False once the frame has ended."""
        out = self._decompress_piece()
        if out is None:
            return False
        self._buffer += out
        return True

    def _decompress_piece(self) -> bytes | None:
        """The output of one small slice of input; None once the frame has ended."""
        if self._dobj.eof:
            return None
        if not self._input and not self._source_read():
            if self.compressed_bytes == 0:
                raise BundleError(f"{self._label}: empty file, not a bundle")
            raise BundleError(
                f"{self._label}: truncated: the zstd stream ends before its frame is complete"
            )
        if not self._header_checked:
            self._check_frame_header()
        piece, self._input = self._input[:_FEED_BYTES], self._input[_FEED_BYTES:]
        try:
            out = self._dobj.decompress(piece)
        except zstandard.ZstdError as exc:
            raise BundleError(f"{self._label}: damaged zstd data ({exc})") from None
        if self._dobj.eof:
            unused = self._dobj.unused_data
            if unused or self._input:
                self._input = memoryview(bytes(unused) + bytes(self._input))
        return out
