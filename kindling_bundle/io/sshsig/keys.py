"""Signing keys: an OpenSSH private key file (signed with `cryptography`) or a public key file
whose private half is in ssh-agent (signed by running `ssh-keygen -Y sign`), and `sign`.
"""

from __future__ import annotations

import base64
import os
import subprocess
from abc import ABC, abstractmethod
from collections.abc import Callable
from typing import TypeAlias

from cryptography.exceptions import UnsupportedAlgorithm
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec, ed25519, padding, rsa
from cryptography.hazmat.primitives.asymmetric.utils import decode_dss_signature

from kindling_bundle.errors import SigningKeyError
from kindling_bundle.io.sshsig.keytypes import (
    _ECDSA_CURVES,
    _KEY_TYPES,
    _RSA_MIN_BITS,
    _public_blob,
)
from kindling_bundle.io.sshsig.verification import verify
from kindling_bundle.io.sshsig.wire import (
    _HASH_ALGORITHM,
    _MAGIC,
    _VERSION,
    NAMESPACE,
    StrPath,
    _armor,
    _dearmor,
    _fingerprint,
    _key_type_of,
    _mpint,
    _parse_blob,
    _signed_data,
    _string,
    _try_key,
)

PassphraseCallback: TypeAlias = Callable[[str], str | bytes]
"""Called with the key file's path when that key is passphrase-protected; returns the passphrase."""

_MAX_KEY_FILE_BYTES = 1024 * 1024


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
