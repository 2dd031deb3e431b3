"""acdc-lite: automated circuit discovery for transformer language models."""

from acdc_lite.circuit import Circuit
from acdc_lite.counterfactual import counterfactual_task
from acdc_lite.diff import diff
from acdc_lite.graph import Edge, ModelGraph, Node, NodeKind, Port
from acdc_lite.models import ModelLoadError, fingerprint, load_model, model_info
from acdc_lite.patching import Ablation, EdgePatcher, ablated_outputs, sender_outputs
from acdc_lite.render import render
from acdc_lite.search import discover, search
from acdc_lite.task import Task, TaskError, Vocabulary, load_task
from acdc_lite.transformer import SmallTransformer, SmallTransformerConfig
from acdc_lite.validate import validate

__version__ = "0.1.0"

__all__ = [
    "Ablation", "Edge", "EdgePatcher", "ModelGraph", "ModelLoadError", "Node", "NodeKind", "Port",
    "SmallTransformer", "SmallTransformerConfig", "ablated_outputs", "fingerprint", "load_model",
    "model_info", "sender_outputs", "Task", "TaskError", "Vocabulary", "load_task", "Circuit", "discover", "search",
]
__all__ += ["validate", "render", "diff", "counterfactual_task"]
