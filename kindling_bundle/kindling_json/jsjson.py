"""JSON text exactly as JavaScript's `JSON.stringify` writes it.

Kindling stores provenance, scope ids and evidence refs as `JSON.stringify` output. To give a row
back byte for byte after it travelled as a decoded value, we must write numbers and escapes the
way JavaScript does; msgspec and Python's json differ on floats (`1.0`, `1e+16`, `1e-05`).
"""

from __future__ import annotations

import math
import re
from collections.abc import Iterator
from typing import Any

import msgspec

_encoder = msgspec.json.Encoder()
_decoder = msgspec.json.Decoder()


def loads(text: str) -> Any:
    """Decode JSON text; raises ValueError with msgspec's description on bad input.

    Integers beyond 64 bits become floats: JavaScript writes a large number such as 1e20 as
    `100000000000000000000`, which as a float is written back as the same digits, while as an
    integer it could not travel in a bundle (MessagePack integers are 64-bit)."""
    try:
        value = _decoder.decode(text)
    except msgspec.DecodeError as exc:
        raise ValueError(str(exc)) from None
    try:
        # MessagePack holds exactly the integers kept as integers below; encoding is a C-level
        # probe for the others, much cheaper than searching the text for wide digits.
        _msgpack_probe.encode(value)
    except OverflowError:
        return _wide_ints_as_floats(value)
    except Exception:  # anything else the probe trips on: decide from the text, as always
        if _LONG_DIGITS.search(text):
            return _wide_ints_as_floats(value)
    return value


_msgpack_probe = msgspec.msgpack.Encoder()
_LONG_DIGITS = re.compile(r"[0-9]{19}")  # any integer beyond 64 bits has at least 19 digits


def _wide_ints_as_floats(value: Any) -> Any:
    kind = type(value)
    if kind is int and not -(2**63) <= value < 2**64:
        return float(value)
    if kind is dict:
        return {key: _wide_ints_as_floats(item) for key, item in value.items()}
    if kind is list:
        return [_wide_ints_as_floats(item) for item in value]
    return value


def dumps(value: Any) -> str:
    """Encode a JSON value as `JSON.stringify(value)` would."""
    try:
        if _has_float(value):
            # msgspec writes floats as Python does (1.0, 1e-05); give it JavaScript's digits
            value = _with_js_floats(value)
        return _encoder.encode(value).decode()
    except (UnicodeEncodeError, _Unusual):
        pass  # a lone surrogate (JavaScript escapes it) or a key that is not a str
    return "".join(_write(value))


class _Unusual(Exception):
    """A tree that only the general writer below handles exactly."""


def _with_js_floats(value: Any) -> Any:
    """A copy of a dict/list tree whose floats are msgspec.Raw JSON numbers as JavaScript
    writes them, for the encoder to copy verbatim. Anything but plain JSON types (subclasses,
    non-str keys) raises _Unusual, so that _write meets it, and fails, exactly as before."""
    kind = type(value)
    if kind is float:
        return msgspec.Raw(js_number(value).encode())
    if kind is dict:
        copy = {}
        for key, item in value.items():
            if type(key) is not str:
                raise _Unusual
            copy[key] = _with_js_floats(item)
        return copy
    if kind is list:
        return [_with_js_floats(item) for item in value]
    if kind not in _SCALARS:
        raise _Unusual
    return value


_SCALARS = frozenset({str, int, bool, type(None)})
_CONTAINERS = (dict, list)


def _has_float(value: Any) -> bool:
    """Whether a float is anywhere in a dict/list tree. The types of a container's items are
    collected in one C-level pass, so a flat container costs no Python loop."""
    kind = type(value)
    if kind is dict:
        items = value.values()
    elif kind is list:
        items = value
    else:
        return kind is float
    kinds = set(map(type, items))
    if float in kinds:
        return True
    if kinds <= _SCALARS:
        return False
    return any(_has_float(item) for item in items if type(item) in _CONTAINERS)


def _write(value: Any) -> Iterator[str]:
    kind = type(value)
    if kind is str:
        yield _string(value)
    elif kind is float:
        yield js_number(value)
    elif kind is dict:
        yield "{"
        for i, (key, item) in enumerate(value.items()):
            if i:
                yield ","
            yield _string(key)
            yield ":"
            yield from _write(item)
        yield "}"
    elif kind is list:
        yield "["
        for i, item in enumerate(value):
            if i:
                yield ","
            yield from _write(item)
        yield "]"
    else:
        yield _encoder.encode(value).decode()


def _string(text: str) -> str:
    try:
        return _encoder.encode(text).decode()
    except UnicodeEncodeError:
        parts = []
        for ch in text:
            if 0xD800 <= ord(ch) <= 0xDFFF:
                parts.append(f"\\u{ord(ch):04x}")
            else:
                parts.append(_encoder.encode(ch).decode()[1:-1])
        return '"' + "".join(parts) + '"'


def js_number(value: float) -> str:
    """Format a float as JavaScript's Number.prototype.toString does (ECMA-262 Number::toString)."""
    if not math.isfinite(value):
        raise ValueError(f"{value!r} is not representable in JSON")
    if value == 0:
        return "0"
    shortest = repr(value)
    if "e" not in shortest and not shortest.endswith(".0"):
        return shortest  # both write the shortest round-trip digits positionally here
    sign = "-" if value < 0 else ""
    # repr gives the shortest digits that round-trip, as JavaScript does; take them apart.
    mantissa, _, exp_text = repr(abs(value)).partition("e")
    whole, _, frac = mantissa.partition(".")
    if frac == "0":
        frac = ""
    digits = (whole + frac).lstrip("0")
    # n: the position of the decimal point relative to the first significant digit.
    n = len(whole) + (int(exp_text) if exp_text else 0)
    if whole == "0":
        n = -(len(frac) - len(frac.lstrip("0"))) + (int(exp_text) if exp_text else 0)
    digits = digits.rstrip("0") or "0"
    k = len(digits)
    if k <= n <= 21:
        return sign + digits + "0" * (n - k)
    if 0 < n <= 21:
        return sign + digits[:n] + "." + digits[n:]
    if -6 < n <= 0:
        return sign + "0." + "0" * (-n) + digits
    exponent = n - 1
    mantissa_out = digits[0] + ("." + digits[1:] if k > 1 else "")
    return sign + mantissa_out + "e" + ("+" if exponent >= 0 else "-") + str(abs(exponent))
