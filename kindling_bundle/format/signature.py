"""Signed bundles (format 1.1): where the signature member goes, and whom a reader trusts.

A signed bundle carries SIGNATURE_MEMBER right after the manifest: the armored SSH signature
(`io.sshsig`, namespace `kindling-bundle`) over the manifest's exact bytes. The manifest
holds every member's size, count and SHA-256, so one signature checked before the first record
vouches for every record after it: the reader already refuses a member that disagrees with the
manifest. The signature is checked in one place (`BundleReader.read_manifest`), so every reader
(verify, import, inspect, convert, diff, merge) applies the same policy, `SignatureOptions`.

The manifest's minor version says whether the member is there (spec section 4): 1.0 bundles
have none, so a signature member in one is refused; a 1.1 bundle must have one, so a signature
removed from it is noticed even by a reader that does not require one. Later 1.x versions may
carry one or not.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from kindling_bundle.errors import AllowedSignersError, UnsignedBundleError
from kindling_bundle.format.manifest import Manifest
from kindling_bundle.io.sshsig.allowed_signers import AllowedSigners
from kindling_bundle.io.sshsig.verification import Signer, check_bundle_signature


@dataclass(frozen=True)
class SignatureOptions:
    """Whom a reader trusts. A signature present is always checked, whatever these say: a bad
    one is an error, never ignored.

    `allowed_signers`: the signer must be listed there (git's allowed_signers format; the
    principals, `namespaces=`, `valid-after` and `valid-before` are honoured), and is reported
    with its principals. `require_signature`: refuse an unsigned bundle, and any input that
    cannot carry a signature (a Kindling JSON export, a database); it needs `allowed_signers`
    (trusting any key that signs would prove nothing). `principal`: only allowed_signers lines
    whose principals match it count.
    """

    allowed_signers: AllowedSigners | None = None
    require_signature: bool = False
    principal: str | None = None

    def __post_init__(self) -> None:
        if self.require_signature and self.allowed_signers is None:
            raise AllowedSignersError(
                "a signature is required but no allowed_signers file was given "
                "(--allowed-signers or KINDLING_BUNDLE_ALLOWED_SIGNERS)"
            )

    def check(self, manifest_bytes: bytes, signature: bytes | None, source: str) -> Signer | None:
        """The signer of `manifest_bytes`, or None for an unsigned bundle that may be read.

        Raises a SignatureError subclass naming `source` for anything refused."""
        return check_bundle_signature(
            manifest_bytes,
            signature,
            allowed_signers=self.allowed_signers,
            principal=self.principal,
            require=self.require_signature,
            source=source,
        )

    def refuse_unsignable(self, name: str, what: str) -> None:
        """For an input that cannot carry a signature (`what`: "a Kindling JSON export"):
        UnsignedBundleError when a signature is required, else nothing."""
        if self.require_signature:
            raise UnsignedBundleError(
                f"{name}: {what} cannot be signed, and a signature is required"
            )


def signature_allowed(manifest: Manifest) -> bool:
    """Whether a signature member may follow this manifest: from format 1.1 on."""
    return manifest.minor_version >= 1


def signature_required(manifest: Manifest) -> bool:
    """Whether this manifest says the bundle is signed: exactly format 1.1."""
    return manifest.minor_version == 1


def signature_to_dict(signer: Signer | None) -> dict[str, Any]:
    """The signature as reports give it in JSON: `{"status": "unsigned"}`, or the signer.

    `principals` is empty when no allowed_signers file vouched for the key."""
    if signer is None:
        return {"status": "unsigned"}
    return {
        "status": "signed",
        "key_type": signer.key_type,
        "fingerprint": signer.fingerprint,
        "public_key": signer.public_key,
        "principals": list(signer.principals),
    }


def describe_signature(signer: Signer | None) -> str:
    """The signature as reports give it to people, in one line."""
    if signer is None:
        return "unsigned"
    if signer.principals:
        return f"good, signed by {signer.describe()}"
    return f"good, signed by {signer.describe()} (no allowed_signers file: signer not checked)"
