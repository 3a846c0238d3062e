"""One builder per observation kind: its content and provenance together, shaped as Kindling's
Claude Code, OpenCode and PocketFlow adapters write them (content opens as the adapter formats
it, then carries the tool's result, which the Claude Code adapter keeps only for commands)."""

from __future__ import annotations

import hashlib
import json
import re
import textwrap
from collections.abc import Callable
from typing import Any

from kindling_bundle.db.sample.choices import Chooser, Node, pick
from kindling_bundle.db.sample.commands import COMMANDS
from kindling_bundle.db.sample.diffs import unified_diff
from kindling_bundle.db.sample.tracebacks import pytest_failure, session_traceback
from kindling_bundle.db.sample.truncation import (
    MAX_SUBAGENT_OUTPUT,
    MAX_TOOL_RESULT,
    bounded,
    cap,
)

_MODELS = ("claude-sonnet-4", "claude-opus-4", "gpt-5", "gpt-4.1", "qwen3-coder", "kimi-k2")
_SUBAGENTS = ("general-purpose", "Explore", "Plan", "code-reviewer", "test-runner")
_NODE_TYPES = ("llm", "tool", "batch", "async", "flow")
# PocketFlow's adapter derives a capsule's intent from the node's name and type, first match wins.
_INTENT_RULES = (
    (re.compile(r"test|spec|validate", re.I), "test"),
    (re.compile(r"build|compile|bundle", re.I), "build"),
    (re.compile(r"deploy|publish|release", re.I), "deploy"),
    (re.compile(r"analyze|check|lint", re.I), "analyze"),
    (re.compile(r"debug|investigate|diagnose", re.I), "debug"),
    (re.compile(r"implement|create|develop", re.I), "implement"),
    (re.compile(r"refactor|improve|optimize", re.I), "refactor"),
)
_CLAUDE_TOOLS = (
    ("Read", 34),
    ("Grep", 16),
    ("Glob", 8),
    ("Task", 6),
    ("WebFetch", 5),
    ("WebSearch", 3),
    ("TodoWrite", 5),
    ("Skill", 1),
)
_OPENCODE_TOOLS = (("read", 40), ("grep", 18), ("glob", 10), ("webfetch", 6), ("todowrite", 6))


def _node_id(name: str) -> str:
    """A workflow node keeps its id from run to run."""
    return f"node-{hashlib.sha1(name.encode()).hexdigest()[:8]}"


def _message(t: Chooser) -> tuple[str, dict[str, Any]]:
    rng = t.rng
    length = t.length("message")
    if t.session.adapter == "claude-code" or rng.random() < 0.4:
        text = t.ask()
        if length > 200:
            pasted = t.excerpt(length, numbered=False)[3] if rng.random() < 0.5 else ""
            text += "\n\n" + (pasted or t.prose(length))
        text = cap(text, MAX_TOOL_RESULT)
        return text, {"role": "user", "length": len(text)}
    text = t.prose(length)
    if rng.random() < 0.3:
        code = t.excerpt(rng.randint(100, 1500), numbered=False)[3]
        text += f"\n\n```python\n{textwrap.dedent(code)}\n```"
    output_tokens = len(text) // 4 + rng.randint(0, 50)
    provenance: dict[str, Any] = {
        "role": "assistant",
        "model": pick(rng, _MODELS),
        "usage": {
            "inputTokens": rng.randint(2_000, 180_000),
            "outputTokens": output_tokens,
            "cacheReadTokens": rng.randint(0, 150_000),
        },
    }
    if rng.random() < 0.5:
        provenance["costUsd"] = round(rng.uniform(0.0005, 0.9), 6)
    return text, provenance


def _tool_call(t: Chooser) -> tuple[str, dict[str, Any]]:
    rng = t.rng
    length = t.length("tool_call")
    claude = t.session.adapter == "claude-code"
    names, weights = zip(*(_CLAUDE_TOOLS if claude else _OPENCODE_TOOLS), strict=True)
    tool = rng.choices(names, weights)[0]
    key = tool.lower()
    args: dict[str, Any]
    failed = rng.random() < 0.04
    error = pick(rng, ("File does not exist.", "Permission denied", "Timed out")) if failed else ""
    if key == "read":
        index, first, count, result = t.excerpt(length, numbered=True)
        path = t.absolute(index)
        detail = [f"File: {path}"]
        args = {"file_path": path, "offset": first, "limit": count}
        provenance: dict[str, Any] = {"filePath": path}
    elif key == "grep":
        pattern, folder, result = t.grep(length)
        detail = [f"Pattern: {pattern}", f"Path: {folder}"]
        args = {"pattern": pattern, "path": folder, "output_mode": "content", "-n": True}
        provenance = {"pattern": pattern, "path": folder}
    elif key == "glob":
        repo = t.session.repo
        folder = t.shown(pick(rng, repo.files)).rsplit("/", 1)[0]
        pattern = pick(rng, ("**/*.py", "*.py", "**/test_*.py", "**/__init__.py"))
        listed = [t.absolute(i) for i in repo.files]
        result = "\n".join(listed[: max(1, length // 60)])
        detail = [f"Pattern: {pattern}", f"Path: {folder}"]
        args = {"pattern": pattern, "path": folder}
        provenance = {"pattern": pattern, "path": folder}
    elif key == "task":
        subagent, description = pick(rng, _SUBAGENTS), t.ask()[:120]
        result = t.prose(length)
        detail = [f"Agent: {subagent}", f"Task: {description}"]
        args = {"subagent_type": subagent, "description": description, "prompt": t.ask()}
        provenance = {"subagentType": subagent, "description": description}
    elif key == "webfetch":
        module = t.corpus.paths[t.pick_file()].removesuffix(".py").replace("/", ".")
        url = f"https://docs.python.org/3/library/{module.removesuffix('.__init__')}.html"
        result = f"# {module}\n\n" + t.prose(length)
        detail = [f"URL: {url}"]
        args = {"url": url, "prompt": t.sentence()}
        provenance = {"url": url}
    elif key == "websearch":
        query = " ".join(t.sentence().split()[:8])
        result = "[Result not captured]"
        detail = [f"Query: {query}"]
        args = {"query": query}
        provenance = {"query": query}
    else:  # TodoWrite, Skill: the adapter lists their input keys; results are JSON
        todos = [
            {
                "content": t.ask()[:100],
                "status": pick(rng, ("pending", "in_progress", "completed")),
                "activeForm": t.sentence()[:60],
            }
            for _ in range(rng.randint(1, 8))
        ]
        result = json.dumps({"todos": todos}, indent=2, ensure_ascii=False)
        args = {"todos": todos} if key == "todowrite" else {"skill": "pdf", "args": "--help"}
        detail = [f"Input keys: {', '.join(args)}"]
        provenance = {"inputKeys": list(args)}
    if failed:
        result = ""
    if claude:
        parts = [f"Tool: {tool}", *detail, result]
        if failed:
            parts.append(f"Error: {error}")
        content = "\n\n".join(p for p in parts if p)
        return content, {"toolName": tool, "hasError": failed, **provenance}
    parts = [f"Tool: {tool}", result, f"Error: {error}" if failed else ""]
    opencode: dict[str, Any] = {"toolName": tool, "args": args, "durationMs": t.duration()}
    if failed:
        opencode["error"] = error
    return "\n\n".join(p for p in parts if p), opencode


def _command(t: Chooser) -> tuple[str, dict[str, Any]]:
    rng = t.rng
    length = t.length("command")
    command, stdout, stderr, exit_code = pick(rng, COMMANDS)(t, length)
    if t.session.adapter == "claude-code":
        result = stdout + (f"\n{stderr}" if stderr else "")
        content = f"Tool: Bash\n\n$ {command}\n\n{cap(result, MAX_TOOL_RESULT)}".rstrip()
        return content, {
            "toolName": "Bash",
            "hasError": exit_code != 0,
            "command": command.split()[0],
            "exitCode": exit_code,
        }
    parts = [
        f"$ {command}",
        stdout,
        f"stderr: {stderr}" if stderr else "",
        f"Exit code: {exit_code}",
    ]
    return "\n\n".join(p for p in parts if p), {
        "command": command,
        "exitCode": exit_code,
        "cwd": t.session.repo.root,
        "durationMs": t.duration(20, 600_000),
        "output": {"stdoutBytes": len(stdout.encode()), "stderrBytes": len(stderr.encode())},
    }


def _file_diff(t: Chooser) -> tuple[str, dict[str, Any]]:
    rng = t.rng
    length = t.length("file_diff")
    count = 1 if rng.random() < 0.8 else rng.randint(2, 4)
    files = [t.pick_file(in_repo=True) for _ in range(count)]
    files = list(dict.fromkeys(files))
    diffs, added, removed = [], 0, 0
    for index in files:
        diff, plus, minus = unified_diff(t, index, length // len(files))
        diffs.append(diff)
        added, removed = added + plus, removed + minus
    if t.session.adapter == "claude-code":
        tool = "Write" if removed == 0 and rng.random() < 0.5 else "Edit"
        action = "Created/overwrote file" if tool == "Write" else "Edited file"
        path = t.absolute(files[0])
        content = f"Tool: {tool}\n\nFile: {path}\n\nAction: {action}\n\n" + "\n".join(diffs)
        provenance: dict[str, Any] = {"toolName": tool, "hasError": False, "filePath": path}
        if tool == "Edit":
            provenance["hasOldString"] = True
        return content, provenance
    paths = [t.shown(i) for i in files]
    listed = "\n".join(f"  {p}" for p in paths)
    content = f"Modified files:\n{listed}\n\n+{added} -{removed}\n\n" + "\n".join(diffs)
    return content, {"paths": paths, "additions": added, "deletions": removed}


def _error(t: Chooser) -> tuple[str, dict[str, Any]]:
    rng = t.rng
    name, message, text = session_traceback(t, t.length("error"))
    source = pick(rng, ("tool", "runtime", "test", "lsp"))
    if source == "test":
        test = f"test_{t.symbol()}"
        text = pytest_failure(test, f"tests/{test}.py", message, text)
    provenance: dict[str, Any] = {"source": source, "errorType": name, "hasStack": True}
    if t.session.adapter == "opencode" and rng.random() < 0.3:
        provenance["stack"] = text[-2000:]
    return text, provenance


def _node_start(t: Chooser) -> tuple[str, dict[str, Any]]:
    rng = t.rng
    name = t.node_name()
    node_type = pick(rng, _NODE_TYPES)
    intent = next((i for rule, i in _INTENT_RULES if rule.search(f"{name} {node_type}")), "general")
    t.node = node = Node(name, _node_id(name), node_type, t.flow_id(), intent)
    index = t.pick_file()
    given = {"path": t.shown(index), "symbol": t.symbol(index), "question": t.sentence()}
    return f"Node started: {name}", {
        "nodeName": node.name,
        "nodeId": node.node_id,
        "nodeType": node.node_type,
        "flowId": node.flow_id,
        "input": bounded(json.dumps(given)),
    }


def _current_node(t: Chooser) -> Node:
    if t.node is None:  # the node began before this sample's window
        name = t.node_name()
        t.node = Node(name, _node_id(name), "llm", t.flow_id(), "general")
    return t.node


def _node_output(t: Chooser) -> tuple[str, dict[str, Any]]:
    node = _current_node(t)
    length = t.length("node_output")
    if t.rng.random() < 0.5:
        output = t.prose(length)
    else:
        output = json.dumps({"summary": t.sentence(), "files": [t.shown(t.pick_file())]})
    return bounded(output), {"nodeName": node.name, "nodeId": node.node_id, "status": "success"}


def _node_error(t: Chooser) -> tuple[str, dict[str, Any]]:
    node = _current_node(t)
    t.node = None
    _, message, stack = session_traceback(t, t.length("error"))
    return message.split(": ", 1)[-1], {
        "nodeName": node.name,
        "nodeId": node.node_id,
        "status": "failed",
        "stack": stack,
    }


def _node_end(t: Chooser) -> tuple[str, dict[str, Any]]:
    rng = t.rng
    if t.node is None and t.session.adapter == "claude-code" and rng.random() < 0.5:
        agent_type = pick(rng, _SUBAGENTS)
        output = cap(t.prose(t.length("node_end")), MAX_SUBAGENT_OUTPUT)
        content = f"Subagent: {agent_type}\n\nOutput:\n{output}"
        return content, {"agentType": agent_type, "hasOutput": True, "outputLength": len(output)}
    node = _current_node(t)
    t.node = None
    status = "failed" if rng.random() < 0.1 else "success"
    return f"Node {status}: {node.name}", {
        "nodeName": node.name,
        "nodeId": node.node_id,
        "status": status,
    }


BUILDERS: dict[str, Callable[[Chooser], tuple[str, dict[str, Any]]]] = {
    "message": _message,
    "tool_call": _tool_call,
    "command": _command,
    "file_diff": _file_diff,
    "error": _error,
    "node_start": _node_start,
    "node_end": _node_end,
    "node_output": _node_output,
    "node_error": _node_error,
}
