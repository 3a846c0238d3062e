"""Recipients: the public keys an envelope is encrypted to (`age1…` X25519 keys, `ssh-ed25519`
and `ssh-rsa` keys), one at a time as `--recipient` takes them or a file as `age -R` reads it.

Messages never quote the text they refuse: a secret key given by mistake must not be echoed.
"""

from __future__ import annotations

import base64
import binascii
import os
import sys
from abc import ABC, abstractmethod
from collections.abc import Callable, Iterator

from cryptography.exceptions import UnsupportedAlgorithm
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ed25519, rsa
from cryptography.hazmat.primitives.asymmetric.x25519 import X25519PrivateKey, X25519PublicKey

from kindling_bundle.errors import RecipientError
from kindling_bundle.io.age.encoding import (
    MAX_LINE,
    Stanza,
    b64encode,
    bech32_decode,
    bech32_encode,
    ssh_fingerprint,
    ssh_string,
    ssh_tag,
)
from kindling_bundle.io.age.primitives import (
    ED25519_LABEL,
    RSA_OAEP,
    X25519_LABEL,
    ed25519_to_x25519,
    hkdf,
    seal_file_key,
    x25519,
)

MAX_KEY_FILE_BYTES = 16 << 20  # identities and recipients files, as age reads them


class Recipient(ABC):
    """A public key an envelope is encrypted to. `str()` is safe to show (public)."""

    @abstractmethod
    def _wrap(self, file_key: bytes) -> Stanza: ...

    def __repr__(self) -> str:
        return f"<{type(self).__name__} {self}>"


class X25519Recipient(Recipient):
    """An `age1…` public key, as `age-keygen` prints it."""

    def __init__(self, public: bytes):
        self._public = public

    def __str__(self) -> str:
        return bech32_encode("age", self._public)

    def _wrap(self, file_key: bytes) -> Stanza:
        ephemeral = X25519PrivateKey.generate()
        share = ephemeral.public_key().public_bytes_raw()
        secret = ephemeral.exchange(X25519PublicKey.from_public_bytes(self._public))
        key = hkdf(secret, share + self._public, X25519_LABEL)
        return Stanza("X25519", (b64encode(share).decode(),), seal_file_key(key, file_key))


class SshEd25519Recipient(Recipient):
    """An `ssh-ed25519` public key; age encrypts to its Curve25519 form, tweaked by the key."""

    def __init__(self, blob: bytes, montgomery: bytes):
        self._blob = blob
        self._public = montgomery
        self._tag = ssh_tag(blob)

    def __str__(self) -> str:
        return f"ssh-ed25519 {ssh_fingerprint(self._blob)}"

    def _wrap(self, file_key: bytes) -> Stanza:
        ephemeral = X25519PrivateKey.generate()
        share = ephemeral.public_key().public_bytes_raw()
        secret = ephemeral.exchange(X25519PublicKey.from_public_bytes(self._public))
        tweak = X25519PrivateKey.from_private_bytes(hkdf(b"", self._blob, ED25519_LABEL))
        tweaked = tweak.exchange(X25519PublicKey.from_public_bytes(secret))
        key = hkdf(tweaked, share + self._public, ED25519_LABEL)
        args = (self._tag, b64encode(share).decode())
        return Stanza("ssh-ed25519", args, seal_file_key(key, file_key))


class SshRsaRecipient(Recipient):
    """An `ssh-rsa` public key of at least 2048 bits (RSA-OAEP-SHA256)."""

    def __init__(self, blob: bytes, key: rsa.RSAPublicKey):
        self._blob = blob
        self._key = key
        self._tag = ssh_tag(blob)

    def __str__(self) -> str:
        return f"ssh-rsa {ssh_fingerprint(self._blob)}"

    def _wrap(self, file_key: bytes) -> Stanza:
        return Stanza("ssh-rsa", (self._tag,), self._key.encrypt(file_key, RSA_OAEP))


class _UnsupportedSshKey(Exception):
    """A well-formed SSH public key of a type age cannot encrypt to (ecdsa, sk-…): a recipients
    file skips it, as `age -R` does, so that a GitHub `USER.keys` file works."""

    def __init__(self, key_type: str):
        super().__init__(key_type)
        self.key_type = key_type


def ssh_public_key(text: str) -> tuple[str, bytes] | None:
    """(type, wire blob) of an authorized_keys-style line `TYPE BASE64 [COMMENT]` whose blob
    names the same type, else None."""
    fields = text.split()
    if len(fields) < 2:
        return None
    try:
        blob = base64.b64decode(fields[1], validate=True)
        key_type, _ = ssh_string(blob, 0)
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
        decoded = bech32_decode(text)
        if decoded is None:
            raise ValueError("malformed age1… recipient (its checksum or characters are wrong)")
        hrp, data = decoded
        if hrp != "age" or len(data) != 32 or x25519(X25519PrivateKey.generate(), data) is None:
            raise ValueError("malformed age1… recipient (not an X25519 public key)")
        return X25519Recipient(data)
    ssh = ssh_public_key(text)
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
        montgomery = ed25519_to_x25519(key.public_bytes_raw())
        if montgomery is None or x25519(X25519PrivateKey.generate(), montgomery) is None:
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
    data = read_key_file(name, label, RecipientError)
    recipients: list[Recipient] = []
    for where, line in key_file_lines(data, label, "a recipients file", RecipientError):
        if len(line) > MAX_LINE:
            raise RecipientError(f"{where}: longer than {MAX_LINE} characters")
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


def read_key_file(name: str, label: str, error: type[Exception]) -> bytes:
    """A recipients or identity file's bytes (`-`: standard input), refused if too large to be
    one; errors as `error`, naming the file as `label`."""
    try:
        if name == "-":
            data = sys.stdin.buffer.read(MAX_KEY_FILE_BYTES + 1)
        else:
            with open(name, "rb") as file:
                data = file.read(MAX_KEY_FILE_BYTES + 1)
    except OSError as exc:
        raise error(f"{label}: cannot read: {exc.strerror or exc}") from None
    if len(data) > MAX_KEY_FILE_BYTES:
        raise error(f"{label}: larger than {MAX_KEY_FILE_BYTES >> 20} MiB: not a key file")
    return data


def key_file_lines(
    data: bytes, label: str, what: str, error: type[Exception]
) -> Iterator[tuple[str, str]]:
    """(where, line) for each line of a key file that is neither blank nor a `#` comment, as
    age reads them; `where` names the file and line for an error message."""
    try:
        text = data.decode("utf-8")
    except UnicodeDecodeError:
        raise error(f"{label}: not {what} (not UTF-8 text)") from None
    for number, raw_line in enumerate(text.split("\n"), 1):
        line = raw_line.strip()
        if line and not line.startswith("#"):
            yield f"{label}, line {number}", line
