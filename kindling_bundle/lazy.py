"""Package namespaces that import their names on first use (PEP 562).

A command should load only the modules it needs: `kindling-bundle verify` has no use for the
importer, the writer or SQLite, and importing every module costs more than a small verify.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from importlib import import_module
from typing import Any


def lazy_names(
    namespace: dict[str, Any], modules: Mapping[str, tuple[str, ...]]
) -> Callable[[str], Any]:
    """A module-level `__getattr__` for `namespace` (a package's globals()) that imports each
    name from its module (`modules`: module -> names) when it is first asked for."""
    home = {name: module for module, names in modules.items() for name in names}
    package = namespace["__name__"]

    def __getattr__(name: str) -> Any:
        module = home.get(name)
        if module is None:
            raise AttributeError(f"module {package!r} has no attribute {name!r}")
        value = getattr(import_module(module), name)
        namespace[name] = value
        return value

    return __getattr__
