"""The age format's key derivation and file-key wrapping, on `cryptography`.

The encodings every module shares are in `encoding`; none of the two holds state.
"""

from __future__ import annotations

from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric import padding
from cryptography.hazmat.primitives.asymmetric.x25519 import X25519PrivateKey, X25519PublicKey
from cryptography.hazmat.primitives.ciphers.aead import ChaCha20Poly1305
from cryptography.hazmat.primitives.kdf.hkdf import HKDF

CHUNK = 64 << 10
TAG = 16
FILE_KEY_BYTES = 16
_ZERO_NONCE = bytes(12)

X25519_LABEL = b"age-encryption.org/v1/X25519"
ED25519_LABEL = b"age-encryption.org/v1/ssh-ed25519"
RSA_LABEL = b"age-encryption.org/v1/ssh-rsa"

RSA_OAEP = padding.OAEP(
    mgf=padding.MGF1(algorithm=hashes.SHA256()), algorithm=hashes.SHA256(), label=RSA_LABEL
)


def hkdf(secret: bytes, salt: bytes, info: bytes) -> bytes:
    return HKDF(algorithm=hashes.SHA256(), length=32, salt=salt or None, info=info).derive(secret)


def seal_file_key(key: bytes, file_key: bytes) -> bytes:
    return ChaCha20Poly1305(key).encrypt(_ZERO_NONCE, file_key, None)


def open_file_key(key: bytes, body: bytes) -> bytes | None:
    try:
        return ChaCha20Poly1305(key).decrypt(_ZERO_NONCE, body, None)
    except InvalidTag:
        return None


def x25519(private: X25519PrivateKey, public: bytes) -> bytes | None:
    """The shared secret, or None for a low-order point (an all-zero secret)."""
    try:
        return private.exchange(X25519PublicKey.from_public_bytes(public))
    except ValueError:
        return None


_P = 2**255 - 19
_D = -121665 * pow(121666, -1, _P) % _P


def ed25519_to_x25519(public: bytes) -> bytes | None:
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
