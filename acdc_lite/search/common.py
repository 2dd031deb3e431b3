"""What every search method shares: the patching setup, the result type, circuit pruning."""

from __future__ import annotations

import math
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field

import torch
from torch import nn

from acdc_lite.faithfulness import faithfulness
from acdc_lite.graph import ModelGraph, NodeKind, connected_mask
from acdc_lite.metrics import PositionMetric
from acdc_lite.patching import Ablation, EdgePatcher, Metric, ablated_outputs
from acdc_lite.search.spec import Settings
from acdc_lite.task import METRICS, Task
from acdc_lite.twin import TWIN_NAME, native_twin


@dataclass
class SearchContext:
    """A model, its graph, a task and the patcher that evaluates edge sets on it.

    `model` is the user's model (what circuits name); the patcher, the ablated cache and the built-in metrics' clean
    logits run on `runner`: the model itself, or its verified native twin (`acdc_lite.twin`), which computes the same
    function with the same hooks in less time; `executor` names which.

    Forward passes spent on bookkeeping (the reference values m(full) and m(empty), selecting a circuit from
    scores, evaluating the final circuit) are tallied by kind in `bookkeeping` (`counted_as`), apart from the
    search's own; the patcher's counters hold the total.
    """

    model: nn.Module
    graph: ModelGraph
    task: Task
    patcher: EdgePatcher
    metric: Metric
    metric_name: str
    ablation: Ablation
    started: float = field(default_factory=time.perf_counter)
    bookkeeping: dict[str, float] = field(default_factory=dict)  # kind -> forward passes
    _reference: tuple[float, float] | None = None
    _counting: bool = False
    corrupt_metric: float | None = None  # mean metric of the plain run on the corrupted prompts (resample ablation)
    corrupt_values: torch.Tensor | None = None  # [N] each example's metric in that run (= m(empty) under resample)
    runner: nn.Module | None = None  # what the passes run on (None: `model`)

    @property
    def executor(self) -> str:
        """What ran the passes: "native-twin" or "model"."""
        return TWIN_NAME if self.runner is not None and self.runner is not self.model else "model"

    @classmethod
    def build(cls, model: nn.Module, task: Task, metric: str | None = None, ablation: Ablation | str = Ablation.RESAMPLE,
              batch_size: int = 32, twin: bool = True) -> SearchContext:
        """`twin`: run the passes on the model's native twin when it has one (see `acdc_lite.twin`)."""
        graph = ModelGraph.from_model(model)
        ablation = Ablation(ablation)
        runner = native_twin(model, padded=not bool(task.attention_mask.all())) if twin else None
        runner = model if runner is None else runner
        if runner is not model and ModelGraph.from_model(runner) != graph:
            raise RuntimeError(f"the native twin's graph {ModelGraph.from_model(runner)} is not the model's {graph}")
        name = metric or task.default_metric
        builtin = name in METRICS and name not in task.custom_metrics  # a custom metric's factory gets the user's model
        metric_fn = task.metric(metric, model=runner if builtin else model)
        total = torch.zeros(1)  # summed as `EdgePatcher.evaluate` sums, so equal runs give equal numbers
        each = torch.zeros(len(task.clean))

        at_positions = isinstance(metric_fn, PositionMetric)  # the cache pass computes only the logits it reads

        def on_logits(logits: torch.Tensor, rows: slice) -> None:
            fn = metric_fn.at if at_positions else metric_fn
            values = fn(logits, torch.arange(rows.start, rows.stop, device=logits.device)).detach().cpu()
            total.add_(values.sum())
            each[rows] = values.float()

        resample = ablation is Ablation.RESAMPLE
        ablated = ablated_outputs(runner, graph, task.corrupt, ablation, batch_size, task.attention_mask,
                                  on_logits if resample else None, metric_fn.positions if at_positions and resample else None)
        patcher = EdgePatcher(runner, graph, task.clean, ablated, batch_size, task.attention_mask)
        corrupt = float(total / len(task.clean)) if resample else None
        corrupt = corrupt if corrupt is not None and math.isfinite(corrupt) else None  # else evaluate() says why
        return cls(model, graph, task, patcher, metric_fn, name, ablation, corrupt_metric=corrupt,
                   corrupt_values=each if corrupt is not None else None, runner=runner)

    def evaluate(self, kept: torch.Tensor, **kw) -> torch.Tensor:
        """Mean metric of one [S, R] mask (a float) or of [C, S, R] candidates ([C])."""
        values = self.patcher.evaluate(kept, self.metric, **kw)
        return values if kept.dim() == 3 else values[0]

    def seconds(self) -> float:
        return time.perf_counter() - self.started

    @contextmanager
    def counted_as(self, kind: str) -> Iterator[None]:
        """Count the forward passes run inside as bookkeeping of `kind` (not nested: the outer kind counts)."""
        if self._counting:
            yield
            return
        before, self._counting = self.patcher.forward_passes, True
        try:
            yield
        finally:
            self._counting = False
            self.bookkeeping[kind] = self.bookkeeping.get(kind, 0.0) + self.patcher.forward_passes - before

    def reference(self, full: float | None = None) -> tuple[float, float]:
        """(m(full), m(empty)): measured once, as bookkeeping ("reference"), and reused by every step that needs them.

        `full`: m(full) when the caller has measured it already (a gradient pass runs the clean model). m(empty)
        under resample ablation is the model run on the corrupted prompts (every receiver then reads only corrupted
        senders), whose metric the cache pass measured (`corrupt_metric`): no pass; otherwise one patched pass."""
        if self._reference is None:
            with self.counted_as("reference"):
                if full is None:
                    full = float(self.evaluate(self.graph.full_mask()))
                empty = self.corrupt_metric if self.corrupt_metric is not None else float(self.evaluate(self.graph.empty_mask()))
                self._reference = (full, empty)
        return self._reference

    @property
    def metric_full(self) -> float:
        return self.reference()[0]

    @property
    def metric_empty(self) -> float:
        return self.reference()[1]

    def final(self, kept: torch.Tensor) -> float:
        """The metric of the found circuit [S, R] (bookkeeping: "final evaluation")."""
        with self.counted_as("final evaluation"):
            return float(self.evaluate(kept))


@dataclass
class SearchResult:
    """A search's edge set and scores, and what it cost.

    kept: [S, R] bool; scores: [S, R] float (higher = more important to the clean behaviour, signed),
    NaN for edges the method did not score. trajectory: one dict per step (metric, edges, passes).
    Passes are in units of one pass over all examples; a pass recomputing layers l.. of L counts (L - l) / L.
    forward_passes is the total; `search_forward_passes` leaves out the `bookkeeping` (reference values,
    selection, final evaluation; the corrupted-activation cache is never counted).
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
    settings: Settings | None = None  # every resolved setting (set by `search`)
    bookkeeping: dict[str, float] = field(default_factory=dict)  # forward passes not spent by the search, by kind

    @property
    def faithfulness(self) -> float:
        return faithfulness(self.metric_circuit, self.metric_full, self.metric_empty)

    @property
    def bookkeeping_forward_passes(self) -> float:
        return sum(self.bookkeeping.values())

    @property
    def search_forward_passes(self) -> float:
        """Forward passes the search itself spent (`forward_passes` is the total, bookkeeping included)."""
        return self.forward_passes - self.bookkeeping_forward_passes

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
