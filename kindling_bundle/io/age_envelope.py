"""The age envelope (age-encryption.org/v1): recipients, identities, header, streaming payload.

An encrypted bundle is an age file whose plaintext is the bundle, so the `age` tool reads what we
write and we read what it writes (tests pin both directions). The format, in short: a text header
(`age-encryption.org/v1`, one stanza per recipient wrapping a random 16-byte file key, an
HMAC-SHA256 over the header), a 16-byte nonce, then the payload as ChaCha20-Poly1305 chunks of
64 KiB, each sealed under a counter nonce whose last byte flags the final chunk, so a stream cut at
a chunk boundary is detected and never mistaken for a shorter plaintext.

Built on `cryptography`, not pyrage: pyrage's `encrypt_io`/`decrypt_io` stream, but they pull and
push through a Python call every 8 KiB while holding the GIL, cannot hand back a writable or
readable stream without a bridging thread, and pass errors back as message strings. Here every
chunk is one C call, and the errors are typed (no identity, no matching identity, damaged,
truncated).

Recipients: `age1…` X25519 keys, `ssh-ed25519` and `ssh-rsa` public keys, or a recipients file as
`age -R` reads it. Identities: age identity files (passphrase-protected ones made with `age -p`
too) and OpenSSH private keys, ed25519 and rsa, passphrase-protected or not. A passphrase is asked
for through a callback, and only when it is needed. Messages and reprs show public keys and
fingerprints, never key material. Encrypting a bundle to a passphrase is not offered: scrypt at
age's work factor takes 256 MiB, past the memory bundles keep to; a passphrase-protected identity
file gives the same protection and pays that once, to unlock the key.

`SealedSpool` is a temporary file sealed under a key that lives only in memory, so spooled
plaintext never reaches the disk.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import hmac
import io
import os
import sys
import tempfile
from abc import ABC, abstractmethod
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, BinaryIO, Protocol

from cryptography.exceptions import InvalidTag, UnsupportedAlgorithm
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ed25519, padding, rsa
from cryptography.hazmat.primitives.asymmetric.x25519 import X25519PrivateKey, X25519PublicKey
from cryptography.hazmat.primitives.ciphers.aead import AESGCM, AESOCB3, ChaCha20Poly1305
from cryptography.hazmat.primitives.kdf.hkdf import HKDF
from cryptography.hazmat.primitives.kdf.scrypt import Scrypt

from kindling_bundle.errors import (
    CiphertextError,
    IdentityError,
    NoIdentityError,
    NoMatchingIdentityError,
    RecipientError,
    TruncatedCiphertextError,
)

if TYPE_CHECKING:
    from _typeshed import ReadableBuffer, WriteableBuffer

__all__ = [
    "MAX_HEADER_BYTES",
    "SNIFF_BYTES",
    "AgeHeader",
    "DecryptingReader",
    "EncryptingWriter",
    "Identity",
    "PassphrasePrompt",
    "Recipient",
    "SealedSpool",
    "SshEd25519Identity",
    "SshEd25519Recipient",
    "SshRsaIdentity",
    "SshRsaRecipient",
    "X25519Identity",
    "X25519Recipient",
    "is_encrypted",
    "load_identities",
    "open_decrypting_reader",
    "open_encrypting_writer",
    "parse_identities",
    "parse_recipient",
    "read_header",
    "read_recipients_file",
]

PassphrasePrompt = Callable[[str], str]
"""Asks the user for a passphrase, given the prompt to show (the CLI: a hidden terminal prompt)."""

INTRO = b"age-encryption.org/v1\n"
ARMOR_BEGIN = b"-----BEGIN AGE ENCRYPTED FILE-----"
ARMOR_END = b"-----END AGE ENCRYPTED FILE-----"
SNIFF_BYTES = len(ARMOR_BEGIN)
"""Bytes `is_encrypted` needs to decide (more if an armored file starts with blank lines)."""

MAX_HEADER_BYTES = 1 << 20
"""A header is refused past this size (about 7,000 X25519 or 1,400 RSA-4096 recipients)."""
_MAX_STANZAS = 10_000
_MAX_LINE = 8 << 10  # a header line; sshd allows authorized_keys lines this long too
_MAX_WHITESPACE = 1024  # around armor, as age allows

_CHUNK = 64 << 10
_TAG = 16
_SEALED_CHUNK = _CHUNK + _TAG
_FILE_KEY_BYTES = 16
_NONCE_BYTES = 16
_ZERO_NONCE = bytes(12)

_X25519_LABEL = b"age-encryption.org/v1/X25519"
_ED25519_LABEL = b"age-encryption.org/v1/ssh-ed25519"
_RSA_LABEL = b"age-encryption.org/v1/ssh-rsa"
_SCRYPT_LABEL = b"age-encryption.org/v1/scrypt"
_MAX_SCRYPT_LOG_N = 22  # age's own ceiling for identity files: ~4 GiB of memory beyond it

_MAX_KEY_FILE_BYTES = 16 << 20  # identities and recipients files, as age reads them

_RSA_OAEP = padding.OAEP(
    mgf=padding.MGF1(algorithm=hashes.SHA256()), algorithm=hashes.SHA256(), label=_RSA_LABEL
)


# ---------------------------------------------------------------------------------------------
# Encodings: unpadded canonical base64 (header), bech32 (age keys), SSH wire strings.


def _b64encode(data: bytes) -> bytes:
    return base64.b64encode(data).rstrip(b"=")


def _b64decode(text: bytes) -> bytes | None:
    """Unpadded base64 in its one canonical spelling (no padding, zero trailing bits), so that a
    header has exactly one byte form and its MAC covers what was parsed."""
    if len(text) % 4 == 1:
        return None
    try:
        data = base64.b64decode(text + b"=" * (-len(text) % 4), validate=True)
    except binascii.Error:
        return None
    return data if _b64encode(data) == text else None


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


def _bech32_encode(hrp: str, data: bytes) -> str:
    values = _convert_bits(data, 8, 5, pad=True)
    assert values is not None  # padding always succeeds
    mod = _bech32_polymod([*_bech32_hrp(hrp), *values, 0, 0, 0, 0, 0, 0]) ^ 1
    checksum = [(mod >> 5 * (5 - i)) & 31 for i in range(6)]
    return hrp + "1" + "".join(_BECH32[v] for v in values + checksum)


def _bech32_decode(text: str) -> tuple[str, bytes] | None:
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


def _ssh_string(blob: bytes, offset: int) -> tuple[bytes, int]:
    if offset + 4 > len(blob):
        raise ValueError("short SSH string")
    size = int.from_bytes(blob[offset : offset + 4], "big")
    end = offset + 4 + size
    if end > len(blob):
        raise ValueError("short SSH string")
    return blob[offset + 4 : end], end


def _ssh_fingerprint(blob: bytes) -> str:
    """The form `ssh-keygen -l` prints."""
    return "SHA256:" + _b64encode(hashlib.sha256(blob).digest()).decode()


def _ssh_tag(blob: bytes) -> str:
    """The 4-byte key tag an ssh-* stanza names its recipient by."""
    return _b64encode(hashlib.sha256(blob).digest()[:4]).decode()


# ---------------------------------------------------------------------------------------------
# Primitives.


def _hkdf(secret: bytes, salt: bytes, info: bytes) -> bytes:
    return HKDF(algorithm=hashes.SHA256(), length=32, salt=salt or None, info=info).derive(secret)


def _seal_file_key(key: bytes, file_key: bytes) -> bytes:
    return ChaCha20Poly1305(key).encrypt(_ZERO_NONCE, file_key, None)


def _open_file_key(key: bytes, body: bytes) -> bytes | None:
    try:
        return ChaCha20Poly1305(key).decrypt(_ZERO_NONCE, body, None)
    except InvalidTag:
        return None


def _x25519(private: X25519PrivateKey, public: bytes) -> bytes | None:
    """The shared secret, or None for a low-order point (an all-zero secret)."""
    try:
        return private.exchange(X25519PublicKey.from_public_bytes(public))
    except ValueError:
        return None


_P = 2**255 - 19
_D = -121665 * pow(121666, -1, _P) % _P


def _ed25519_to_x25519(public: bytes) -> bytes | None:
    """An Ed25519 public key's Montgomery form (u = (1 + y) / (1 - y)), or None if it is not a
    point of the curve or is the neutral point. Non-canonical y is reduced, as age does."""
    y = int.from_bytes(public, "little") & ((1 << 255) - 1)
    y %= _P
    x2 = (y * y - 1) * pow(_D * y * y + 1, -1, _P) % _P
    if x2 and pow(x2, (_P - 1) // 2, _P) != 1:
        return None
    if y == 1:
        return None
    u = (1 + y) * pow(1 - y, -1, _P) % _P
    return u.to_bytes(32, "little")


# ---------------------------------------------------------------------------------------------
# Header stanzas.


@dataclass(frozen=True)
class _Stanza:
    type: str
    args: tuple[str, ...]
    body: bytes

    def encode(self) -> bytes:
        text = _b64encode(self.body)
        lines = [text[i : i + 64] for i in range(0, len(text), 64)]
        if len(text) % 64 == 0:
            lines.append(b"")  # a body always ends with a short line, possibly empty
        opening = " ".join(("->", self.type, *self.args)).encode()
        return opening + b"\n" + b"\n".join(lines) + b"\n"


def _damaged(label: str, what: str) -> CiphertextError:
    return CiphertextError(f"{label}: damaged age header: {what}")


def _check_args(stanza: _Stanza, count: int, label: str) -> None:
    if len(stanza.args) != count:
        raise _damaged(label, f"a {stanza.type} stanza has {len(stanza.args)} arguments")


def _point_arg(stanza: _Stanza, index: int, label: str) -> bytes:
    point = _b64decode(stanza.args[index].encode())
    if point is None or len(point) != 32:
        raise _damaged(label, f"a {stanza.type} stanza's share is not a 32-byte key")
    return point


# ---------------------------------------------------------------------------------------------
# Recipients.


class Recipient(ABC):
    """A public key an envelope is encrypted to. `str()` is safe to show (public)."""

    @abstractmethod
    def _wrap(self, file_key: bytes) -> _Stanza: ...

    def __repr__(self) -> str:
        return f"<{type(self).__name__} {self}>"


class X25519Recipient(Recipient):
    """An `age1…` public key, as `age-keygen` prints it."""

    def __init__(self, public: bytes):
        self._public = public

    def __str__(self) -> str:
        return _bech32_encode("age", self._public)

    def _wrap(self, file_key: bytes) -> _Stanza:
        ephemeral = X25519PrivateKey.generate()
        share = ephemeral.public_key().public_bytes_raw()
        secret = ephemeral.exchange(X25519PublicKey.from_public_bytes(self._public))
        key = _hkdf(secret, share + self._public, _X25519_LABEL)
        return _Stanza("X25519", (_b64encode(share).decode(),), _seal_file_key(key, file_key))


class SshEd25519Recipient(Recipient):
    """An `ssh-ed25519` public key; age encrypts to its Curve25519 form, tweaked by the key."""

    def __init__(self, blob: bytes, montgomery: bytes):
        self._blob = blob
        self._public = montgomery
        self._tag = _ssh_tag(blob)

    def __str__(self) -> str:
        return f"ssh-ed25519 {_ssh_fingerprint(self._blob)}"

    def _wrap(self, file_key: bytes) -> _Stanza:
        ephemeral = X25519PrivateKey.generate()
        share = ephemeral.public_key().public_bytes_raw()
        secret = ephemeral.exchange(X25519PublicKey.from_public_bytes(self._public))
        tweak = X25519PrivateKey.from_private_bytes(_hkdf(b"", self._blob, _ED25519_LABEL))
        tweaked = tweak.exchange(X25519PublicKey.from_public_bytes(secret))
        key = _hkdf(tweaked, share + self._public, _ED25519_LABEL)
        args = (self._tag, _b64encode(share).decode())
        return _Stanza("ssh-ed25519", args, _seal_file_key(key, file_key))


class SshRsaRecipient(Recipient):
    """An `ssh-rsa` public key of at least 2048 bits (RSA-OAEP-SHA256)."""

    def __init__(self, blob: bytes, key: rsa.RSAPublicKey):
        self._blob = blob
        self._key = key
        self._tag = _ssh_tag(blob)

    def __str__(self) -> str:
        return f"ssh-rsa {_ssh_fingerprint(self._blob)}"

    def _wrap(self, file_key: bytes) -> _Stanza:
        return _Stanza("ssh-rsa", (self._tag,), self._key.encrypt(file_key, _RSA_OAEP))


class _UnsupportedSshKey(Exception):
    """A well-formed SSH public key of a type age cannot encrypt to (ecdsa, sk-…): a recipients
    file skips it, as `age -R` does, so that a GitHub `USER.keys` file works."""

    def __init__(self, key_type: str):
        super().__init__(key_type)
        self.key_type = key_type


def _ssh_public_key(text: str) -> tuple[str, bytes] | None:
    """(type, wire blob) of an authorized_keys-style line `TYPE BASE64 [COMMENT]` whose blob
    names the same type, else None."""
    fields = text.split()
    if len(fields) < 2:
        return None
    try:
        blob = base64.b64decode(fields[1], validate=True)
        key_type, _ = _ssh_string(blob, 0)
    except (binascii.Error, ValueError):
        return None
    return (fields[0], blob) if key_type == fields[0].encode() else None


def _recipient(text: str) -> Recipient:
    """Raises ValueError with a message that never quotes the text (it may be a secret)."""
    if text.startswith(("AGE-SECRET-KEY-", "AGE-PLUGIN-")):
        raise ValueError("this is a secret key (an identity), not a recipient: give its public key")
    if text.startswith("age1") and text.count("1") > 1:  # bech32 data has no "1"
        raise ValueError(
            f"{text[: text.rindex('1')]}1… recipients (age plugins, post-quantum keys) are not "
            "supported: use an age1… X25519 key or an ssh-ed25519 / ssh-rsa key"
        )
    if text.startswith("age1"):
        decoded = _bech32_decode(text)
        if decoded is None:
            raise ValueError("malformed age1… recipient (its checksum or characters are wrong)")
        hrp, data = decoded
        if hrp != "age" or len(data) != 32 or _x25519(X25519PrivateKey.generate(), data) is None:
            raise ValueError("malformed age1… recipient (not an X25519 public key)")
        return X25519Recipient(data)
    ssh = _ssh_public_key(text)
    if ssh is None:
        raise ValueError(
            "not a recipient: expected an age1… key, or an ssh-ed25519 / ssh-rsa public key line"
        )
    key_type, blob = ssh
    if key_type not in ("ssh-ed25519", "ssh-rsa"):
        raise _UnsupportedSshKey(key_type)
    try:
        key = serialization.load_ssh_public_key(key_type.encode() + b" " + base64.b64encode(blob))
    except (ValueError, UnsupportedAlgorithm):
        raise ValueError(f"malformed {key_type} public key") from None
    if isinstance(key, ed25519.Ed25519PublicKey):
        montgomery = _ed25519_to_x25519(key.public_bytes_raw())
        if montgomery is None or _x25519(X25519PrivateKey.generate(), montgomery) is None:
            raise ValueError("malformed ssh-ed25519 public key (not a usable curve point)")
        return SshEd25519Recipient(blob, montgomery)
    assert isinstance(key, rsa.RSAPublicKey)  # the blob said ssh-rsa, and cryptography agreed
    if key.key_size < 2048:
        raise ValueError(f"ssh-rsa key of {key.key_size} bits: age needs at least 2048")
    return SshRsaRecipient(blob, key)


def parse_recipient(text: str, *, source: str = "recipient") -> Recipient:
    """One recipient as `--recipient` takes it: an `age1…` key or an `ssh-ed25519` / `ssh-rsa`
    public key line (comment optional). `source` starts the error message."""
    try:
        return _recipient(text.strip())
    except _UnsupportedSshKey as exc:
        raise RecipientError(
            f"{source}: SSH keys of type {exc.key_type} cannot be recipients "
            "(only ssh-ed25519 and ssh-rsa)"
        ) from None
    except ValueError as exc:
        raise RecipientError(f"{source}: {exc}") from None


def read_recipients_file(
    path: str | os.PathLike[str], *, on_skip: Callable[[str], None] | None = None
) -> list[Recipient]:
    """Recipients as `age -R` reads them: one a line, `#` comments and blank lines ignored, so
    `~/.ssh/id_ed25519.pub` or a downloaded `USER.keys` works. `-` is standard input. SSH keys of
    types age cannot use are skipped, each reported to `on_skip` as a one-line note."""
    name = os.fspath(path)
    label = "standard input" if name == "-" else name
    data = _read_key_file(name, label, RecipientError)
    try:
        text = data.decode("utf-8")
    except UnicodeDecodeError:
        raise RecipientError(f"{label}: not a recipients file (not UTF-8 text)") from None
    recipients: list[Recipient] = []
    for number, raw_line in enumerate(text.split("\n"), 1):
        line = raw_line.strip()
        if not line or line.startswith("#"):
            continue
        where = f"{label}, line {number}"
        if len(line) > _MAX_LINE:
            raise RecipientError(f"{where}: longer than {_MAX_LINE} characters")
        try:
            recipients.append(_recipient(line))
        except _UnsupportedSshKey as exc:
            if on_skip is not None:
                on_skip(
                    f"{where}: skipped an SSH key of type {exc.key_type} (not a recipient type)"
                )
        except ValueError as exc:
            raise RecipientError(f"{where}: {exc}") from None
    if not recipients:
        raise RecipientError(f"{label}: no recipients in it")
    return recipients


def _read_key_file(name: str, label: str, error: type[Exception]) -> bytes:
    try:
        if name == "-":
            data = sys.stdin.buffer.read(_MAX_KEY_FILE_BYTES + 1)
        else:
            with open(name, "rb") as file:
                data = file.read(_MAX_KEY_FILE_BYTES + 1)
    except OSError as exc:
        raise error(f"{label}: cannot read: {exc.strerror or exc}") from None
    if len(data) > _MAX_KEY_FILE_BYTES:
        raise error(f"{label}: larger than {_MAX_KEY_FILE_BYTES >> 20} MiB: not a key file")
    return data


# ---------------------------------------------------------------------------------------------
# Identities.


class Identity(ABC):
    """A private key that may open an envelope. `description` and `repr()` are safe to show:
    a public key or fingerprint, never key material."""

    asks_passphrase = False
    """Tried only after the identities that need no passphrase, as age orders them."""

    @property
    @abstractmethod
    def description(self) -> str: ...

    @abstractmethod
    def _unwrap(self, stanzas: Sequence[_Stanza], label: str) -> bytes | None:
        """The file key if this identity opens one of the stanzas, else None; raises
        CiphertextError for a stanza addressed to it that does not open."""

    def __repr__(self) -> str:
        return f"<{type(self).__name__} {self.description}>"


class X25519Identity(Identity):
    """An `AGE-SECRET-KEY-1…` key, as `age-keygen` writes it."""

    def __init__(self, key: X25519PrivateKey):
        self._key = key
        self._public = key.public_key().public_bytes_raw()

    def recipient(self) -> X25519Recipient:
        return X25519Recipient(self._public)

    @property
    def description(self) -> str:
        return str(self.recipient())

    def _unwrap(self, stanzas: Sequence[_Stanza], label: str) -> bytes | None:
        for stanza in stanzas:
            if stanza.type != "X25519":
                continue
            _check_args(stanza, 1, label)
            share = _point_arg(stanza, 0, label)
            if len(stanza.body) != _FILE_KEY_BYTES + _TAG:
                raise _damaged(label, "an X25519 stanza's body is not a wrapped file key")
            secret = _x25519(self._key, share)
            if secret is None:
                raise _damaged(label, "an X25519 stanza's share is a low-order point")
            file_key = _open_file_key(
                _hkdf(secret, share + self._public, _X25519_LABEL), stanza.body
            )
            if file_key is not None:
                return file_key
        return None


class SshEd25519Identity(Identity):
    """An OpenSSH ed25519 private key (its seed hashed to a Curve25519 scalar, as age does)."""

    def __init__(self, key: ed25519.Ed25519PrivateKey):
        public = key.public_key()
        self._blob = _ssh_blob(public)
        seed = key.private_bytes_raw()
        self._key = X25519PrivateKey.from_private_bytes(hashlib.sha512(seed).digest()[:32])
        self._public = self._key.public_key().public_bytes_raw()
        self._tweak = X25519PrivateKey.from_private_bytes(_hkdf(b"", self._blob, _ED25519_LABEL))
        self._tag = _ssh_tag(self._blob)

    @property
    def description(self) -> str:
        return f"ssh-ed25519 {_ssh_fingerprint(self._blob)}"

    def _unwrap(self, stanzas: Sequence[_Stanza], label: str) -> bytes | None:
        for stanza in stanzas:
            if stanza.type != "ssh-ed25519":
                continue
            _check_args(stanza, 2, label)
            share = _point_arg(stanza, 1, label)
            if stanza.args[0] != self._tag:
                continue
            secret = _x25519(self._key, share)
            tweaked = None if secret is None else _x25519(self._tweak, secret)
            if tweaked is None:
                raise _damaged(label, "an ssh-ed25519 stanza's share is a low-order point")
            key = _hkdf(tweaked, share + self._public, _ED25519_LABEL)
            file_key = _open_file_key(key, stanza.body)
            if file_key is None or len(file_key) != _FILE_KEY_BYTES:
                raise _damaged(label, f"the stanza for {self.description} does not open")
            return file_key
        return None


class SshRsaIdentity(Identity):
    """An OpenSSH rsa private key (RSA-OAEP-SHA256)."""

    def __init__(self, key: rsa.RSAPrivateKey):
        self._key = key
        self._blob = _ssh_blob(key.public_key())
        self._tag = _ssh_tag(self._blob)

    @property
    def description(self) -> str:
        return f"ssh-rsa {_ssh_fingerprint(self._blob)}"

    def _unwrap(self, stanzas: Sequence[_Stanza], label: str) -> bytes | None:
        for stanza in stanzas:
            if stanza.type != "ssh-rsa":
                continue
            _check_args(stanza, 1, label)
            if stanza.args[0] != self._tag:
                continue
            try:
                file_key = self._key.decrypt(stanza.body, _RSA_OAEP)
            except ValueError:
                raise _damaged(label, f"the stanza for {self.description} does not open") from None
            if len(file_key) != _FILE_KEY_BYTES:
                raise _damaged(label, f"the stanza for {self.description} holds no file key")
            return file_key
        return None


def _ssh_blob(public: ed25519.Ed25519PublicKey | rsa.RSAPublicKey) -> bytes:
    line = public.public_bytes(serialization.Encoding.OpenSSH, serialization.PublicFormat.OpenSSH)
    return base64.b64decode(line.split()[1])


def _ssh_identity(key: object, source: str) -> Identity:
    if isinstance(key, ed25519.Ed25519PrivateKey):
        return SshEd25519Identity(key)
    if isinstance(key, rsa.RSAPrivateKey):
        return SshRsaIdentity(key)
    raise IdentityError(f"{source}: unsupported SSH key type (only ed25519 and rsa keys work)")


def _load_ssh_private(data: bytes, password: bytes | None, source: str) -> Identity:
    try:
        if b"-----BEGIN OPENSSH PRIVATE KEY-----" in data:
            key: object = serialization.load_ssh_private_key(data, password)
        else:
            key = serialization.load_pem_private_key(data, password)
    except UnsupportedAlgorithm as exc:
        raise IdentityError(f"{source}: cannot read this SSH key: {exc}") from None
    except (ValueError, TypeError):
        if password is not None:
            raise IdentityError(f"{source}: wrong passphrase for the SSH key") from None
        raise IdentityError(f"{source}: not a readable SSH private key") from None
    return _ssh_identity(key, source)


def _ask(passphrase: PassphrasePrompt | None, prompt: str, source: str, what: str) -> bytes:
    if passphrase is None:
        raise IdentityError(f"{source}: {what} is passphrase-protected, and nothing can ask for it")
    return passphrase(prompt).encode("utf-8")


class _EncryptedSshIdentity(Identity):
    """A passphrase-protected SSH key: its public half (readable without the passphrase in the
    OpenSSH format) says which stanzas are its, so the passphrase is asked for only for those."""

    asks_passphrase = True

    def __init__(
        self, source: str, data: bytes, blob: bytes | None, passphrase: PassphrasePrompt | None
    ):
        self._source = source
        self._data = data
        self._blob = blob
        self._passphrase = passphrase
        self._opened: Identity | None = None

    @property
    def description(self) -> str:
        if self._blob is None:
            return f"passphrase-protected SSH key {self._source}"
        key_type, _ = _ssh_string(self._blob, 0)
        return f"{key_type.decode()} {_ssh_fingerprint(self._blob)} (passphrase-protected)"

    def _unwrap(self, stanzas: Sequence[_Stanza], label: str) -> bytes | None:
        if not any(self._might_open(stanza) for stanza in stanzas):
            return None
        if self._opened is None:
            password = _ask(
                self._passphrase,
                f"Passphrase for SSH key {self._source}: ",
                self._source,
                "the SSH key",
            )
            self._opened = _load_ssh_private(self._data, password, self._source)
        return self._opened._unwrap(stanzas, label)

    def _might_open(self, stanza: _Stanza) -> bool:
        if stanza.type not in ("ssh-ed25519", "ssh-rsa") or not stanza.args:
            return False
        if self._blob is None:
            return True
        key_type, _ = _ssh_string(self._blob, 0)
        return stanza.type == key_type.decode() and stanza.args[0] == _ssh_tag(self._blob)


class _PassphraseProtectedIdentities(Identity):
    """An identity file encrypted with `age -p`: an age file with one scrypt stanza whose
    plaintext is an identity file. Decrypted on first use, once (scrypt is slow on purpose)."""

    asks_passphrase = True

    def __init__(self, source: str, data: bytes, passphrase: PassphrasePrompt | None):
        self._source = source
        self._data = data
        self._passphrase = passphrase
        self._opened: list[Identity] | None = None

    @property
    def description(self) -> str:
        return f"passphrase-protected identity file {self._source}"

    def _unwrap(self, stanzas: Sequence[_Stanza], label: str) -> bytes | None:
        if not any(stanza.type == "X25519" for stanza in stanzas):
            return None  # it holds AGE-SECRET-KEY-1 keys only: no need to ask
        if self._opened is None:
            self._opened = self._open()
        for identity in self._opened:
            file_key = identity._unwrap(stanzas, label)
            if file_key is not None:
                return file_key
        return None

    def _open(self) -> list[Identity]:
        source = self._source
        try:
            with _open_envelope(io.BytesIO(self._data), [_ScryptKey(self)], source) as reader:
                plaintext = reader.read()
        except (CiphertextError, NoMatchingIdentityError) as exc:
            raise IdentityError(
                f"{source}: not a usable passphrase-protected identity file: "
                f"{str(exc).removeprefix(source + ': ')}"
            ) from None
        return _text_identities(plaintext, f"{source} (decrypted)")


class _ScryptKey(Identity):
    """The passphrase of one `age -p` identity file (never of a bundle: see the module notes)."""

    def __init__(self, owner: _PassphraseProtectedIdentities):
        self._owner = owner

    @property
    def description(self) -> str:
        return self._owner.description

    def _unwrap(self, stanzas: Sequence[_Stanza], label: str) -> bytes | None:
        source = self._owner._source
        if len(stanzas) != 1 or stanzas[0].type != "scrypt":
            raise IdentityError(
                f"{source}: an encrypted identity file must be protected by a passphrase alone "
                "(made with age -p)"
            )
        stanza = stanzas[0]
        _check_args(stanza, 2, label)
        salt = _b64decode(stanza.args[0].encode())
        work = stanza.args[1]
        if salt is None or len(salt) != 16 or not work.isdigit() or work.startswith("0"):
            raise _damaged(label, "malformed scrypt stanza")
        if int(work) > _MAX_SCRYPT_LOG_N:
            raise IdentityError(f"{source}: scrypt work factor 2^{work} is above 2^22: refused")
        if len(stanza.body) != _FILE_KEY_BYTES + _TAG:
            raise _damaged(label, "the scrypt stanza's body is not a wrapped file key")
        password = _ask(
            self._owner._passphrase,
            f"Passphrase for identity file {source}: ",
            source,
            "the identity file",
        )
        kdf = Scrypt(salt=_SCRYPT_LABEL + salt, length=32, n=1 << int(work), r=8, p=1)
        file_key = _open_file_key(kdf.derive(password), stanza.body)
        if file_key is None:
            raise IdentityError(f"{source}: wrong passphrase for the identity file")
        return file_key


def _openssh_public_blob(data: bytes) -> tuple[bytes, bytes] | None:
    """(cipher name, public key blob) from an `openssh-key-v1` container, read without the
    passphrase, or None if it is not one."""
    begin, end = b"-----BEGIN OPENSSH PRIVATE KEY-----", b"-----END OPENSSH PRIVATE KEY-----"
    start = data.find(begin)
    stop = data.find(end, start)
    if start < 0 or stop < 0:
        return None
    try:
        blob = base64.b64decode(b"".join(data[start + len(begin) : stop].split()), validate=True)
        magic = b"openssh-key-v1\0"
        if not blob.startswith(magic):
            return None
        cipher, offset = _ssh_string(blob, len(magic))
        _, offset = _ssh_string(blob, offset)  # kdf name
        _, offset = _ssh_string(blob, offset)  # kdf options
        if blob[offset : offset + 4] != b"\0\0\0\1":
            return None
        public, _ = _ssh_string(blob, offset + 4)
    except (binascii.Error, ValueError):
        return None
    return cipher, public


def _pub_file_blob(source: str) -> bytes | None:
    """The public key from `KEY.pub`, for a legacy PEM key whose public half is encrypted."""
    try:
        with open(source + ".pub", encoding="utf-8") as file:
            parsed = _ssh_public_key(file.read(_MAX_LINE))
    except (OSError, UnicodeDecodeError):
        return None
    return None if parsed is None else parsed[1]


def _ssh_identities(
    data: bytes, source: str, passphrase: PassphrasePrompt | None
) -> list[Identity]:
    container = _openssh_public_blob(data)
    if container is not None:
        cipher, blob = container
        if cipher == b"none":
            return [_load_ssh_private(data, None, source)]
        return [_EncryptedSshIdentity(source, data, blob, passphrase)]
    if b"PRIVATE KEY-----" not in data:
        raise IdentityError(f"{source}: a PEM file, but not a private key")
    if b"Proc-Type: 4,ENCRYPTED" in data or b"BEGIN ENCRYPTED PRIVATE KEY" in data:
        return [_EncryptedSshIdentity(source, data, _pub_file_blob(source), passphrase)]
    return [_load_ssh_private(data, None, source)]


def _text_identities(data: bytes, source: str) -> list[Identity]:
    try:
        text = data.decode("utf-8")
    except UnicodeDecodeError:
        raise IdentityError(f"{source}: not an identity file (not UTF-8 text)") from None
    identities: list[Identity] = []
    for number, raw_line in enumerate(text.split("\n"), 1):
        line = raw_line.strip()
        if not line or line.startswith("#"):
            continue
        where = f"{source}, line {number}"
        if line.startswith("AGE-SECRET-KEY-1"):
            decoded = _bech32_decode(line)
            if decoded is None or decoded[0] != "age-secret-key-" or len(decoded[1]) != 32:
                raise IdentityError(f"{where}: malformed AGE-SECRET-KEY-1… identity")
            identities.append(X25519Identity(X25519PrivateKey.from_private_bytes(decoded[1])))
        elif line.startswith(("AGE-PLUGIN-", "AGE-SECRET-KEY-")):
            raise IdentityError(
                f"{where}: plugin and post-quantum identities are not supported "
                "(only AGE-SECRET-KEY-1… and SSH keys)"
            )
        elif line.startswith(("age1", "ssh-")):
            raise IdentityError(f"{where}: a recipient (public key), not an identity")
        else:
            raise IdentityError(f"{where}: not an age identity")
    if not identities:
        raise IdentityError(f"{source}: no identities in it")
    return identities


def parse_identities(
    data: bytes, *, source: str, passphrase: PassphrasePrompt | None = None
) -> list[Identity]:
    """The identities in an identity file's bytes, whichever kind `age -i` takes: age keys (one
    a line, `#` comments), an `age -p`-protected identity file (binary or armored), or an OpenSSH
    / PEM private key (ed25519, rsa), passphrase-protected or not. Protected ones call
    `passphrase` only when needed, and once: an SSH key when a header holds a stanza with its
    tag, an `age -p` file when a header holds an X25519 stanza that no identity needing no
    passphrase opened. `source` names the file in errors."""
    if data.startswith(INTRO) or data.lstrip().startswith(ARMOR_BEGIN):
        return [_PassphraseProtectedIdentities(source, data, passphrase)]
    if data.lstrip().startswith(b"-----BEGIN"):
        return _ssh_identities(data, source, passphrase)
    return _text_identities(data, source)


def load_identities(
    path: str | os.PathLike[str], *, passphrase: PassphrasePrompt | None = None
) -> list[Identity]:
    """The identities of one `--identity` file (see parse_identities); `-` is standard input."""
    name = os.fspath(path)
    label = "standard input" if name == "-" else name
    return parse_identities(
        _read_key_file(name, label, IdentityError), source=label, passphrase=passphrase
    )


# ---------------------------------------------------------------------------------------------
# Reading: buffered source, armor, header, detection.


class _Readable(Protocol):
    def read(self, size: int, /) -> bytes | None: ...


class _LineTooLong(Exception):
    pass


class _Source:
    """A stream read through a small buffer, so the header can be taken a line at a time and the
    payload read in whole chunks from where the header ended."""

    _BLOCK = 8192

    def __init__(self, raw: _Readable):
        self._raw = raw
        self._buffer = bytearray()

    def _fill(self) -> bool:
        data = self._raw.read(self._BLOCK)
        if not data:
            return False
        self._buffer += data
        return True

    def peek(self, size: int) -> bytes:
        while len(self._buffer) < size and self._fill():
            pass
        return bytes(self._buffer[:size])

    def readline(self, limit: int) -> bytes:
        """A line with its newline; at the end of the stream, what is left (no newline)."""
        searched = 0
        while True:
            end = self._buffer.find(b"\n", searched)
            if end >= 0:
                if end >= limit:
                    raise _LineTooLong
                line = bytes(self._buffer[: end + 1])
                del self._buffer[: end + 1]
                return line
            if len(self._buffer) >= limit:
                raise _LineTooLong
            searched = len(self._buffer)
            if not self._fill():
                line = bytes(self._buffer)
                self._buffer.clear()
                return line

    def read(self, size: int) -> bytes:
        """`size` bytes, fewer only at the end of the stream."""
        if self._buffer:
            data = bytes(self._buffer[:size])
            del self._buffer[:size]
            if len(data) == size:
                return data
            pieces = [data]
            missing = size - len(data)
        else:
            pieces = []
            missing = size
        while missing:
            piece = self._raw.read(missing)
            if not piece:
                break
            pieces.append(piece)
            missing -= len(piece)
        return pieces[0] if len(pieces) == 1 else b"".join(pieces)


class _Dearmor:
    """The binary age file inside the armored (PEM) form, decoded a line at a time."""

    def __init__(self, source: _Source, label: str):
        self._source = source
        self._label = label
        self._pending = b""
        self._done = False
        self._started = False

    def _error(self, what: str) -> CiphertextError:
        return CiphertextError(f"{self._label}: damaged age armor: {what}")

    def _line(self) -> bytes:
        try:
            line = self._source.readline(_MAX_WHITESPACE + 1)
        except _LineTooLong:
            raise self._error("a line is too long") from None
        text = line.removesuffix(b"\n").removesuffix(b"\r")
        if not line.endswith(b"\n") and text != ARMOR_END:  # the stream ended inside the armor
            raise TruncatedCiphertextError(f"{self._label}: the armored file is cut short")
        return text

    def read(self, size: int, /) -> bytes:
        pieces = [self._pending]
        have = len(self._pending)
        while have < size and not self._done:
            piece = self._decode_line()
            pieces.append(piece)
            have += len(piece)
        data = b"".join(pieces)
        self._pending = data[size:]
        return data[:size]

    def _decode_line(self) -> bytes:
        if not self._started:
            skipped = 0
            line = self._line()
            while not line.strip():
                skipped += len(line) + 1
                if skipped > _MAX_WHITESPACE:
                    raise self._error("too much leading whitespace")
                line = self._line()
            if line != ARMOR_BEGIN:
                raise self._error("no BEGIN line")
            self._started = True
        line = self._line()
        if line == ARMOR_END:
            self._finish()
            return b""
        if not line or len(line) > 64:
            raise self._error("a line is not 1 to 64 columns")
        try:
            data = base64.b64decode(line, validate=True)
        except binascii.Error:
            raise self._error("a line is not base64") from None
        if base64.b64encode(data) != line:
            raise self._error("a line is not canonical base64")
        if len(data) < 48:
            if self._line() != ARMOR_END:
                raise self._error("a short line not followed by the END line")
            self._finish()
        return data

    def _finish(self) -> None:
        rest = self._source.read(_MAX_WHITESPACE + 1)
        if rest.strip() or len(rest) > _MAX_WHITESPACE:
            raise self._error("data after the END line")
        self._done = True


@dataclass(frozen=True)
class AgeHeader:
    """What an age header shows without a key: one stanza per recipient (X25519 ones are
    anonymous; ssh-* ones carry a 4-byte key tag), and whether the file is armored."""

    recipients: int
    stanza_types: tuple[str, ...]
    armored: bool


@dataclass(frozen=True)
class _Header:
    info: AgeHeader
    stanzas: tuple[_Stanza, ...]
    authenticated: bytes  # the bytes the MAC covers: intro up to and including "---"
    mac: bytes


def is_encrypted(first_bytes: bytes) -> bool:
    """Whether input starting with these bytes is an age file (binary, or armored after optional
    blank space). Give it at least SNIFF_BYTES bytes when the input has them."""
    if first_bytes.startswith(INTRO):
        return True
    return first_bytes.lstrip(b" \t\r\n").startswith(ARMOR_BEGIN)


def _armored(source: _Source) -> bool:
    head = source.peek(_MAX_WHITESPACE + len(ARMOR_BEGIN))
    return not head.startswith(INTRO) and head.lstrip(b" \t\r\n").startswith(ARMOR_BEGIN)


def _parse_header(source: _Source, label: str, armored: bool) -> _Header:
    """The header, read a bounded line at a time: nothing in it is trusted for a size."""
    if not INTRO.startswith(source.peek(len(INTRO))) or not source.peek(1):
        raise CiphertextError(f"{label}: not an age-encryption.org/v1 file")
    taken = bytearray()

    def line(limit: int = _MAX_LINE) -> bytes:
        try:
            text = source.readline(min(limit, MAX_HEADER_BYTES - len(taken)) + 1)
        except _LineTooLong:
            if len(taken) + limit >= MAX_HEADER_BYTES:
                raise CiphertextError(
                    f"{label}: the age header is longer than {MAX_HEADER_BYTES} bytes: refused"
                ) from None
            raise _damaged(label, f"a line is longer than {limit} bytes") from None
        if not text.endswith(b"\n"):
            raise TruncatedCiphertextError(f"{label}: the age header is cut short")
        taken.extend(text)
        return text

    if line() != INTRO:
        raise CiphertextError(f"{label}: not an age-encryption.org/v1 file")
    stanzas: list[_Stanza] = []
    while True:
        opening = line()
        if opening.startswith(b"---"):
            parts = opening[:-1].split(b" ")
            mac = _b64decode(parts[1]) if len(parts) == 2 and parts[0] == b"---" else None
            if mac is None or len(mac) != 32:
                raise _damaged(label, "malformed closing line")
            types = tuple(stanza.type for stanza in stanzas)
            info = AgeHeader(recipients=len(stanzas), stanza_types=types, armored=armored)
            authenticated = bytes(taken[: len(taken) - len(opening) + 3])
            return _Header(info, tuple(stanzas), authenticated, mac)
        parts = opening[:-1].split(b" ")
        if parts[0] != b"->" or len(parts) < 2 or not all(_valid_arg(p) for p in parts[1:]):
            raise _damaged(label, "malformed stanza line")
        if len(stanzas) == _MAX_STANZAS:
            raise CiphertextError(f"{label}: more than {_MAX_STANZAS} recipients: refused")
        body = bytearray()
        while True:
            text = line(64)
            data = _b64decode(text[:-1])
            if data is None:
                raise _damaged(label, "a stanza body line is not base64")
            body += data
            if len(text) - 1 < 64:
                break
        kind, *args = (part.decode("ascii") for part in parts[1:])
        stanzas.append(_Stanza(kind, tuple(args), bytes(body)))


def _valid_arg(arg: bytes) -> bool:
    return bool(arg) and all(33 <= byte <= 126 for byte in arg)


def _open_source(src: _Readable, label: str) -> tuple[_Source, _Header]:
    source = _Source(src)
    armored = _armored(source)
    if armored:
        source = _Source(_Dearmor(source, label))
    return source, _parse_header(source, label, armored)


def read_header(src: BinaryIO, *, label: str = "<stream>") -> AgeHeader:
    """What the header shows without a key (for `inspect`). Reads a little past the header."""
    return _open_source(src, label)[1].info


# ---------------------------------------------------------------------------------------------
# The payload: STREAM chunks.


_Aead = ChaCha20Poly1305 | AESOCB3 | AESGCM
"""age's payload is ChaCha20-Poly1305. A SealedSpool, which nothing else reads, uses AES-OCB3
(several times faster on CPUs with AES instructions), or AES-GCM where the OpenSSL underneath
lacks OCB3 (LibreSSL)."""


def _spool_cipher() -> _Aead:
    key = AESOCB3.generate_key(256)
    try:
        return AESOCB3(key)
    except UnsupportedAlgorithm:
        return AESGCM(key)


def _chunk_nonce(counter: int, last: bool) -> bytes:
    return (counter << 8 | last).to_bytes(12, "big")


class _Sealer:
    """Seals what it is given into chunks, keeping the last (up to a whole chunk) until `finish`,
    because only then is it known to be the final one."""

    def __init__(self, aead: _Aead, out: Callable[[bytes], object]):
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
            room = _CHUNK - len(self._pending)
            if size <= room:
                self._pending += view
                return size
            self._pending += view[:room]
            view = view[room:]
            self._seal(self._pending, last=False)
            self._pending = bytearray()
        while len(view) > _CHUNK:
            self._seal(view[:_CHUNK], last=False)
            view = view[_CHUNK:]
        self._pending += view
        return size

    def finish(self) -> None:
        self._seal(self._pending, last=True)
        self._pending = bytearray()

    def _seal(self, plaintext: bytes | bytearray | memoryview, *, last: bool) -> None:
        self._out(self._aead.encrypt(_chunk_nonce(self._counter, last), plaintext, None))
        self._counter += 1


class _Opener:
    """Opens chunks one at a time; a chunk's plaintext is given out only once it authenticated,
    and the end only once the final chunk did (with nothing after it)."""

    def __init__(self, aead: _Aead, source: _Source, label: str):
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
        where = f"chunk {self._counter + 1} (from plaintext byte {self._counter * _CHUNK:,})"
        if not sealed:
            raise TruncatedCiphertextError(
                f"{self._label}: the encrypted stream ends before its final chunk, after "
                f"{self._counter * _CHUNK:,} bytes of plaintext: cut short"
            )
        plaintext = None
        if len(sealed) == _SEALED_CHUNK:
            plaintext = self._open(sealed, last=False)
        if plaintext is None:
            if len(sealed) == _TAG and self._counter:
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
        if len(sealed) < _TAG:
            return None
        try:
            return self._aead.decrypt(_chunk_nonce(self._counter, last), sealed, None)
        except InvalidTag:
            return None


# ---------------------------------------------------------------------------------------------
# The streams.


class EncryptingWriter(io.BufferedIOBase, BinaryIO):
    """Encrypts what is written to it into `dest`. `close()` (or leaving a `with` block cleanly)
    writes the final chunk and flushes `dest`, which it never closes. Leaving a `with` block by an
    exception, `abort()`, or being garbage-collected unclosed writes no final chunk, so the
    output stays detectably incomplete rather than passing for a shorter plaintext."""

    def __init__(self, dest: BinaryIO, sealer: _Sealer):
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
    file_key = os.urandom(_FILE_KEY_BYTES)
    stanzas = b"".join(recipient._wrap(file_key).encode() for recipient in recipients)
    authenticated = INTRO + stanzas + b"---"
    mac = hmac.digest(_hkdf(file_key, b"", b"header"), authenticated, "sha256")
    nonce = os.urandom(_NONCE_BYTES)
    dest.write(authenticated + b" " + _b64encode(mac) + b"\n" + nonce)
    payload = ChaCha20Poly1305(_hkdf(file_key, nonce, b"payload"))
    return EncryptingWriter(dest, _Sealer(payload, dest.write))


class _ChunkReader(io.BufferedIOBase, BinaryIO):
    """Plaintext read through an _Opener, one chunk in memory at a time (no opener: empty)."""

    def __init__(self, opener: _Opener | None):
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


class DecryptingReader(_ChunkReader):
    """The plaintext of an age file, read through, one chunk (64 KiB) in memory at a time.
    Every piece it returns has authenticated, but damage or truncation further on is found only
    when reading reaches it (a CiphertextError instead of the end), so nothing read may be
    committed before `read` has returned b"". Closing it does not close the source. `header` is
    what the header showed (the recipient count, for `inspect`)."""

    def __init__(self, opener: _Opener, header: AgeHeader):
        super().__init__(opener)
        self.header = header


def _open_envelope(src: _Readable, identities: Sequence[Identity], label: str) -> DecryptingReader:
    source, header = _open_source(src, label)
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
    if len(file_key) != _FILE_KEY_BYTES:
        raise _damaged(label, "a stanza holds no 16-byte file key")
    mac = hmac.digest(_hkdf(file_key, b"", b"header"), header.authenticated, "sha256")
    if not hmac.compare_digest(mac, header.mac):
        raise CiphertextError(f"{label}: the age header was altered (its MAC does not match)")
    nonce = source.read(_NONCE_BYTES)
    if len(nonce) != _NONCE_BYTES:
        raise TruncatedCiphertextError(f"{label}: the encrypted stream ends after its header")
    payload = ChaCha20Poly1305(_hkdf(file_key, nonce, b"payload"))
    return DecryptingReader(_Opener(payload, source, label), info)


def open_decrypting_reader(
    src: BinaryIO, identities: Sequence[Identity], *, label: str = "<stream>"
) -> DecryptingReader:
    """The plaintext of the age file `src` (binary or armored) as a readable binary stream.
    The header is read and a file key found now: NoIdentityError if `identities` is empty (it
    carries the recipient count), NoMatchingIdentityError if none opens it, CiphertextError
    (TruncatedCiphertextError) if it is damaged (cut short). Identities that need a passphrase
    are tried last, and ask for it only if they could open a stanza of the header. `label` names
    `src` in errors."""
    return _open_envelope(src, identities, label)


# ---------------------------------------------------------------------------------------------
# Sealed temporary files.


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
        self._sealer: _Sealer | None = _Sealer(self._aead, self._file.write)
        self._reader: _ChunkReader | None = None

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

    def _reading(self, *, restart: bool = False) -> _ChunkReader:
        if self.closed:
            raise ValueError("read from a closed SealedSpool")
        self.finish()
        if self._reader is None or restart:
            source = _Source(_FileAt(self._file.fileno()))
            empty = not source.peek(1)  # nothing was written, here or by a forked child
            opener = _Opener(self._aead, source, "sealed temporary file")
            self._reader = _ChunkReader(None if empty else opener)
        return self._reader

    def close(self) -> None:
        if not self.closed:
            super().close()
            self._file.close()
            self._sealer = None
            self._reader = None
