"""SSH signatures (OpenSSH's SSHSIG format) over a bundle's manifest, and allowed_signers trust.

A manifest holds every member's size, count and SHA-256, so a signature over its bytes vouches for
the whole bundle. The format is the one `ssh-keygen -Y sign` writes and git uses for signed commits,
so developers sign with the SSH keys they already have and check against the `allowed_signers`
files their teams already keep, and OpenSSH can check our signatures and we can check its.

Signing takes an OpenSSH private key file (read with `cryptography`) or a public key file whose
private half is in ssh-agent (signed by running `ssh-keygen -Y sign`). Verifying never runs a
program: the armored text is parsed strictly, every length checked before it is trusted, and the
signature checked with `cryptography`.

References: OpenSSH's PROTOCOL.sshsig (armor, blob, signed data) and ssh-keygen(1) ALLOWED SIGNERS.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import os
import re
import subprocess
from abc import ABC, abstractmethod
from collections.abc import Callable
from dataclasses import dataclass, replace
from datetime import UTC, datetime
from pathlib import Path
from typing import TypeAlias

from cryptography.exceptions import InvalidSignature, UnsupportedAlgorithm
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec, ed25519, padding, rsa
from cryptography.hazmat.primitives.asymmetric.utils import (
    decode_dss_signature,
    encode_dss_signature,
)

from kindling_bundle.errors import (
    AllowedSignersError,
    BadSignatureError,
    MalformedSignatureError,
    SignatureNamespaceError,
    SignerNotValidError,
    SigningKeyError,
    UnknownSignerError,
    UnsignedBundleError,
)

__all__ = [
    "MAX_SIGNATURE_BYTES",
    "NAMESPACE",
    "AllowedSigner",
    "AllowedSigners",
    "PassphraseCallback",
    "Signer",
    "SigningKey",
    "check_bundle_signature",
    "load_signing_key",
    "sign",
    "verify",
]

StrPath: TypeAlias = str | os.PathLike[str]
PassphraseCallback: TypeAlias = Callable[[str], str | bytes]
"""Called with the key file's path when that key is passphrase-protected; returns the passphrase."""

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
_RSA_SIGNATURE_HASHES: dict[str, hashes.HashAlgorithm] = {
    "rsa-sha2-512": hashes.SHA512(),
    "rsa-sha2-256": hashes.SHA256(),
}
_RSA_MIN_BITS = 1024  # OpenSSH's SSH_RSA_MINIMUM_MODULUS_SIZE
_ECDSA_CURVES: dict[str, tuple[ec.EllipticCurve, hashes.HashAlgorithm]] = {
    "nistp256": (ec.SECP256R1(), hashes.SHA256()),
    "nistp384": (ec.SECP384R1(), hashes.SHA384()),
    "nistp521": (ec.SECP521R1(), hashes.SHA512()),
}
_KEY_TYPES = ("ssh-ed25519", "ssh-rsa", *(f"ecdsa-sha2-{curve}" for curve in _ECDSA_CURVES))
_ARMOR_WIDTH = 70  # ssh-keygen's line width (sshbuf_dtob64 with wrapping)
_MAX_KEY_FILE_BYTES = 1024 * 1024


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


# --- public keys -------------------------------------------------------------------------------

_PublicKey: TypeAlias = ed25519.Ed25519PublicKey | rsa.RSAPublicKey | ec.EllipticCurvePublicKey


def _public_blob(key: _PublicKey) -> bytes:
    line = key.public_bytes(serialization.Encoding.OpenSSH, serialization.PublicFormat.OpenSSH)
    return base64.b64decode(line.split()[1])


def _key_type_of(blob: bytes) -> str:
    return _WireReader(blob).text("key type")


def _display_type(key_type: str) -> str:
    """The short name ssh-keygen prints ("ED25519 key SHA256:..."), for reports."""
    if key_type == "ssh-ed25519":
        return "ED25519"
    if key_type == "ssh-rsa":
        return "RSA"
    if key_type.startswith("ecdsa-sha2-"):
        return "ECDSA"
    return key_type


def _load_public_blob(blob: bytes, source: str) -> _PublicKey:
    """The key a signature names, refused unless it is a plain key of a type we can check."""
    try:
        key_type = _key_type_of(blob)
    except _Truncated as exc:
        raise MalformedSignatureError(f"{source}: malformed public key: {exc}") from None
    if key_type not in _KEY_TYPES:
        raise MalformedSignatureError(
            f"{source}: signed with a {key_type!r} key; supported are "
            "ssh-ed25519, ssh-rsa and ecdsa-sha2-nistp256/384/521 keys (no certificates)"
        )
    line = key_type.encode("ascii") + b" " + base64.b64encode(blob)
    try:
        key = serialization.load_ssh_public_key(line)
    except (ValueError, UnsupportedAlgorithm) as exc:
        raise MalformedSignatureError(f"{source}: malformed {key_type} public key: {exc}") from None
    if not isinstance(key, ed25519.Ed25519PublicKey | rsa.RSAPublicKey | ec.EllipticCurvePublicKey):
        raise MalformedSignatureError(f"{source}: unsupported {key_type} public key")
    if _public_blob(key) != blob:  # one key, one encoding: no padded or trailing variants
        raise MalformedSignatureError(f"{source}: {key_type} public key is not canonically encoded")
    if isinstance(key, rsa.RSAPublicKey) and key.key_size < _RSA_MIN_BITS:
        raise MalformedSignatureError(
            f"{source}: RSA key of {key.key_size} bits, fewer than {_RSA_MIN_BITS}"
        )
    return key


def _check_key_signature(
    key: _PublicKey, key_type: str, sig_blob: bytes, data: bytes, source: str
) -> None:
    """Check an SSH signature blob (string algorithm, string signature) made by `key` over data."""
    reader = _WireReader(sig_blob)
    try:
        algorithm = reader.text("signature algorithm")
        raw = reader.string("signature")
        reader.end("signature")
    except _Truncated as exc:
        raise MalformedSignatureError(f"{source}: malformed signature: {exc}") from None
    try:
        if isinstance(key, ed25519.Ed25519PublicKey):
            if algorithm != "ssh-ed25519" or len(raw) != 64:
                raise MalformedSignatureError(
                    f"{source}: an ed25519 key cannot make a {algorithm!r} signature "
                    f"of {len(raw)} bytes"
                )
            key.verify(raw, data)
        elif isinstance(key, rsa.RSAPublicKey):
            if algorithm not in _RSA_SIGNATURE_HASHES:
                raise MalformedSignatureError(
                    f"{source}: RSA signature algorithm {algorithm!r} refused "
                    "(only rsa-sha2-512 and rsa-sha2-256; ssh-rsa is SHA-1)"
                )
            size = (key.key_size + 7) // 8
            if len(raw) > size:
                raise MalformedSignatureError(
                    f"{source}: RSA signature of {len(raw)} bytes for a {size}-byte modulus"
                )
            key.verify(
                raw.rjust(size, b"\x00"), data, padding.PKCS1v15(), _RSA_SIGNATURE_HASHES[algorithm]
            )
        else:
            curve_hash = _ECDSA_CURVES[key_type.removeprefix("ecdsa-sha2-")][1]
            if algorithm != key_type:
                raise MalformedSignatureError(
                    f"{source}: a {key_type} key cannot make a {algorithm!r} signature"
                )
            inner = _WireReader(raw)
            try:
                r = inner.mpint("ECDSA r")
                s = inner.mpint("ECDSA s")
                inner.end("ECDSA signature")
            except _Truncated as exc:
                raise MalformedSignatureError(f"{source}: malformed signature: {exc}") from None
            key.verify(encode_dss_signature(r, s), data, ec.ECDSA(curve_hash))
    except InvalidSignature:
        raise BadSignatureError(
            f"{source}: the signature does not match: the signed bytes were changed, "
            "or it was made for other bytes"
        ) from None


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


# --- verifying ---------------------------------------------------------------------------------


@dataclass(frozen=True)
class Signer:
    """Who made a signature that verified; `principals` is filled only against allowed_signers."""

    key_type: str
    """The SSH key type name, e.g. "ssh-ed25519", "ssh-rsa", "ecdsa-sha2-nistp256"."""
    fingerprint: str
    """"SHA256:" and unpadded base64, exactly as `ssh-keygen -l` prints it."""
    public_key: str
    """The one-line public key, "ssh-ed25519 AAAA...", as in an allowed_signers file."""
    namespace: str
    hash_algorithm: str
    principals: tuple[str, ...] = ()
    """The allowed_signers principal(s) this key signs as: patterns, e.g. "*@example.com", as
    `ssh-keygen -Y find-principals` prints them, or exactly the principal asked for."""

    def describe(self) -> str:
        """One line for a report: `alice@example.com (ED25519 key SHA256:...)`."""
        key = f"{_display_type(self.key_type)} key {self.fingerprint}"
        return f"{','.join(self.principals)} ({key})" if self.principals else key


def verify(
    message: bytes,
    signature: bytes | str,
    *,
    namespace: str = NAMESPACE,
    allowed_signers: AllowedSigners | StrPath | None = None,
    principal: str | None = None,
    now: datetime | None = None,
    source: str = "signature",
) -> Signer:
    """Check an armored SSH signature over `message`, with no program run, and return its signer.

    With `allowed_signers`, the signer must also be listed there (as `principal` if given, which
    may match a wildcard entry), allowed the namespace, and valid at `now` (default: the current
    time); the returned Signer then names its principals. `source` prefixes every error message
    (e.g. "snap.kbundle: signature member").

    Raises MalformedSignatureError, SignatureNamespaceError, BadSignatureError, and against
    allowed_signers UnknownSignerError, SignatureNamespaceError, SignerNotValidError,
    AllowedSignersError.
    """
    sig = _parse_blob(_dearmor(signature, source), source)
    if sig.namespace != namespace:
        raise SignatureNamespaceError(
            f"{source}: made for namespace {sig.namespace!r}, not {namespace!r}"
        )
    key = _load_public_blob(sig.public_key, source)
    key_type = _key_type_of(sig.public_key)
    data = _signed_data(sig.namespace, sig.hash_algorithm, message)
    _check_key_signature(key, key_type, sig.signature, data, source)
    signer = Signer(
        key_type=key_type,
        fingerprint=_fingerprint(sig.public_key),
        public_key=f"{key_type} {base64.b64encode(sig.public_key).decode('ascii')}",
        namespace=sig.namespace,
        hash_algorithm=sig.hash_algorithm,
    )
    if allowed_signers is None:
        return signer
    trust = (
        allowed_signers
        if isinstance(allowed_signers, AllowedSigners)
        else AllowedSigners.load(allowed_signers)
    )
    return replace(signer, principals=trust.principals_for(signer, principal=principal, now=now))


def check_bundle_signature(
    message: bytes,
    signature: bytes | str | None,
    *,
    allowed_signers: AllowedSigners | StrPath | None = None,
    principal: str | None = None,
    require: bool = False,
    now: datetime | None = None,
    source: str = "signature",
) -> Signer | None:
    """The bundle's signature policy, in one place for every reader (verify, import, inspect).

    A signature present is always checked: a bad one is an error whether or not it is required.
    Absent, it is None (to report "unsigned") unless `require`, then UnsignedBundleError.
    Requiring a signature means nothing without a list of whom to trust, so `require` without
    `allowed_signers` is refused (AllowedSignersError) before anything else.
    """
    if require and allowed_signers is None:
        raise AllowedSignersError(
            "a signature is required but no allowed_signers file was given "
            "(--allowed-signers or KINDLING_BUNDLE_ALLOWED_SIGNERS)"
        )
    if signature is None:
        if require:
            raise UnsignedBundleError(
                f"{source}: the bundle is not signed, and a signature is required"
            )
        return None
    return verify(
        message,
        signature,
        allowed_signers=allowed_signers,
        principal=principal,
        now=now,
        source=source,
    )


# --- allowed_signers ---------------------------------------------------------------------------


def _pattern_matches(text: str, pattern: str) -> bool:
    """OpenSSH's match_pattern: `*` any run, `?` any one character, nothing else special."""
    regex = "".join(".*" if c == "*" else "." if c == "?" else re.escape(c) for c in pattern)
    return re.fullmatch(regex, text, re.DOTALL) is not None


def _pattern_list_matches(text: str, patterns: str) -> bool:
    """OpenSSH's match_pattern_list: a match of a `!pattern` refuses, whatever else matches."""
    positive = False
    for pattern in patterns.split(","):
        negated = pattern.startswith("!")
        if _pattern_matches(text, pattern[1:] if negated else pattern):
            if negated:
                return False
            positive = True
    return positive


_TIME = re.compile(r"(\d{8}|\d{12}|\d{14})(z|utc)?", re.IGNORECASE)


def _parse_time(value: str) -> int:
    """YYYYMMDD[HHMM[SS]] with an optional Z (or UTC); without it, local time, as ssh-keygen."""
    match = _TIME.fullmatch(value)
    if match is None:
        raise ValueError(f"{value!r} is not YYYYMMDD[HHMM[SS]][Z]")
    d = match.group(1).ljust(14, "0")
    try:
        when = datetime(
            int(d[0:4]), int(d[4:6]), int(d[6:8]), int(d[8:10]), int(d[10:12]), int(d[12:14])
        )
    except ValueError as exc:
        raise ValueError(f"{value!r}: {exc}") from None
    when = when.replace(tzinfo=UTC) if match.group(2) else when.astimezone()
    seconds = int(when.timestamp())
    if seconds <= 0:
        raise ValueError(f"{value!r} is not after 1970")
    return seconds


def _format_time(seconds: int) -> str:
    return datetime.fromtimestamp(seconds, UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


@dataclass(frozen=True)
class AllowedSigner:
    """One line of an allowed_signers file."""

    path: str
    line: int
    principals: str
    """The principals pattern-list as written, e.g. "alice@example.com,*@ops.example.com"."""
    key_type: str
    key_blob: bytes
    namespaces: str | None = None
    valid_after: int | None = None
    """Seconds since the epoch; the key signs nothing before it."""
    valid_before: int | None = None
    cert_authority: bool = False

    @property
    def where(self) -> str:
        return f"{self.path}:{self.line}"


class _LineError(Exception):
    """An allowed_signers line is not understood; becomes AllowedSignersError with file:line."""


def _take_principals(text: str) -> tuple[str, str]:
    """The first field, which may be double-quoted (OpenSSH's strdelimw), and the rest."""
    if text.startswith('"'):
        end = text.find('"', 1)
        if end < 0:
            raise _LineError("unterminated quote in the principals")
        return text[1:end], text[end + 1 :].lstrip(" \t")
    field = re.split(r"[ \t]", text, maxsplit=1)[0]
    return field, text[len(field) :].lstrip(" \t")


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


def _split_options(text: str) -> tuple[str, str]:
    """Options run to the first blank outside double quotes (sshkey_advance_past_options)."""
    quoted = False
    i = 0
    while i < len(text) and (quoted or text[i] not in " \t"):
        if text[i] == "\\" and text[i + 1 : i + 2] == '"':
            i += 1
        elif text[i] == '"':
            quoted = not quoted
        i += 1
    if quoted:
        raise _LineError("unterminated quote in the options")
    return text[:i], text[i:].lstrip(" \t")


def _dequote(text: str, pos: int, option: str) -> tuple[str, int]:
    """A double-quoted value at text[pos] (`\\"` escapes a quote), and the position after it."""
    if text[pos : pos + 1] != '"':
        raise _LineError(f'{option}= needs a double-quoted value, e.g. {option}="..."')
    out: list[str] = []
    i = pos + 1
    while i < len(text) and text[i] != '"':
        if text[i] == "\\" and text[i + 1 : i + 2] == '"':
            i += 1
        out.append(text[i])
        i += 1
    if i >= len(text):
        raise _LineError(f"{option}= value has no closing quote")
    return "".join(out), i + 1


def _parse_options(text: str) -> dict[str, str | bool]:
    """cert-authority, namespaces=, valid-after=, valid-before= (keywords in any case)."""
    options: dict[str, str | bool] = {}
    pos = 0
    while pos < len(text):
        lowered = text[pos:].lower()
        if lowered.startswith("cert-authority") and lowered[14:15] in ("", ","):
            name: str = "cert-authority"
            value: str | bool = True
            pos += 14
        else:
            for name in ("namespaces", "valid-after", "valid-before"):
                if lowered.startswith(name + "="):
                    value, pos = _dequote(text, pos + len(name) + 1, name)
                    break
            else:
                raise _LineError(f"unknown option {text[pos:].split(',')[0]!r}")
        if name in options:
            raise _LineError(f"{name} given twice")
        options[name] = value
        if pos == len(text):
            break
        if text[pos] != ",":
            raise _LineError(f"unexpected {text[pos:]!r} after {name}")
        pos += 1
        if pos == len(text):
            raise _LineError("the options end with a comma")
    return options


def _parse_line(path: str, number: int, line: str) -> AllowedSigner | None:
    text = line.strip(" \t\r\n")
    if not text or text.startswith("#"):
        return None
    principals, rest = _take_principals(text)
    if not principals:
        raise _LineError("no principals")
    options: dict[str, str | bool] = {}
    key = _try_key(rest)
    if key is None:
        option_text, rest = _split_options(rest)
        if not rest:
            raise _LineError("no public key")
        options = _parse_options(option_text)
        key = _try_key(rest)
        if key is None:
            raise _LineError("the public key is not `keytype base64`")
    times: dict[str, int] = {}
    for name in ("valid-after", "valid-before"):
        if name in options:
            try:
                times[name] = _parse_time(str(options[name]))
            except ValueError as exc:
                raise _LineError(f"bad {name}: {exc}") from None
    after, before = times.get("valid-after"), times.get("valid-before")
    if after is not None and before is not None and before <= after:
        raise _LineError("valid-before is not after valid-after")
    namespaces = options.get("namespaces")
    return AllowedSigner(
        path=path,
        line=number,
        principals=principals,
        key_type=key[0],
        key_blob=key[1],
        namespaces=namespaces if isinstance(namespaces, str) else None,
        valid_after=after,
        valid_before=before,
        cert_authority=options.get("cert-authority") is True,
    )


class AllowedSigners:
    """A parsed allowed_signers file (git's gpg.ssh.allowedSignersFile, ssh-keygen's -f).

    The whole file is parsed up front, so a mistake anywhere in it is reported (file:line) before
    a bundle is read, rather than skipped as ssh-keygen does: a line that fails to parse may be the
    one meant to restrict a key. Keys of every type are read; only plain ed25519, RSA and ECDSA keys
    can match a signature. cert-authority lines are kept but match nothing: signatures made with
    SSH certificates are not supported.
    """

    def __init__(self, path: str, entries: tuple[AllowedSigner, ...]) -> None:
        self.path = path
        self.entries = entries

    @classmethod
    def load(cls, path: StrPath) -> AllowedSigners:
        name = os.fspath(path)
        try:
            raw = Path(name).read_bytes()
        except OSError as exc:
            raise AllowedSignersError(f"{name}: cannot read: {exc.strerror}") from None
        try:
            text = raw.decode("utf-8")
        except UnicodeDecodeError as exc:
            number = raw[: exc.start].count(b"\n") + 1
            raise AllowedSignersError(f"{name}:{number}: not UTF-8 text") from None
        return cls.parse(text, name)

    @classmethod
    def parse(cls, text: str, path: str) -> AllowedSigners:
        entries = []
        for number, line in enumerate(text.split("\n"), start=1):
            try:
                entry = _parse_line(path, number, line)
            except _LineError as exc:
                raise AllowedSignersError(f"{path}:{number}: {exc}") from None
            if entry is not None:
                entries.append(entry)
        return cls(path, tuple(entries))

    def principals_for(
        self, signer: Signer, *, principal: str | None = None, now: datetime | None = None
    ) -> tuple[str, ...]:
        """The principals `signer` may sign as now, or the reason it may not, naming the line.

        With `principal`, only lines whose patterns match it count, and the result is just it.
        Raises UnknownSignerError, SignatureNamespaceError or SignerNotValidError.
        """
        blob = base64.b64decode(signer.public_key.split()[1])
        at = int((now or datetime.now(UTC)).timestamp())
        found: list[str] = []
        refusals: list[Exception] = []
        ca_lines = False
        for entry in self.entries:
            if principal is not None and not _pattern_list_matches(principal, entry.principals):
                continue
            if entry.cert_authority:
                ca_lines = True
                continue
            if entry.key_blob != blob:
                continue
            if entry.namespaces is not None and not _pattern_list_matches(
                signer.namespace, entry.namespaces
            ):
                refusals.append(
                    SignatureNamespaceError(
                        f"{entry.where}: key {signer.fingerprint} is not allowed to sign in "
                        f'namespace {signer.namespace!r} (namespaces="{entry.namespaces}")'
                    )
                )
                continue
            if entry.valid_after is not None and at < entry.valid_after:
                refusals.append(
                    SignerNotValidError(
                        f"{entry.where}: key {signer.fingerprint} is not valid yet: valid-after "
                        f"{_format_time(entry.valid_after)}, now {_format_time(at)}"
                    )
                )
                continue
            if entry.valid_before is not None and at > entry.valid_before:
                refusals.append(
                    SignerNotValidError(
                        f"{entry.where}: key {signer.fingerprint} has expired: valid-before "
                        f"{_format_time(entry.valid_before)}, now {_format_time(at)}"
                    )
                )
                continue
            if principal is not None:
                return (principal,)
            found += [p for p in entry.principals.split(",") if p and not p.startswith("!")]
        if found:
            return tuple(dict.fromkeys(found))
        if refusals:
            raise refusals[0]
        who = f" as {principal!r}" if principal is not None else ""
        hint = " (its cert-authority lines are not supported)" if ca_lines else ""
        raise UnknownSignerError(
            f"{self.path}: key {signer.fingerprint} is not allowed to sign{who}{hint}"
        )


# --- signing -----------------------------------------------------------------------------------


class SigningKey(ABC):
    """A key that signs bundles, loaded (and its passphrase asked) before any work is done."""

    path: str
    key_type: str
    fingerprint: str
    public_key: str
    """The one-line public key, for an allowed_signers line."""

    def sign(self, message: bytes, namespace: str = NAMESPACE) -> str:
        """The armored signature, byte for byte as `ssh-keygen -Y sign` writes it."""
        if not namespace:
            raise ValueError("an SSH signature needs a non-empty namespace")
        return _armor(self._sign_blob(message, namespace))

    @abstractmethod
    def _sign_blob(self, message: bytes, namespace: str) -> bytes:
        """The SSHSIG blob over `message`."""


_PrivateKey: TypeAlias = ed25519.Ed25519PrivateKey | rsa.RSAPrivateKey | ec.EllipticCurvePrivateKey


class _FileKey(SigningKey):
    """A private key read from an OpenSSH key file; signs in this process."""

    def __init__(self, path: str, key: _PrivateKey) -> None:
        self.path = path
        self._key = key
        self._blob = _public_blob(key.public_key())
        self.key_type = _key_type_of(self._blob)
        self.fingerprint = _fingerprint(self._blob)
        self.public_key = f"{self.key_type} {base64.b64encode(self._blob).decode('ascii')}"

    def _sign_blob(self, message: bytes, namespace: str) -> bytes:
        data = _signed_data(namespace, _HASH_ALGORITHM, message)
        key = self._key
        if isinstance(key, ed25519.Ed25519PrivateKey):
            algorithm, raw = "ssh-ed25519", key.sign(data)
        elif isinstance(key, rsa.RSAPrivateKey):
            # rsa-sha2-512, as ssh-keygen signs (never SHA-1 "ssh-rsa")
            algorithm, raw = "rsa-sha2-512", key.sign(data, padding.PKCS1v15(), hashes.SHA512())
        else:
            algorithm = self.key_type
            r, s = decode_dss_signature(
                key.sign(data, ec.ECDSA(_ECDSA_CURVES[algorithm.removeprefix("ecdsa-sha2-")][1]))
            )
            raw = _mpint(r) + _mpint(s)
        return (
            _MAGIC
            + _VERSION.to_bytes(4, "big")
            + _string(self._blob)
            + _string(namespace.encode("utf-8"))
            + _string(b"")
            + _string(_HASH_ALGORITHM.encode("ascii"))
            + _string(_string(algorithm.encode("ascii")) + _string(raw))
        )


class _AgentKey(SigningKey):
    """A public key file whose private half is in ssh-agent; `ssh-keygen -Y sign -U` signs."""

    def __init__(self, path: str, blob: bytes) -> None:
        self.path = path
        self._blob = blob
        self.key_type = _key_type_of(blob)
        self.fingerprint = _fingerprint(blob)
        self.public_key = f"{self.key_type} {base64.b64encode(blob).decode('ascii')}"

    def _sign_blob(self, message: bytes, namespace: str) -> bytes:
        # -U: sign with the agent's key only; never fall back to a private key file beside it
        output = _run(
            ["ssh-keygen", "-q", "-Y", "sign", "-U", "-f", self.path, "-n", namespace],
            message,
            f"{self.path}: ssh-keygen could not sign through ssh-agent",
        )
        source = f"{self.path}: ssh-keygen's signature"
        blob = _dearmor(output, source)
        if _parse_blob(blob, source).public_key != self._blob:
            raise SigningKeyError(f"{source} was made by another key than {self.fingerprint}")
        verify(message, output, namespace=namespace, source=source)
        return blob


def _run(command: list[str], stdin: bytes, failure: str) -> bytes:
    try:
        done = subprocess.run(command, input=stdin, capture_output=True, check=False)
    except OSError as exc:
        raise SigningKeyError(
            f"{failure}: cannot run {command[0]}: {exc.strerror} (install openssh-client)"
        ) from None
    if done.returncode != 0:
        lines = done.stderr.decode("utf-8", "replace").strip().splitlines()
        reason = lines[-1] if lines else f"exit status {done.returncode}"
        raise SigningKeyError(f"{failure}: {reason}")
    return done.stdout


def _check_agent_holds(path: str, blob: bytes) -> None:
    """Refuse now, not after a long export, when the agent does not hold the key's private half."""
    if not os.environ.get("SSH_AUTH_SOCK"):
        raise SigningKeyError(
            f"{path} is a public key, so its private half must be in ssh-agent, "
            "but SSH_AUTH_SOCK is not set"
        )
    try:
        done = subprocess.run(["ssh-add", "-L"], capture_output=True, check=False)
    except OSError as exc:
        raise SigningKeyError(
            f"{path}: cannot run ssh-add: {exc.strerror} (install openssh-client)"
        ) from None
    if done.returncode not in (0, 1):  # 1: the agent holds no keys
        raise SigningKeyError(f"{path}: cannot reach ssh-agent at SSH_AUTH_SOCK")
    held = {
        (_try_key(line) or ("", b""))[1]
        for line in done.stdout.decode("utf-8", "replace").splitlines()
    }
    if blob not in held:
        raise SigningKeyError(
            f"{path}: the private half of {_fingerprint(blob)} is not in ssh-agent "
            "(add it with ssh-add)"
        )


def load_signing_key(path: StrPath, passphrase: PassphraseCallback | None = None) -> SigningKey:
    """The key of an OpenSSH private key file, or of a public key file whose private half is in
    ssh-agent. `passphrase(path)` is called only for a passphrase-protected key file.

    Raises SigningKeyError (one line, no key material) for anything that cannot sign.
    """
    name = os.fspath(path)
    try:
        with open(name, "rb") as handle:
            data = handle.read(_MAX_KEY_FILE_BYTES + 1)
    except OSError as exc:
        raise SigningKeyError(f"{name}: cannot read the key: {exc.strerror}") from None
    if len(data) > _MAX_KEY_FILE_BYTES:
        raise SigningKeyError(f"{name}: too large to be an SSH key")
    if b"-----BEGIN OPENSSH PRIVATE KEY-----" in data:
        return _FileKey(name, _load_private(name, data, passphrase))
    if data.lstrip().startswith(b"-----BEGIN"):
        raise SigningKeyError(
            f"{name}: not an OpenSSH-format private key (rewrite it with `ssh-keygen -p -f {name}`)"
        )
    key = _try_key(data.decode("utf-8", "replace").strip())
    if key is None:
        raise SigningKeyError(f"{name}: neither an OpenSSH private key nor a public key")
    if key[0] not in _KEY_TYPES:
        raise SigningKeyError(f"{name}: {key[0]} keys are not supported for signing bundles")
    _check_agent_holds(name, key[1])
    return _AgentKey(name, key[1])


def _load_private(name: str, data: bytes, passphrase: PassphraseCallback | None) -> _PrivateKey:
    try:
        key = serialization.load_ssh_private_key(data, None)
    except TypeError:  # documented: the key is encrypted and no password was given
        if passphrase is None:
            raise SigningKeyError(f"{name}: the key is passphrase-protected") from None
        secret = passphrase(name)
        secret_bytes = secret.encode("utf-8") if isinstance(secret, str) else secret
        if not secret_bytes:
            raise SigningKeyError(f"{name}: no passphrase given for a protected key") from None
        try:
            key = serialization.load_ssh_private_key(data, secret_bytes)
        except ValueError:
            raise SigningKeyError(f"{name}: wrong passphrase (or a damaged key file)") from None
        except UnsupportedAlgorithm as exc:
            raise SigningKeyError(f"{name}: cannot decrypt the key: {exc}") from None
    except (ValueError, UnsupportedAlgorithm) as exc:
        raise SigningKeyError(f"{name}: cannot load the private key: {exc}") from None
    if not isinstance(key, _PrivateKey):
        raise SigningKeyError(f"{name}: only ed25519, RSA and ECDSA keys can sign bundles")
    if isinstance(key, rsa.RSAPrivateKey) and key.key_size < _RSA_MIN_BITS:
        raise SigningKeyError(f"{name}: RSA key of {key.key_size} bits, fewer than {_RSA_MIN_BITS}")
    return key


def sign(
    message: bytes,
    key: SigningKey | StrPath,
    namespace: str = NAMESPACE,
    *,
    passphrase: PassphraseCallback | None = None,
) -> str:
    """The armored SSH signature of `message`, as `ssh-keygen -Y sign -n NAMESPACE` writes it.

    `key` is a loaded SigningKey or a key file path (see load_signing_key). Signatures by ed25519
    keys are deterministic: the same bytes give the same signature, so signed exports stay
    reproducible.
    """
    signing_key = key if isinstance(key, SigningKey) else load_signing_key(key, passphrase)
    return signing_key.sign(message, namespace)
