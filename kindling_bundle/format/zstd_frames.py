"""zstd both ways, with the parameters that keep bundles deterministic and readers strict.

Writing: zstd's multi-threaded mode produces the same bytes for any number of worker threads
>= 1, but not the same bytes as the single-threaded mode (checked by tests/test_bundle.py), so
bundles are always written multi-threaded; the worker count only changes the speed. Frame
checksums are on; the content size is not written (it is unknown while streaming).

An archive larger than MAX_WINDOW_BYTES is compressed with the whole window a reader accepts
(WIDE_WINDOW_LOG) instead of the level's own (2 MiB at level 3): an agent's memory repeats
itself at a distance (a file read, then diffs of it), and the wider window finds those matches
for about the same work. The multi-threaded jobs stay JOB_BYTES long, as at level 3 by default,
so the writer's memory does not grow with the window. Smaller archives keep the level's
parameters: a window larger than the data gains nothing, and their bytes (the golden vectors
among them) stay what they were.

Reading: `ZstdFrameReader` decompresses exactly one zstd frame and refuses anything else.
zstandard's `stream_reader` returns short output without an error on a truncated stream, so the
reader feeds a `decompressobj` itself and checks that the frame really ended (`eof`) and that
nothing follows it, neither in the same frame's input nor in the source. Input is fed in small
slices so that one call cannot expand into an unbounded amount of memory, and only as much as the
consumer asks for is decompressed. The slices follow the frame's blocks: every zstd block
decompresses to at most 128 KiB (RFC 8878, Block_Maximum_Size), so the reader walks the 3-byte
block headers and feeds at most FEED_BLOCKS blocks per call (at most 1 MiB out; 4 MiB once reading
ahead). Where the block layout cannot be read (damage), it falls back to 1 KiB slices (zstd expands
at most 32,768 times: at most 32 MiB), and zstd reports the damage.

Once the manifest has been read, `start_read_ahead` moves decompression into a thread that stays
at most READ_AHEAD pieces (4 MiB each at most) ahead of the consumer: zstd releases the GIL, so it
overlaps with what the consumer does with the data (decoding records, writing SQLite). Whole
blocks per call keep the thread's turns for the GIL few. Errors reach the consumer where it
would have met them reading on its own.

The frame header is checked before anything is decompressed: a bundle's frame has a content
checksum (without one, damage to the manifest and tar headers would go unnoticed), needs no
dictionary, and a window of at most MAX_WINDOW_BYTES (the window is memory the decoder must
allocate; a header may claim up to 2 TiB). The content size a header may claim is never used to
allocate anything; zstd checks it against the data. Once the manifest is known, `limit` caps the
decompressed output at what the manifest declares, so a bomb is refused as soon as it exceeds it.
"""

from __future__ import annotations

import itertools
import os
import queue
import threading
from collections import deque
from typing import BinaryIO

import zstandard

from kindling_bundle.errors import BundleError

ZSTD_MAGIC = b"\x28\xb5\x2f\xfd"
MIN_LEVEL, MAX_LEVEL = 1, 19
MAX_WINDOW_BYTES = 8 << 20
"""Levels 1-19 use windows of at most 8 MiB; a reader refuses bigger ones (bounded memory)."""

COMPRESSION_THREADS = max(1, min(4, os.cpu_count() or 1))
"""Worker threads for writing; any value >= 1 gives identical output (see module docstring)."""

WIDE_WINDOW_LOG = MAX_WINDOW_BYTES.bit_length() - 1
"""The window (as a power of two) of an archive larger than MAX_WINDOW_BYTES."""
JOB_BYTES = 8 << 20
"""What each multi-threaded job compresses of such an archive (zstd would take 4 windows)."""

_READ_BYTES = 64 << 10
_AHEAD_READ_BYTES = 256 << 10
"""Source reads by the read-ahead thread, which feeds AHEAD_FEED_BLOCKS blocks per call (at most
4 MiB out): each call gives up the GIL, and getting it back can take the consumer's whole switch
interval, so calls are few and large (the piece sizes tried are in bench/RESULTS.md)."""
_FEED_BYTES = 1 << 10
FEED_BLOCKS = 8
AHEAD_FEED_BLOCKS = 32
_BLOCK_HEADER = 3
_MAX_BLOCK_BYTES = 128 << 10
_RLE_BLOCK, _RESERVED_BLOCK = 1, 3
_CHECKSUM_BYTES = 4
READ_AHEAD = 2
_PUT_WAIT_SECONDS = 0.1
_HEADER_PREFIX = 5  # magic and frame header descriptor: enough to know the header's size


def compressor(
    level: int, archive_bytes: int = 0, *, wide: bool = True
) -> zstandard.ZstdCompressor:
    """The compressor a bundle whose archive is `archive_bytes` long is written with: the
    level's parameters, with the wide window above MAX_WINDOW_BYTES (see above). Not `wide`:
    the level's own window at any size, for a scratch bundle that is read back at once (a
    restore's merged chain): the wide window's jobs and buffers cost tens of MB and more time
    than they save on a file that is deleted after one read."""
    if not MIN_LEVEL <= level <= MAX_LEVEL:
        raise ValueError(f"zstd level must be {MIN_LEVEL}..{MAX_LEVEL}, got {level}")
    if archive_bytes <= MAX_WINDOW_BYTES or not wide:
        return zstandard.ZstdCompressor(
            level=level,
            threads=COMPRESSION_THREADS,
            write_checksum=True,
            write_content_size=False,
        )
    params = zstandard.ZstdCompressionParameters.from_level(
        level,
        window_log=WIDE_WINDOW_LOG,
        job_size=JOB_BYTES,
        threads=COMPRESSION_THREADS,
        write_checksum=1,
        write_content_size=0,
    )
    return zstandard.ZstdCompressor(compression_params=params)


class ZstdFrameReader:
    """Reads the decompressed bytes of the single zstd frame that must make up `source`."""

    def __init__(self, source: BinaryIO, label: str):
        self._source = source
        self._label = label
        self._dobj = zstandard.ZstdDecompressor(max_window_size=MAX_WINDOW_BYTES).decompressobj()
        self._input = memoryview(b"")
        self._pieces: deque[bytes] = deque()  # output not consumed yet, oldest first
        self._offset = 0  # where in the first piece the unconsumed bytes start
        self._available = 0
        self._source_done = False
        self._head = b""
        self._header_checked = False
        self._block_at: int | None = None
        """Where in `_input` the next block header starts; None if unknown (before the frame
        header is read, after the last block, or where the layout is damaged)."""
        self.compressed_bytes = 0
        self.decompressed_bytes = 0
        self.limit: int | None = None
        """The most decompressed bytes the consumer may read; more is refused (see `read`)."""
        self._read_bytes = _READ_BYTES
        self._feed_blocks = FEED_BLOCKS
        self._ahead: queue.Queue[bytes | Exception | None] | None = None
        self._thread: threading.Thread | None = None
        self._closing = False
        self._ahead_done = False
        """The read-ahead thread has delivered its last piece: the end, or `_ahead_error`."""
        self._ahead_error: Exception | None = None

    def start_read_ahead(self) -> None:
        """From now on, decompress in a thread, up to READ_AHEAD pieces ahead (see above)."""
        if self._thread is not None or self._dobj.eof:
            return
        self._ahead = queue.Queue(READ_AHEAD)
        self._read_bytes = _AHEAD_READ_BYTES
        self._feed_blocks = AHEAD_FEED_BLOCKS
        self._thread = threading.Thread(target=self._produce, name="kbundle-zstd", daemon=True)
        self._thread.start()

    def close(self) -> None:
        """Stop the read-ahead thread (before the source is closed)."""
        self._closing = True
        if self._thread is not None:
            self._thread.join()

    def _produce(self) -> None:
        assert self._ahead is not None
        while True:
            try:
                piece: bytes | Exception | None = self._decompress_piece()
            except Exception as exc:  # delivered to the consumer, in order
                piece = exc
            while True:
                if self._closing:
                    return
                try:
                    self._ahead.put(piece, timeout=_PUT_WAIT_SECONDS)
                    break
                except queue.Full:
                    continue
            if not isinstance(piece, bytes):
                return

    def _next_piece(self) -> bytes | None:
        """The next piece of output, from the read-ahead thread if it runs; None at the end."""
        if self._ahead is None:
            return self._decompress_piece()
        if not self._ahead_done:
            piece = self._ahead.get()
            if isinstance(piece, bytes):
                return piece
            self._ahead_done = True
            self._ahead_error = piece
            assert self._thread is not None
            self._thread.join()  # it has stopped: the input is the consumer's again
        if self._ahead_error is not None:
            raise self._ahead_error
        return None

    def read(self, n: int) -> bytes:
        """Up to `n` bytes; fewer only at the end of the frame. A BundleError if the frame holds
        more than `limit` bytes and this read would go past it."""
        return bytes(self.read_view(n))  # no copy of what is bytes already

    def read_view(self, n: int) -> bytes | memoryview:
        """As `read`, but without a copy where the bytes lie in one piece of output: a read-only
        view that keeps that piece (at most 4 MiB) alive as long as it is held. A bundle's
        frames are read this way (72e2a27 in bench/RESULTS.md)."""
        if self.limit is not None and self.decompressed_bytes + n > self.limit:
            n = self._up_to_limit()
        while self._available < n and self._decompress_more():
            pass
        n = min(n, self._available)
        if not n:
            return b""
        first, start = self._pieces[0], self._offset
        if start + n <= len(first):
            chunk: bytes | memoryview = memoryview(first)[start : start + n]
        else:
            parts, wanted = [memoryview(first)[start:]], n - (len(first) - start)
            for piece in itertools.islice(self._pieces, 1, None):
                parts.append(memoryview(piece)[:wanted])
                wanted -= len(parts[-1])
                if not wanted:
                    break
            chunk = b"".join(parts)
        self._consume(n)
        return chunk

    def skip(self, n: int, what: str) -> None:
        """Discard exactly `n` bytes without copying them out (cheap even for gigabytes)."""
        if self.limit is not None and self.decompressed_bytes + n > self.limit:
            raise self._over_limit()
        take = min(n, self._available)
        self._consume(take)
        n -= take
        while n:  # the pieces are used up: decompress and drop, keeping only what follows
            out = self._next_piece()
            if out is None:
                raise BundleError(f"{self._label}: truncated: the data ends inside {what}")
            take = min(n, len(out))
            self.decompressed_bytes += take
            n -= take
            if take < len(out):
                self._pieces.append(out)
                self._offset, self._available = take, len(out) - take

    def _consume(self, n: int) -> None:
        """Move past `n` of the bytes available, dropping the pieces they use up."""
        self._available -= n
        self.decompressed_bytes += n
        offset = self._offset + n
        while self._pieces and offset >= len(self._pieces[0]):
            offset -= len(self._pieces.popleft())
        self._offset = offset

    def _up_to_limit(self) -> int:
        """How much of a read that reaches past `limit` may be served: what is left before the
        limit, provided the frame really ends there."""
        assert self.limit is not None
        allowed = max(0, self.limit - self.decompressed_bytes)
        while self._available <= allowed and self._decompress_more():
            pass
        if self._available > allowed:
            raise self._over_limit()
        return allowed

    def _over_limit(self) -> BundleError:
        return BundleError(
            f"{self._label}: the archive holds more data than its manifest declares "
            f"(at most {self.limit} bytes)"
        )

    def read_exact(self, n: int, what: str) -> bytes:
        """Exactly `n` bytes, or a BundleError saying the bundle ends inside `what`."""
        return bytes(self.read_exact_view(n, what))

    def read_exact_view(self, n: int, what: str) -> bytes | memoryview:
        """As `read_exact`, without a copy where possible (see `read_view`)."""
        chunk = self.read_view(n)
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
            data = self._source.read(self._read_bytes)
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
        self._block_at = size

    def _window_error(self, size: str) -> BundleError:
        return BundleError(
            f"{self._label}: the zstd frame asks for a window of {size}, more than the "
            f"{MAX_WINDOW_BYTES:,} bytes bundles may use (a decoder must allocate it)"
        )

    def _decompress_more(self) -> bool:
        """Decompress one piece of input and queue its output; False once the frame has ended."""
        out = self._next_piece()
        if out is None:
            return False
        if out:
            self._pieces.append(out)
            self._available += len(out)
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
        length = self._feed_length()
        while length == 0:  # the next block header is cut by the end of the input read so far
            if not self._source_read():
                self._block_at = None  # truncated: zstd gets what is left, and never ends
                length = len(self._input)
            else:
                length = self._feed_length()
        piece, self._input = self._input[:length], self._input[length:]
        if self._block_at is not None:
            self._block_at -= length
        try:
            out = self._dobj.decompress(piece)
        except zstandard.ZstdError as exc:
            raise BundleError(f"{self._label}: damaged zstd data ({exc})") from None
        if self._dobj.eof:
            unused = self._dobj.unused_data
            if unused or self._input:
                self._input = memoryview(bytes(unused) + bytes(self._input))
        return out

    def _feed_length(self) -> int:
        """How much of `_input` the next call may decompress: up to the end of the
        `_feed_blocks`-th block whose header is in `_input` (a block cut short by the end of
        `_input` counts), so that the output is at most `_feed_blocks` * 128 KiB; a 1 KiB slice
        where the headers cannot be walked."""
        view, at = self._input, self._block_at
        if at is None:
            return min(len(view), _FEED_BYTES)
        blocks = 0
        while blocks < self._feed_blocks and at + _BLOCK_HEADER <= len(view):
            header = int.from_bytes(view[at : at + _BLOCK_HEADER], "little")
            kind, size = (header >> 1) & 3, header >> 3
            if kind == _RESERVED_BLOCK or size > _MAX_BLOCK_BYTES:  # damaged: zstd will say so
                self._block_at = None
                return at or min(len(view), _FEED_BYTES)
            at += _BLOCK_HEADER + (1 if kind == _RLE_BLOCK else size)
            blocks += 1
            if header & 1:  # the last block: its checksum ends the frame
                self._block_at = None
                return min(len(view), at + _CHECKSUM_BYTES)
        if blocks == 0:  # the next header is cut by the end of `_input`: up to it, or wait
            return at
        self._block_at = at
        return min(len(view), at)
