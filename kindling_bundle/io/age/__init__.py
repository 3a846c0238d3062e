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
truncated). pyrage stays as the second implementation the tests check this one against.

Recipients: `age1…` X25519 keys, `ssh-ed25519` and `ssh-rsa` public keys, or a recipients file as
`age -R` reads it. Identities: age identity files (passphrase-protected ones made with `age -p`
too) and OpenSSH private keys, ed25519 and rsa, passphrase-protected or not. Encrypting a bundle
to a passphrase is not offered: scrypt at age's work factor takes 256 MiB, past the memory
bundles keep to; a passphrase-protected identity file gives the same protection and pays that
once, to unlock the key.

`SealedSpool` is a temporary file sealed under a key that lives only in memory, so spooled
plaintext never reaches the disk.

The modules, by job (import from them; this package re-exports nothing, so that detecting a
header never loads `cryptography`): `encoding` (base64, bech32, SSH strings, stanzas),
`primitives` (key derivation, file-key wrapping), `recipients`, `identities`, `header`
(detection, armor, parsing), `payload` (the chunked stream both ways), `spool` (sealed
temporary files).
"""
