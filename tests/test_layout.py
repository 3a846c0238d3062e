"""The package's layering and public API, as ARCHITECTURE.md states them."""

from __future__ import annotations

import ast
import subprocess
import sys
from pathlib import Path

import kindling_bundle

PACKAGE = Path(kindling_bundle.__file__).parent


def imported_modules(path: Path) -> set[str]:
    modules: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            modules.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.module:
            modules.add(node.module)
    return modules


def test_the_bundle_format_layer_touches_no_database() -> None:
    # io.sshsig is the one named exception: a 1.1 bundle's signature is part of the
    # format, and checking it needs only `cryptography` (no SQLite, no program run).
    allowed = (
        "kindling_bundle.format",
        "kindling_bundle.errors",
        "kindling_bundle.records",
        "kindling_bundle.io.sshsig",
    )
    for path in sorted((PACKAGE / "format").glob("*.py")):
        for module in imported_modules(path):
            assert module.split(".")[0] != "sqlite3", path.name
            if module.startswith("kindling_bundle"):
                assert module.startswith(allowed), (path.name, module)


def test_the_secret_scanner_is_pure() -> None:
    """scrub/ reads rule files and text, nothing else: export, convert, merge and scan all
    use it, and a worker process can run it on records it encodes."""
    allowed = ("kindling_bundle.scrub", "kindling_bundle.errors", "kindling_bundle.records")
    for path in sorted((PACKAGE / "scrub").glob("*.py")):
        for module in imported_modules(path):
            assert module.split(".")[0] not in ("sqlite3", "zstandard"), path.name
            if module.startswith("kindling_bundle"):
                assert module.startswith(allowed), (path.name, module)


def test_the_age_envelope_stands_alone() -> None:
    """io/age/ is a leaf: anything of ours may use it, and it uses nothing but the errors."""
    allowed = ("kindling_bundle.io.age", "kindling_bundle.errors")
    for path in sorted((PACKAGE / "io" / "age").glob("*.py")):
        for module in imported_modules(path):
            if module.startswith("kindling_bundle"):
                assert module.startswith(allowed), (path.name, module)


def test_only_the_command_line_imports_the_command_line() -> None:
    for path in sorted(PACKAGE.rglob("*.py")):
        if path.parent.name == "cli" or path.name == "__main__.py":
            continue
        assert not any(m.startswith("kindling_bundle.cli") for m in imported_modules(path)), path


def test_every_public_name_resolves_and_is_typed() -> None:
    assert len(set(kindling_bundle.__all__)) == len(kindling_bundle.__all__)
    for name in kindling_bundle.__all__:
        assert getattr(kindling_bundle, name) is not None, name
    assert (PACKAGE / "py.typed").is_file()


def test_kindling_json_is_read_below_the_operations() -> None:
    above = ("kindling_bundle.ops", "kindling_bundle.db", "kindling_bundle.parallel")
    for path in sorted((PACKAGE / "kindling_json").glob("*.py")):
        for module in imported_modules(path):
            assert not module.startswith(above), (path.name, module)


def test_only_the_sample_writer_touches_the_database() -> None:
    """The sample's text profiles are pure: only generate.py writes the database."""
    for path in sorted((PACKAGE / "db" / "sample").glob("*.py")):
        if path.name in ("__init__.py", "generate.py"):
            continue
        for module in imported_modules(path):
            assert module.split(".")[0] != "sqlite3", path.name
            if module.startswith("kindling_bundle.db"):
                assert module.startswith("kindling_bundle.db.sample."), (path.name, module)


def test_the_package_and_the_command_line_import_their_layers_on_first_use() -> None:
    """`import kindling_bundle` and the CLI's group load none of the layers: a command imports
    what it runs (their import took longer than a small export), and a public name still
    resolves to the object its module defines."""
    code = (
        "import sys, kindling_bundle, kindling_bundle.cli\n"
        "print(sorted(m for m in sys.modules if m.startswith('kindling_bundle.')))\n"
        "from kindling_bundle import write_bundle\n"
        "from kindling_bundle.ops.write import write_bundle as defined\n"
        "print(write_bundle is defined)\n"
    )
    out = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, check=True
    ).stdout.splitlines()
    loaded = set(ast.literal_eval(out[0]))
    assert not {m for m in loaded if m.split(".")[1] in ("db", "ops", "format", "parallel")}
    assert out[1] == "True"


LIBRARIES_OF_OPTIONS = ("cryptography", "numpy", "re2")
"""Loaded only by what uses them: keys and signatures, increments and chains, scrubbing."""


def test_plain_export_verify_and_import_load_no_cipher_array_or_regex_library(
    sample_db: Path, tmp_path: Path
) -> None:
    """The commands people run most start without importing what only encryption, signatures,
    increments or scrubbing need (their import is a measurable share of a small command)."""
    bundle, db = tmp_path / "plain.kbundle", tmp_path / "new.db"
    for args in (
        ["export", "--quiet", "--db", str(sample_db), str(bundle)],
        ["verify", "--quiet", str(bundle)],
        ["import", "--quiet", "--db", str(db), str(bundle)],
    ):
        code = (
            "import atexit, sys\n"
            "atexit.register(lambda: print(sorted({m.split('.')[0] for m in sys.modules})))\n"
            "from kindling_bundle.cli import main\n"
            f"main({args!r})\n"
        )
        proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
        assert proc.returncode == 0, (args[0], proc.stderr)
        loaded = set(ast.literal_eval(proc.stdout.splitlines()[-1]))
        assert not loaded & set(LIBRARIES_OF_OPTIONS), (args[0], loaded & set(LIBRARIES_OF_OPTIONS))
    assert db.stat().st_size > 0
