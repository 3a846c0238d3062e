"""The SSHSIG format itself (OpenSSH's PROTOCOL.sshsig): RFC 4251 wire fields, the armored text,
the signature blob, the bytes a key actually signs, and the `keytype base64` public-key text.

Everything here is parsed strictly, every length checked before it is trusted: it is what a
hostile signature member reaches first.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import os
import re
from collections.abc import Callable
from dataclasses import dataclass
from typing import TypeAlias

from kindling_bundle.errors import MalformedSignatureError

StrPath: TypeAlias = str | os.PathLike[str]

NAMESPACE = "kindling-bundle"
"""The SSHSIG namespace of bundle signatures: a signature made for git or for files is refused."""

MAX_SIGNATURE_BYTES = 64 * 1024
"""The largest armored signature accepted. A 16384-bit RSA signature is under 6 KiB, so anything
bigger is hostile; a reader can refuse a larger member from its size before reading it."""

_BEGIN = "-----BEGIN SSH SIGNATURE-----"
_END = "-----END SSH SIGNATURE-----"
_MAGIC = b"SSHSIG"
_VERSION = 1
_HASH_ALGORITHM = "sha512"  # what ssh-keygen writes; sha256 is accepted on reading
_HASHES: dict[str, Callable[[bytes], bytes]] = {
    "sha256": lambda data: hashlib.sha256(data).digest(),
    "sha512": lambda data: hashlib.sha512(data).digest(),
}
_ARMOR_WIDTH = 70  # ssh-keygen's line width (sshbuf_dtob64 with wrapping)


# --- SSH wire encoding (RFC 4251 strings, uint32s and mpints) ---------------------------------


class _Truncated(Exception):
    """A length or field runs past the end of its buffer; callers turn it into a typed error."""


class _WireReader:
    """Reads RFC 4251 fields, checking every length against what is left before slicing."""

    def __init__(self, data: bytes) -> None:
        self._data = data
        self._pos = 0

    def take(self, size: int, field: str) -> bytes:
        left = len(self._data) - self._pos
        if size > left:
            raise _Truncated(f"{field} needs {size} bytes but only {left} are left")
        chunk = self._data[self._pos : self._pos + size]
        self._pos += size
        return chunk

    def uint32(self, field: str) -> int:
        return int.from_bytes(self.take(4, field), "big")

    def string(self, field: str) -> bytes:
        return self.take(self.uint32(f"length of {field}"), field)

    def text(self, field: str) -> str:
        raw = self.string(field)
        try:
            return raw.decode("utf-8")
        except UnicodeDecodeError:
            raise _Truncated(f"{field} is not UTF-8") from None

    def mpint(self, field: str) -> int:
        raw = self.string(field)
        if raw and raw[0] & 0x80:
            raise _Truncated(f"{field} is negative")
        return int.from_bytes(raw, "big")

    def end(self, what: str) -> None:
        left = len(self._data) - self._pos
        if left:
            raise _Truncated(f"{left} unexpected bytes after the {what}")


def _string(data: bytes) -> bytes:
    return len(data).to_bytes(4, "big") + data


def _mpint(value: int) -> bytes:
    """A non-negative mpint: minimal big-endian, a zero byte first when the top bit is set."""
    return _string(value.to_bytes((value.bit_length() + 8) // 8, "big") if value else b"")


def _fingerprint(key_blob: bytes) -> str:
    """`SHA256:` and the unpadded base64 digest of the key blob, as ssh-keygen prints it."""
    digest = base64.b64encode(hashlib.sha256(key_blob).digest()).decode("ascii")
    return "SHA256:" + digest.rstrip("=")


def _signed_data(namespace: str, hash_algorithm: str, message: bytes) -> bytes:
    """What the key actually signs (PROTOCOL.sshsig section 3): the message only as its hash."""
    return (
        _MAGIC
        + _string(namespace.encode("utf-8"))
        + _string(b"")
        + _string(hash_algorithm.encode("ascii"))
        + _string(_HASHES[hash_algorithm](message))
    )


def _key_type_of(blob: bytes) -> str:
    return _WireReader(blob).text("key type")


def _try_key(text: str) -> tuple[str, bytes] | None:
    """`keytype base64 [comment]`, or None if the text does not start with a key."""
    parts = text.split(None, 2)
    if len(parts) < 2:
        return None
    try:
        blob = base64.b64decode(parts[1], validate=True)
        if _key_type_of(blob) != parts[0]:
            return None
    except (binascii.Error, _Truncated):
        return None
    return parts[0], blob


# --- armor and SSHSIG blob ---------------------------------------------------------------------


def _armor(blob: bytes) -> str:
    body = base64.b64encode(blob).decode("ascii")
    lines = [body[i : i + _ARMOR_WIDTH] for i in range(0, len(body), _ARMOR_WIDTH)]
    return "\n".join([_BEGIN, *lines, _END]) + "\n"


_BASE64_LINE = re.compile(r"[A-Za-z0-9+/]+={0,2}")


def _dearmor(armored: bytes | str, source: str) -> bytes:
    """The SSHSIG blob inside armored text, refusing anything but header, base64 lines, footer."""
    size = len(armored.encode("utf-8") if isinstance(armored, str) else armored)
    if size > MAX_SIGNATURE_BYTES:
        raise MalformedSignatureError(
            f"{source}: {size} bytes, more than the {MAX_SIGNATURE_BYTES} a signature may have"
        )
    try:
        text = armored if isinstance(armored, str) else armored.decode("ascii")
        text.encode("ascii")
    except UnicodeError:
        raise MalformedSignatureError(f"{source}: not ASCII, so not an SSH signature") from None
    if not text.startswith(_BEGIN + "\n"):
        raise MalformedSignatureError(f"{source}: missing the {_BEGIN} header")
    body = text[len(_BEGIN) + 1 :]
    body = body[:-1] if body.endswith("\n") else body
    if not body.endswith("\n" + _END):
        raise MalformedSignatureError(f"{source}: missing the {_END} footer, or text after it")
    lines = body[: -len(_END) - 1].split("\n")
    if not all(_BASE64_LINE.fullmatch(line) for line in lines):
        raise MalformedSignatureError(f"{source}: the armored body is not base64 lines")
    try:
        return base64.b64decode("".join(lines), validate=True)
    except binascii.Error as exc:
        raise MalformedSignatureError(f"{source}: bad base64 in the armored body: {exc}") from None


@dataclass(frozen=True)
class _Sshsig:
    public_key: bytes
    namespace: str
    hash_algorithm: str
    signature: bytes


def _parse_blob(blob: bytes, source: str) -> _Sshsig:
    reader = _WireReader(blob)
    try:
        if reader.take(len(_MAGIC), "magic") != _MAGIC:
            raise MalformedSignatureError(f"{source}: not an SSHSIG blob (bad magic)")
        version = reader.uint32("version")
        if version != _VERSION:
            raise MalformedSignatureError(
                f"{source}: SSHSIG version {version}; only version {_VERSION} is supported"
            )
        public_key = reader.string("public key")
        namespace = reader.text("namespace")
        reader.string("reserved")  # PROTOCOL.sshsig: ignored, and never part of the signed data
        hash_algorithm = reader.text("hash algorithm")
        signature = reader.string("signature")
        reader.end("SSHSIG blob")
    except _Truncated as exc:
        raise MalformedSignatureError(f"{source}: malformed SSHSIG blob: {exc}") from None
    if not namespace:
        raise MalformedSignatureError(f"{source}: empty namespace")
    if hash_algorithm not in _HASHES:
        raise MalformedSignatureError(
            f"{source}: hash algorithm {hash_algorithm!r}; only sha512 and sha256 are accepted"
        )
    return _Sshsig(public_key, namespace, hash_algorithm, signature)
