"""allowed_signers files (ssh-keygen(1) ALLOWED SIGNERS, git's gpg.ssh.allowedSignersFile):
parsing, OpenSSH's pattern matching, and which principals a signer may sign as.
"""

from __future__ import annotations

import base64
import os
import re
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import TYPE_CHECKING

from kindling_bundle.errors import (
    AllowedSignersError,
    SignatureNamespaceError,
    SignerNotValidError,
    UnknownSignerError,
)
from kindling_bundle.io.sshsig.wire import StrPath, _try_key

if TYPE_CHECKING:
    from kindling_bundle.io.sshsig.verification import Signer


def _pattern_matches(text: str, pattern: str) -> bool:
    """OpenSSH's match_pattern: `*` any run, `?` any one character, nothing else special."""
    regex = "".join(".*" if c == "*" else "." if c == "?" else re.escape(c) for c in pattern)
    return re.fullmatch(regex, text, re.DOTALL) is not None


def _pattern_list_matches(text: str, patterns: str) -> bool:
    """OpenSSH's match_pattern_list: a match of a `!pattern` refuses, whatever else matches."""
    positive = False
    for pattern in patterns.split(","):
        negated = pattern.startswith("!")
        if _pattern_matches(text, pattern[1:] if negated else pattern):
            if negated:
                return False
            positive = True
    return positive


_TIME = re.compile(r"(\d{8}|\d{12}|\d{14})(z|utc)?", re.IGNORECASE)


def _parse_time(value: str) -> int:
    """YYYYMMDD[HHMM[SS]] with an optional Z (or UTC); without it, local time, as ssh-keygen."""
    match = _TIME.fullmatch(value)
    if match is None:
        raise ValueError(f"{value!r} is not YYYYMMDD[HHMM[SS]][Z]")
    d = match.group(1).ljust(14, "0")
    try:
        when = datetime(
            int(d[0:4]), int(d[4:6]), int(d[6:8]), int(d[8:10]), int(d[10:12]), int(d[12:14])
        )
    except ValueError as exc:
        raise ValueError(f"{value!r}: {exc}") from None
    when = when.replace(tzinfo=UTC) if match.group(2) else when.astimezone()
    seconds = int(when.timestamp())
    if seconds <= 0:
        raise ValueError(f"{value!r} is not after 1970")
    return seconds


def _format_time(seconds: int) -> str:
    return datetime.fromtimestamp(seconds, UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


@dataclass(frozen=True)
class AllowedSigner:
    """One line of an allowed_signers file."""

    path: str
    line: int
    principals: str
    """The principals pattern-list as written, e.g. "alice@example.com,*@ops.example.com"."""
    key_type: str
    key_blob: bytes
    namespaces: str | None = None
    valid_after: int | None = None
    """Seconds since the epoch; the key signs nothing before it."""
    valid_before: int | None = None
    cert_authority: bool = False

    @property
    def where(self) -> str:
        return f"{self.path}:{self.line}"


class _LineError(Exception):
    """An allowed_signers line is not understood; becomes AllowedSignersError with file:line."""


def _take_principals(text: str) -> tuple[str, str]:
    """The first field, which may be double-quoted (OpenSSH's strdelimw), and the rest."""
    if text.startswith('"'):
        end = text.find('"', 1)
        if end < 0:
            raise _LineError("unterminated quote in the principals")
        return text[1:end], text[end + 1 :].lstrip(" \t")
    field = re.split(r"[ \t]", text, maxsplit=1)[0]
    return field, text[len(field) :].lstrip(" \t")


def _split_options(text: str) -> tuple[str, str]:
    """Options run to the first blank outside double quotes (sshkey_advance_past_options)."""
    quoted = False
    i = 0
    while i < len(text) and (quoted or text[i] not in " \t"):
        if text[i] == "\\" and text[i + 1 : i + 2] == '"':
            i += 1
        elif text[i] == '"':
            quoted = not quoted
        i += 1
    if quoted:
        raise _LineError("unterminated quote in the options")
    return text[:i], text[i:].lstrip(" \t")


def _dequote(text: str, pos: int, option: str) -> tuple[str, int]:
    """A double-quoted value at text[pos] (`\\"` escapes a quote), and the position after it."""
    if text[pos : pos + 1] != '"':
        raise _LineError(f'{option}= needs a double-quoted value, e.g. {option}="..."')
    out: list[str] = []
    i = pos + 1
    while i < len(text) and text[i] != '"':
        if text[i] == "\\" and text[i + 1 : i + 2] == '"':
            i += 1
        out.append(text[i])
        i += 1
    if i >= len(text):
        raise _LineError(f"{option}= value has no closing quote")
    return "".join(out), i + 1


def _parse_options(text: str) -> dict[str, str | bool]:
    """cert-authority, namespaces=, valid-after=, valid-before= (keywords in any case)."""
    options: dict[str, str | bool] = {}
    pos = 0
    while pos < len(text):
        lowered = text[pos:].lower()
        if lowered.startswith("cert-authority") and lowered[14:15] in ("", ","):
            name: str = "cert-authority"
            value: str | bool = True
            pos += 14
        else:
            for name in ("namespaces", "valid-after", "valid-before"):
                if lowered.startswith(name + "="):
                    value, pos = _dequote(text, pos + len(name) + 1, name)
                    break
            else:
                raise _LineError(f"unknown option {text[pos:].split(',')[0]!r}")
        if name in options:
            raise _LineError(f"{name} given twice")
        options[name] = value
        if pos == len(text):
            break
        if text[pos] != ",":
            raise _LineError(f"unexpected {text[pos:]!r} after {name}")
        pos += 1
        if pos == len(text):
            raise _LineError("the options end with a comma")
    return options


def _parse_line(path: str, number: int, line: str) -> AllowedSigner | None:
    text = line.strip(" \t\r\n")
    if not text or text.startswith("#"):
        return None
    principals, rest = _take_principals(text)
    if not principals:
        raise _LineError("no principals")
    options: dict[str, str | bool] = {}
    key = _try_key(rest)
    if key is None:
        option_text, rest = _split_options(rest)
        if not rest:
            raise _LineError("no public key")
        options = _parse_options(option_text)
        key = _try_key(rest)
        if key is None:
            raise _LineError("the public key is not `keytype base64`")
    times: dict[str, int] = {}
    for name in ("valid-after", "valid-before"):
        if name in options:
            try:
                times[name] = _parse_time(str(options[name]))
            except ValueError as exc:
                raise _LineError(f"bad {name}: {exc}") from None
    after, before = times.get("valid-after"), times.get("valid-before")
    if after is not None and before is not None and before <= after:
        raise _LineError("valid-before is not after valid-after")
    namespaces = options.get("namespaces")
    return AllowedSigner(
        path=path,
        line=number,
        principals=principals,
        key_type=key[0],
        key_blob=key[1],
        namespaces=namespaces if isinstance(namespaces, str) else None,
        valid_after=after,
        valid_before=before,
        cert_authority=options.get("cert-authority") is True,
    )


class AllowedSigners:
    """A parsed allowed_signers file (git's gpg.ssh.allowedSignersFile, ssh-keygen's -f).

    The whole file is parsed up front, so a mistake anywhere in it is reported (file:line) before
    a bundle is read, rather than skipped as ssh-keygen does: a line that fails to parse may be the
    one meant to restrict a key. Keys of every type are read; only plain ed25519, RSA and ECDSA keys
    can match a signature. cert-authority lines are kept but match nothing: signatures made with
    SSH certificates are not supported.
    """

    def __init__(self, path: str, entries: tuple[AllowedSigner, ...]) -> None:
        self.path = path
        self.entries = entries

    @classmethod
    def load(cls, path: StrPath) -> AllowedSigners:
        name = os.fspath(path)
        try:
            raw = Path(name).read_bytes()
        except OSError as exc:
            raise AllowedSignersError(f"{name}: cannot read: {exc.strerror}") from None
        try:
            text = raw.decode("utf-8")
        except UnicodeDecodeError as exc:
            number = raw[: exc.start].count(b"\n") + 1
            raise AllowedSignersError(f"{name}:{number}: not UTF-8 text") from None
        return cls.parse(text, name)

    @classmethod
    def parse(cls, text: str, path: str) -> AllowedSigners:
        entries = []
        for number, line in enumerate(text.split("\n"), start=1):
            try:
                entry = _parse_line(path, number, line)
            except _LineError as exc:
                raise AllowedSignersError(f"{path}:{number}: {exc}") from None
            if entry is not None:
                entries.append(entry)
        return cls(path, tuple(entries))

    def principals_for(
        self, signer: Signer, *, principal: str | None = None, now: datetime | None = None
    ) -> tuple[str, ...]:
        """The principals `signer` may sign as now, or the reason it may not, naming the line.

        With `principal`, only lines whose patterns match it count, and the result is just it.
        Raises UnknownSignerError, SignatureNamespaceError or SignerNotValidError.
        """
        blob = base64.b64decode(signer.public_key.split()[1])
        at = int((now or datetime.now(UTC)).timestamp())
        found: list[str] = []
        refusals: list[Exception] = []
        ca_lines = False
        for entry in self.entries:
            if principal is not None and not _pattern_list_matches(principal, entry.principals):
                continue
            if entry.cert_authority:
                ca_lines = True
                continue
            if entry.key_blob != blob:
                continue
            if entry.namespaces is not None and not _pattern_list_matches(
                signer.namespace, entry.namespaces
            ):
                refusals.append(
                    SignatureNamespaceError(
                        f"{entry.where}: key {signer.fingerprint} is not allowed to sign in "
                        f'namespace {signer.namespace!r} (namespaces="{entry.namespaces}")'
                    )
                )
                continue
            if entry.valid_after is not None and at < entry.valid_after:
                refusals.append(
                    SignerNotValidError(
                        f"{entry.where}: key {signer.fingerprint} is not valid yet: valid-after "
                        f"{_format_time(entry.valid_after)}, now {_format_time(at)}"
                    )
                )
                continue
            if entry.valid_before is not None and at > entry.valid_before:
                refusals.append(
                    SignerNotValidError(
                        f"{entry.where}: key {signer.fingerprint} has expired: valid-before "
                        f"{_format_time(entry.valid_before)}, now {_format_time(at)}"
                    )
                )
                continue
            if principal is not None:
                return (principal,)
            found += [p for p in entry.principals.split(",") if p and not p.startswith("!")]
        if found:
            return tuple(dict.fromkeys(found))
        if refusals:
            raise refusals[0]
        who = f" as {principal!r}" if principal is not None else ""
        hint = " (its cert-authority lines are not supported)" if ca_lines else ""
        raise UnknownSignerError(
            f"{self.path}: key {signer.fingerprint} is not allowed to sign{who}{hint}"
        )
