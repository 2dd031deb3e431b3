"""acdc-lite: automated circuit discovery for transformer language models.

The public names below are imported on first use (PEP 562), so `import acdc_lite` is cheap and commands
that need no model never import torch. Built-in providers (the tracr programs) reach the registries of
`acdc_lite.registry` through one plugin added here and run on the first registry lookup.
"""

from __future__ import annotations

import sys
import types
from typing import TYPE_CHECKING

from acdc_lite import registry as _registry
from acdc_lite.lazy import lazy_names

__version__ = "0.1.0"  # the only place the version is written (pyproject reads it)

_EXPORTS = {
    "Ablation": "acdc_lite.patching", "EdgePatcher": "acdc_lite.patching", "ablated_outputs": "acdc_lite.patching",
    "sender_outputs": "acdc_lite.patching",
    "Circuit": "acdc_lite.circuit",
    "counterfactual_task": "acdc_lite.counterfactual",
    "diff": "acdc_lite.diff",
    "Edge": "acdc_lite.graph", "ModelGraph": "acdc_lite.graph", "Node": "acdc_lite.graph", "NodeKind": "acdc_lite.graph",
    "Port": "acdc_lite.graph",
    "ModelLoadError": "acdc_lite.models", "fingerprint": "acdc_lite.models", "load_model": "acdc_lite.models",
    "model_info": "acdc_lite.shape",
    "render": "acdc_lite.render",
    "discover": "acdc_lite.search", "search": "acdc_lite.search",
    "Task": "acdc_lite.task", "TaskError": "acdc_lite.task", "Vocabulary": "acdc_lite.task", "load_task": "acdc_lite.task",
    "SmallTransformer": "acdc_lite.transformer", "SmallTransformerConfig": "acdc_lite.transformer",
    "validate": "acdc_lite.validate",
}

__all__ = [
    "__version__", "Ablation", "Circuit", "Edge", "EdgePatcher", "ModelGraph", "ModelLoadError", "Node", "NodeKind", "Port",
    "SmallTransformer", "SmallTransformerConfig", "Task", "TaskError", "Vocabulary", "ablated_outputs", "counterfactual_task",
    "diff", "discover", "fingerprint", "load_model", "load_task", "model_info", "render", "search", "sender_outputs", "validate",
]


__getattr__, __dir__ = lazy_names(globals(), _EXPORTS)


def _builtin_providers() -> None:
    """Register the providers shipped with the package (run once, on a source registry's first lookup)."""
    from acdc_lite import tracr

    tracr.register()


def _builtin_renderers() -> None:
    """Register the SVG drawing that notebooks show for a Circuit (run on the renderer registry's first lookup)."""
    from acdc_lite.render import render_svg  # `acdc_lite.render` is the function (see _SHADOWED), not the module

    _registry.CIRCUIT_RENDERERS.register("svg", render_svg)


_registry.MODEL_SOURCES.add_plugin(_builtin_providers)
_registry.TASK_SOURCES.add_plugin(_builtin_providers)
_registry.CIRCUIT_RENDERERS.add_plugin(_builtin_renderers)

# `acdc_lite.search`, `.validate`, `.render` and `.diff` are the functions, as they always were, although a
# submodule of each name exists: importing the submodule must not rebind the package attribute to it.
_SHADOWED = {"diff", "render", "search", "validate"}


class _Package(types.ModuleType):
    def __setattr__(self, name: str, value) -> None:
        if name in _SHADOWED and isinstance(value, types.ModuleType):
            return
        super().__setattr__(name, value)


sys.modules[__name__].__class__ = _Package

if TYPE_CHECKING:  # for type checkers and IDEs; at run time these come from __getattr__
    from acdc_lite.circuit import Circuit
    from acdc_lite.counterfactual import counterfactual_task
    from acdc_lite.diff import diff
    from acdc_lite.graph import Edge, ModelGraph, Node, NodeKind, Port
    from acdc_lite.models import ModelLoadError, fingerprint, load_model
    from acdc_lite.patching import Ablation, EdgePatcher, ablated_outputs, sender_outputs
    from acdc_lite.render import render
    from acdc_lite.search import discover, search
    from acdc_lite.shape import model_info
    from acdc_lite.task import Task, TaskError, Vocabulary, load_task
    from acdc_lite.transformer import SmallTransformer, SmallTransformerConfig
    from acdc_lite.validate import validate
