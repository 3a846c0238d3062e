"""What reading an input takes besides its bytes, as one object every reading function accepts.

One frozen dataclass rather than a keyword per need on every reader (open_bundle, read_manifest,
verify_bundle, import_bundle, the dataset openers): which keys open an encrypted input, and
whose signatures to trust, are fields here, not keywords threaded through each of them.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

from kindling_bundle.format.signature import SignatureOptions

if TYPE_CHECKING:
    from kindling_bundle.io.age.identities import Identity


@dataclass(frozen=True)
class ReadOptions:
    """How to read an input.

    `identities`: the keys that may open an encrypted (age) input, tried in order (those that
    ask for a passphrase last, and only if they could open it). With none, an encrypted input
    is refused with NoIdentityError, which carries what its header shows (how many recipients).
    A plain input ignores them.

    `signature`: whom to trust (format.signature.SignatureOptions; the default checks a
    signature if there is one and accepts an unsigned bundle). An encrypted bundle's signature
    is inside it, and is checked once decrypted, as a plain one's is."""

    identities: Sequence[Identity] = ()
    signature: SignatureOptions = field(default_factory=SignatureOptions)

    def __post_init__(self) -> None:
        identities = tuple(self.identities)
        if identities:  # only then the age modules (and `cryptography`) are imported
            from kindling_bundle.io.age.identities import Identity

            if not all(isinstance(identity, Identity) for identity in identities):
                raise TypeError(
                    "identities must be Identity objects (see io.age.identities.load_identities)"
                )
        object.__setattr__(self, "identities", identities)
        if not isinstance(self.signature, SignatureOptions):
            raise TypeError("signature must be a SignatureOptions (see format.signature)")
