"""The corpus's raw material: a seeded generator of fake secrets and plausible filler, and the
builder that assembles a planted text while remembering where its secrets are."""

from __future__ import annotations

import base64
import random
import string
import uuid
from collections.abc import Sequence
from dataclasses import dataclass

ALNUM = string.ascii_letters + string.digits
B64 = ALNUM + "+/"
B64URL = ALNUM + "-_"
HEX = "0123456789abcdef"
BECH32 = "QPZRY9X8GF2TVDW0S3JN54KHCE6MUA7L"


@dataclass(frozen=True)
class Planted:
    """A text with fake secrets at known spans."""

    kind: str
    text: str
    spans: tuple[tuple[int, int], ...]


class Builder:
    """Text assembled from pieces, remembering where the secret pieces are."""

    def __init__(self) -> None:
        self.parts: list[str] = []
        self.spans: list[tuple[int, int]] = []
        self.size = 0

    def add(self, text: str) -> Builder:
        self.parts.append(text)
        self.size += len(text)
        return self

    def secret(self, text: str) -> Builder:
        self.spans.append((self.size, self.size + len(text)))
        return self.add(text)

    def done(self, kind: str) -> Planted:
        return Planted(kind, "".join(self.parts), tuple(self.spans))


class Gen:
    """Fake secrets and plausible filler."""

    def __init__(self, rng: random.Random):
        self.rng = rng

    def s(self, alphabet: str, n: int) -> str:
        return "".join(self.rng.choice(alphabet) for _ in range(n))

    def pick(self, items: Sequence[str]) -> str:
        return self.rng.choice(items)

    def sha1(self) -> str:
        return self.s(HEX, 40)

    def sha256(self) -> str:
        return self.s(HEX, 64)

    def uuid(self) -> str:
        return str(uuid.UUID(int=self.rng.getrandbits(128), version=4))

    def b64(self, nbytes: int) -> str:
        return base64.b64encode(self.rng.randbytes(nbytes)).decode()

    def word(self) -> str:
        return self.pick(WORDS)

    def sentence(self) -> str:
        words = [self.word() for _ in range(self.rng.randint(5, 14))]
        return " ".join(words).capitalize() + "."

    def host(self) -> str:
        return self.pick(["db.internal", "10.0.3.17", "postgres.prod.svc", "localhost",
                          "cache-01.example.net", "mongo.cluster0.abcd1.mongodb.net"])  # fmt: skip

    def password(self) -> str:
        style = self.rng.randrange(4)
        if style == 0:
            return self.s(ALNUM, self.rng.randint(12, 24))
        if style == 1:
            return self.s(ALNUM + "!#%^*_-+=", self.rng.randint(10, 20))
        if style == 2:
            words = [self.pick(WORDS).capitalize() for _ in range(3)]
            return "".join(words) + str(self.rng.randint(10, 99)) + self.pick("!?#")
        return self.pick(["hunter", "Summer", "Winter", "Dragon"]) + str(
            self.rng.randint(1000, 9999)
        )

    def env_noise(self, n: int) -> list[str]:
        lines = [
            f"HOME=/home/{self.pick(['alice', 'bob', 'dev'])}",
            "SHELL=/bin/bash",
            "LANG=en_US.UTF-8",
            "TERM=xterm-256color",
            f"PWD=/home/dev/src/{self.word()}",
            f"OLDPWD=/home/dev/src/{self.word()}",
            "PATH=/usr/local/bin:/usr/bin:/bin:/home/dev/.cargo/bin",
            f"SSH_AUTH_SOCK=/tmp/ssh-{self.s(ALNUM, 10)}/agent.{self.rng.randint(1000, 9999)}",
            f"HOSTNAME={self.word()}-{self.s(HEX, 12)}",
            "TOKENIZERS_PARALLELISM=false",
            "GIT_ASKPASS=/usr/share/code/resources/app/extensions/git/dist/askpass.sh",
            "EDITOR=vim",
            f"VIRTUAL_ENV=/home/dev/src/{self.word()}/.venv",
            "NODE_ENV=development",
            f"GIT_COMMIT={self.sha1()}",
            f"BUILD_ID={self.uuid()}",
            "LOG_LEVEL=debug",
            "PAGER=less",
            "COLORTERM=truecolor",
            "XDG_RUNTIME_DIR=/run/user/1000",
        ]
        return self.rng.sample(lines, n)


WORDS = tuple(
    """
    the agent ran tests for parser module and found failing case in tokenizer while
    refactoring config loader cache invalidation retry backoff timeout handler request
    response schema migration index query build lint deploy review commit branch merge
    rebase fixture mock endpoint payload latency memory thread lock queue worker
    scheduler plugin adapter capsule observation summary bundle verify restore snapshot
    session token budget key value store
""".split()  # noqa: SIM905
)
