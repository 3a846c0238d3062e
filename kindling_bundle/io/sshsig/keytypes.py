"""The key types that sign and check bundles (ed25519, RSA, ECDSA P-256/384/521): their
parameters, their public-key encoding, and checking one raw SSH signature with `cryptography`.
"""

from __future__ import annotations

import base64
from typing import TypeAlias

from cryptography.exceptions import InvalidSignature, UnsupportedAlgorithm
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec, ed25519, padding, rsa
from cryptography.hazmat.primitives.asymmetric.utils import encode_dss_signature

from kindling_bundle.errors import BadSignatureError, MalformedSignatureError
from kindling_bundle.io.sshsig.wire import _key_type_of, _Truncated, _WireReader

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


_PublicKey: TypeAlias = ed25519.Ed25519PublicKey | rsa.RSAPublicKey | ec.EllipticCurvePublicKey


def _public_blob(key: _PublicKey) -> bytes:
    line = key.public_bytes(serialization.Encoding.OpenSSH, serialization.PublicFormat.OpenSSH)
    return base64.b64decode(line.split()[1])


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
