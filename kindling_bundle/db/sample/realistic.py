"""Realistic text for sample memory, drawn from the Python standard library that runs this code.

Word salad flatters every tool that compresses or indexes text: a couple of thousand distinct
terms compress and index far better than an agent's real memory, which is source code, diffs,
tracebacks, command output and prose. Everything here is cut from files that ship with every
Python (the standard library's sources, its docstrings and pydoc's topics), so the sample needs
no download, and a seed gives the same text on the same Python build. Provenance is shaped as
Kindling's Claude Code, OpenCode and PocketFlow adapters write it, content opens as they format
it (then carries the tool's result, which the Claude Code adapter keeps only for commands), and
content is truncated where the Claude Code adapter truncates it.

Pure: no SQLite here. `RealisticText` answers the sample generator's questions (what content
and provenance, which intent, which summary) one record at a time; the modules beside it make
the content: `corpus` (the library's sources), `choices` (the session and what is picked in
it), `observations` (one builder per kind), `commands`, `diffs`, `tracebacks` and `truncation`
(where the adapters cut).
"""

from __future__ import annotations

from typing import Any

from kindling_bundle.db.sample.choices import Chooser, pick
from kindling_bundle.db.sample.corpus import USERS
from kindling_bundle.db.sample.observations import BUILDERS
from kindling_bundle.db.sample.tracebacks import real_tracebacks
from kindling_bundle.db.sample.truncation import bounded, cap

_AGENTS = (
    "claude-code",
    "claude-code/subagent",
    "opencode",
    "opencode/build",
    "codex",
    "aider",
    "pocketflow-runner",
    "ci-bot",
)


class RealisticText(Chooser):
    """Realistic observations, intents and summaries; every choice comes from `rng`."""

    def __post_init__(self) -> None:
        super().__post_init__()
        self.repos = [repo.root for repo in self.corpus.repos]
        self.agents = list(_AGENTS)
        self.users = list(USERS)

    # the generator's questions -------------------------------------------------------------

    def observation(self, kind: str) -> tuple[str, dict[str, Any]]:
        """Content and provenance of one observation of `kind`."""
        content, provenance = BUILDERS[kind](self)
        return cap(content), provenance

    def intent(self, capsule_type: str) -> str:
        if capsule_type == "pocketflow_node":
            return self.node.intent if self.node else "general"
        if self.session.adapter == "claude-code" and self.rng.random() < 0.35:
            return "Claude Code session"
        return self.ask()

    def summary(self, capsule_type: str, intent: str) -> str:
        rng = self.rng
        if capsule_type == "pocketflow_node":
            name = self.node_name()
            outcome = (
                f"completed successfully: {bounded(self.prose(200), 200)}"
                if rng.random() < 0.85
                else f"failed: {pick(rng, real_tracebacks())[1]}"
            )
            confidence = f" [confidence: {rng.randint(20, 100)}%]" if rng.random() < 0.8 else ""
            return f"Node '{name}' ({intent}) {outcome}{confidence}"
        session = self.session
        files = ", ".join(self.shown(i) for i in rng.sample(session.working, len(session.working)))
        parts = [
            f"{intent.rstrip('.?')}." if intent != "Claude Code session" else "",
            f"Worked in {session.repo.name} on {files}.",
            self.prose(rng.randint(120, 900)),
        ]
        if rng.random() < 0.6:
            passed = rng.randint(3, 900)
            parts.append(f"Tests: {passed} passed, {pick(rng, (0, 0, 0, 1, 2))} failed.")
        return " ".join(p for p in parts if p)
