"""SSH signatures: interop with OpenSSH both ways, and every refusal with its own error.

Needs OpenSSH's ssh-keygen, ssh-agent and ssh-add (Debian's openssh-client): not skipped without
them, so a CI machine that lacks them fails instead of passing untested.
"""

from __future__ import annotations

import base64
import re
import shutil
import subprocess
from collections.abc import Iterator
from datetime import UTC, datetime
from pathlib import Path

import pytest
from age_tools import ssh_agent

from kindling_bundle.errors import (
    AllowedSignersError,
    BadSignatureError,
    MalformedSignatureError,
    SignatureNamespaceError,
    SignerNotValidError,
    SigningKeyError,
    UnknownSignerError,
    UnsignedBundleError,
)
from kindling_bundle.io.sshsig.allowed_signers import AllowedSigners
from kindling_bundle.io.sshsig.keys import load_signing_key, sign
from kindling_bundle.io.sshsig.verification import check_bundle_signature, verify
from kindling_bundle.io.sshsig.wire import MAX_SIGNATURE_BYTES, NAMESPACE

MESSAGE = b'{"format": "kindling-bundle", "version": "1.1", "members": []}\n'
PASSPHRASE = "correct horse battery staple"
WHEN = datetime(2025, 1, 1, tzinfo=UTC)


def keygen(path: Path, key_type: str, passphrase: str = "", bits: str | None = None) -> Path:
    command = ["ssh-keygen", "-q", "-t", key_type, "-N", passphrase, "-C", "alice", "-f", str(path)]
    subprocess.run(command + (["-b", bits] if bits else []), check=True, stdin=subprocess.DEVNULL)
    return path


@pytest.fixture(scope="module")
def keys(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    folder = tmp_path_factory.mktemp("keys")
    return {
        "ed25519": keygen(folder / "ed25519", "ed25519"),
        "rsa": keygen(folder / "rsa", "rsa", bits="2048"),
        "ecdsa": keygen(folder / "ecdsa", "ecdsa"),
        "other": keygen(folder / "other", "ed25519"),
        "protected": keygen(folder / "protected", "ed25519", passphrase=PASSPHRASE),
    }


def public_line(key: Path) -> str:
    """`type base64` of KEY.pub, without its comment."""
    return " ".join(Path(f"{key}.pub").read_text().split()[:2])


def allowed(tmp_path: Path, *lines: str) -> Path:
    path = tmp_path / "allowed_signers"
    path.write_text("".join(line + "\n" for line in lines))
    return path


def openssh_sign(key: Path, message: bytes, *options: str, namespace: str = NAMESPACE) -> str:
    done = subprocess.run(
        ["ssh-keygen", "-q", "-Y", "sign", "-f", str(key), "-n", namespace, *options],
        input=message,
        capture_output=True,
        check=True,
    )
    return done.stdout.decode()


def openssh_verify(
    tmp_path: Path,
    signers: Path,
    signature: str,
    message: bytes,
    *options: str,
    principal: str = "alice",
) -> subprocess.CompletedProcess[str]:
    sig = tmp_path / "message.sig"
    sig.write_text(signature)
    return subprocess.run(
        [
            "ssh-keygen",
            "-Y",
            "verify",
            "-f",
            str(signers),
            "-I",
            principal,
            "-n",
            NAMESPACE,
            "-s",
            str(sig),
            *options,
        ],
        input=message.decode(),
        capture_output=True,
        text=True,
        check=False,
    )


def armor(blob: bytes) -> str:
    body = base64.b64encode(blob).decode()
    lines = [body[i : i + 70] for i in range(0, len(body), 70)]
    armored = ["-----BEGIN SSH SIGNATURE-----", *lines, "-----END SSH SIGNATURE-----"]
    return "\n".join(armored) + "\n"


def dearmor(text: str) -> bytes:
    return base64.b64decode("".join(text.strip().splitlines()[1:-1]))


def sshstr(data: bytes) -> bytes:
    return len(data).to_bytes(4, "big") + data


def split_blob(blob: bytes) -> list[bytes]:
    """SSHSIG fields after magic and version: key, namespace, reserved, hash, signature."""
    assert blob[:6] == b"SSHSIG"
    fields, pos = [], 10
    while pos < len(blob):
        size = int.from_bytes(blob[pos : pos + 4], "big")
        fields.append(blob[pos + 4 : pos + 4 + size])
        pos += 4 + size
    return fields


def join_blob(fields: list[bytes], version: int = 1) -> bytes:
    return b"SSHSIG" + version.to_bytes(4, "big") + b"".join(sshstr(f) for f in fields)


# --- interop with OpenSSH ----------------------------------------------------------------------


@pytest.mark.parametrize("kind", ["ed25519", "rsa", "ecdsa"])
def test_our_signature_is_good_for_ssh_keygen(
    keys: dict[str, Path], tmp_path: Path, kind: str
) -> None:
    signature = sign(MESSAGE, keys[kind])
    signers = allowed(tmp_path, f"alice {public_line(keys[kind])}")
    done = openssh_verify(tmp_path, signers, signature, MESSAGE)
    assert done.returncode == 0, done.stderr
    assert "Good" in done.stdout and "signature for alice" in done.stdout


@pytest.mark.parametrize("kind", ["ed25519", "rsa", "ecdsa"])
@pytest.mark.parametrize("hash_option", [(), ("-Ohashalg=sha256",)])
def test_ssh_keygen_signature_is_accepted(
    keys: dict[str, Path], tmp_path: Path, kind: str, hash_option: tuple[str, ...]
) -> None:
    signature = openssh_sign(keys[kind], MESSAGE, *hash_option)
    signer = verify(
        MESSAGE,
        signature,
        allowed_signers=allowed(
            tmp_path, f"alice@example.com,alice {public_line(keys[kind])} alice's laptop"
        ),
    )
    fingerprint = subprocess.run(
        ["ssh-keygen", "-l", "-f", f"{keys[kind]}.pub"], capture_output=True, text=True, check=True
    ).stdout.split()[1]
    assert signer.fingerprint == fingerprint
    assert signer.public_key == public_line(keys[kind])
    assert signer.hash_algorithm == ("sha256" if hash_option else "sha512")
    assert signer.principals == ("alice@example.com", "alice")
    assert signer.describe().startswith("alice@example.com,alice (")


def test_ed25519_signature_is_byte_identical_to_ssh_keygen_and_deterministic(
    keys: dict[str, Path],
) -> None:
    ours = sign(MESSAGE, keys["ed25519"])
    assert ours == sign(MESSAGE, keys["ed25519"])
    assert ours == openssh_sign(keys["ed25519"], MESSAGE)
    assert ours != sign(MESSAGE + b" ", keys["ed25519"])


def test_rsa_signs_with_rsa_sha2_512(keys: dict[str, Path]) -> None:
    fields = split_blob(dearmor(sign(MESSAGE, keys["rsa"])))
    assert fields[3] == b"sha512"
    assert fields[4].startswith(sshstr(b"rsa-sha2-512"))


def test_loaded_key_reports_its_identity(keys: dict[str, Path]) -> None:
    key = load_signing_key(keys["rsa"])
    assert key.key_type == "ssh-rsa"
    assert key.public_key == public_line(keys["rsa"])
    assert verify(MESSAGE, key.sign(MESSAGE)).fingerprint == key.fingerprint


# --- passphrase-protected keys -----------------------------------------------------------------


def test_protected_key_asks_its_passphrase(keys: dict[str, Path], tmp_path: Path) -> None:
    asked: list[str] = []

    def passphrase(path: str) -> str:
        asked.append(path)
        return PASSPHRASE

    signature = sign(MESSAGE, keys["protected"], passphrase=passphrase)
    assert asked == [str(keys["protected"])]
    signers = allowed(tmp_path, f"alice {public_line(keys['protected'])}")
    assert openssh_verify(tmp_path, signers, signature, MESSAGE).returncode == 0


def test_unprotected_key_never_asks(keys: dict[str, Path]) -> None:
    def passphrase(path: str) -> str:
        raise AssertionError("asked for a passphrase")

    load_signing_key(keys["ed25519"], passphrase)


def test_protected_key_refused_without_or_with_a_wrong_passphrase(keys: dict[str, Path]) -> None:
    with pytest.raises(SigningKeyError, match="passphrase-protected"):
        load_signing_key(keys["protected"])
    with pytest.raises(SigningKeyError, match="no passphrase given"):
        load_signing_key(keys["protected"], lambda path: "")
    with pytest.raises(SigningKeyError, match="wrong passphrase") as caught:
        load_signing_key(keys["protected"], lambda path: "not it")
    assert "not it" not in str(caught.value)


def test_unloadable_keys_are_refused(tmp_path: Path) -> None:
    with pytest.raises(SigningKeyError, match="cannot read"):
        load_signing_key(tmp_path / "missing")
    junk = tmp_path / "junk"
    junk.write_text("hello\n")
    with pytest.raises(SigningKeyError, match="neither an OpenSSH private key nor a public key"):
        load_signing_key(junk)
    pem = tmp_path / "pem"
    pem.write_text("-----BEGIN RSA PRIVATE KEY-----\nAAAA\n-----END RSA PRIVATE KEY-----\n")
    with pytest.raises(SigningKeyError, match="ssh-keygen -p"):
        load_signing_key(pem)
    huge = tmp_path / "huge"
    huge.write_bytes(b"ssh-ed25519 " + b"A" * (1024 * 1024 + 1))
    with pytest.raises(SigningKeyError, match="too large"):
        load_signing_key(huge)


# --- ssh-agent ---------------------------------------------------------------------------------


@pytest.fixture
def agent(monkeypatch: pytest.MonkeyPatch) -> Iterator[str]:
    with ssh_agent() as sock:
        monkeypatch.setenv("SSH_AUTH_SOCK", sock)
        yield sock


def lone_public_key(key: Path, tmp_path: Path) -> Path:
    """KEY.pub copied where no private key lies beside it, so only the agent can sign."""
    path = tmp_path / "agent-only" / "id.pub"
    path.parent.mkdir()
    shutil.copy(f"{key}.pub", path)
    return path


@pytest.mark.parametrize("kind", ["ed25519", "rsa"])
def test_public_key_signs_through_ssh_agent(
    keys: dict[str, Path], tmp_path: Path, agent: str, kind: str
) -> None:
    subprocess.run(
        ["ssh-add", "-q", str(keys[kind])],
        check=True,
        stdin=subprocess.DEVNULL,
        capture_output=True,
    )
    signature = sign(MESSAGE, lone_public_key(keys[kind], tmp_path))
    signers = allowed(tmp_path, f"alice {public_line(keys[kind])}")
    done = openssh_verify(tmp_path, signers, signature, MESSAGE)
    assert done.returncode == 0, done.stderr
    assert verify(MESSAGE, signature, allowed_signers=signers).principals == ("alice",)
    if kind == "ed25519":  # same deterministic algorithm, in the agent or in this process
        assert signature == sign(MESSAGE, keys[kind])


def test_agent_without_the_key_is_refused_when_loading(
    keys: dict[str, Path], tmp_path: Path, agent: str
) -> None:
    with pytest.raises(SigningKeyError, match="not in ssh-agent"):
        load_signing_key(lone_public_key(keys["ed25519"], tmp_path))


def test_public_key_without_an_agent_is_refused(
    keys: dict[str, Path], tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.delenv("SSH_AUTH_SOCK", raising=False)
    with pytest.raises(SigningKeyError, match="SSH_AUTH_SOCK is not set"):
        load_signing_key(lone_public_key(keys["ed25519"], tmp_path))


# --- refusals: the signature itself ------------------------------------------------------------


def test_tampered_message_does_not_verify(keys: dict[str, Path]) -> None:
    signature = sign(MESSAGE, keys["ed25519"])
    with pytest.raises(BadSignatureError, match="does not match"):
        verify(MESSAGE.replace(b"1.1", b"1.2"), signature)
    other_bundle = sign(b'{"members": ["other"]}\n', keys["ed25519"])
    with pytest.raises(BadSignatureError):
        verify(MESSAGE, other_bundle)


@pytest.mark.parametrize("kind", ["rsa", "ecdsa"])
def test_tampered_message_does_not_verify_rsa_ecdsa(keys: dict[str, Path], kind: str) -> None:
    with pytest.raises(BadSignatureError):
        verify(MESSAGE + b"\n", sign(MESSAGE, keys[kind]))


def test_signature_claiming_another_key_does_not_verify(keys: dict[str, Path]) -> None:
    fields = split_blob(dearmor(sign(MESSAGE, keys["ed25519"])))
    fields[0] = base64.b64decode(public_line(keys["other"]).split()[1])
    with pytest.raises(BadSignatureError):
        verify(MESSAGE, armor(join_blob(fields)))


def test_wrong_namespace_is_refused(keys: dict[str, Path]) -> None:
    signature = openssh_sign(keys["ed25519"], MESSAGE, namespace="git")
    with pytest.raises(SignatureNamespaceError, match="namespace 'git', not 'kindling-bundle'"):
        verify(MESSAGE, signature)


@pytest.mark.parametrize(
    ("text", "reason"),
    [
        ("", "header"),
        ("hello\n", "header"),
        ("-----BEGIN SSH SIGNATURE-----\nU1NIU0lH\n", "footer"),
        ("-----BEGIN SSH SIGNATURE-----\nU1NIU0lH\n-----END SSH SIGNATURE-----\nmore\n", "footer"),
        ("-----BEGIN SSH SIGNATURE-----\nU1NI U0lH\n-----END SSH SIGNATURE-----\n", "base64"),
        ("-----BEGIN SSH SIGNATURE-----\n\n-----END SSH SIGNATURE-----\n", "base64"),
        ("-----BEGIN SSH SIGNATURE-----\nU1NIU0l\n-----END SSH SIGNATURE-----\n", "base64"),
        ("-----BEGIN SSH SIGNATURE-----\nU1NIU0lH\n-----END SSH SIGNATURE-----\n", "needs 4"),
        ("-----BEGIN SSH SIGNATURE-----\nQUFBQUFB\n-----END SSH SIGNATURE-----\n", "magic"),
        (b"-----BEGIN SSH SIGNATURE-----\nU1NIU0lH\n-----END SSH SIGNATURE-----\n\xff", "ASCII"),
    ],
)
def test_malformed_armor_is_refused(text: str | bytes, reason: str) -> None:
    with pytest.raises(MalformedSignatureError, match=reason):
        verify(MESSAGE, text, source="snap.kbundle: signature")


def test_malformed_blobs_are_refused(keys: dict[str, Path]) -> None:
    blob = dearmor(sign(MESSAGE, keys["ed25519"]))
    fields = split_blob(blob)
    certificate = sshstr(b"ssh-ed25519-cert-v01@openssh.com") + b"\x00" * 40
    cases = {
        "signature needs 83 bytes but only 78": blob[:-5],
        "1 unexpected bytes after the SSHSIG blob": blob + b"\x00",
        "public key needs 4294967280 bytes": blob[:10] + b"\xff\xff\xff\xf0" + blob[14:],
        "SSHSIG version 2": join_blob(fields, version=2),
        "hash algorithm 'sha1'": join_blob([*fields[:3], b"sha1", fields[4]]),
        "empty namespace": join_blob([fields[0], b"", *fields[2:]]),
        "ssh-ed25519-cert-v01@openssh.com": join_blob([certificate, *fields[1:]]),
        "cannot make a 'ssh-ed25519' signature of 63 bytes": join_blob(
            [*fields[:4], sshstr(b"ssh-ed25519") + sshstr(fields[4][-64:-1])]
        ),
    }
    for reason, bad in cases.items():
        with pytest.raises(MalformedSignatureError) as caught:
            verify(MESSAGE, armor(bad), source="snap.kbundle")
        assert str(caught.value).startswith("snap.kbundle: ")
        assert reason in str(caught.value)


def test_rsa_sha1_signature_is_refused(keys: dict[str, Path]) -> None:
    fields = split_blob(dearmor(sign(MESSAGE, keys["rsa"])))
    fields[4] = sshstr(b"ssh-rsa") + fields[4][len(sshstr(b"rsa-sha2-512")) :]
    with pytest.raises(MalformedSignatureError, match="SHA-1"):
        verify(MESSAGE, armor(join_blob(fields)))


def test_oversized_signature_is_refused_before_parsing(keys: dict[str, Path]) -> None:
    good = sign(MESSAGE, keys["ed25519"])
    padded = good.replace("-----END", "A" * MAX_SIGNATURE_BYTES + "\n-----END")
    with pytest.raises(MalformedSignatureError, match=f"more than the {MAX_SIGNATURE_BYTES}"):
        verify(MESSAGE, padded.encode())


# --- refusals: allowed_signers -----------------------------------------------------------------


def test_unknown_signer_is_refused(keys: dict[str, Path], tmp_path: Path) -> None:
    signers = allowed(tmp_path, f"alice {public_line(keys['other'])}")
    signature = sign(MESSAGE, keys["ed25519"])
    with pytest.raises(UnknownSignerError, match=f"{re.escape(str(signers))}: key SHA256:"):
        verify(MESSAGE, signature, allowed_signers=signers)
    signers = allowed(tmp_path, f"bob {public_line(keys['ed25519'])}")
    with pytest.raises(UnknownSignerError, match="as 'alice'"):
        verify(MESSAGE, signature, allowed_signers=signers, principal="alice")


def test_expired_signer_is_refused_naming_the_line(keys: dict[str, Path], tmp_path: Path) -> None:
    signers = allowed(
        tmp_path, "# team keys", f'alice valid-before="20240101Z" {public_line(keys["ed25519"])}'
    )
    signature = sign(MESSAGE, keys["ed25519"])
    with pytest.raises(SignerNotValidError, match=f"{re.escape(str(signers))}:2: .* has expired"):
        verify(MESSAGE, signature, allowed_signers=signers, now=WHEN)
    assert verify(
        MESSAGE, signature, allowed_signers=signers, now=datetime(2023, 12, 31, tzinfo=UTC)
    ).principals == ("alice",)


def test_signer_not_yet_valid_is_refused(keys: dict[str, Path], tmp_path: Path) -> None:
    signers = allowed(tmp_path, f'alice valid-after="20260101" {public_line(keys["ed25519"])}')
    with pytest.raises(SignerNotValidError, match="not valid yet"):
        verify(MESSAGE, sign(MESSAGE, keys["ed25519"]), allowed_signers=signers, now=WHEN)


def test_namespace_not_allowed_by_the_line_is_refused(
    keys: dict[str, Path], tmp_path: Path
) -> None:
    signers = allowed(tmp_path, f'alice namespaces="git,file" {public_line(keys["ed25519"])}')
    with pytest.raises(SignatureNamespaceError, match=f"{re.escape(str(signers))}:1: .*namespace"):
        verify(MESSAGE, sign(MESSAGE, keys["ed25519"]), allowed_signers=signers)


def test_a_later_line_can_still_allow_the_key(keys: dict[str, Path], tmp_path: Path) -> None:
    key = public_line(keys["ed25519"])
    signers = allowed(tmp_path, f'old valid-before="20200101Z" {key}', f"alice {key}")
    assert verify(
        MESSAGE, sign(MESSAGE, keys["ed25519"]), allowed_signers=signers, now=WHEN
    ).principals == ("alice",)


# Each line is checked by ssh-keygen -Y verify and by us: both must agree.
ORACLE_CASES = [
    ("alice", "", "alice", None),
    ("alice", 'namespaces="kindling-bundle"', "alice", None),
    ("alice", 'namespaces="kindling-*,git"', "alice", None),
    ("alice", 'namespaces="git,file"', "alice", SignatureNamespaceError),
    ("alice", 'valid-before="20240101Z"', "alice", SignerNotValidError),
    ("alice", 'valid-after="20260101Z"', "alice", SignerNotValidError),
    ("alice", 'valid-after="20240101Z",valid-before="202601010000Z"', "alice", None),
    ("alice", 'VALID-BEFORE="20250101000001Z",Namespaces="kindling-bundle"', "alice", None),
    ("alice", 'valid-before="20241231235959Z"', "alice", SignerNotValidError),
    ("alice", 'valid-before="20250101000000Z"', "alice", None),
    ("alice", 'valid-after="20250101000000Z"', "alice", None),
    ("alice", 'valid-after="20250101000001Z"', "alice", SignerNotValidError),
    ("*@example.com", "", "alice@example.com", None),
    ("?lice@example.com", "", "alice@example.com", None),
    ("!alice@example.com,*@example.com", "", "alice@example.com", UnknownSignerError),
    ("bob,carol", "", "alice", UnknownSignerError),
    ('"alice,bob"', "", "bob", None),
    ("alice", "cert-authority", "alice", UnknownSignerError),
]


@pytest.mark.parametrize(("principals", "options", "principal", "refusal"), ORACLE_CASES)
def test_allowed_signers_agree_with_ssh_keygen(
    keys: dict[str, Path],
    tmp_path: Path,
    principals: str,
    options: str,
    principal: str,
    refusal: type[Exception] | None,
) -> None:
    signers = allowed(tmp_path, f"{principals} {options} {public_line(keys['ed25519'])} alice")
    signature = sign(MESSAGE, keys["ed25519"])
    openssh = openssh_verify(
        tmp_path, signers, signature, MESSAGE, "-Overify-time=20250101000000Z", principal=principal
    )
    assert (openssh.returncode == 0) == (refusal is None), openssh.stderr
    if refusal is None:
        signer = verify(MESSAGE, signature, allowed_signers=signers, principal=principal, now=WHEN)
        assert signer.principals == (principal,)
    else:
        with pytest.raises(refusal):
            verify(MESSAGE, signature, allowed_signers=signers, principal=principal, now=WHEN)


def test_principals_found_without_asking_for_one(keys: dict[str, Path], tmp_path: Path) -> None:
    key = public_line(keys["ed25519"])
    other = public_line(keys["other"])
    signers = allowed(
        tmp_path, f"!mallory@example.com,*@example.com {key}", f"bob {other}", f"alice {key}"
    )
    signer = verify(MESSAGE, sign(MESSAGE, keys["ed25519"]), allowed_signers=signers)
    assert signer.principals == ("*@example.com", "alice")


@pytest.mark.parametrize(
    ("line", "reason"),
    [
        ("alice", "no public key"),
        ('alice foo="bar" ssh-ed25519 {b64}', "unknown option 'foo=\"bar\"'"),
        ("alice valid-before=20240101 ssh-ed25519 {b64}", "double-quoted"),
        ('alice valid-before="2024" ssh-ed25519 {b64}', "bad valid-before"),
        ('alice valid-before="20241301" ssh-ed25519 {b64}', "bad valid-before"),
        ('alice valid-after="20250101",valid-before="20240101" ssh-ed25519 {b64}', "not after"),
        ('alice namespaces="a",namespaces="b" ssh-ed25519 {b64}', "given twice"),
        ('alice namespaces="a", ssh-ed25519 {b64}', "end with a comma"),
        ('alice namespaces="a ssh-ed25519 {b64}', "unterminated quote"),
        ('"alice ssh-ed25519 {b64}', "unterminated quote"),
        ("alice cert-authority ssh-ed25519 !!!", "keytype base64"),
    ],
)
def test_bad_allowed_signers_lines_name_file_and_line(
    keys: dict[str, Path], tmp_path: Path, line: str, reason: str
) -> None:
    b64 = public_line(keys["ed25519"]).split()[1]
    signers = allowed(tmp_path, "# comment", "", "   ", line.format(b64=b64))
    with pytest.raises(AllowedSignersError, match=f"^{re.escape(str(signers))}:4: .*{reason}"):
        AllowedSigners.load(signers)


def test_allowed_signers_read_every_key_type(keys: dict[str, Path], tmp_path: Path) -> None:
    signers = AllowedSigners.load(
        allowed(tmp_path, *(f"p{i} {public_line(key)}" for i, key in enumerate(keys.values())))
    )
    assert {entry.key_type for entry in signers.entries} == {
        "ssh-ed25519",
        "ssh-rsa",
        "ecdsa-sha2-nistp256",
    }


def test_unreadable_allowed_signers_is_refused(tmp_path: Path) -> None:
    with pytest.raises(AllowedSignersError, match="cannot read"):
        AllowedSigners.load(tmp_path / "missing")
    binary = tmp_path / "binary"
    binary.write_bytes(b"# ok\n\xff\xfe\n")
    with pytest.raises(AllowedSignersError, match=f"{re.escape(str(binary))}:2: not UTF-8"):
        AllowedSigners.load(binary)


# --- the bundle policy -------------------------------------------------------------------------


def test_unsigned_bundle_is_reported_or_refused(keys: dict[str, Path], tmp_path: Path) -> None:
    signers = allowed(tmp_path, f"alice {public_line(keys['ed25519'])}")
    assert check_bundle_signature(MESSAGE, None) is None
    assert check_bundle_signature(MESSAGE, None, allowed_signers=signers) is None
    with pytest.raises(UnsignedBundleError, match=r"snap\.kbundle: the bundle is not signed"):
        check_bundle_signature(
            MESSAGE, None, allowed_signers=signers, require=True, source="snap.kbundle"
        )


def test_requiring_a_signature_needs_allowed_signers() -> None:
    with pytest.raises(AllowedSignersError, match="no allowed_signers"):
        check_bundle_signature(MESSAGE, None, require=True)


def test_bad_signature_is_an_error_even_when_not_required(keys: dict[str, Path]) -> None:
    signature = sign(MESSAGE, keys["ed25519"])
    assert check_bundle_signature(MESSAGE, signature.encode()) is not None
    with pytest.raises(BadSignatureError):
        check_bundle_signature(MESSAGE + b" ", signature)


def test_required_signature_from_a_trusted_signer(keys: dict[str, Path], tmp_path: Path) -> None:
    signers = AllowedSigners.load(allowed(tmp_path, f"alice {public_line(keys['ed25519'])}"))
    signer = check_bundle_signature(
        MESSAGE, sign(MESSAGE, keys["ed25519"]), allowed_signers=signers, require=True
    )
    assert signer is not None and signer.principals == ("alice",)
    with pytest.raises(UnknownSignerError):
        check_bundle_signature(
            MESSAGE, sign(MESSAGE, keys["other"]), allowed_signers=signers, require=True
        )
