"""Options and parameter types shared by the commands."""

from __future__ import annotations

import dataclasses
import functools
import os
import sys
from collections.abc import Callable
from datetime import UTC, datetime
from pathlib import Path
from typing import TYPE_CHECKING, Any, BinaryIO

import click

from kindling_bundle.cli.keys import identity_options
from kindling_bundle.cli.output import Output
from kindling_bundle.errors import SigningKeyError
from kindling_bundle.format.signature import SignatureOptions
from kindling_bundle.io.progress import Progress
from kindling_bundle.io.read_options import ReadOptions
from kindling_bundle.io.sshsig.allowed_signers import AllowedSigners
from kindling_bundle.io.storage import STDIO, parse_storage_options
from kindling_bundle.parallel import Workers

if TYPE_CHECKING:
    from kindling_bundle.io.sshsig.keys import SigningKey
    from kindling_bundle.scrub import Scanner

ALLOWED_SIGNERS_ENV = "KINDLING_BUNDLE_ALLOWED_SIGNERS"
"""A team's allowed_signers file; set, every bundle read must be signed by someone in it."""


def common_options(func: Callable[..., Any]) -> Callable[..., Any]:
    """--json, --quiet and --debug on every command; hands the command an `out` keyword."""

    @click.option("--json", "as_json", is_flag=True, help="Print one JSON document.")
    @click.option("--quiet", "-q", is_flag=True, help="Print nothing on success.")
    @click.option("--debug", is_flag=True, help="Show a traceback on unexpected errors.")
    @functools.wraps(func)
    def wrapper(*args: Any, as_json: bool, quiet: bool, debug: bool, **kwargs: Any) -> Any:
        click.get_current_context().meta["kindling_bundle.debug"] = debug
        return func(*args, out=Output(as_json=as_json, quiet=quiet), **kwargs)

    return wrapper


def storage_options(func: Callable[..., Any]) -> Callable[..., Any]:
    """--storage-option and --endpoint-url for bundles given as URLs; hands `storage_options`."""

    @click.option(
        "--storage-option",
        "option_pairs",
        multiple=True,
        metavar="KEY=VALUE",
        help="For a URL: an option of its storage backend, e.g. profile=backup or anon=true "
        "(repeatable). Credentials also come from the environment and AWS config files.",
    )
    @click.option(
        "--endpoint-url",
        metavar="URL",
        help="For an s3:// URL: an S3-compatible endpoint such as MinIO [default: "
        "$AWS_ENDPOINT_URL, else AWS].",
    )
    @functools.wraps(func)
    def wrapper(
        *args: Any, option_pairs: tuple[str, ...], endpoint_url: str | None, **kwargs: Any
    ) -> Any:
        try:
            options = parse_storage_options(option_pairs)
        except ValueError as exc:
            raise click.BadParameter(str(exc), param_hint="'--storage-option'") from None
        if endpoint_url:
            options["endpoint_url"] = endpoint_url
        return func(*args, storage_options=options, **kwargs)

    return wrapper


_RULES_HELP = (
    "A gitleaks-format rule file (TOML) whose rules are added to ours; a rule with an id of "
    "ours replaces it (repeatable)."
)


def _rules_option(func: Callable[..., Any]) -> Callable[..., Any]:
    return click.option(
        "--rules",
        "rule_files",
        multiple=True,
        metavar="FILE",
        type=click.Path(dir_okay=False, path_type=Path),
        help=_RULES_HELP,
    )(func)


def scanner_options(func: Callable[..., Any]) -> Callable[..., Any]:
    """--rules; hands the command a loaded `scanner` (ours plus the user's rules)."""

    @_rules_option
    @functools.wraps(func)
    def wrapper(*args: Any, rule_files: tuple[Path, ...], **kwargs: Any) -> Any:
        return func(*args, scanner=_load_rules(rule_files), **kwargs)

    return wrapper


def _load_rules(rule_files: tuple[Path, ...]) -> Scanner:
    from kindling_bundle.scrub import Scanner  # only a command that scans or scrubs needs it

    return Scanner.load(rule_files)


def scrub_options(func: Callable[..., Any]) -> Callable[..., Any]:
    """--scrub and --rules; hands the command `scrub`, a loaded Scanner or None."""

    @click.option(
        "--scrub",
        is_flag=True,
        help="Replace every secret found in observation content, provenance, capsule intents, "
        "summaries and pin reasons by [REDACTED:<rule-id>] (see `scan`).",
    )
    @_rules_option
    @functools.wraps(func)
    def wrapper(*args: Any, scrub: bool, rule_files: tuple[Path, ...], **kwargs: Any) -> Any:
        if rule_files and not scrub:
            raise click.UsageError("--rules applies only with --scrub")
        return func(*args, scrub=_load_rules(rule_files) if scrub else None, **kwargs)

    return wrapper


def signature_options(func: Callable[..., Any]) -> Callable[..., Any]:
    """--allowed-signers and --require-signature on commands that read bundles; hands the
    command a `signature` keyword (SignatureOptions), its allowed_signers file already parsed.

    $KINDLING_BUNDLE_ALLOWED_SIGNERS names the file when --allowed-signers does not, and
    requires a signature whenever it is set: a policy set once in a shell profile or CI."""

    @click.option(
        "--allowed-signers",
        "allowed_signers",
        type=click.Path(dir_okay=False),
        metavar="FILE",
        help="Whom to trust: an allowed_signers file as git and ssh-keygen use (principals, "
        "namespaces=, valid-after, valid-before). A signed bundle's signer must be in it "
        f"[default: ${ALLOWED_SIGNERS_ENV}].",
    )
    @click.option(
        "--require-signature",
        is_flag=True,
        help="Refuse a bundle that is not signed by a key in the allowed_signers file (and any "
        f"input that cannot be signed). Implied when ${ALLOWED_SIGNERS_ENV} is set.",
    )
    @functools.wraps(func)
    def wrapper(
        *args: Any, allowed_signers: str | None, require_signature: bool, **kwargs: Any
    ) -> Any:
        from_env = os.environ.get(ALLOWED_SIGNERS_ENV) or None
        path = allowed_signers or from_env
        require = require_signature or from_env is not None
        if require and path is None:
            raise click.UsageError(
                f"--require-signature needs --allowed-signers FILE (or ${ALLOWED_SIGNERS_ENV}): "
                "a signature proves nothing without a list of whom to trust"
            )
        trust = AllowedSigners.load(path) if path is not None else None
        signature = SignatureOptions(allowed_signers=trust, require_signature=require)
        return func(*args, signature=signature, **kwargs)

    return wrapper


def reading_options(func: Callable[..., Any]) -> Callable[..., Any]:
    """--identity, --allowed-signers and --require-signature together, on commands that read
    bundles: hands the command one `read_options` (ReadOptions) holding both the keys that open
    an encrypted input and whom to trust."""

    @identity_options
    @signature_options
    @functools.wraps(func)
    def wrapper(
        *args: Any, read_options: ReadOptions, signature: SignatureOptions, **kwargs: Any
    ) -> Any:
        options = dataclasses.replace(read_options, signature=signature)
        return func(*args, read_options=options, **kwargs)

    return wrapper


def scrub_line(out: Output, scrub: dict[str, Any] | None, *, err: bool = False) -> None:
    """One line saying what scrubbing replaced (nothing when the output was not scrubbed)."""
    if scrub is None:
        return
    rules = ", ".join(f"{rule} {n}" for rule, n in scrub["byRule"].items())
    out.line(
        f"scrubbed {scrub['findings']} secrets in {scrub['records']} records"
        + (f" ({rules})" if rules else ""),
        err=err,
    )


def load_sign_key(path: str) -> SigningKey:
    """The key of `export --sign-key`, its passphrase (if it has one) asked on the terminal
    (imported here: the key modules load `cryptography`, which an unsigned export never needs)."""
    from kindling_bundle.io.sshsig.keys import load_signing_key

    def ask(name: str) -> str:
        if not sys.stdin.isatty():
            raise SigningKeyError(
                f"{name}: the key is passphrase-protected and there is no terminal to ask for "
                f"the passphrase (add the key to ssh-agent and give --sign-key {name}.pub)"
            )
        answer: str = click.prompt(
            f"Passphrase for {name}", hide_input=True, err=True, default="", show_default=False
        )
        return answer

    return load_signing_key(path, passphrase=ask)


class EpochMs(click.ParamType):  # type: ignore[type-arg]  # generic only in newer click
    """Epoch milliseconds, or an ISO-8601 date/time (UTC unless it names an offset)."""

    name = "TIME"

    def convert(self, value: Any, param: click.Parameter | None, ctx: click.Context | None) -> int:
        if isinstance(value, int):
            return value
        text = str(value).strip()
        if text.lstrip("-").isdigit():
            return int(text)
        try:
            moment = datetime.fromisoformat(text)
        except ValueError:
            self.fail(
                f"{value!r} is neither epoch milliseconds nor an ISO-8601 date/time", param, ctx
            )
        if moment.tzinfo is None:
            moment = moment.replace(tzinfo=UTC)
        return int(moment.timestamp() * 1000)


def iso(ms: int | None) -> str | None:
    """Epoch milliseconds as an ISO-8601 UTC time, for people."""
    if ms is None:
        return None
    moment = datetime.fromtimestamp(ms / 1000, tz=UTC)
    return moment.isoformat(timespec="milliseconds").replace("+00:00", "Z")


def default_db() -> Path:
    """Where Kindling keeps its database: $KINDLING_DB, else ~/.kindling/kindling.db."""
    return Path(os.environ.get("KINDLING_DB") or Path.home() / ".kindling" / "kindling.db")


def db_option(func: Callable[..., Any]) -> Callable[..., Any]:
    """--db, defaulting as Kindling does: $KINDLING_DB, else ~/.kindling/kindling.db."""
    return click.option(
        "--db",
        "db",
        type=click.Path(dir_okay=False, path_type=Path),
        default=None,
        help="Kindling database [default: $KINDLING_DB, else ~/.kindling/kindling.db].",
    )(func)


level_option = click.option(
    "--level",
    type=click.IntRange(1, 19),
    default=3,
    show_default=True,
    help="zstd compression level.",
)


def sign_key_option(what: str) -> Callable[[Callable[..., Any]], Callable[..., Any]]:
    """--sign-key KEY, for every command that writes bundles (`what`: the bundle it signs)."""
    return click.option(
        "--sign-key",
        metavar="KEY",
        type=click.Path(dir_okay=False),
        help=f"Sign {what} with an SSH key: an OpenSSH private key file (ed25519 or RSA; a "
        "passphrase is asked on the terminal), or a public key file whose private half is in "
        "ssh-agent.",
    )


def workers_option(what: str) -> Callable[[Callable[..., Any]], Callable[..., Any]]:
    """--workers auto|N: the processes that `what` (kindling_bundle.parallel.choose_workers)."""

    def parse(ctx: click.Context, param: click.Parameter, value: str) -> Workers:
        if value == "auto":
            return "auto"
        number: int = click.IntRange(min=1)(value, param, ctx)
        return number

    return click.option(
        "--workers",
        default="auto",
        show_default=True,
        metavar="auto|N",
        callback=parse,
        help=f"Processes that {what}: auto (two for a large bundle, where forking is safe) or N.",
    )


def progress_for(label: str, out: Output) -> Progress:
    return Progress(label, enabled=None if not out.quiet else False)


def source_name(target: str) -> str | None:
    """How messages name an input: as given, except standard input (its stream says <stdin>)."""
    return None if target == STDIO else target


def input_label(target: str, stream: BinaryIO) -> str:
    """How errors name an input: as given, or standard input's stream name."""
    return target if target != STDIO else str(getattr(stream, "name", "<stdin>"))
