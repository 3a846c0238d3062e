"""Where Kindling's adapters cut what they record, so the sample's content is cut the same way."""

from __future__ import annotations

MAX_CONTENT = 50_000
"""Kindling's Claude Code adapter keeps this many characters of content, then a notice."""
MAX_TOOL_RESULT = 10_000
"""... and this many of a tool's result or a user's prompt."""
MAX_SUBAGENT_OUTPUT = 5_000
"""... and this many of a subagent's output."""
NODE_BOUND = 500
"""PocketFlow's adapter bounds a node's input and output to this many characters."""


def cap(content: str, limit: int = MAX_CONTENT) -> str:
    """Truncate as Kindling's Claude Code adapter does: `limit` characters, then a notice."""
    if len(content) <= limit:
        return content
    return f"{content[:limit]}\n\n[Truncated {len(content) - limit} characters]"


def bounded(text: str, limit: int = NODE_BOUND) -> str:
    """Bound as PocketFlow's adapter bounds a node's input and output."""
    return text if len(text) <= limit else text[:limit] + "... [truncated]"
