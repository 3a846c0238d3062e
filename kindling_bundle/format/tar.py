"""The POSIX ustar framing of a bundle: member headers we write, and a strict header parser.

Bundles hold regular files only, with fixed metadata (mode 0644, uid/gid 0, empty owner names,
mtime = the bundle's creation time), so the same content gives the same bytes on any machine.
Reading never extracts anything: the parser accepts only what a bundle may hold (a ustar header
with a valid checksum, type '0', a plain name without prefix) and the caller decides whether the
name is one it expects. Anything else (links, devices, directories, pax or GNU extension headers)
is refused, not interpreted.
"""

from __future__ import annotations

import tarfile
from typing import NamedTuple

from kindling_bundle.errors import BundleError

BLOCK = 512
RECORD = 20 * BLOCK
"""Writers pad the archive to a multiple of this, as tar(1) and Python's tarfile do."""

MAX_MEMBER_BYTES = 8**11 - 1
"""The largest size a ustar header can state (11 octal digits, 8 GiB - 1)."""

MAX_MTIME = 8**11 - 1

_USTAR_MAGIC = b"ustar\x0000"


class MemberHeader(NamedTuple):
    name: str
    size: int


def member_header(name: str, size: int, mtime: int) -> bytes:
    """The 512-byte ustar header of a regular file with the fixed bundle metadata."""
    if not 0 <= size <= MAX_MEMBER_BYTES:
        raise BundleError(f"{name}: {size} bytes is more than a bundle member can hold (8 GiB)")
    info = tarfile.TarInfo(name)
    info.size = size
    info.mtime = mtime
    info.mode = 0o644
    info.uid = info.gid = 0
    info.uname = info.gname = ""
    info.type = tarfile.REGTYPE
    return info.tobuf(format=tarfile.USTAR_FORMAT, encoding="ascii", errors="strict")


def padding(size: int) -> bytes:
    """The zero bytes that follow `size` bytes of member data up to the next block."""
    return b"\0" * (-size % BLOCK)


def archive_size(member_sizes: list[int]) -> int:
    """The bytes of an archive of members of these sizes: headers, data, padding, the end."""
    written = sum(BLOCK + size + (-size % BLOCK) for size in member_sizes)
    return written + len(end_of_archive(written))


def end_of_archive(written: int) -> bytes:
    """Two zero blocks, then zeros up to the next multiple of RECORD bytes."""
    end = written + 2 * BLOCK
    return b"\0" * (2 * BLOCK + (-end % RECORD))


def parse_header(block: bytes, label: str) -> MemberHeader | None:
    """A member header, or None for a zero block (the end-of-archive marker)."""
    if block.count(0) == BLOCK:
        return None
    stored = _octal(block[148:156], label, "checksum")
    computed = sum(block[:148]) + 8 * 0x20 + sum(block[156:])
    if stored != computed:
        raise BundleError(f"{label}: damaged tar header (checksum mismatch)")
    if block[257:265] != _USTAR_MAGIC:
        raise BundleError(f"{label}: not a POSIX ustar archive member")
    raw_name = block[:100].split(b"\0", 1)[0]
    try:
        name = raw_name.decode("ascii")
    except UnicodeDecodeError:
        name = raw_name.decode("ascii", "backslashreplace")
        raise BundleError(f"{label}: member name {name!r} is not a bundle member") from None
    if block[len(raw_name) : 100].strip(b"\0"):  # tar would see `name`; other tools, more
        hidden = block[:100].rstrip(b"\0").decode("ascii", "backslashreplace")
        raise BundleError(
            f"{label}: member name {hidden!r} holds a NUL byte; no bundle member does"
        )
    kind = block[156:157]
    if kind != tarfile.REGTYPE:
        raise BundleError(
            f"{label}: member {name!r} is not a regular file (tar type {kind!r}); "
            "bundles hold regular files only"
        )
    if block[345:500].strip(b"\0"):
        raise BundleError(f"{label}: member {name!r} uses a tar name prefix; bundles do not")
    return MemberHeader(name, _octal(block[124:136], label, f"size of {name!r}"))


def _octal(field: bytes, label: str, what: str) -> int:
    digits = field.rstrip(b"\0 ").lstrip(b" ")
    if not digits or not all(0x30 <= c <= 0x37 for c in digits):
        raise BundleError(f"{label}: damaged tar header ({what} is not an octal number)")
    return int(digits, 8)
