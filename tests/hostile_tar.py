"""Builders for damaged and hostile bundles, made by hand so that any field can lie.

Tar headers are written field by field (not with tarfile, which refuses to write most lies);
zstd frames come from zstandard, or block by block (raw and RLE blocks) when a test needs a
frame header to say something the compressor would never write, or a bomb: a few kilobytes that
decompress to gigabytes. Manifests are computed from the members they describe unless a test
edits them afterwards. Nothing here reads bundles: that is the code under test.
"""

from __future__ import annotations

import hashlib
import json
from pathlib import Path
from typing import Any

import msgspec
import zstandard

BLOCK = 512
RECORD = 20 * BLOCK
CREATED_AT = 1_767_225_600_000
ENTITIES = ("observations", "capsules", "summaries", "pins")
VECTORS = Path(__file__).resolve().parent.parent / "spec" / "vectors"
ZSTD_MAGIC = b"\x28\xb5\x2f\xfd"
RLE_BLOCK_MAX = 128 << 10


def sample_records() -> dict[str, list[dict[str, Any]]]:
    """Every record of the `full` test vector (all entity kinds and relationships), as wire
    dictionaries."""
    return json.loads((VECTORS / "full.records.json").read_text())


# --- the archive layer -------------------------------------------------------------------------


def tar_header(
    name: str | bytes,
    size: int,
    *,
    typeflag: bytes = b"0",
    linkname: bytes = b"",
    magic: bytes = b"ustar\x0000",
    prefix: bytes = b"",
    size_field: bytes | None = None,
    checksum: bytes | None = None,
) -> bytes:
    """A 512-byte ustar header; every field may be given a value tar would never write."""
    raw_name = name.encode() if isinstance(name, str) else name
    block = bytearray(BLOCK)
    block[0 : len(raw_name)] = raw_name
    block[100:108] = b"0000644\0"
    block[108:116] = b"0000000\0"
    block[116:124] = b"0000000\0"
    block[124:136] = size_field if size_field is not None else b"%011o\0" % size
    block[136:148] = b"%011o\0" % (CREATED_AT // 1000)
    block[148:156] = b" " * 8
    block[156:157] = typeflag
    block[157 : 157 + len(linkname)] = linkname
    block[257:265] = magic
    block[329:337] = b"0000000\0"
    block[337:345] = b"0000000\0"
    block[345 : 345 + len(prefix)] = prefix
    block[148:156] = checksum if checksum is not None else b"%06o\0 " % sum(block)
    return bytes(block)


def padding(size: int) -> bytes:
    return b"\0" * (-size % BLOCK)


def member(name: str | bytes, data: bytes, **header: Any) -> bytes:
    """Header, data and block padding of one member."""
    return tar_header(name, len(data), **header) + data + padding(len(data))


def end_of_archive(written: int) -> bytes:
    """Two zero blocks, then zeros up to the next multiple of RECORD bytes, as tar writes."""
    end = written + 2 * BLOCK
    return b"\0" * (2 * BLOCK + (-end % RECORD))


def archive(*members: bytes, end: bool = True) -> bytes:
    body = b"".join(members)
    return body + end_of_archive(len(body)) if end else body


# --- entity members and the manifest -----------------------------------------------------------


def frame(payload: bytes) -> bytes:
    """A length-prefixed frame around an already encoded payload."""
    return len(payload).to_bytes(4, "big") + payload


def records_frame(records: list[Any]) -> bytes:
    return frame(msgspec.msgpack.encode(records))


def entity_data(records: dict[str, list[dict[str, Any]]]) -> dict[str, bytes]:
    """Each entity's member bytes: one frame with all its records (none when it has none)."""
    return {e: records_frame(records[e]) if records.get(e) else b"" for e in ENTITIES}


def manifest_for(data: dict[str, bytes], counts: dict[str, int]) -> dict[str, Any]:
    """The manifest that describes `data` truthfully."""
    return {
        "format": "kindling-bundle",
        "formatVersion": "1.0",
        "createdAt": CREATED_AT,
        "tool": {"name": "hostile-tests", "version": "0"},
        "source": {"schemaGeneration": None},
        "filter": {"scopeIds": None, "fromTs": None, "toTs": None, "includeReferences": False},
        "entities": [
            {
                "entity": e,
                "member": f"{e}.msgpack",
                "records": counts.get(e, 0),
                "bytes": len(data[e]),
                "sha256": hashlib.sha256(data[e]).hexdigest(),
            }
            for e in ENTITIES
        ],
    }


class Parts:
    """A bundle taken apart: edit the manifest, the members or the records, then `tar()` it."""

    def __init__(self) -> None:
        self.records = sample_records()
        self.data = entity_data(self.records)
        self.manifest = manifest_for(self.data, {e: len(self.records[e]) for e in ENTITIES})

    def entry(self, entity: str) -> dict[str, Any]:
        return self.manifest["entities"][ENTITIES.index(entity)]

    def set_data(self, entity: str, data: bytes, records: int | None = None) -> Parts:
        """Replace a member's bytes and make the manifest describe them (count: as given)."""
        self.data[entity] = data
        entry = self.entry(entity)
        entry.update(bytes=len(data), sha256=hashlib.sha256(data).hexdigest())
        if records is not None:
            entry["records"] = records
        return self

    def set_records(self, entity: str, records: list[Any]) -> Parts:
        """Replace a member by these records (one frame) and describe it truthfully."""
        return self.set_data(entity, records_frame(records) if records else b"", len(records))

    def manifest_bytes(self) -> bytes:
        return json.dumps(self.manifest, ensure_ascii=False).encode()

    def members(self) -> list[bytes]:
        return [member("manifest.json", self.manifest_bytes())] + [
            member(f"{e}.msgpack", self.data[e]) for e in ENTITIES
        ]

    def tar(self) -> bytes:
        return archive(*self.members())

    def bundle(self) -> bytes:
        return compress(self.tar())


# --- the compression layer -----------------------------------------------------------------------


def compress(data: bytes) -> bytes:
    """One zstd frame with a checksum and no content size, as bundles are written."""
    cctx = zstandard.ZstdCompressor(level=3, write_checksum=True, write_content_size=False)
    return cctx.compress(data)


def with_content_size(frame_bytes: bytes, content_size: int) -> bytes:
    """The same frame whose header now claims `content_size` decompressed bytes (an 8-byte
    Frame_Content_Size field). The content checksum covers the content only, so it still holds."""
    descriptor = frame_bytes[4]
    if descriptor & 0xE0:
        raise ValueError("expected a frame without a content size and with a window descriptor")
    return (
        frame_bytes[:4]
        + bytes([descriptor | 0xC0])
        + frame_bytes[5:6]
        + content_size.to_bytes(8, "little")
        + frame_bytes[6:]
    )


# A block header is 3 bytes, little-endian: Last_Block (bit 0), Block_Type (bits 1-2: 0 raw,
# 1 RLE), Block_Size (bits 3-23). Blocks here are never the last: bombs are refused before then.


def raw_block(data: bytes) -> bytes:
    assert len(data) <= RLE_BLOCK_MAX
    return (len(data) << 3).to_bytes(3, "little") + data


def rle_block(byte: int, size: int) -> bytes:
    """One byte in the file, `size` copies of it decompressed."""
    assert 0 < size <= RLE_BLOCK_MAX
    return (size << 3 | 1 << 1).to_bytes(3, "little") + bytes([byte])


def zstd_frame(blocks: list[bytes]) -> bytes:
    """A zstd frame made block by block: a 1 MiB window, the checksum flag set, and a checksum
    that is never reached (the frame has no last block)."""
    descriptor, window = 0x04, (20 - 10) << 3  # Content_Checksum_flag; window 2**20
    return ZSTD_MAGIC + bytes([descriptor, window]) + b"".join(blocks) + b"\0" * 4


def zero_blocks(size: int) -> list[bytes]:
    """RLE blocks of `size` zero bytes: 4 bytes of frame per 128 KiB of output."""
    blocks = [rle_block(0, RLE_BLOCK_MAX)] * (size // RLE_BLOCK_MAX)
    if size % RLE_BLOCK_MAX:
        blocks.append(rle_block(0, size % RLE_BLOCK_MAX))
    return blocks


def raw_blocks(data: bytes) -> list[bytes]:
    return [raw_block(data[i : i + RLE_BLOCK_MAX]) for i in range(0, len(data), RLE_BLOCK_MAX)]


def bomb(declared: int, *, member_size: int | None = None) -> bytes:
    """A small file that expands to `member_size` zero bytes of observations.msgpack (default:
    `declared`, the size its manifest states). About 32 KiB of file per GiB of output."""
    size = declared if member_size is None else member_size
    parts = Parts()
    entry = parts.entry("observations")
    entry.update(bytes=declared, records=1, sha256="0" * 64)
    head = member("manifest.json", parts.manifest_bytes()) + tar_header(
        "observations.msgpack", size
    )
    return zstd_frame(raw_blocks(head) + zero_blocks(size))


def with_window(frame_bytes: bytes, window_log: int) -> bytes:
    """The same frame whose header now asks for a 2**window_log-byte window (decoders must
    allocate it; the data itself needs less, so only the claim changes)."""
    if frame_bytes[4] & 0x20:
        raise ValueError("expected a frame with a window descriptor (not single-segment)")
    return frame_bytes[:5] + bytes([(window_log - 10) << 3]) + frame_bytes[6:]
