"""The age format's encodings: canonical unpadded base64, bech32 keys, SSH wire strings and
fingerprints, and header stanzas.

Pure Python with no cryptography, so detecting and parsing a header (and so reading a plain
bundle) never loads a cipher library.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
from collections.abc import Sequence
from dataclasses import dataclass

from kindling_bundle.errors import CiphertextError

MAX_LINE = 8 << 10  # a header line; sshd allows authorized_keys lines this long too


def b64encode(data: bytes) -> bytes:
    return base64.b64encode(data).rstrip(b"=")


def b64decode(text: bytes) -> bytes | None:
    """Unpadded base64 in its one canonical spelling (no padding, zero trailing bits), so that a
    header has exactly one byte form and its MAC covers what was parsed."""
    if len(text) % 4 == 1:
        return None
    try:
        data = base64.b64decode(text + b"=" * (-len(text) % 4), validate=True)
    except binascii.Error:
        return None
    return data if b64encode(data) == text else None


_BECH32 = "qpzry9x8gf2tvdw0s3jn54khce6mua7l"
_BECH32_VALUES = {c: i for i, c in enumerate(_BECH32)}
_BECH32_GEN = (0x3B6A57B2, 0x26508E6D, 0x1EA119FA, 0x3D4233DD, 0x2A1462B3)


def _bech32_polymod(values: list[int]) -> int:
    chk = 1
    for value in values:
        top = chk >> 25
        chk = (chk & 0x1FFFFFF) << 5 ^ value
        for i in range(5):
            if (top >> i) & 1:
                chk ^= _BECH32_GEN[i]
    return chk


def _bech32_hrp(hrp: str) -> list[int]:
    return [ord(c) >> 5 for c in hrp] + [0] + [ord(c) & 31 for c in hrp]


def _convert_bits(data: Sequence[int], from_bits: int, to_bits: int, pad: bool) -> list[int] | None:
    acc = bits = 0
    out = []
    top = (1 << to_bits) - 1
    keep = (1 << (from_bits + to_bits - 1)) - 1
    for value in data:
        acc = ((acc << from_bits) | value) & keep
        bits += from_bits
        while bits >= to_bits:
            bits -= to_bits
            out.append((acc >> bits) & top)
    if pad:
        if bits:
            out.append((acc << (to_bits - bits)) & top)
    elif bits >= from_bits or (acc << (to_bits - bits)) & top:
        return None
    return out


def bech32_encode(hrp: str, data: bytes) -> str:
    values = _convert_bits(data, 8, 5, pad=True)
    assert values is not None  # padding always succeeds
    mod = _bech32_polymod([*_bech32_hrp(hrp), *values, 0, 0, 0, 0, 0, 0]) ^ 1
    checksum = [(mod >> 5 * (5 - i)) & 31 for i in range(6)]
    return hrp + "1" + "".join(_BECH32[v] for v in values + checksum)


def bech32_decode(text: str) -> tuple[str, bytes] | None:
    """(human-readable part in lower case, data), or None. No length limit: age's keys are
    bech32 (not bech32m) and may exceed BIP 173's 90 characters."""
    if text != text.lower() and text != text.upper():
        return None
    text = text.lower()
    split = text.rfind("1")
    if split < 1 or split + 7 > len(text):
        return None
    hrp = text[:split]
    if any(not 33 <= ord(c) <= 126 for c in hrp):
        return None
    try:
        values = [_BECH32_VALUES[c] for c in text[split + 1 :]]
    except KeyError:
        return None
    if _bech32_polymod(_bech32_hrp(hrp) + values) != 1:
        return None
    data = _convert_bits(values[:-6], 5, 8, pad=False)
    return None if data is None else (hrp, bytes(data))


def ssh_string(blob: bytes, offset: int) -> tuple[bytes, int]:
    if offset + 4 > len(blob):
        raise ValueError("short SSH string")
    size = int.from_bytes(blob[offset : offset + 4], "big")
    end = offset + 4 + size
    if end > len(blob):
        raise ValueError("short SSH string")
    return blob[offset + 4 : end], end


def ssh_fingerprint(blob: bytes) -> str:
    """The form `ssh-keygen -l` prints."""
    return "SHA256:" + b64encode(hashlib.sha256(blob).digest()).decode()


def ssh_tag(blob: bytes) -> str:
    """The 4-byte key tag an ssh-* stanza names its recipient by."""
    return b64encode(hashlib.sha256(blob).digest()[:4]).decode()


@dataclass(frozen=True)
class Stanza:
    type: str
    args: tuple[str, ...]
    body: bytes

    def encode(self) -> bytes:
        text = b64encode(self.body)
        lines = [text[i : i + 64] for i in range(0, len(text), 64)]
        if len(text) % 64 == 0:
            lines.append(b"")  # a body always ends with a short line, possibly empty
        opening = " ".join(("->", self.type, *self.args)).encode()
        return opening + b"\n" + b"\n".join(lines) + b"\n"


def damaged(label: str, what: str) -> CiphertextError:
    return CiphertextError(f"{label}: damaged age header: {what}")


def check_args(stanza: Stanza, count: int, label: str) -> None:
    if len(stanza.args) != count:
        raise damaged(label, f"a {stanza.type} stanza has {len(stanza.args)} arguments")


def point_arg(stanza: Stanza, index: int, label: str) -> bytes:
    point = b64decode(stanza.args[index].encode())
    if point is None or len(point) != 32:
        raise damaged(label, f"a {stanza.type} stanza's share is not a 32-byte key")
    return point
