"""Built-in tasks, one module each. Installed as `acdc_lite.tasks`.

Every module defines `DESCRIPTION` (one line) and `build(model, n_examples, seed) -> Task`.
"""

from __future__ import annotations

import importlib
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
