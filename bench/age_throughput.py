"""Throughput of the age payload, both ways, in memory: pyrage's encrypt_io / decrypt_io (rage,
through Python file objects) against kindling_bundle.io.age (cryptography). Why the envelope is
built on `cryptography`; the figures are in bench/RESULTS.md.

    .venv/bin/python bench/age_throughput.py [MiB]
"""

from __future__ import annotations

import io
import os
import sys
import time
from collections.abc import Callable

import pyrage

from kindling_bundle.io.age.identities import X25519Identity
from kindling_bundle.io.age.payload import open_decrypting_reader, open_encrypting_writer

BLOCK = 1 << 20


class Sink(io.RawIOBase):
    """Takes whatever is written, keeps nothing."""

    def writable(self) -> bool:
        return True

    def write(self, data) -> int:  # type: ignore[no-untyped-def,override]
        return len(memoryview(data))


def best_of_three(run: Callable[[], None]) -> float:
    times = []
    for _ in range(3):
        started = time.perf_counter()
        run()
        times.append(time.perf_counter() - started)
    return min(times)


def main() -> None:
    size = int(sys.argv[1]) << 20 if len(sys.argv) > 1 else 256 << 20
    data = os.urandom(16 << 20) * (size // (16 << 20))

    theirs = pyrage.x25519.Identity.generate()
    sealed = io.BytesIO()
    pyrage.encrypt_io(io.BytesIO(data), sealed, [theirs.to_public()])
    theirs_sealed = sealed.getvalue()

    ours = X25519Identity.generate()
    sealed = io.BytesIO()
    with open_encrypting_writer(sealed, [ours.recipient()]) as writer:
        writer.write(data)
    ours_sealed = sealed.getvalue()

    def ours_encrypt() -> None:
        with open_encrypting_writer(Sink(), [ours.recipient()]) as writer:  # type: ignore[arg-type]
            for at in range(0, size, BLOCK):
                writer.write(memoryview(data)[at : at + BLOCK])

    def ours_decrypt() -> None:
        reader = open_decrypting_reader(io.BytesIO(ours_sealed), [ours])
        while reader.read(BLOCK):
            pass

    runs = {
        "pyrage encrypt_io": lambda: pyrage.encrypt_io(
            io.BytesIO(data), Sink(), [theirs.to_public()]
        ),
        "pyrage decrypt_io": lambda: pyrage.decrypt_io(io.BytesIO(theirs_sealed), Sink(), [theirs]),
        "kindling_bundle.io.age encrypt": ours_encrypt,
        "kindling_bundle.io.age decrypt": ours_decrypt,
    }
    for name, run in runs.items():
        print(f"{name:32} {size / best_of_three(run) / 1e6:7.0f} MB/s")


if __name__ == "__main__":
    main()
