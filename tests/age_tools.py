"""The real `age`, `age-keygen`, `ssh-keygen` and `ssh-agent` tools, for tests (Debian: age,
openssh-client), and a terminal to type passphrases into the programs that ask for them there."""

from __future__ import annotations

import contextlib
import os
import pty
import shutil
import subprocess
import tempfile
import time
from collections.abc import Iterator, Mapping, Sequence
from pathlib import Path


def run(*args: str | Path, input: bytes | None = None) -> subprocess.CompletedProcess[bytes]:
    assert shutil.which(str(args[0])), f"{args[0]} is needed (Debian: age / openssh-client)"
    return subprocess.run([str(a) for a in args], input=input, capture_output=True, check=False)


def age_keygen(path: Path) -> str:
    """A new age identity file; returns its public key."""
    proc = run("age-keygen", "-o", path)
    assert proc.returncode == 0, proc.stderr
    return run("age-keygen", "-y", path).stdout.decode().strip()


def ssh_keygen(path: Path, kind: str, passphrase: str = "", *extra: str) -> str:
    """A new OpenSSH key pair; returns the public key line."""
    bits = ("-b", "2048") if kind == "rsa" else ()
    proc = run(
        "ssh-keygen", "-q", "-t", kind, *bits, *extra, "-N", passphrase, "-C", "", "-f", path
    )
    assert proc.returncode == 0, proc.stderr
    return Path(f"{path}.pub").read_text()


def on_terminal(
    argv: Sequence[str | Path],
    passphrase: str,
    prompts: Sequence[bytes],
    env: Mapping[str, str] | None = None,
) -> tuple[int, bytes, int]:
    """Run `argv` with a new terminal (a pty) as its own, typing `passphrase` each time it
    shows one of `prompts`: (exit code, everything it printed, how many times we typed)."""
    pid, fd = pty.fork()
    if pid == 0:  # the child: exec the program, or leave at once
        try:
            os.execvpe(str(argv[0]), [str(a) for a in argv], dict(env or os.environ))
        finally:
            os._exit(127)
    said, typed = b"", 0
    while True:
        try:
            data = os.read(fd, 1024)
        except OSError:  # the child closed the terminal
            break
        if not data:
            break
        said += data
        while typed < sum(said.count(prompt) for prompt in prompts):
            os.write(fd, passphrase.encode() + b"\n")
            typed += 1
    os.close(fd)
    _, status = os.waitpid(pid, 0)
    return os.waitstatus_to_exitcode(status), said, typed


def age_with_passphrase(source: Path, dest: Path, passphrase: str) -> None:
    """`age -p` reads its passphrase from a terminal: give it one and type it twice."""
    code, said, typed = on_terminal(
        ["age", "-p", "-o", dest, source],
        passphrase,
        (b"Enter passphrase", b"Confirm passphrase"),
    )
    assert code == 0, said
    assert typed == 2


@contextlib.contextmanager
def ssh_agent() -> Iterator[str]:
    """A real ssh-agent of our own, on a short socket path (its path), stopped by its own
    handle."""
    folder = tempfile.mkdtemp(prefix="kb-agent-")
    sock = os.path.join(folder, "agent.sock")
    process = subprocess.Popen(
        ["ssh-agent", "-D", "-a", sock], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL
    )
    try:
        deadline = time.monotonic() + 10
        while not os.path.exists(sock):
            assert time.monotonic() < deadline, "ssh-agent did not start"
            time.sleep(0.05)
        yield sock
    finally:
        process.terminate()
        process.wait(timeout=10)
        shutil.rmtree(folder, ignore_errors=True)
