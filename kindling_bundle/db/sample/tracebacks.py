"""Tracebacks as a user pastes them: real failures of the standard library, raised once per
process, under frames of the session's own code."""

from __future__ import annotations

import base64
import calendar
import configparser
import datetime
import fractions
import functools
import gzip
import importlib
import io
import ipaddress
import json
import re
import shlex
import statistics
import string
import sysconfig
import tarfile
import textwrap
import tomllib
import traceback
import urllib.parse
import uuid
import zipfile
from collections.abc import Callable
from xml.etree import ElementTree

from kindling_bundle.db.sample.choices import Chooser, pick
from kindling_bundle.db.sample.corpus import DEF, SHOWN_STDLIB

_STATEMENT = re.compile(
    r"(?:return|raise|yield|if|elif|for|while|with|del|assert|await)\b|[\w.\[\]]+\s*[-+*/|]?=[^=]|[\w.]+\("
)
"""A line a traceback could show: a statement or a call, not a comment or a docstring."""


# Real failures, raised by real calls into the standard library: their tracebacks are what a
# user pastes. Each is built once per process (only the library's frames are kept).
_FAILING_CALLS: tuple[Callable[[], object], ...] = (
    lambda: json.loads('{"retries": 3, "timeout": 2.5,}'),
    lambda: json.loads("[1, 2, 3"),
    lambda: datetime.datetime.strptime("2026-13-01", "%Y-%m-%d"),
    lambda: ipaddress.ip_address("300.1.2.3"),
    lambda: ipaddress.ip_network("10.0.0.1/24"),
    lambda: tomllib.loads("[tool.ruff]\nline-length = \n"),
    lambda: shlex.split('git commit -m "unterminated'),
    lambda: base64.b64decode("aGVsbG8gd29ybGQ", validate=True),
    lambda: urllib.parse.urlsplit("http://[::1/index.html"),
    lambda: fractions.Fraction("3/0"),
    lambda: re.compile(r"(?P<name>[a-z]+"),
    lambda: statistics.mean([]),
    lambda: uuid.UUID("not-a-uuid"),
    lambda: ElementTree.fromstring("<config><item></config>"),
    lambda: calendar.monthrange(2026, 13),
    lambda: string.Template("deploy $target to $region").substitute(target="prod"),
    lambda: importlib.import_module("kindling_sample_missing_module"),
    lambda: gzip.decompress(b"this is not gzip data"),
    lambda: zipfile.ZipFile(io.BytesIO(b"PK\x03\x04 truncated archive")),
    lambda: tarfile.open(fileobj=io.BytesIO(b"\0" * 100 + b"not a tar" * 70)),  # noqa: SIM115
    lambda: configparser.ConfigParser().read_string("[db]\nhost = a\nhost = b\n"),
    lambda: textwrap.TextWrapper(width=0).wrap("text"),
    lambda: compile("def handler(event:\n    return event", "handler.py", "exec"),
    lambda: int("12a"),
    lambda: float("1,5"),
    lambda: {"retries": 3}["timeout"],
    lambda: [1, 2, 3][7],
    lambda: "abc" + 1,  # type: ignore[operator]
    lambda: b"\xff\xfe\xfa".decode("utf-8"),
)


@functools.cache
def real_tracebacks() -> tuple[tuple[str, str, str], ...]:
    """(exception type, message, whole traceback text) of each failing call, paths as shown."""
    root = sysconfig.get_paths()["stdlib"]
    ours = f'  File "{__file__}"'
    found = []
    for call in _FAILING_CALLS:
        try:
            call()
        except Exception as exc:  # every call above fails; each is a sample, not an error
            chunks = traceback.TracebackException.from_exception(exc).format()
            text = "".join(c for c in chunks if not c.startswith(ours)).replace(root, SHOWN_STDLIB)
            message = traceback.format_exception_only(exc)[-1].strip()
            found.append((type(exc).__name__, message, text))
    return tuple(found)


def pytest_failure(test: str, test_file: str, message: str, traceback_text: str) -> str:
    """A failed test as pytest reports it: a bar with its name, the traceback, the FAILED line."""
    return (
        f"{'_' * 20} {test} {'_' * 20}\n\n{traceback_text}\nFAILED {test_file}::{test} - {message}"
    )


def session_traceback(t: Chooser, length: int) -> tuple[str, str, str]:
    """(type, message, text): a real failure, under frames of the session's own code."""
    rng = t.rng
    name, message, real = pick(rng, real_tracebacks())
    frames: list[str] = []
    total = len(real)
    attempts = 0
    while (total < length or not frames) and len(frames) < 40 and attempts < 200:
        attempts += 1
        index = t.pick_file()
        source = t.corpus.file(index)
        found = t.a_def(source)
        if not found or found[1] != "def":
            continue
        first = found[0] + rng.randint(1, 12)
        code = ""
        for at in range(first, min(first + 8, len(source.lines))):
            line = source.lines[at]
            code = line.strip()
            if DEF.match(line):
                code = ""
                break
            if _STATEMENT.match(code):
                break
        if not _STATEMENT.match(code):
            continue
        frame = f'  File "{t.absolute(index)}", line {at + 1}, in {found[2]}\n    {code}\n'
        frames.append(frame)
        total += len(frame)
    head = "Traceback (most recent call last):\n"
    text = head + "".join(frames) + real.removeprefix(head)
    return name, message, text
