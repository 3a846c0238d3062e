"""kindling-bundle: move Kindling memory between machines as portable, verifiable bundles.

The public API. Layers (ARCHITECTURE.md): `format` (the bundle format alone), `kindling_json`
(Kindling's JSON export format), `db` (everything that touches SQLite), `ops` (one job each,
composed of those), `parallel` (optional worker processes), `io` (paths, streams, URLs, progress,
the age envelope of encrypted bundles), `scrub` (secret rules and the scanner) and `cli`.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

__version__ = "0.1.0"

if TYPE_CHECKING:
    from kindling_bundle._api import *  # noqa: F403
    from kindling_bundle._api import __all__ as __all__
else:

    def __getattr__(name: str) -> Any:
        """The public API (kindling_bundle._api), imported on the first use of a name: the
        command line imports only the modules of the command it runs, not every layer."""
        api = importlib.import_module("kindling_bundle._api")  # not `from`: that calls this
        if name == "__all__" or name in api.__all__:
            return getattr(api, name)
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")

    def __dir__() -> list[str]:
        api = importlib.import_module("kindling_bundle._api")
        return sorted({*globals(), *api.__all__})
