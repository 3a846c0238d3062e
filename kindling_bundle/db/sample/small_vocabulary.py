"""The small-vocabulary sample text: the word salad of the first sample generator.

Kept byte for byte because a small vocabulary is the hard case for the benchmark's baseline:
a couple of thousand distinct terms compress and index far better than real text.
"""

from __future__ import annotations

import random
from typing import Any

_WORDS = [
    "the",
    "agent",
    "ran",
    "tests",
    "for",
    "parser",
    "module",
    "and",
    "found",
    "failing",
    "case",
    "in",
    "tokenizer",
    "while",
    "refactoring",
    "config",
    "loader",
    "cache",
    "invalidation",
    "retry",
    "backoff",
    "timeout",
    "handler",
    "request",
    "response",
    "schema",
    "migration",
    "index",
    "query",
    "build",
    "lint",
    "deploy",
    "review",
    "commit",
    "branch",
    "merge",
    "rebase",
    "fixture",
    "mock",
    "endpoint",
    "payload",
    "latency",
    "memory",
    "leak",
    "thread",
    "lock",
    "queue",
    "worker",
    "scheduler",
    "plugin",
    "adapter",
    "capsule",
    "observation",
    "summary",
    "pin",
    "redact",
    "export",
    "import",
    "bundle",
    "verify",
    "restore",
    "snapshot",
]
_UNICODE = [
    "café",
    "naïve",
    "Größe",
    "日本語のテキスト",
    "данные",
    "ελληνικά",
    "✓ done",
    "🚀",
    "—",
    "½",
]
_FILES = [
    "src/parser.ts",
    "src/store/sqlite.ts",
    "src/cli/main.py",
    "lib/retry.go",
    "README.md",
    "tests/test_export.py",
    "packages/core/src/index.ts",
    "docs/ARCHITECTURE.md",
    "Cargo.toml",
]
_COMMANDS = [
    "pytest -q tests/",
    "npm test",
    "git status",
    "git diff --stat",
    "cargo build --release",
    "ruff check .",
    "ls -la src",
    "make lint",
    "pnpm tsc --noEmit",
    "go test ./...",
]
_TOOLS = ["Read", "Edit", "Bash", "Grep", "Glob", "Write", "WebFetch", "TodoWrite"]
_ERRORS = ["TypeError", "KeyError", "AssertionError", "ECONNREFUSED", "SQLITE_BUSY", "panic"]


class SmallVocabularyText:
    """The small-vocabulary profile: plausible content, quickly, from a pool of word salad."""

    def __init__(self, rng: random.Random):
        self.rng = rng
        self.sentences = [self._sentence() for _ in range(512)]
        self.repos = [f"repo-{n}" for n in ("kindling", "webapp", "infra", "ml-pipeline", "docs")]
        self.agents = ["claude-code", "codex", "aider"]
        self.users = ["alice", "bob"]

    def begin_session(self, scope: dict[str, str]) -> None:
        """Sessions of word salad are alike."""

    def observation(self, kind: str) -> tuple[str, dict[str, Any]]:
        content = self.content(kind)
        return content, _provenance(self.rng, kind)

    def intent(self, capsule_type: str) -> str:
        return self.prose(1)

    def summary(self, capsule_type: str, intent: str) -> str:
        return self.prose(self.rng.randint(2, 6))

    def _sentence(self) -> str:
        rng = self.rng
        words = rng.choices(_WORDS, k=rng.randint(5, 16))
        if rng.random() < 0.15:
            words.insert(rng.randrange(len(words)), rng.choice(_UNICODE))
        return " ".join(words).capitalize() + "."

    def prose(self, sentences: int) -> str:
        return " ".join(self.rng.choices(self.sentences, k=sentences))

    def content(self, kind: str) -> str:
        rng = self.rng
        if kind == "message":
            return self.prose(rng.randint(1, 4))
        if kind == "tool_call":
            path = rng.choice(_FILES)
            return f"{rng.choice(_TOOLS)}({path}) → {self.prose(1)}"
        if kind == "command":
            lines = [f"$ {rng.choice(_COMMANDS)}"]
            lines += [self.prose(1) for _ in range(rng.randint(1, 12))]
            lines.append(f"exit code {rng.choice([0, 0, 0, 1, 2])}")
            return "\n".join(lines)
        if kind == "file_diff":
            path = rng.choice(_FILES)
            lines = [f"--- a/{path}", f"+++ b/{path}"]
            for _ in range(rng.randint(1, 4)):
                start = rng.randint(1, 900)
                lines.append(f"@@ -{start},12 +{start},14 @@")
                for _ in range(rng.randint(6, 20)):
                    sign = rng.choice(" +-  ")
                    lines.append(f"{sign}    {self.prose(1)[: rng.randint(20, 110)]}")
            return "\n".join(lines)
        if kind in ("error", "node_error"):
            name = rng.choice(_ERRORS)
            frames = [
                f'  File "{rng.choice(_FILES)}", line {rng.randint(1, 2000)}, in fn_{i}'
                for i in range(rng.randint(3, 25))
            ]
            return f"{name}: {self.prose(1)}\nTraceback (most recent call last):\n" + "\n".join(
                frames
            )
        if kind == "node_output":
            return self.prose(rng.randint(1, 6))
        return f"{kind.replace('_', ' ')}: {rng.choice(_WORDS)}-{rng.randint(1, 99)}"


def _provenance(rng: random.Random, kind: str) -> dict[str, Any]:
    prov: dict[str, Any] = {"source": rng.choice(["claude-code", "opencode", "pocketflow"]), "v": 1}
    if kind in ("tool_call", "command"):
        prov["tool"] = rng.choice(_TOOLS)
        prov["durationMs"] = rng.randint(1, 20_000)
    if kind == "command":
        prov["exitCode"] = rng.choice([0, 0, 1])
    if kind == "file_diff":
        prov["files"] = rng.sample(_FILES, rng.randint(1, 3))
        prov["stats"] = {"added": rng.randint(0, 80), "removed": rng.randint(0, 40)}
    if rng.random() < 0.1:
        prov["score"] = round(rng.random(), 4)
    return prov
