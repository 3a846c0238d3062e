"""The keys commands take: recipients to encrypt an output to, identities to open encrypted inputs.

The options follow the `age` tool's (-r, -R, -i), so keys and habits carry over. A passphrase is
asked for on the terminal (/dev/tty), never on standard input, which may be the bundle itself;
with no terminal, a protected key is refused in one line.
"""

from __future__ import annotations

import functools
import getpass
import os
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

import click

from kindling_bundle.errors import IdentityError
from kindling_bundle.io.read_options import ReadOptions

if TYPE_CHECKING:
    from kindling_bundle.io.age.identities import Identity, PassphrasePrompt
    from kindling_bundle.io.age.recipients import Recipient

IDENTITY_ENV = "KINDLING_BUNDLE_IDENTITY"
IDENTITY_HINT = f"give --identity FILE, or set ${IDENTITY_ENV}"


def recipient_options(func: Callable[..., Any]) -> Callable[..., Any]:
    """--recipient and --recipients-file; hands the command `recipients` (empty: no encryption)."""

    @click.option(
        "--recipient",
        "-r",
        "recipient_keys",
        multiple=True,
        metavar="KEY",
        help="Encrypt the output to this public key: an age1… key, or an ssh-ed25519 / ssh-rsa "
        "public key line (repeatable). The output is an age file: `age -d` opens it too.",
    )
    @click.option(
        "--recipients-file",
        "-R",
        "recipient_files",
        multiple=True,
        metavar="FILE",
        help="Encrypt to every key in FILE, one a line, # comments, as `age -R` reads it "
        "(~/.ssh/id_ed25519.pub, a downloaded USER.keys file; - for standard input; "
        "repeatable).",
    )
    @functools.wraps(func)
    def wrapper(
        *args: Any, recipient_keys: tuple[str, ...], recipient_files: tuple[str, ...], **kwargs: Any
    ) -> Any:
        return func(*args, recipients=recipients_from(recipient_keys, recipient_files), **kwargs)

    return wrapper


def recipients_from(keys: tuple[str, ...], files: tuple[str, ...]) -> tuple[Recipient, ...]:
    """The recipients given on the command line; a skipped SSH key is a warning, not an error.
    Without any, the age modules (and `cryptography`) are not imported: most runs encrypt
    nothing."""
    if not keys and not files:
        return ()
    from kindling_bundle.io.age.recipients import parse_recipient, read_recipients_file

    recipients = [
        parse_recipient(key, source="--recipient" if len(keys) == 1 else f"--recipient {n}")
        for n, key in enumerate(keys, 1)
    ]
    for name in files:
        recipients += read_recipients_file(name, on_skip=_warn)
    return tuple(recipients)


def identity_options(func: Callable[..., Any]) -> Callable[..., Any]:
    """--identity; hands the command `read_options` (with $KINDLING_BUNDLE_IDENTITY when no
    --identity is given)."""

    @click.option(
        "--identity",
        "-i",
        "identity_files",
        multiple=True,
        metavar="FILE",
        help="Open encrypted inputs with this key: an age identity file (one protected by "
        "`age -p` too) or an OpenSSH private key, ed25519 or rsa; a passphrase is asked for on "
        f"the terminal when needed (repeatable) [default: ${IDENTITY_ENV}, a file or the key "
        "itself].",
    )
    @functools.wraps(func)
    def wrapper(*args: Any, identity_files: tuple[str, ...], **kwargs: Any) -> Any:
        return func(*args, read_options=read_options_from(identity_files), **kwargs)

    return wrapper


def read_options_from(files: tuple[str, ...]) -> ReadOptions:
    """The identities of the --identity files, else of $KINDLING_BUNDLE_IDENTITY (the age
    modules are imported only when there are some, as in `recipients_from`)."""
    value = "" if files else os.environ.get(IDENTITY_ENV, "").strip()
    if not files and not value:
        return ReadOptions()
    prompt = terminal_prompt()
    if value:
        return ReadOptions(identities=_environment_identities(value, prompt))
    from kindling_bundle.io.age.identities import load_identities

    identities: list[Identity] = []
    for name in files:
        identities += load_identities(name, passphrase=prompt)
    return ReadOptions(identities=identities)


def _environment_identities(value: str, prompt: PassphrasePrompt | None) -> list[Identity]:
    """$KINDLING_BUNDLE_IDENTITY's `value`: a key file's path, or the key itself (a CI secret).
    It is never echoed: it may be a key."""
    from kindling_bundle.io.age.identities import load_identities, parse_identities

    source = f"${IDENTITY_ENV}"
    if "\n" in value or any(mark in value for mark in ("AGE-SECRET-KEY-", "-----BEGIN")):
        return parse_identities(value.encode() + b"\n", source=source, passphrase=prompt)
    path = os.path.expanduser(value)
    if not os.path.isfile(path):
        raise IdentityError(f"{source}: neither a key nor the path of a readable key file")
    return load_identities(path, passphrase=prompt)


def terminal_prompt() -> PassphrasePrompt | None:
    """A hidden prompt on the terminal, or None when there is none (a cron job, a pipeline)."""
    try:
        fd = os.open("/dev/tty", os.O_RDWR | os.O_NOCTTY)
    except OSError:
        return None
    os.close(fd)
    return _ask


def _ask(prompt: str) -> str:
    try:
        return getpass.getpass(prompt)
    except EOFError:
        raise IdentityError("no passphrase was typed (end of input)") from None


def describe_envelope(recipients: int, stanza_types: tuple[str, ...]) -> str:
    """What an encrypted input's header shows without a key: `to 2 recipients (X25519,
    ssh-ed25519)`."""
    counts: dict[str, int] = {}
    for kind in stanza_types:
        counts[kind] = counts.get(kind, 0) + 1
    kinds = ", ".join(f"{kind} ×{n}" if n > 1 else kind for kind, n in counts.items())
    plural = "" if recipients == 1 else "s"
    return f"to {recipients} recipient{plural} ({kinds})"


def _warn(message: str) -> None:
    click.echo(f"kindling-bundle: warning: {message}", err=True)
