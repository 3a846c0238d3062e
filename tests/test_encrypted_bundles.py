"""Encrypted bundles end to end (issue 18): the command line and the library against the real
`age` tool, every failure refused with the database as it was, and no plaintext record bytes in
any file while encrypting, or while importing or converting encrypted input."""

from __future__ import annotations

import io
import json
import os
import sqlite3
import subprocess
import sys
import threading
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest
from age_tools import age_keygen, age_with_passphrase, on_terminal, run, ssh_keygen

from conftest import cli_executable, dump_contents, dump_tables, one_error_line
from kindling_bundle import (
    BundleOptions,
    CiphertextError,
    NoIdentityError,
    NoMatchingIdentityError,
    ReadOptions,
    export_kindling_json,
    generate_sample,
    import_bundle,
    import_kindling_json,
    kindling_json_to_bundle,
    load_identities,
    open_bundle,
    open_store,
    parse_recipient,
    read_manifest,
    verify_bundle,
    verify_kindling_json,
    write_bundle,
)
from kindling_bundle.format.zstd_frames import ZSTD_MAGIC
from kindling_bundle.io.age.identities import X25519Identity
from kindling_bundle.io.age.payload import open_encrypting_writer
from kindling_bundle.io.sniff import open_input

STAMP = ("--created-at", "1700000000000")
AGE_PASSPHRASE = "correct horse battery"
SSH_PASSPHRASE = "ssh pass phrase"
SEALED_CHUNK = 64 * 1024 + 16
INTRO = b"age-encryption.org/v1\n"


@dataclass
class Keys:
    age_id: Path
    age_pub: str
    other_id: Path  # opens nothing these tests encrypt
    ed: Path  # ssh-ed25519, no passphrase
    ed_pub: Path
    protected_ed: Path  # ssh-ed25519 behind a passphrase
    age_p: Path  # age_id, protected by the real `age -p`


@pytest.fixture(scope="module")
def keys(tmp_path_factory: pytest.TempPathFactory) -> Keys:
    folder = tmp_path_factory.mktemp("keys")
    age_pub = age_keygen(folder / "age.txt")
    age_keygen(folder / "other.txt")
    ssh_keygen(folder / "id_ed25519", "ed25519")
    ssh_keygen(folder / "p_ed25519", "ed25519", SSH_PASSPHRASE)
    age_with_passphrase(folder / "age.txt", folder / "age.txt.age", AGE_PASSPHRASE)
    return Keys(
        age_id=folder / "age.txt",
        age_pub=age_pub,
        other_id=folder / "other.txt",
        ed=folder / "id_ed25519",
        ed_pub=folder / "id_ed25519.pub",
        protected_ed=folder / "p_ed25519",
        age_p=folder / "age.txt.age",
    )


@pytest.fixture(scope="module")
def plain(sample_db: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The sample database's bundle, unencrypted, at a fixed creation time."""
    path = tmp_path_factory.mktemp("plain") / "plain.kbundle"
    done = subprocess.run(
        [cli_executable(), "export", "--db", sample_db, *STAMP, path, "--quiet"],
        capture_output=True,
    )
    assert done.returncode == 0, done.stderr
    assert len(path.read_bytes()) > 2 * SEALED_CHUNK  # so that it spans several chunks
    return path


@pytest.fixture(scope="module")
def restored_plain(plain: Path, tmp_path_factory: pytest.TempPathFactory) -> dict:
    """The tables a plain import of the sample bundle gives."""
    path = tmp_path_factory.mktemp("restored") / "plain.db"
    with open_store(path) as conn:
        import_bundle(conn, plain)
    return restored(path)


@pytest.fixture(scope="module")
def encrypted(plain: Path, keys: Keys, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The plain bundle, encrypted by `age` to the X25519 key and the ssh-ed25519 key."""
    path = tmp_path_factory.mktemp("encrypted") / "encrypted.kbundle"
    done = run("age", "-r", keys.age_pub, "-R", keys.ed_pub, "-o", path, plain)
    assert done.returncode == 0, done.stderr
    return path


def restored(path: Path) -> dict:
    """Every row of a restored database, less the migrations' applied_at (its creation time), with
    each full-text index compared by what it holds: the plain import goes into an open store (the
    path for a database in use), the CLI's into a new file (rebuilt in one pass)."""
    tables = dump_contents(path)
    tables["schema_migrations"] = [row[:-1] for row in tables["schema_migrations"]]
    return tables


def identity(path: Path) -> ReadOptions:
    return ReadOptions(identities=load_identities(path))


# --- interoperability with the age tool ---------------------------------------------------------


def test_age_decrypts_our_export_to_a_bundle_verify_accepts(
    keys: Keys, sample_db: Path, plain: Path, tmp_path: Path, run_cli
) -> None:
    first, second = tmp_path / "first.kbundle", tmp_path / "second.kbundle"
    for out in (first, second):
        args = ("-r", keys.age_pub, "-R", keys.ed_pub, *STAMP, out)
        done = run_cli("export", "--db", sample_db, *args)
        assert done.returncode == 0, done.stderr
        assert "encrypted (age) to 2 recipients" in done.stdout.decode()
    ciphertext = first.read_bytes()
    assert ciphertext.startswith(INTRO) and not ciphertext.startswith(ZSTD_MAGIC)
    assert ciphertext != second.read_bytes()  # a fresh file key every run

    for key in (keys.age_id, keys.ed):
        for out in (first, second):  # the plaintext is the same bundle, byte for byte
            decrypted = run("age", "-d", "-i", key, out)
            assert decrypted.returncode == 0, decrypted.stderr
            assert decrypted.stdout == plain.read_bytes()
    (tmp_path / "decrypted.kbundle").write_bytes(run("age", "-d", "-i", keys.ed, first).stdout)
    done = run_cli("verify", tmp_path / "decrypted.kbundle")
    assert done.returncode == 0, done.stderr
    done = run_cli("verify", "-i", keys.age_id, first)
    assert done.returncode == 0, done.stderr
    assert done.stdout.decode().startswith(f"{first}: valid (")


@pytest.mark.parametrize("how", ["-r X25519", "-R ssh-ed25519", "-a armored"])
def test_bundles_encrypted_by_age_import_with_an_identity(
    how: str, keys: Keys, plain: Path, restored_plain: dict, tmp_path: Path, run_cli
) -> None:
    encrypted = tmp_path / "by-age.kbundle"
    recipient = {
        "-r X25519": ("-r", keys.age_pub),
        "-R ssh-ed25519": ("-R", keys.ed_pub),
        "-a armored": ("-a", "-r", keys.age_pub),
    }[how]
    key = keys.ed if how == "-R ssh-ed25519" else keys.age_id
    assert run("age", *recipient, "-o", encrypted, plain).returncode == 0
    target = tmp_path / "target.db"
    done = run_cli("import", "--db", target, "--identity", key, encrypted)
    assert done.returncode == 0, done.stderr
    assert restored(target) == restored_plain


def test_an_identity_protected_by_age_p_is_asked_for_on_the_terminal(
    keys: Keys, encrypted: Path, plain: Path, restored_plain: dict, tmp_path: Path, run_cli
) -> None:
    target = tmp_path / "target.db"
    argv = [cli_executable(), "import", "--db", target, "-i", keys.age_p, encrypted]
    code, said, typed = on_terminal(argv, AGE_PASSPHRASE, (b"Passphrase for identity file",))
    assert code == 0, said
    assert typed == 1
    assert restored(target) == restored_plain

    # A protected SSH key too; the wrong passphrase is one line.
    to_ssh = tmp_path / "to-ssh.kbundle"
    assert run("age", "-R", f"{keys.protected_ed}.pub", "-o", to_ssh, plain).returncode == 0
    argv = [cli_executable(), "verify", "-i", keys.protected_ed, to_ssh]
    prompt = (b"Passphrase for SSH key",)
    code, said, typed = on_terminal(argv, "not it", prompt)
    assert code == 1 and typed == 1
    assert b"wrong passphrase for the SSH key" in said and b"Traceback" not in said
    code, said, typed = on_terminal(argv, SSH_PASSPHRASE, prompt)
    assert code == 0 and typed == 1, said

    # With no terminal to ask on (cron, CI), a clear line, and no database appears.
    fresh = tmp_path / "fresh.db"
    done = run_cli("import", "--db", fresh, "-i", keys.age_p, encrypted, start_new_session=True)
    assert "passphrase-protected" in one_error_line(done)
    assert not fresh.exists()


def test_identity_from_the_environment_as_a_path_or_the_key_itself(
    keys: Keys, encrypted: Path, run_cli
) -> None:
    for value in (str(keys.age_id), keys.age_id.read_text(), keys.ed.read_text()):
        env = {**os.environ, "KINDLING_BUNDLE_IDENTITY": value}
        done = run_cli("verify", encrypted, env=env)
        assert done.returncode == 0, done.stderr
    # A broken value is refused without being echoed: it may be a key.
    secret = "AGE-SECRET-KEY-1QQQQQQQQQQQQQQQQQQQQQQQQQQQQQQQQQQQQQQQQQQQQQQQQQQQQQQQQQQQQ"
    for value in (secret, "/no/such/key/file"):
        env = {**os.environ, "KINDLING_BUNDLE_IDENTITY": value}
        line = one_error_line(run_cli("verify", encrypted, env=env))
        assert "$KINDLING_BUNDLE_IDENTITY" in line and value not in line
    # --identity wins over the environment.
    env = {**os.environ, "KINDLING_BUNDLE_IDENTITY": "/no/such/key/file"}
    assert run_cli("verify", "-i", keys.ed, encrypted, env=env).returncode == 0


# --- what the header shows without a key --------------------------------------------------------


def test_inspect_without_an_identity_says_to_whom_it_is_encrypted(
    keys: Keys, encrypted: Path, run_cli
) -> None:
    done = run_cli("inspect", encrypted)
    assert "give --identity FILE" in one_error_line(done)
    assert "encrypted: age, to 2 recipients (X25519, ssh-ed25519)" in done.stdout.decode()
    assert "observations" not in done.stdout.decode()

    done = run_cli("inspect", "--json", encrypted)
    assert done.returncode == 1
    shown = json.loads(done.stdout)
    assert shown["encrypted"] == {"recipients": 2, "stanza_types": ["X25519", "ssh-ed25519"]}
    assert shown["manifest"] is None

    done = run_cli("inspect", "-i", keys.ed, encrypted)
    assert done.returncode == 0, done.stderr
    assert "encrypted: age, to 2 recipients" in done.stdout.decode()
    assert "observations" in done.stdout.decode()


def test_signed_and_encrypted_the_signer_shows_only_to_a_key_holder(
    keys: Keys, sample_db: Path, tmp_path: Path, run_cli
) -> None:
    # Signed inside, encrypted outside: the signature member is in the plaintext bundle.
    out = tmp_path / "signed-secret.kbundle"
    done = run_cli("export", "--db", sample_db, "--sign-key", keys.ed, "-r", keys.age_pub, out)
    assert done.returncode == 0, done.stderr
    assert out.read_bytes().startswith(INTRO)
    fingerprint = run("ssh-keygen", "-l", "-f", keys.ed_pub).stdout.split()[1].decode()
    signers = tmp_path / "allowed_signers"
    signers.write_text("alice " + " ".join(keys.ed_pub.read_text().split()[:2]) + "\n")

    done = run_cli("verify", "-i", keys.age_id, "--allowed-signers", signers, out)
    assert done.returncode == 0, done.stderr
    said = done.stdout.decode()
    assert f"signature: good, signed by alice (ED25519 key {fingerprint})" in said
    decrypted = tmp_path / "decrypted.kbundle"
    decrypted.write_bytes(run("age", "-d", "-i", keys.age_id, out).stdout)
    assert read_manifest(decrypted).format_version == "1.1"  # signed, under the envelope

    # Without a key: that it is encrypted, and to whom; nothing of the signer.
    done = run_cli("inspect", out)
    assert done.returncode == 1
    shown = done.stdout.decode() + done.stderr.decode()
    assert "encrypted: age, to 1 recipient (X25519)" in shown
    assert "signature" not in shown and "alice" not in shown and fingerprint not in shown
    done = run_cli("inspect", "--json", out)
    assert "signature" not in json.loads(done.stdout)

    # Required, the signature inside is checked: an import by a key holder names the signer,
    # and a signer the allowed_signers file does not list is refused with nothing imported.
    required = ("--require-signature", "--allowed-signers")
    target = tmp_path / "target.db"
    done = run_cli("import", "--db", target, "-i", keys.age_id, *required, signers, out)
    assert done.returncode == 0, done.stderr
    assert "signed by alice" in done.stdout.decode()
    others = tmp_path / "others"
    others.write_text("bob " + " ".join(Path(f"{keys.protected_ed}.pub").read_text().split()[:2]))
    fresh = tmp_path / "fresh.db"
    done = run_cli("import", "--db", fresh, "-i", keys.age_id, *required, others, out)
    assert "is not allowed to sign" in one_error_line(done)
    assert not fresh.exists()


# --- failures lose nothing ----------------------------------------------------------------------


def payload_start(ciphertext: bytes) -> int:
    """Where the first chunk starts: after the header's closing line and the 16-byte nonce."""
    mac_line = ciphertext.index(b"\n---") + 1
    return ciphertext.index(b"\n", mac_line) + 1 + 16


def flip(data: bytes, at: int) -> bytes:
    return data[:at] + bytes([data[at] ^ 1]) + data[at + 1 :]


DAMAGE: dict[str, Callable[[bytes], bytes]] = {
    "cut after the header": lambda c: c[: payload_start(c)],
    "cut at a chunk boundary": lambda c: c[: payload_start(c) + SEALED_CHUNK],
    "cut inside the last chunk": lambda c: c[:-100],
    "the last byte altered": lambda c: flip(c, len(c) - 1),
    "a byte of the first chunk altered": lambda c: flip(c, payload_start(c) + 1000),
    "the header's MAC altered": lambda c: flip(c, c.index(b"\n--- ") + 6),
    "data appended": lambda c: c + b"\0",
}


@pytest.mark.parametrize("damage", list(DAMAGE))
def test_a_damaged_encrypted_bundle_is_refused_and_the_database_kept(
    damage: str,
    keys: Keys,
    encrypted: Path,
    sample_copy: Path,
    tmp_path: Path,
    run_cli,
) -> None:
    bad = tmp_path / "bad.kbundle"
    bad.write_bytes(DAMAGE[damage](encrypted.read_bytes()))

    before = dump_tables(sample_copy)
    for args in (["--conflict", "overwrite"], ["--dry-run"]):
        line = one_error_line(run_cli("import", "--db", sample_copy, "-i", keys.age_id, *args, bad))
        assert str(bad) in line
        assert dump_tables(sample_copy) == before
    fresh = tmp_path / "fresh.db"
    one_error_line(run_cli("import", "--db", fresh, "-i", keys.age_id, bad))
    assert not fresh.exists()
    done = run_cli("verify", "-i", keys.age_id, bad)
    assert done.returncode == 1 and "Traceback" not in done.stderr.decode()

    with pytest.raises(CiphertextError), open_store(sample_copy) as conn:
        import_bundle(conn, bad, options=identity(keys.age_id))
    assert dump_tables(sample_copy) == before
    report = verify_bundle(bad, options=identity(keys.age_id))
    assert not report.ok


class DamagedAfterTheEnd(io.RawIOBase):
    """A decrypted stream whose every byte is the whole bundle, but whose end does not
    authenticate: as a DecryptingReader reads when the final chunk holds only the zstd frame's
    last bytes and was altered. The tar end marker is then not the end of the stream."""

    def __init__(self, bundle: bytes):
        self._data = io.BytesIO(bundle)
        self.name = "cut.kbundle"

    def readable(self) -> bool:
        return True

    def readinto(self, buffer) -> int:  # type: ignore[no-untyped-def]
        data = self._data.read(len(buffer))
        if not data:
            raise CiphertextError("cut.kbundle: the final chunk does not authenticate")
        buffer[: len(data)] = data
        return len(data)


def test_nothing_is_committed_before_the_stream_has_authenticated(
    plain: Path, sample_copy: Path
) -> None:
    before = dump_tables(sample_copy)
    with pytest.raises(CiphertextError), open_store(sample_copy) as conn:
        import_bundle(conn, DamagedAfterTheEnd(plain.read_bytes()), conflict="overwrite")
    assert dump_tables(sample_copy) == before
    report = verify_bundle(DamagedAfterTheEnd(plain.read_bytes()))
    assert report.messages == ["cut.kbundle: the final chunk does not authenticate"]
    with open_bundle(DamagedAfterTheEnd(plain.read_bytes())) as reader:
        records = reader.records()
        with pytest.raises(CiphertextError):
            for _ in records:
                pass


def test_a_wrong_or_missing_key_is_one_line_and_leaves_nothing(
    keys: Keys, encrypted: Path, plain: Path, tmp_path: Path, run_cli
) -> None:
    for key, said in (([], "no identity was given"), (["-i", keys.other_id], "none of the")):
        fresh, json_out = tmp_path / "fresh.db", tmp_path / "out.json"
        merged = tmp_path / "merged.kbundle"
        assert said in one_error_line(run_cli("import", "--db", fresh, *key, encrypted))
        assert said in one_error_line(run_cli("convert", *key, encrypted, json_out))
        assert said in one_error_line(run_cli("verify", *key, encrypted))
        assert said in one_error_line(run_cli("diff", *key, encrypted, plain))
        assert said in one_error_line(run_cli("merge", *key, encrypted, plain, merged))
        assert not fresh.exists() and not json_out.exists() and not merged.exists()

    with pytest.raises(NoIdentityError) as missing:
        read_manifest(encrypted)
    assert missing.value.recipients == 2
    with pytest.raises(NoMatchingIdentityError):
        verify_bundle(encrypted, options=identity(keys.other_id))


# --- streams and buckets ------------------------------------------------------------------------


def test_encrypted_export_and_import_through_pipes(
    keys: Keys, sample_db: Path, plain: Path, restored_plain: dict, tmp_path: Path
) -> None:
    cli = cli_executable()
    export = subprocess.Popen(
        [cli, "export", "--db", sample_db, *STAMP, "-r", keys.age_pub, "-", "--quiet"],
        stdout=subprocess.PIPE,
    )
    target = tmp_path / "target.db"
    done = subprocess.run(
        [cli, "import", "--db", target, "-i", keys.age_id, "-"],
        stdin=export.stdout,
        capture_output=True,
    )
    assert export.wait() == 0 and done.returncode == 0, done.stderr
    assert restored(target) == restored_plain

    export = subprocess.Popen(
        [cli, "export", "--db", sample_db, *STAMP, "-R", keys.ed_pub, "-", "--quiet"],
        stdout=subprocess.PIPE,
    )
    decrypted = subprocess.run(
        ["age", "-d", "-i", keys.ed], stdin=export.stdout, capture_output=True
    )
    assert export.wait() == 0 and decrypted.stdout == plain.read_bytes()


def test_kindling_json_encrypted_and_read_back(
    keys: Keys, sample_db: Path, restored_plain: dict, tmp_path: Path, run_cli
) -> None:
    encrypted_json = tmp_path / "export.json.age"
    args = ("--format", "kindling-json", "-r", keys.age_pub, encrypted_json)
    assert run_cli("export", "--db", sample_db, *args).returncode == 0
    decrypted = run("age", "-d", "-i", keys.age_id, encrypted_json).stdout
    assert decrypted.startswith(b'{"bundleVersion"')

    assert run_cli("verify", "-i", keys.age_id, encrypted_json).returncode == 0
    target = tmp_path / "target.db"
    done = run_cli("import", "--db", target, "-i", keys.age_id, encrypted_json)
    assert done.returncode == 0, done.stderr
    assert restored(target) == restored_plain

    bundle = tmp_path / "converted.kbundle"
    done = run_cli("convert", "-i", keys.age_id, encrypted_json, bundle, "-R", keys.ed_pub)
    assert done.returncode == 0, done.stderr
    assert bundle.read_bytes().startswith(INTRO)
    assert run_cli("verify", "-i", keys.ed, bundle).returncode == 0


def test_kindling_json_library_functions_open_encrypted_exports(
    keys: Keys, sample_db: Path, restored_plain: dict, tmp_path: Path
) -> None:
    encrypted_json = tmp_path / "export.json.age"
    with open_store(sample_db, readonly=True) as conn:
        export_kindling_json(
            conn, encrypted_json, exported_at=1, recipients=[parse_recipient(keys.age_pub)]
        )
    options = identity(keys.age_id)
    assert verify_kindling_json(encrypted_json, options=options).ok
    with pytest.raises(NoIdentityError):
        verify_kindling_json(encrypted_json)
    target = tmp_path / "target.db"
    with open_store(target) as conn:
        import_kindling_json(conn, encrypted_json, options=options)
    assert restored(target) == restored_plain
    manifest = kindling_json_to_bundle(encrypted_json, tmp_path / "out.kbundle", options=options)
    assert manifest.entry("observations").records == len(restored_plain["observations"])
    damaged = tmp_path / "damaged.json.age"
    damaged.write_bytes(encrypted_json.read_bytes()[:-1])
    report = verify_kindling_json(damaged, options=options)
    assert not report.ok and "does not authenticate" in report.messages[0]


# --- no plaintext on disk -----------------------------------------------------------------------


MARKER = b"kbundle-plaintext-marker-5e1f"


class PlaintextWatch:
    """Reads, over and over while work runs, every file in `folder` and every file there that
    process `pid` (this one by default) or a child of it holds open (spools have no name:
    O_TMPFILE), and remembers whether any held MARKER, how many distinct files it read, and
    which processes held files there."""

    def __init__(self, folder: Path, pid: int | None = None):
        self.folder = str(folder)
        self.pid = os.getpid() if pid is None else pid
        self.found: list[str] = []
        self.files: set[tuple[int, int]] = set()
        self.holders: set[int] = set()
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def __enter__(self) -> PlaintextWatch:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join()
        self.scan()

    def _run(self) -> None:
        while not self._stop.wait(0.005):
            self.scan()

    def scan(self) -> None:
        files = [  # os.walk skips a folder removed while it lists (a cache's pending folder)
            (path, path)
            for root, _dirs, names in os.walk(self.folder)
            for path in (os.path.join(root, name) for name in names)
            if os.path.isfile(path)
        ]
        for pid in [self.pid, *children(self.pid)]:
            try:
                fds = os.listdir(f"/proc/{pid}/fd")
            except OSError:
                continue
            for fd in fds:
                try:
                    target = os.readlink(f"/proc/{pid}/fd/{fd}")
                except OSError:
                    continue
                if target.startswith(self.folder + "/"):
                    files.append((f"/proc/{pid}/fd/{fd}", target))
                    self.holders.add(pid)
        for path, _listed in files:
            try:
                with open(path, "rb") as file:
                    # what was opened, not what was listed: a process's fd may have been closed
                    # and reused for another file (its database) since it was listed
                    name = os.readlink(f"/proc/self/fd/{file.fileno()}")
                    info = os.fstat(file.fileno())
                    data = file.read()
            except OSError:  # closed or gone meanwhile
                continue
            if not name.startswith(self.folder + "/"):
                continue
            self.files.add((info.st_dev, info.st_ino))
            if MARKER in data:
                self.found.append(name)


def children(pid: int) -> Iterator[int]:
    for entry in os.listdir("/proc"):
        if entry.isdigit():
            try:
                status = Path(f"/proc/{entry}/status").read_text()
            except OSError:
                continue
            if f"\nPPid:\t{pid}\n" in status:
                yield int(entry)


@pytest.fixture(scope="module")
def marked_db(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A database big enough for a second encoding process, whose records carry MARKER."""
    path = tmp_path_factory.mktemp("marked") / "marked.db"
    generate_sample(path, observations=17_000, seed=5)
    conn = sqlite3.connect(path)
    marker = MARKER.decode()
    with conn:
        conn.execute("UPDATE observations SET content = content || ?", (" " + marker,))
        conn.execute("UPDATE capsules SET intent = intent || ?", (" " + marker,))
        conn.execute("UPDATE summaries SET content = content || ?", (" " + marker,))
    conn.close()
    return path


@pytest.fixture
def watched(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """TMPDIR for this test: every temporary file goes where the watch looks."""
    import tempfile

    folder = tmp_path / "watched"
    folder.mkdir()
    monkeypatch.setattr(tempfile, "tempdir", str(folder))
    monkeypatch.setenv("TMPDIR", str(folder))
    return folder


CAN_FORK = sys.platform.startswith("linux") and len(os.sched_getaffinity(0)) >= 2


@pytest.mark.parametrize("to", ["file", "stdout"])
@pytest.mark.parametrize(
    "split",
    [
        pytest.param(
            "whole export",
            marks=pytest.mark.skipif(not CAN_FORK, reason="the export forks only on Linux, 2 CPUs"),
        ),
        "filtered export",
    ],
)
def test_an_encrypted_export_writes_no_plaintext_to_any_file(
    split: str, to: str, marked_db: Path, keys: Keys, tmp_path: Path
) -> None:
    # The CLI as a user runs it (--workers auto): a whole export forks a child (parallel.encoder)
    # that writes a spool of its own; a filtered one is encoded in one process, into one spool.
    # The watch's thread runs in this process, not the export's, so the export forks as it would.
    split_up = split == "whole export"
    folder = tmp_path / "watched"
    folder.mkdir()
    out = folder / "out.kbundle"

    def export(*args: str) -> PlaintextWatch:
        filtered = [] if split_up else ["--since", "0"]
        command = [cli_executable(), "export", "--db", str(marked_db), *filtered, *args, "-q"]
        env = {**os.environ, "TMPDIR": str(folder)}  # where a stream's spools go
        with open(folder / "stdout", "wb") as stdout:
            export = subprocess.Popen(
                [*command, str(out) if to == "file" else "-"], stdout=stdout, env=env
            )
            with PlaintextWatch(folder, export.pid) as watch:
                assert export.wait(timeout=300) == 0
        return watch

    # The watch can see plaintext: without recipients, the spools hold the records.
    control = export()
    assert control.found, "the watch saw no plaintext in a plain export's spools"
    out.unlink(missing_ok=True)

    watch = export("-r", keys.age_pub)
    assert watch.found == []
    spools = 2 if split_up else 1
    assert len(watch.files) >= spools + 1  # the spools and the output, at least
    assert (len(watch.holders) > 1) == split_up  # a forked child held its spool
    written = out if to == "file" else folder / "stdout"
    assert sorted(os.listdir(folder)) == sorted({written.name, "stdout"})
    with open_bundle(written, options=identity(keys.age_id)) as reader:
        assert any(MARKER.decode() in getattr(r, "content", "") for r in reader.records())


def test_importing_encrypted_kindling_json_writes_no_plaintext_to_any_file(
    marked_db: Path, keys: Keys, watched: Path, tmp_path: Path
) -> None:
    # Kindling JSON whose lists come in reverse order: the reader spools three of them.
    with open_store(marked_db, readonly=True) as conn:
        export_kindling_json(conn, tmp_path / "export.json", exported_at=1)
    document = json.loads((tmp_path / "export.json").read_bytes())
    dataset = document["dataset"]
    for entity in ("observations", "capsules", "summaries", "pins"):
        dataset[entity] = dataset.pop(entity)  # reinserted at the end: reverse order below
    reordered = dict(reversed(list(dataset.items())))
    document["dataset"] = reordered
    text = json.dumps(document).encode()
    (tmp_path / "export.json").unlink()
    encrypted_json = tmp_path / "export.json.age"
    with (
        encrypted_json.open("wb") as out,
        open_encrypting_writer(out, [parse_recipient(keys.age_pub)]) as writer,
    ):
        writer.write(text)

    target = tmp_path / "target.db"
    with (
        PlaintextWatch(watched) as watch,
        encrypted_json.open("rb") as stream,
        open_store(target) as conn,
    ):
        opened = open_input(stream, identity(keys.age_id), label=str(encrypted_json))
        assert opened.format == "kindling-json" and opened.envelope is not None
        report, _ = import_kindling_json(conn, opened.stream, spool_dir=str(watched))
    assert report.counts["observations"].inserted == 17_000
    assert watch.found == []
    assert len(watch.files) >= 3  # the JSON reader's spools, the temporary bundle's


def test_a_json_import_seals_its_temporary_bundle_even_from_plain_json(
    marked_db: Path, watched: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The temporary bundle of a JSON import is encrypted to a key that lives in memory only:
    what is left on disk, if anything, is unreadable."""
    with open_store(marked_db, readonly=True) as conn:
        export_kindling_json(conn, tmp_path / "export.json", exported_at=1)
    generated: list[X25519Identity] = []
    real = X25519Identity.generate

    def remembered() -> X25519Identity:
        generated.append(real())
        return generated[-1]

    monkeypatch.setattr(X25519Identity, "generate", staticmethod(remembered))
    with PlaintextWatch(watched) as watch, open_store(tmp_path / "target.db") as conn:
        import_kindling_json(conn, tmp_path / "export.json", spool_dir=str(watched))
    assert len(generated) == 1
    assert watch.found == []


def test_library_round_trip_reproducible_plaintext(
    sample_db: Path, keys: Keys, plain: Path, tmp_path: Path
) -> None:
    recipients = (parse_recipient(keys.age_pub), parse_recipient(keys.ed_pub.read_text()))
    opts = BundleOptions(created_at=1_700_000_000_000, recipients=recipients)
    outs = [tmp_path / "a.kbundle", tmp_path / "b.kbundle"]
    with open_store(sample_db, readonly=True) as conn:
        manifests = [write_bundle(conn, out, opts) for out in outs]
    assert manifests[0] == manifests[1] == read_manifest(plain)
    assert outs[0].read_bytes() != outs[1].read_bytes()
    for out in outs:
        for key in (keys.age_id, keys.ed):
            assert run("age", "-d", "-i", key, out).stdout == plain.read_bytes()
    assert read_manifest(outs[0], options=identity(keys.ed)) == manifests[0]
