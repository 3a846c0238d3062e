"""Identities: the private keys that open an envelope. age identity files (`AGE-SECRET-KEY-1…`
lines, or such a file protected by `age -p`) and OpenSSH / PEM private keys, ed25519 and rsa,
passphrase-protected or not.

A passphrase is asked for through a callback, only when a header holds a stanza the protected
key could open, and once. Descriptions and reprs show public keys and fingerprints, never key
material.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import io
import os
from abc import ABC, abstractmethod
from collections.abc import Callable, Sequence

from cryptography.exceptions import UnsupportedAlgorithm
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ed25519, rsa
from cryptography.hazmat.primitives.asymmetric.x25519 import X25519PrivateKey
from cryptography.hazmat.primitives.kdf.scrypt import Scrypt

from kindling_bundle.errors import (
    CiphertextError,
    IdentityError,
    NoMatchingIdentityError,
)
from kindling_bundle.io.age.encoding import (
    MAX_LINE,
    Stanza,
    b64decode,
    bech32_decode,
    check_args,
    damaged,
    point_arg,
    ssh_fingerprint,
    ssh_string,
    ssh_tag,
)
from kindling_bundle.io.age.header import ARMOR_BEGIN, INTRO
from kindling_bundle.io.age.payload import open_envelope
from kindling_bundle.io.age.primitives import (
    ED25519_LABEL,
    FILE_KEY_BYTES,
    RSA_OAEP,
    TAG,
    X25519_LABEL,
    hkdf,
    open_file_key,
    x25519,
)
from kindling_bundle.io.age.recipients import (
    X25519Recipient,
    key_file_lines,
    read_key_file,
    ssh_public_key,
)

PassphrasePrompt = Callable[[str], str]
"""Asks the user for a passphrase, given the prompt to show (the CLI: a hidden terminal prompt)."""

_SCRYPT_LABEL = b"age-encryption.org/v1/scrypt"
_MAX_SCRYPT_LOG_N = 22  # age's own ceiling for identity files: ~4 GiB of memory beyond it


class Identity(ABC):
    """A private key that may open an envelope. `description` and `repr()` are safe to show:
    a public key or fingerprint, never key material."""

    asks_passphrase = False
    """Tried only after the identities that need no passphrase, as age orders them."""

    @property
    @abstractmethod
    def description(self) -> str: ...

    @abstractmethod
    def _unwrap(self, stanzas: Sequence[Stanza], label: str) -> bytes | None:
        """The file key if this identity opens one of the stanzas, else None; raises
        CiphertextError for a stanza addressed to it that does not open."""

    def __repr__(self) -> str:
        return f"<{type(self).__name__} {self.description}>"


class X25519Identity(Identity):
    """An `AGE-SECRET-KEY-1…` key, as `age-keygen` writes it."""

    def __init__(self, key: X25519PrivateKey):
        self._key = key
        self._public = key.public_key().public_bytes_raw()

    @classmethod
    def generate(cls) -> X25519Identity:
        """A new random key: one that lives only in this process's memory seals a temporary
        file (a converted bundle) that must not outlive it readable."""
        return cls(X25519PrivateKey.generate())

    def recipient(self) -> X25519Recipient:
        return X25519Recipient(self._public)

    @property
    def description(self) -> str:
        return str(self.recipient())

    def _unwrap(self, stanzas: Sequence[Stanza], label: str) -> bytes | None:
        for stanza in stanzas:
            if stanza.type != "X25519":
                continue
            check_args(stanza, 1, label)
            share = point_arg(stanza, 0, label)
            if len(stanza.body) != FILE_KEY_BYTES + TAG:
                raise damaged(label, "an X25519 stanza's body is not a wrapped file key")
            secret = x25519(self._key, share)
            if secret is None:
                raise damaged(label, "an X25519 stanza's share is a low-order point")
            file_key = open_file_key(hkdf(secret, share + self._public, X25519_LABEL), stanza.body)
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
        self._tweak = X25519PrivateKey.from_private_bytes(hkdf(b"", self._blob, ED25519_LABEL))
        self._tag = ssh_tag(self._blob)

    @property
    def description(self) -> str:
        return f"ssh-ed25519 {ssh_fingerprint(self._blob)}"

    def _unwrap(self, stanzas: Sequence[Stanza], label: str) -> bytes | None:
        for stanza in stanzas:
            if stanza.type != "ssh-ed25519":
                continue
            check_args(stanza, 2, label)
            share = point_arg(stanza, 1, label)
            if stanza.args[0] != self._tag:
                continue
            secret = x25519(self._key, share)
            tweaked = None if secret is None else x25519(self._tweak, secret)
            if tweaked is None:
                raise damaged(label, "an ssh-ed25519 stanza's share is a low-order point")
            key = hkdf(tweaked, share + self._public, ED25519_LABEL)
            file_key = open_file_key(key, stanza.body)
            if file_key is None or len(file_key) != FILE_KEY_BYTES:
                raise damaged(label, f"the stanza for {self.description} does not open")
            return file_key
        return None


class SshRsaIdentity(Identity):
    """An OpenSSH rsa private key (RSA-OAEP-SHA256)."""

    def __init__(self, key: rsa.RSAPrivateKey):
        self._key = key
        self._blob = _ssh_blob(key.public_key())
        self._tag = ssh_tag(self._blob)

    @property
    def description(self) -> str:
        return f"ssh-rsa {ssh_fingerprint(self._blob)}"

    def _unwrap(self, stanzas: Sequence[Stanza], label: str) -> bytes | None:
        for stanza in stanzas:
            if stanza.type != "ssh-rsa":
                continue
            check_args(stanza, 1, label)
            if stanza.args[0] != self._tag:
                continue
            try:
                file_key = self._key.decrypt(stanza.body, RSA_OAEP)
            except ValueError:
                raise damaged(label, f"the stanza for {self.description} does not open") from None
            if len(file_key) != FILE_KEY_BYTES:
                raise damaged(label, f"the stanza for {self.description} holds no file key")
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
        key_type, _ = ssh_string(self._blob, 0)
        return f"{key_type.decode()} {ssh_fingerprint(self._blob)} (passphrase-protected)"

    def _unwrap(self, stanzas: Sequence[Stanza], label: str) -> bytes | None:
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

    def _might_open(self, stanza: Stanza) -> bool:
        if stanza.type not in ("ssh-ed25519", "ssh-rsa") or not stanza.args:
            return False
        if self._blob is None:
            return True
        key_type, _ = ssh_string(self._blob, 0)
        return stanza.type == key_type.decode() and stanza.args[0] == ssh_tag(self._blob)


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

    def _unwrap(self, stanzas: Sequence[Stanza], label: str) -> bytes | None:
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
            with open_envelope(io.BytesIO(self._data), [_ScryptKey(self)], source) as reader:
                plaintext = reader.read()
        except (CiphertextError, NoMatchingIdentityError) as exc:
            raise IdentityError(
                f"{source}: not a usable passphrase-protected identity file: "
                f"{str(exc).removeprefix(source + ': ')}"
            ) from None
        return _text_identities(plaintext, f"{source} (decrypted)")


class _ScryptKey(Identity):
    """The passphrase of one `age -p` identity file (never of a bundle: see the package notes
    in io/age/__init__.py)."""

    def __init__(self, owner: _PassphraseProtectedIdentities):
        self._owner = owner

    @property
    def description(self) -> str:
        return self._owner.description

    def _unwrap(self, stanzas: Sequence[Stanza], label: str) -> bytes | None:
        source = self._owner._source
        if len(stanzas) != 1 or stanzas[0].type != "scrypt":
            raise IdentityError(
                f"{source}: an encrypted identity file must be protected by a passphrase alone "
                "(made with age -p)"
            )
        stanza = stanzas[0]
        check_args(stanza, 2, label)
        salt = b64decode(stanza.args[0].encode())
        work = stanza.args[1]
        if salt is None or len(salt) != 16 or not work.isdigit() or work.startswith("0"):
            raise damaged(label, "malformed scrypt stanza")
        if int(work) > _MAX_SCRYPT_LOG_N:
            raise IdentityError(f"{source}: scrypt work factor 2^{work} is above 2^22: refused")
        if len(stanza.body) != FILE_KEY_BYTES + TAG:
            raise damaged(label, "the scrypt stanza's body is not a wrapped file key")
        password = _ask(
            self._owner._passphrase,
            f"Passphrase for identity file {source}: ",
            source,
            "the identity file",
        )
        kdf = Scrypt(salt=_SCRYPT_LABEL + salt, length=32, n=1 << int(work), r=8, p=1)
        file_key = open_file_key(kdf.derive(password), stanza.body)
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
        cipher, offset = ssh_string(blob, len(magic))
        _, offset = ssh_string(blob, offset)  # kdf name
        _, offset = ssh_string(blob, offset)  # kdf options
        if blob[offset : offset + 4] != b"\0\0\0\1":
            return None
        public, _ = ssh_string(blob, offset + 4)
    except (binascii.Error, ValueError):
        return None
    return cipher, public


def _pub_file_blob(source: str) -> bytes | None:
    """The public key from `KEY.pub`, for a legacy PEM key whose public half is encrypted."""
    try:
        with open(source + ".pub", encoding="utf-8") as file:
            parsed = ssh_public_key(file.read(MAX_LINE))
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
    identities: list[Identity] = []
    for where, line in key_file_lines(data, source, "an identity file", IdentityError):
        if line.startswith("AGE-SECRET-KEY-1"):
            decoded = bech32_decode(line)
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
        read_key_file(name, label, IdentityError), source=label, passphrase=passphrase
    )
