"""Checking a signature (with no program run) and the bundle's signature policy; Signer says
who made a signature that verified.
"""

from __future__ import annotations

import base64
from dataclasses import dataclass, replace
from datetime import datetime

from kindling_bundle.errors import AllowedSignersError, SignatureNamespaceError, UnsignedBundleError
from kindling_bundle.io.sshsig.allowed_signers import AllowedSigners
from kindling_bundle.io.sshsig.wire import (
    NAMESPACE,
    StrPath,
    _dearmor,
    _fingerprint,
    _key_type_of,
    _parse_blob,
    _signed_data,
)


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


def _display_type(key_type: str) -> str:
    """The short name ssh-keygen prints ("ED25519 key SHA256:..."), for reports."""
    if key_type == "ssh-ed25519":
        return "ED25519"
    if key_type == "ssh-rsa":
        return "RSA"
    if key_type.startswith("ecdsa-sha2-"):
        return "ECDSA"
    return key_type


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
    # Only here, where a signature is checked, is `cryptography` needed: reading an unsigned
    # bundle (check_bundle_signature with none) never imports it.
    from kindling_bundle.io.sshsig.keytypes import _check_key_signature, _load_public_blob

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
