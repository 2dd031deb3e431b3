"""Built-in tasks, one module each. Installed as `acdc_lite.tasks`.

Every module defines `DESCRIPTION` (one line) and `build(model, n_examples, seed) -> Task`.
"""

from __future__ import annotations

import ast
import importlib
import importlib.util
from pathlib import Path
from types import ModuleType

# task name -> module in this package; a module missing here is not built in yet
_MODULES = {
    "induction": "induction",
    "ioi": "ioi",
    "greater-than": "greater_than",
    "docstring": "docstring",
    "addition": "addition",
}


def registry() -> dict[str, ModuleType]:
    out = {}
    for name, module in _MODULES.items():
        try:
            out[name] = importlib.import_module(f"{__name__}.{module}")
        except ModuleNotFoundError as e:
            if e.name != f"{__name__}.{module}":
                raise
    return out


def descriptions() -> dict[str, str]:
    """Task name -> its module's one-line DESCRIPTION, read from the source without importing it (no torch: fast
    for `acdc-lite tasks list`)."""
    out = {}
    for name, module in _MODULES.items():
        spec = importlib.util.find_spec(f"{__name__}.{module}")
        if spec is None or spec.origin is None:
            continue
        tree = ast.parse(Path(spec.origin).read_text())
        out[name] = next(node.value.value for node in tree.body if isinstance(node, ast.Assign)
                         and any(getattr(t, "id", None) == "DESCRIPTION" for t in node.targets))
    return out
