"""Commands an agent runs and what they print, from the session's files: file views, grep,
git log and status, ls, wc, pytest, help(), ruff and mypy, a failing script, a missing tool."""

from __future__ import annotations

import calendar
import random
import textwrap
from collections.abc import Callable

from kindling_bundle.db.sample.choices import SENTENCE_END, Chooser, pick
from kindling_bundle.db.sample.corpus import Repo
from kindling_bundle.db.sample.diffs import git_id
from kindling_bundle.db.sample.tracebacks import pytest_failure, session_traceback

CommandResult = tuple[str, str, str, int]
"""(command line, stdout, stderr, exit code)"""


def _cmd_show(t: Chooser, length: int) -> CommandResult:
    index, first, count, text = t.excerpt(length, numbered=False)
    path = t.shown(index)
    command = pick(
        t.rng,
        (f"sed -n '{first},{first + count - 1}p' {path}", f"cat {path}", f"head -n {count} {path}"),
    )
    return command, text, "", 0


def _cmd_grep(t: Chooser, length: int) -> CommandResult:
    pattern, folder, hits = t.grep(length)
    return f'grep -rn "{pattern}" {folder}', hits, "", 0 if hits else 1


def _cmd_git_log(t: Chooser, length: int) -> CommandResult:
    """A window of the repository's one history: a commit has the same id and subject in every
    log that shows it, as in a real repository."""
    repo = t.session.repo
    lines = []
    total = 0
    commit = t.session.head - pick(t.rng, (0, 0, 0, 1, 2, 5, 20))
    while total < length and commit > 0:
        line = f"{git_id(repo.name, commit)} {_commit_subject(t, repo, commit)}"
        lines.append(line)
        total += len(line) + 1
        commit -= 1
    return f"git log --oneline -n {len(lines)}", "\n".join(lines), "", 0


def _commit_subject(t: Chooser, repo: Repo, commit: int) -> str:
    """The subject of a commit: the first sentence of a docstring, chosen by the commit."""
    chooser = random.Random(f"{repo.name}@{commit}")
    for _ in range(8):
        prose = t.corpus.file(chooser.choice(repo.files)).prose
        if prose:
            return SENTENCE_END.split(chooser.choice(prose), 1)[0].rstrip(".")[:72]
    return f"Update {repo.name}"


def _cmd_git_status(t: Chooser, length: int) -> CommandResult:
    rng = t.rng
    files = t.session.working
    lines = [f"On branch {pick(rng, ('main', 'fix/' + t.symbol(), 'feature/' + t.symbol()))}"]
    lines.append("Changes not staged for commit:")
    lines += [f"\tmodified:   {t.shown(i)}" for i in files[: rng.randint(1, len(files))]]
    if rng.random() < 0.5:
        lines += ["", "Untracked files:", f"\ttests/test_{t.symbol()}.py"]
    stat = [f" {t.shown(i)} | {rng.randint(1, 90)} {'+' * rng.randint(1, 20)}" for i in files]
    if rng.random() < 0.5:
        return "git status", "\n".join(lines), "", 0
    return "git diff --stat", "\n".join(stat), "", 0


def _cmd_ls(t: Chooser, length: int) -> CommandResult:
    rng, corpus = t.rng, t.corpus
    repo = t.session.repo
    month = pick(rng, calendar.month_abbr[1:])
    rows = [f"total {sum(corpus.sizes[i] for i in repo.files) // 1024}"]
    for index in repo.files[: max(3, length // 70)]:
        day, hour = rng.randint(1, 28), rng.randint(0, 23)
        name = corpus.paths[index].rsplit("/", 1)[-1]
        size = corpus.sizes[index]
        rows.append(
            f"-rw-r--r-- 1 {repo.owner} staff {size:>7} {month} {day:>2} {hour:02}:14 {name}"
        )
    return f"ls -la {t.shown(repo.files[0]).rsplit('/', 1)[0]}", "\n".join(rows), "", 0


def _cmd_wc(t: Chooser, length: int) -> CommandResult:
    files = t.session.working
    counts = [(len(t.corpus.file(i).lines), t.shown(i)) for i in files]
    rows = [f"{n:>6} {p}" for n, p in counts] + [f"{sum(n for n, _ in counts):>6} total"]
    return "wc -l " + " ".join(p for _, p in counts), "\n".join(rows), "", 0


def _cmd_pytest(t: Chooser, length: int) -> CommandResult:
    rng = t.rng
    passed, failed = rng.randint(5, 1500), pick(rng, (0, 0, 0, 1, 2, 5))
    seconds = round(rng.uniform(0.2, 240.0), 2)
    lines = []
    for index in t.session.working:
        module = t.corpus.paths[index].rsplit("/", 1)[-1].removesuffix(".py").strip("_")
        lines.append(f"tests/test_{module}.py {'.' * rng.randint(1, 60)}")
    stdout = "\n".join(lines)
    module = lines[-1].split(".py", 1)[0].removeprefix("tests/test_")
    if failed:
        _, message, text = session_traceback(t, length)
        test = f"test_{t.symbol()}"
        stdout += f"\n\n{'=' * 30} FAILURES {'=' * 30}\n"
        stdout += pytest_failure(test, f"tests/test_{module}.py", message, text)
    summary = f"{failed} failed, {passed} passed" if failed else f"{passed} passed"
    stdout += f"\n{'=' * 20} {summary} in {seconds}s {'=' * 20}"
    return "python -m pytest -q tests/", stdout, "", 1 if failed else 0


def _cmd_help(t: Chooser, length: int) -> CommandResult:
    index = t.pick_file()
    source = t.corpus.file(index)
    module = t.corpus.paths[index].removesuffix(".py").replace("/", ".").removesuffix(".__init__")
    found = t.a_def(source)
    if not found:
        return f"python -c 'import {module}'", "", "", 0
    at, what, name = found
    signature = source.lines[at].strip().removeprefix("async ").removesuffix(":")
    body = t.prose(length) if source.prose else ""
    what = "class" if what == "class" else "function"
    help_text = f"Help on {what} {name} in module {module}:\n\n{signature}\n"
    help_text += textwrap.indent(body, "    ")
    return f'python -c "import {module}; help({module}.{name})"', help_text, "", 0


def _cmd_lint(t: Chooser, length: int) -> CommandResult:
    rng = t.rng
    found = []
    total = 0
    for index in t.session.working:
        source = t.corpus.file(index)
        for at in source.long_lines:
            width = len(source.lines[at])
            hit = f"{t.shown(index)}:{at + 1}:89: E501 Line too long ({width} > 88)"
            found.append(hit)
            total += len(hit)
            if total > length:
                break
        if total > length:
            break
    if rng.random() < 0.5:
        summary = f"Found {len(found)} errors." if found else "All checks passed!"
        return "ruff check .", "\n".join([*found, summary]), "", 1 if found else 0
    count = len(t.session.working)
    if not found:
        return "mypy --strict src", f"Success: no issues found in {count} source files", "", 0
    errors = [
        f"{hit.split(':', 2)[0]}:{hit.split(':', 2)[1]}: error: Function is missing a type "
        f"annotation  [no-untyped-def]\n    def {t.symbol()}(...)"
        for hit in found[: max(1, length // 120)]
    ]
    tail = f"Found {len(errors)} errors in {count} files (checked {count} source files)"
    return "mypy --strict src", "\n".join([*errors, tail]), "", 1


def _cmd_run(t: Chooser, length: int) -> CommandResult:
    _, _, text = session_traceback(t, length)
    index = t.pick_file()
    return f"python {t.shown(index)}", "", text, 1


def _cmd_missing(t: Chooser, length: int) -> CommandResult:
    tool = pick(t.rng, ("pnpm", "cargo", "uv", "poetry", "bazel"))
    return f"{tool} test", "", f"bash: line 1: {tool}: command not found", 127


COMMANDS: tuple[Callable[[Chooser, int], CommandResult], ...] = (
    _cmd_show,
    _cmd_show,
    _cmd_grep,
    _cmd_grep,
    _cmd_git_log,
    _cmd_git_status,
    _cmd_ls,
    _cmd_wc,
    _cmd_pytest,
    _cmd_pytest,
    _cmd_help,
    _cmd_lint,
    _cmd_run,
    _cmd_missing,
)
