"""What every search method shares: the patching setup, the result type, circuit pruning."""

from __future__ import annotations

import time
from dataclasses import dataclass, field

import torch
from torch import nn

from acdc_lite.graph import ModelGraph, NodeKind, connected_mask
from acdc_lite.patching import Ablation, EdgePatcher, Metric, ablated_outputs
from acdc_lite.task import Task


@dataclass
class SearchContext:
    """A model, its graph, a task and the patcher that evaluates edge sets on it."""

    model: nn.Module
    graph: ModelGraph
    task: Task
    patcher: EdgePatcher
    metric: Metric
    metric_name: str
    ablation: Ablation
    started: float = field(default_factory=time.perf_counter)

    @classmethod
    def build(cls, model: nn.Module, task: Task, metric: str | None = None, ablation: Ablation | str = Ablation.RESAMPLE,
              batch_size: int = 32) -> SearchContext:
        graph = ModelGraph.from_model(model)
        ablation = Ablation(ablation)
        ablated = ablated_outputs(model, graph, task.corrupt, ablation, batch_size, task.attention_mask)
        patcher = EdgePatcher(model, graph, task.clean, ablated, batch_size, task.attention_mask)
        metric_fn = task.metric(metric, model=model)
        return cls(model, graph, task, patcher, metric_fn, metric or task.default_metric, ablation)

    def evaluate(self, kept: torch.Tensor, **kw) -> torch.Tensor:
        """Mean metric of one [S, R] mask (a float) or of [C, S, R] candidates ([C])."""
        values = self.patcher.evaluate(kept, self.metric, **kw)
        return values if kept.dim() == 3 else values[0]

    def seconds(self) -> float:
        return time.perf_counter() - self.started


@dataclass
class SearchResult:
    """A search's edge set and scores, and what it cost.

    kept: [S, R] bool; scores: [S, R] float (higher = more important to the clean behaviour, signed),
    NaN for edges the method did not score. trajectory: one dict per step (metric, edges, passes).
    Passes are in units of one pass over all examples; a pass recomputing layers l.. of L counts (L - l) / L.
    """

    method: str
    params: dict
    kept: torch.Tensor
    scores: torch.Tensor
    trajectory: list[dict]
    forward_passes: float
    backward_passes: float
    seconds: float
    metric_full: float
    metric_empty: float
    metric_circuit: float
    stats: dict = field(default_factory=dict)  # method-specific counts, e.g. ACDC's tested edges and pass floor

    @property
    def faithfulness(self) -> float:
        denom = self.metric_full - self.metric_empty
        return float("nan") if abs(denom) < 1e-12 else (self.metric_circuit - self.metric_empty) / denom

    @property
    def n_edges(self) -> int:
        return int(self.kept.sum())


def prune_dangling(graph: ModelGraph, kept: torch.Tensor) -> torch.Tensor:
    """Drop edges that are not on a path from `input` to `logits`: [S, R] bool -> [S, R] bool."""
    return connected_mask(graph, kept)


def node_mask_to_edges(graph: ModelGraph, removed_nodes: set[int]) -> torch.Tensor:
    """Edge mask with every outgoing edge of the removed sender indices dropped: [S, R] bool."""
    kept = graph.full_mask()
    if removed_nodes:
        kept[sorted(removed_nodes)] = False
    return kept


def component_senders(graph: ModelGraph, include_mlps: bool) -> list[int]:
    """Sender indices of the components a node-level method may remove (heads, optionally MLPs)."""
    return [i for i, n in enumerate(graph.senders)
            if n.kind is NodeKind.HEAD or (include_mlps and n.kind is NodeKind.MLP)]
