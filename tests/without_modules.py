"""`python -m tests.without_modules`: run the function with some modules made unimportable.

The modules named in KUBESENTIMENT_BLOCKED_MODULES (comma-separated dotted names) and every
module under them raise ModuleNotFoundError on import, as they would in an image without them;
then `functions.sentiment` runs as `python -m functions.sentiment` would run it.
"""

from __future__ import annotations

import importlib.abc
import importlib.machinery
import os
import runpy
import sys
from collections.abc import Sequence
from types import ModuleType


class Blocker(importlib.abc.MetaPathFinder):
    """Refuses the blocked modules and everything under them."""

    def __init__(self, names: set[str]) -> None:
        self.names = names

    def find_spec(
        self, fullname: str, path: Sequence[str] | None, target: ModuleType | None = None
    ) -> importlib.machinery.ModuleSpec | None:
        if any(fullname == n or fullname.startswith(f"{n}.") for n in self.names):
            raise ModuleNotFoundError(f"No module named {fullname!r} (blocked)", name=fullname)
        return None


if __name__ == "__main__":
    blocked = {n for n in os.environ.get("KUBESENTIMENT_BLOCKED_MODULES", "").split(",") if n}
    sys.meta_path.insert(0, Blocker(blocked))
    runpy.run_module("functions.sentiment", run_name="__main__", alter_sys=True)
