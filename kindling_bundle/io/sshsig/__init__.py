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

The package, by job (import from its modules; this one re-exports nothing, so that reading an
unsigned bundle never loads `cryptography`): `wire` (the SSHSIG format: wire fields, armor,
blob, signed data), `keytypes` (the supported keys and checking a raw signature),
`verification` (verify, the bundle's signature policy, Signer), `allowed_signers` (whom to
trust), `keys` (signing keys and sign).
"""
