"""The age envelope against the real `age`, `age-keygen` and `ssh-keygen` tools (and pyrage, a
second implementation): both directions for every key type, passphrase-protected identities,
each failure's own error, and flat memory."""

from __future__ import annotations

import gc
import io
import os
import tracemalloc
from dataclasses import dataclass
from pathlib import Path

import pytest
from age_tools import age_keygen, age_with_passphrase, run, ssh_keygen

from kindling_bundle.errors import (
    CiphertextError,
    IdentityError,
    NoIdentityError,
    NoMatchingIdentityError,
    RecipientError,
    TruncatedCiphertextError,
)
from kindling_bundle.io.age.header import MAX_HEADER_BYTES, SNIFF_BYTES, is_encrypted, read_header
from kindling_bundle.io.age.identities import Identity, load_identities, parse_identities
from kindling_bundle.io.age.payload import open_decrypting_reader, open_encrypting_writer
from kindling_bundle.io.age.recipients import parse_recipient, read_recipients_file
from kindling_bundle.io.age.spool import SealedSpool

CHUNK = 64 * 1024
SEALED = CHUNK + 16
SSH_PASSPHRASE = "ssh pass phrase"
AGE_PASSPHRASE = "correct horse battery"


@dataclass
class Keys:
    folder: Path
    age_id: Path  # X25519 identity file
    age_pub: str
    other_id: Path  # an identity no test file is encrypted to
    ed: Path  # ssh-ed25519, no passphrase
    ed_pub: str
    rsa: Path  # ssh-rsa, no passphrase
    rsa_pub: str
    protected: dict[str, Path]  # passphrase-protected SSH keys by format
    age_p: Path  # age identity file protected by the real `age -p`


@pytest.fixture(scope="module")
def keys(tmp_path_factory: pytest.TempPathFactory) -> Keys:
    folder = tmp_path_factory.mktemp("keys")
    age_pub = age_keygen(folder / "age.txt")
    age_keygen(folder / "other.txt")
    ed_pub = ssh_keygen(folder / "id_ed25519", "ed25519")
    rsa_pub = ssh_keygen(folder / "id_rsa", "rsa")
    protected = {
        "ed25519": folder / "p_ed25519",
        "rsa": folder / "p_rsa",
        "rsa-pem": folder / "p_rsa_pem",
    }
    ssh_keygen(protected["ed25519"], "ed25519", SSH_PASSPHRASE)
    ssh_keygen(protected["rsa"], "rsa", SSH_PASSPHRASE)
    ssh_keygen(protected["rsa-pem"], "rsa", SSH_PASSPHRASE, "-m", "PEM")
    assert b"Proc-Type: 4,ENCRYPTED" in protected["rsa-pem"].read_bytes()
    age_with_passphrase(folder / "age.txt", folder / "age.txt.age", AGE_PASSPHRASE)
    return Keys(
        folder=folder,
        age_id=folder / "age.txt",
        age_pub=age_pub,
        other_id=folder / "other.txt",
        ed=folder / "id_ed25519",
        ed_pub=ed_pub,
        rsa=folder / "id_rsa",
        rsa_pub=rsa_pub,
        protected=protected,
        age_p=folder / "age.txt.age",
    )


def encrypt(plaintext: bytes, *recipients: str) -> bytes:
    out = io.BytesIO()
    with open_encrypting_writer(out, [parse_recipient(r) for r in recipients]) as writer:
        writer.write(plaintext)
    return out.getvalue()


def decrypt(ciphertext: bytes, identities: list[Identity]) -> bytes:
    with open_decrypting_reader(io.BytesIO(ciphertext), identities, label="test.age") as reader:
        return reader.read()


def secret_of(identity_file: Path) -> str:
    return next(
        line for line in identity_file.read_text().splitlines() if line.startswith("AGE-SECRET")
    )


SIZES = [0, 1, CHUNK - 1, CHUNK, CHUNK + 1, 2 * CHUNK, 200_003]


# --- interop with the age tool ------------------------------------------------------------------


@pytest.mark.parametrize("size", SIZES)
def test_age_decrypts_what_we_encrypt_with_each_key(keys: Keys, tmp_path: Path, size: int) -> None:
    plaintext = os.urandom(size)
    encrypted = tmp_path / "out.age"
    encrypted.write_bytes(encrypt(plaintext, keys.age_pub, keys.ed_pub, keys.rsa_pub))
    for identity in (keys.age_id, keys.ed, keys.rsa):
        proc = run("age", "-d", "-i", identity, encrypted)
        assert proc.returncode == 0, proc.stderr
        assert proc.stdout == plaintext


@pytest.mark.parametrize("size", SIZES)
def test_we_decrypt_what_age_encrypts(keys: Keys, tmp_path: Path, size: int) -> None:
    plaintext = os.urandom(size)
    (tmp_path / "plain").write_bytes(plaintext)
    recipients_file = tmp_path / "recipients.txt"
    recipients_file.write_text(f"# the team\n{keys.age_pub}\n\n{keys.ed_pub}{keys.rsa_pub}")
    cases: dict[str, tuple[list[str | Path], Path]] = {
        "x25519": (["-r", keys.age_pub], keys.age_id),
        "ssh-ed25519": (["-r", keys.ed_pub.strip()], keys.ed),
        "ssh-rsa": (["-R", f"{keys.rsa}.pub"], keys.rsa),
        "recipients file": (["-R", recipients_file], keys.ed),
        "armored": (["-a", "-r", keys.age_pub], keys.age_id),
    }
    for name, (args, identity) in cases.items():
        encrypted = tmp_path / f"{name}.age"
        proc = run("age", *args, "-o", encrypted, tmp_path / "plain")
        assert proc.returncode == 0, proc.stderr
        with encrypted.open("rb") as src:
            reader = open_decrypting_reader(src, load_identities(identity), label=name)
            assert reader.read() == plaintext, name
            assert reader.header.armored == (name == "armored")


def test_recipient_count_from_the_header_without_a_key(keys: Keys, tmp_path: Path) -> None:
    (tmp_path / "plain").write_bytes(b"x")
    encrypted = tmp_path / "three.age"
    args = ["-r", keys.age_pub, "-r", keys.ed_pub.strip(), "-r", keys.rsa_pub.strip()]
    assert run("age", *args, "-o", encrypted, tmp_path / "plain").returncode == 0
    with encrypted.open("rb") as src:
        header = read_header(src, label="three.age")
    assert (header.recipients, header.stanza_types) == (3, ("X25519", "ssh-ed25519", "ssh-rsa"))
    with encrypted.open("rb") as src, pytest.raises(NoIdentityError) as caught:
        open_decrypting_reader(src, [], label="three.age")
    assert caught.value.recipients == 3
    assert str(caught.value) == (
        "three.age: encrypted (age) to 3 recipients, and no identity was given to open it"
    )


def test_passphrase_protected_identity_made_by_age(keys: Keys) -> None:
    assert keys.age_p.read_bytes().startswith(b"age-encryption.org/v1\n-> scrypt ")
    ciphertext = encrypt(b"memory", keys.age_pub)
    prompts: list[str] = []

    def ask(prompt: str) -> str:
        prompts.append(prompt)
        return AGE_PASSPHRASE

    identities = load_identities(keys.age_p, passphrase=ask)
    assert prompts == []  # asked only when a file needs it
    assert decrypt(ciphertext, identities) == b"memory"
    assert decrypt(encrypt(b"again", keys.age_pub), identities) == b"again"
    assert prompts == [f"Passphrase for identity file {keys.age_p}: "]  # once, then kept
    assert AGE_PASSPHRASE not in repr(identities)

    wrong = load_identities(keys.age_p, passphrase=lambda _: "not it")
    with pytest.raises(IdentityError, match="wrong passphrase for the identity file"):
        decrypt(ciphertext, wrong)
    with pytest.raises(IdentityError, match="passphrase-protected, and nothing can ask for it"):
        decrypt(ciphertext, load_identities(keys.age_p))


def test_passphrase_protected_identity_made_by_pyrage(keys: Keys, tmp_path: Path) -> None:
    pyrage = pytest.importorskip("pyrage")
    protected = tmp_path / "key.age"
    text = keys.other_id.read_text()
    protected.write_bytes(pyrage.passphrase.encrypt(text.encode(), "pyrage words"))
    other_pub = run("age-keygen", "-y", keys.other_id).stdout.decode().strip()
    identities = load_identities(protected, passphrase=lambda _: "pyrage words")
    assert decrypt(encrypt(b"to other", other_pub), identities) == b"to other"


@pytest.mark.parametrize("kind", ["ed25519", "rsa", "rsa-pem"])
def test_passphrase_protected_ssh_keys(keys: Keys, tmp_path: Path, kind: str) -> None:
    key = keys.protected[kind]
    (tmp_path / "plain").write_bytes(b"for the ssh key")
    proc = run("age", "-R", f"{key}.pub", "-o", tmp_path / "out.age", tmp_path / "plain")
    assert proc.returncode == 0, proc.stderr
    ciphertext = (tmp_path / "out.age").read_bytes()
    prompts: list[str] = []

    def ask(prompt: str) -> str:
        prompts.append(prompt)
        return SSH_PASSPHRASE

    assert decrypt(ciphertext, load_identities(key, passphrase=ask)) == b"for the ssh key"
    assert prompts == [f"Passphrase for SSH key {key}: "]
    with pytest.raises(IdentityError, match="wrong passphrase for the SSH key"):
        decrypt(ciphertext, load_identities(key, passphrase=lambda _: "guess"))
    with pytest.raises(IdentityError, match="nothing can ask for it"):
        decrypt(ciphertext, load_identities(key))


def test_a_protected_key_asks_only_for_a_file_it_can_open(keys: Keys) -> None:
    asked: list[str] = []

    def ask(prompt: str) -> str:
        asked.append(prompt)
        return SSH_PASSPHRASE

    protected = load_identities(keys.protected["ed25519"], passphrase=ask)
    plain = load_identities(keys.age_id)
    # An X25519 file: the plain identity opens it, tried first, and the SSH key stanza is absent.
    assert decrypt(encrypt(b"a", keys.age_pub), protected + plain) == b"a"
    # An ssh-ed25519 file for another key: its tag is not this key's, so no prompt either.
    with pytest.raises(NoMatchingIdentityError):
        decrypt(encrypt(b"b", keys.ed_pub), protected)
    # An age -p identity file holds X25519 keys only: a file with no X25519 stanza needs none.
    age_p = load_identities(keys.age_p, passphrase=ask)
    with pytest.raises(NoMatchingIdentityError):
        decrypt(encrypt(b"c", keys.ed_pub), age_p)
    assert asked == []
    assert "(passphrase-protected)" in protected[0].description


def test_pyrage_and_we_read_each_other(keys: Keys) -> None:
    pyrage = pytest.importorskip("pyrage")
    plaintext = os.urandom(3 * CHUNK + 5)
    theirs_id = pyrage.x25519.Identity.from_str(secret_of(keys.age_id))
    theirs_ssh = pyrage.ssh.Identity.from_buffer(keys.ed.read_bytes())
    ours = encrypt(plaintext, keys.age_pub, keys.ed_pub)
    assert pyrage.decrypt(ours, [theirs_id]) == plaintext
    assert pyrage.decrypt(ours, [theirs_ssh]) == plaintext
    recipients = [
        pyrage.x25519.Recipient.from_str(keys.age_pub),
        pyrage.ssh.Recipient.from_str(keys.rsa_pub.strip()),
    ]
    theirs = pyrage.encrypt(plaintext, recipients)
    assert decrypt(theirs, load_identities(keys.age_id)) == plaintext
    assert decrypt(theirs, load_identities(keys.rsa)) == plaintext


# --- each failure its own error -----------------------------------------------------------------


def test_ciphertext_differs_every_run_and_the_plaintext_round_trips(keys: Keys) -> None:
    plaintext = os.urandom(CHUNK + 100)
    first, second = encrypt(plaintext, keys.age_pub), encrypt(plaintext, keys.age_pub)
    assert first != second
    assert first[-200:] != second[-200:]  # fresh file key, so the payload differs too
    identities = load_identities(keys.age_id)
    assert decrypt(first, identities) == decrypt(second, identities) == plaintext


def test_wrong_key_and_no_key(keys: Keys) -> None:
    ciphertext = encrypt(b"secret", keys.age_pub, keys.ed_pub)
    with pytest.raises(NoIdentityError) as none:
        decrypt(ciphertext, [])
    assert (none.value.recipients, none.value.stanza_types) == (2, ("X25519", "ssh-ed25519"))
    wrong = load_identities(keys.other_id) + load_identities(keys.rsa)
    with pytest.raises(NoMatchingIdentityError) as caught:
        decrypt(ciphertext, wrong)
    message = str(caught.value)
    assert message.startswith("test.age: none of the identities given opens it")
    assert secret_of(keys.other_id) not in message
    assert not isinstance(caught.value, CiphertextError)


def read_until_error(ciphertext: bytes, identities: list[Identity]) -> tuple[bytes, Exception]:
    """What a reader hands out before it raises: it must raise, never end early."""
    got = bytearray()
    with open_decrypting_reader(io.BytesIO(ciphertext), identities, label="test.age") as reader:
        try:
            while piece := reader.read(10_000):
                got += piece
        except CiphertextError as exc:
            with pytest.raises(type(exc)):  # and it stays broken
                reader.read(1)
            return bytes(got), exc
    raise AssertionError(f"read {len(got)} bytes and then a clean end")


def test_truncated_at_a_chunk_boundary(keys: Keys) -> None:
    plaintext = os.urandom(3 * CHUNK)
    ciphertext = encrypt(plaintext, keys.age_pub)
    got, error = read_until_error(ciphertext[:-SEALED], load_identities(keys.age_id))
    assert type(error) is TruncatedCiphertextError
    assert "ends before its final chunk, after 131,072 bytes of plaintext" in str(error)
    assert plaintext.startswith(got)  # authenticated pieces only, then the error
    assert len(got) > 2 * CHUNK - 10_000


def test_truncated_by_the_age_tool_too(keys: Keys, tmp_path: Path) -> None:
    plaintext = os.urandom(2 * CHUNK + 7)
    (tmp_path / "plain").write_bytes(plaintext)
    assert run("age", "-r", keys.age_pub, "-o", tmp_path / "o", tmp_path / "plain").returncode == 0
    ciphertext = (tmp_path / "o").read_bytes()
    identities = load_identities(keys.age_id)
    _, at_boundary = read_until_error(ciphertext[: -(7 + 16)], identities)
    assert type(at_boundary) is TruncatedCiphertextError
    _, inside = read_until_error(ciphertext[:-3], identities)
    assert type(inside) is CiphertextError  # a cut inside a chunk looks like damage
    assert "altered or damaged, or cut short" in str(inside)


@pytest.mark.parametrize("keep", [10, 60, "header", "nonce-1"])
def test_truncated_before_the_payload(keys: Keys, keep: int | str) -> None:
    ciphertext = encrypt(b"x" * 100, keys.age_pub)
    header_end = ciphertext.index(b"\n", ciphertext.index(b"\n---")) + 1
    cut = (
        keep if isinstance(keep, int) else {"header": header_end, "nonce-1": header_end + 15}[keep]
    )
    with pytest.raises(TruncatedCiphertextError):
        decrypt(ciphertext[:cut], load_identities(keys.age_id))


def test_tampered_payload_header_and_trailing_data(keys: Keys) -> None:
    plaintext = os.urandom(2 * CHUNK + 1)
    ciphertext = bytearray(encrypt(plaintext, keys.age_pub))
    identities = load_identities(keys.age_id)
    for where in (-1, -SEALED // 2, -(SEALED + 20)):
        tampered = bytearray(ciphertext)
        tampered[where] ^= 0x01
        _, error = read_until_error(bytes(tampered), identities)
        assert type(error) is CiphertextError
    mac_line = ciphertext.index(b"\n---") + 5
    tampered = bytearray(ciphertext)
    tampered[mac_line] = ord("A") if tampered[mac_line] != ord("A") else ord("B")
    with pytest.raises(CiphertextError, match="header was altered"):
        decrypt(bytes(tampered), identities)
    _, error = read_until_error(bytes(ciphertext) + b"\0", identities)
    assert type(error) is CiphertextError  # the short final chunk no longer authenticates
    full = encrypt(plaintext[: 2 * CHUNK], keys.age_pub)  # a full-size final chunk
    _, error = read_until_error(full + b"\0", identities)
    assert "data after the final chunk" in str(error)


def test_writer_left_by_an_exception_or_unclosed_is_not_a_shorter_plaintext(keys: Keys) -> None:
    identities = load_identities(keys.age_id)
    out = io.BytesIO()
    with (
        pytest.raises(RuntimeError),
        open_encrypting_writer(out, [parse_recipient(keys.age_pub)]) as w,
    ):
        w.write(b"a" * (CHUNK + 10))
        raise RuntimeError("export failed")
    _, error = read_until_error(out.getvalue(), identities)
    assert type(error) is TruncatedCiphertextError

    out = io.BytesIO()
    writer = open_encrypting_writer(out, [parse_recipient(keys.age_pub)])
    writer.write(b"b" * 10)
    del writer
    gc.collect()
    with pytest.raises(TruncatedCiphertextError):
        decrypt(out.getvalue(), identities)


# --- detection and hostile headers --------------------------------------------------------------


def test_is_encrypted(keys: Keys, tmp_path: Path) -> None:
    binary = encrypt(b"x", keys.age_pub)
    (tmp_path / "plain").write_bytes(b"x")
    run("age", "-a", "-r", keys.age_pub, "-o", tmp_path / "a.age", tmp_path / "plain")
    armored = (tmp_path / "a.age").read_bytes()
    assert is_encrypted(binary[:SNIFF_BYTES])
    assert is_encrypted(armored[:SNIFF_BYTES])
    assert is_encrypted(b"\n  \r\n" + armored)
    assert not is_encrypted(b"\x28\xb5\x2f\xfd" + bytes(40))  # a zstd frame: a plain bundle
    assert not is_encrypted(b'{"kindling": 1}')
    assert not is_encrypted(b"SQLite format 3\0")


def test_garbage_and_oversized_headers_are_refused_without_reading_on(keys: Keys) -> None:
    identities = load_identities(keys.age_id)
    with pytest.raises(CiphertextError, match=r"not an age-encryption\.org/v1 file"):
        decrypt(b"\x28\xb5\x2f\xfd" + os.urandom(1000), identities)

    class Endless(io.RawIOBase):
        """An age intro, then stanzas for ever: counts what was taken."""

        def __init__(self, line: bytes):
            self.taken = 0
            self.line = line

        def readable(self) -> bool:
            return True

        def readinto(self, buffer: bytearray | memoryview) -> int:  # type: ignore[override]
            data = b"age-encryption.org/v1\n" if self.taken == 0 else self.line * 64
            data = data[: len(buffer)]
            buffer[: len(data)] = data
            self.taken += len(data)
            return len(data)

    stanzas = Endless(b"-> X25519 " + b"A" * 43 + b"\n" + b"g" * 42 + b"\n")
    with pytest.raises(CiphertextError, match="refused"):
        open_decrypting_reader(io.BufferedReader(stanzas), identities)
    assert stanzas.taken < MAX_HEADER_BYTES + 64 * 1024
    one_line = Endless(b"C" * 1000)
    with pytest.raises(CiphertextError, match="longer than 8192 bytes"):
        read_header(io.BufferedReader(one_line))
    assert one_line.taken < 64 * 1024

    malformed = [
        b"age-encryption.org/v1\n-> X25519\n--- AAAA\n",  # stanza body missing, bad MAC
        b"age-encryption.org/v1\n->  X25519 a\nAAAA\n--- " + b"A" * 43 + b"\n",  # empty arg
        b"age-encryption.org/v1\n-> X25519 a\nA===\n--- " + b"A" * 43 + b"\n",  # padded
        b"age-encryption.org/v2\n",
    ]
    for text in malformed:
        with pytest.raises(CiphertextError):
            read_header(io.BytesIO(text))


def test_armored_with_crlf_and_blank_lines_and_cut_short(keys: Keys, tmp_path: Path) -> None:
    plaintext = os.urandom(CHUNK + 50)
    (tmp_path / "plain").write_bytes(plaintext)
    assert (
        run("age", "-a", "-r", keys.age_pub, "-o", tmp_path / "a", tmp_path / "plain").returncode
        == 0
    )
    armored = (tmp_path / "a").read_bytes()
    identities = load_identities(keys.age_id)
    windows = b"\r\n\r\n" + armored.replace(b"\n", b"\r\n") + b"\r\n"
    assert decrypt(windows, identities) == plaintext
    for cut in (len(armored) // 2, armored.index(b"\n") + 3, len(armored) - 5):
        with pytest.raises(TruncatedCiphertextError):
            decrypt(armored[:cut], identities)
    with pytest.raises(CiphertextError, match="data after the END line"):
        decrypt(armored + b"more\n", identities)


# --- recipients and identity files --------------------------------------------------------------


def test_recipients_file_like_github_keys(keys: Keys, tmp_path: Path) -> None:
    ecdsa = ssh_keygen(tmp_path / "ecdsa", "ecdsa")
    path = tmp_path / "user.keys"
    lines = ["# keys", keys.ed_pub.strip(), "", ecdsa.strip(), keys.rsa_pub.strip(), keys.age_pub]
    path.write_bytes("\r\n".join(lines).encode())  # CRLF, as a download may have it
    notes: list[str] = []
    recipients = read_recipients_file(path, on_skip=notes.append)
    assert [str(r).split()[0] for r in recipients] == ["ssh-ed25519", "ssh-rsa", keys.age_pub]
    assert notes == [
        f"{path}, line 4: skipped an SSH key of type ecdsa-sha2-nistp256 (not a recipient type)"
    ]
    out = io.BytesIO()
    with open_encrypting_writer(out, recipients) as writer:
        writer.write(b"team")
    for identity in (keys.ed, keys.rsa, keys.age_id):
        assert decrypt(out.getvalue(), load_identities(identity)) == b"team"


def test_bad_recipients_name_the_line_and_never_echo_it(keys: Keys, tmp_path: Path) -> None:
    secret = secret_of(keys.age_id)
    path = tmp_path / "r.txt"
    path.write_text(f"{keys.age_pub}\n# ok\n{secret}\n")
    with pytest.raises(RecipientError) as caught:
        read_recipients_file(path)
    assert str(caught.value) == (
        f"{path}, line 3: this is a secret key (an identity), not a recipient: give its public key"
    )
    path.write_text(f"{keys.age_pub}\nhunter2 is my password\n")
    with pytest.raises(RecipientError, match=r"line 2: not a recipient") as caught:
        read_recipients_file(path)
    assert "hunter2" not in str(caught.value)
    path.write_text("# nothing\n\n")
    with pytest.raises(RecipientError, match="no recipients in it"):
        read_recipients_file(path)
    path.write_bytes(keys.age_pub.encode() + b"\n\xff\n")
    with pytest.raises(RecipientError) as caught:
        read_recipients_file(path)
    assert str(caught.value) == f"{path}: not a recipients file (not UTF-8 text)"
    with pytest.raises(RecipientError, match="cannot read"):
        read_recipients_file(tmp_path / "missing")
    broken = keys.age_pub[:-1] + ("q" if keys.age_pub[-1] != "q" else "p")
    bad = {
        broken: "checksum",
        "age1yubikey1qwerty": "plugins",
        secret: "secret key",
        ssh_keygen(tmp_path / "small", "rsa", "", "-b", "1024"): "1024 bits",
    }
    for text, expected in bad.items():
        with pytest.raises(RecipientError, match=expected) as caught:
            parse_recipient(text, source="--recipient")
        assert str(caught.value).startswith("--recipient: ")
        assert secret not in str(caught.value)
    with pytest.raises(RecipientError, match="no recipients given"):
        open_encrypting_writer(io.BytesIO(), [])


def test_recipients_and_identities_from_standard_input(
    keys: Keys, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr("sys.stdin", io.TextIOWrapper(io.BytesIO(keys.ed_pub.encode())))
    (recipient,) = read_recipients_file("-")
    monkeypatch.setattr("sys.stdin", io.TextIOWrapper(io.BytesIO(keys.ed.read_bytes())))
    identities = load_identities("-")
    out = io.BytesIO()
    with open_encrypting_writer(out, [recipient]) as writer:
        writer.write(b"piped")
    assert decrypt(out.getvalue(), identities) == b"piped"
    monkeypatch.setattr("sys.stdin", io.TextIOWrapper(io.BytesIO(b"")))
    with pytest.raises(IdentityError, match=r"^standard input: no identities in it$"):
        load_identities("-")


def test_identity_files_several_keys_comments_and_mistakes(keys: Keys, tmp_path: Path) -> None:
    both = tmp_path / "both.txt"
    both.write_text(keys.other_id.read_text() + "\n# second\n" + keys.age_id.read_text())
    identities = load_identities(both)
    assert len(identities) == 2
    assert decrypt(encrypt(b"2nd", keys.age_pub), identities) == b"2nd"
    for identity in identities:  # public key only
        assert identity.description.startswith("age1")
        assert "AGE-SECRET" not in repr(identity)

    mixed = tmp_path / "mixed.txt"
    mixed.write_text(f"{secret_of(keys.age_id)}\n{keys.age_pub}\n")
    with pytest.raises(IdentityError) as caught:
        load_identities(mixed)
    assert str(caught.value) == f"{mixed}, line 2: a recipient (public key), not an identity"
    mixed.write_text(f"# c\n{secret_of(keys.age_id)[:-2]}xx\n")
    with pytest.raises(IdentityError, match="line 2: malformed AGE-SECRET-KEY-1") as caught:
        load_identities(mixed)
    assert secret_of(keys.age_id)[20:40] not in str(caught.value)
    with pytest.raises(IdentityError, match="no identities in it"):
        parse_identities(b"# empty\n", source="KINDLING_BUNDLE_IDENTITY")
    mixed.write_bytes(secret_of(keys.age_id).encode() + b"\n\xff\n")
    with pytest.raises(IdentityError) as caught:
        load_identities(mixed)
    assert str(caught.value) == f"{mixed}: not an identity file (not UTF-8 text)"
    ssh = load_identities(keys.ed)[0]
    fingerprint = run("ssh-keygen", "-l", "-f", f"{keys.ed}.pub").stdout.split()[1].decode()
    assert ssh.description == f"ssh-ed25519 {fingerprint}"


# --- streaming, memory, sealed spools -----------------------------------------------------------


def stream_through(recipient: str, identities: list[Identity], total: int, folder: Path) -> int:
    """Encrypt `total` bytes to a file and decrypt them back, 1 MiB at a time: tracemalloc peak."""
    block = os.urandom(1 << 20)
    tracemalloc.start()
    try:
        with (folder / "big.age").open("wb") as out:
            writer = open_encrypting_writer(out, [parse_recipient(recipient)])
            for _ in range(total >> 20):
                writer.write(block)
            writer.close()
        seen = 0
        with (folder / "big.age").open("rb") as src:
            reader = open_decrypting_reader(src, identities)
            while piece := reader.read(1 << 20):
                assert piece == block
                seen += len(piece)
        assert seen == total
        return tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
        (folder / "big.age").unlink()


def test_memory_stays_flat_through_200_mb(keys: Keys, tmp_path: Path) -> None:
    identities = load_identities(keys.age_id)
    small = stream_through(keys.age_pub, identities, 20 << 20, tmp_path)
    large = stream_through(keys.age_pub, identities, 200 << 20, tmp_path)
    assert large < 4 << 20
    assert large < small + (512 << 10)


def raw_bytes(spool: SealedSpool) -> bytes:
    fd = spool._file.fileno()
    return os.pread(fd, os.fstat(fd).st_size, 0)


def test_sealed_spool_keeps_no_plaintext_on_disk(tmp_path: Path) -> None:
    record = b"observation: the deploy key is ghp_0123456789abcdef0123456789abcdef0123 " * 50
    with SealedSpool(tmp_path) as spool:
        for _ in range(400):  # ~1.4 MB, with a partial last chunk
            spool.write(record)
        spool.flush()
        on_disk = raw_bytes(spool)
        assert len(on_disk) > 1_000_000
        assert b"ghp_0123" not in on_disk and b"observation" not in on_disk
        assert spool.read() == record * 400
        assert b"ghp_0123" not in raw_bytes(spool)
        with pytest.raises(io.UnsupportedOperation):
            spool.write(b"more")
    assert os.listdir(tmp_path) == []  # anonymous, and gone


def test_sealed_spool_seeks_like_the_writer_reads_pieces(tmp_path: Path) -> None:
    data = os.urandom(5 * CHUNK + 123)
    with SealedSpool(tmp_path) as spool:
        spool.write(data[:1000])
        spool.write(memoryview(data)[1000:])
        assert spool.tell() == len(data)
        assert spool.seek(CHUNK + 5) == CHUNK + 5
        assert spool.read(10) == data[CHUNK + 5 : CHUNK + 15]
        assert spool.seek(3 * CHUNK) == 3 * CHUNK  # forward: decrypts and skips
        assert spool.read(CHUNK) == data[3 * CHUNK : 4 * CHUNK]
        assert spool.seek(7) == 7  # back: starts again
        assert spool.read() == data[7:]
        assert spool.read() == b""
    with SealedSpool(tmp_path) as empty:
        assert empty.read() == b""


def test_sealed_spool_written_by_a_forked_child(tmp_path: Path) -> None:
    data = os.urandom(3 * CHUNK + 9)
    with SealedSpool(tmp_path) as spool:
        pid = os.fork()
        if pid == 0:
            try:
                spool.write(data)
                spool.finish()
            finally:
                os._exit(0)
        os.waitpid(pid, 0)
        assert spool.read() == data


def test_sealed_spool_read_by_a_forked_child_while_the_parent_wrote(tmp_path: Path) -> None:
    data = os.urandom(3 * CHUNK + 9)
    with SealedSpool(tmp_path) as spool:
        spool.write(data[:100])  # in the child's copy too, as a pending partial chunk
        ready_r, ready_w = os.pipe()
        result_r, result_w = os.pipe()
        pid = os.fork()
        if pid == 0:
            try:
                os.read(ready_r, 1)
                seen = spool.written_elsewhere().read()
                os.write(result_w, b"ok" if seen == data else b"no")
            finally:
                os._exit(0)
        spool.write(data[100:])
        spool.finish()
        os.write(ready_w, b"!")
        assert os.read(result_r, 2) == b"ok"
        os.waitpid(pid, 0)
        assert spool.read() == data  # the child wrote nothing into the file
        for fd in (ready_r, ready_w, result_r, result_w):
            os.close(fd)


def test_sealed_spool_without_ocb3_falls_back_to_gcm(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from cryptography.exceptions import UnsupportedAlgorithm
    from cryptography.hazmat.primitives.ciphers.aead import AESOCB3

    import kindling_bundle.io.age.spool as sealed_spool

    class NoOcb3:  # as under LibreSSL
        generate_key = staticmethod(AESOCB3.generate_key)

        def __init__(self, key: bytes):
            raise UnsupportedAlgorithm("OCB3 is not available")

    monkeypatch.setattr(sealed_spool, "AESOCB3", NoOcb3)
    data = os.urandom(CHUNK + 1)
    with SealedSpool(tmp_path) as spool:
        spool.write(data)
        assert spool.read() == data
        assert len(raw_bytes(spool)) == len(data) + 2 * 16
        assert data[:100] not in raw_bytes(spool)


def test_a_passphrase_encrypted_file_is_named_as_such(keys: Keys, tmp_path: Path) -> None:
    (tmp_path / "plain").write_bytes(b"x")
    age_with_passphrase(tmp_path / "plain", tmp_path / "p.age", "open sesame 42")
    with pytest.raises(NoMatchingIdentityError, match=r"encrypted with a passphrase \(age -p\)"):
        decrypt((tmp_path / "p.age").read_bytes(), load_identities(keys.age_id))
