"""JSON text exactly as JavaScript's `JSON.stringify` writes it.

Kindling stores provenance, scope ids and evidence refs as `JSON.stringify` output. To give a row
back byte for byte after it travelled as a decoded value, we must write numbers and escapes the
way JavaScript does; msgspec and Python's json differ on floats (`1.0`, `1e+16`, `1e-05`).
"""

from __future__ import annotations

import math
from typing import Any

import msgspec

_encoder = msgspec.json.Encoder()
_decoder = msgspec.json.Decoder()


def loads(text: str) -> Any:
    """Decode JSON text; raises ValueError with msgspec's description on bad input."""
    try:
        return _decoder.decode(text)
    except msgspec.DecodeError as exc:
        raise ValueError(str(exc)) from None


def dumps(value: Any) -> str:
    """Encode a JSON value as `JSON.stringify(value)` would."""
    if not _has_float(value):
        try:
            return _encoder.encode(value).decode()
        except UnicodeEncodeError:
            pass  # a lone surrogate: JavaScript escapes it, which the slow path does
    return "".join(_write(value))


def _has_float(value: Any) -> bool:
    kind = type(value)
    if kind is float:
        return True
    if kind is dict:
        return any(_has_float(v) for v in value.values())
    if kind is list:
        return any(_has_float(v) for v in value)
    return False


def _write(value: Any):
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
