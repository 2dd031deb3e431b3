"""Circuit search: `discover(model, task, method=...)` -> Circuit, and `search(...)` -> SearchResult.

Methods live in a registry, `acdc_lite.search.methods.METHODS` (one module each: its options dataclass, its needs,
its run function); `acdc_lite.search.api` decides the settings once and runs one. The algorithms are
`acdc`, `head_pruning`, `attribution`, `select`, `hybrid`. This package module itself imports no torch: the
names below are loaded on first use, so the CLI can list methods and options cheaply.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from acdc_lite.lazy import lazy_names
from acdc_lite.search.methods import METHODS
from acdc_lite.search.spec import Level, MethodSpec, SearchError, Settings

CHECKPOINTED = tuple(name for name, spec in METHODS.items() if spec.checkpointable)  # methods that can resume
GRADIENT_METHODS = tuple(name for name, spec in METHODS.items() if spec.gradient)

_LAZY = {"search": "acdc_lite.search.api", "discover": "acdc_lite.search.api", "to_circuit": "acdc_lite.search.api",
         "default_metric": "acdc_lite.search.api", "default_tau": "acdc_lite.search.api",
         "settings_of": "acdc_lite.search.api",
         "SearchResult": "acdc_lite.search.common", "SearchContext": "acdc_lite.search.common",
         "prune_dangling": "acdc_lite.search.common"}


__getattr__, __dir__ = lazy_names(globals(), _LAZY)


__all__ = ["CHECKPOINTED", "GRADIENT_METHODS", "METHODS", "Level", "MethodSpec", "SearchContext", "SearchError", "SearchResult",
           "Settings",
           "default_metric", "default_tau", "discover", "prune_dangling", "search", "settings_of", "to_circuit"]

if TYPE_CHECKING:
    from acdc_lite.search.api import default_metric, default_tau, discover, search, settings_of, to_circuit
    from acdc_lite.search.common import SearchContext, SearchResult, prune_dangling
