"""Path patching on the edge patcher: how much of the behaviour a sender carries through chosen receivers.

The effect of sender s through receivers R is measured on the clean run with the direct edges s -> r
(r in R) fed s's ablated output (its output on the corrupted prompt, under resample ablation) and every
other edge clean, everything downstream recomputed:

    effect(s, R) = (m(model) - m(model without edges s -> R)) / (m(model) - m(ablated model))

a share of the clean-corrupt gap (with resample ablation the ablated model is the corrupted run).
A single edge's path is exactly that edge removed by `EdgePatcher`; s through all its receivers is s
ablated as a whole. `path_table` lists every edge of a circuit, removed from the whole model and from
the circuit.
"""

from __future__ import annotations

import logging
from collections.abc import Iterable, Sequence
from dataclasses import dataclass

import pandas as pd
import torch
from matplotlib.figure import Figure
from torch import nn
from tqdm.auto import tqdm

from acdc_lite.circuit import Circuit
from acdc_lite.faithfulness import gap_is_zero
from acdc_lite.graph import Edge, ModelGraph, Node, Port
from acdc_lite.models import model_info
from acdc_lite.patching import Ablation, EdgePatcher, ablated_outputs, eval_mode
from acdc_lite.task import Task, TaskError

log = logging.getLogger(__name__)


def _receiver_columns(graph: ModelGraph, receiver) -> list[int]:
    """Receiver columns of `receiver`: "a1.h0<k>" or (Node, Port) one port; "a1.h0" (or a head Node) all
    three ports; "m1", "logits" their single input."""
    if isinstance(receiver, tuple):
        node, port = receiver
        return [graph.receivers.index((Node.parse(node) if isinstance(node, str) else node, Port(port)))]
    if isinstance(receiver, str) and receiver.endswith(">"):
        name, port = receiver[:-1].split("<")
        return _receiver_columns(graph, (name, port))
    node = Node.parse(receiver) if isinstance(receiver, str) else receiver
    cols = [i for i, (n, _) in enumerate(graph.receivers) if n == node]
    if not cols:
        raise ValueError(f"{node} is not a receiver of {graph!r}")
    return cols


@dataclass
class PathPatcher:
    """Cached clean/ablated sender outputs and the full and ablated model's metric for one model and task."""

    patcher: EdgePatcher
    metric_fn: object
    metric_name: str
    ablation: Ablation
    metric_full: float
    metric_empty: float
    model_name: str
    task_name: str

    @classmethod
    def build(cls, model: nn.Module, task: Task, ablation: Ablation | str = Ablation.RESAMPLE, metric: str | None = None,
              batch_size: int = 32) -> PathPatcher:
        ablation = Ablation(ablation)
        graph = ModelGraph.from_model(model)
        metric_name = metric or task.default_metric
        with torch.no_grad(), eval_mode(model):
            metric_fn = task.metric(metric_name, model=model)
            ablated = ablated_outputs(model, graph, task.corrupt, ablation, batch_size)
            patcher = EdgePatcher(model, graph, task.clean, ablated, batch_size)
            full, empty = (float(v) for v in patcher.evaluate(torch.stack([graph.full_mask(), graph.empty_mask()]), metric_fn))
        if gap_is_zero(full, empty):
            raise TaskError(f"task {task.name!r}: the model and the {ablation.value}-ablated model give the same "
                            f"{metric_name} ({full:.4g}); path effects need a gap")
        return cls(patcher, metric_fn, metric_name, ablation, full, empty, model_info(model).name, task.name)

    @property
    def graph(self) -> ModelGraph:
        return self.patcher.graph

    @property
    def gap(self) -> float:
        return self.metric_full - self.metric_empty

    def without(self, removals: Sequence[torch.Tensor], base: torch.Tensor | None = None, batch: int = 8,
                progress: bool = False, desc: str = "paths") -> list[float]:
        """Metric of `base` (default: the whole model) minus each [S, R] bool mask of edges in `removals`."""
        base = self.graph.full_mask() if base is None else base.bool()
        out: list[float] = []
        chunks = [removals[i:i + batch] for i in range(0, len(removals), batch)]
        with torch.no_grad(), eval_mode(self.patcher.model):
            for chunk in tqdm(chunks, desc=desc, disable=not progress, leave=False):
                masks = torch.stack([base & ~r for r in chunk])
                out += self.patcher.evaluate(masks, self.metric_fn).tolist()
        return out

    def removal(self, sender, receivers: Iterable | None = None) -> torch.Tensor:
        """[S, R] bool: the edges from `sender` (a Node or name) into `receivers` (default: every receiver)."""
        g = self.graph
        node = Node.parse(sender) if isinstance(sender, str) else sender
        if node not in g.senders:
            raise ValueError(f"{node} is not a sender of {g!r} (senders: input, heads, MLPs)")
        s = g.senders.index(node)
        mask = g.empty_mask()
        cols = range(g.n_receivers) if receivers is None else [c for r in receivers for c in _receiver_columns(g, r)]
        for c in cols:
            mask[s, c] = bool(g.valid[s, c])
        if not mask.any():
            raise ValueError(f"{node} sends no edge into {list(receivers or [])}")
        return mask

    def effect(self, sender, receivers: Iterable | None = None) -> float:
        """Share of the gap lost when `sender` reaches `receivers` only with its ablated output."""
        return (self.metric_full - self.without([self.removal(sender, receivers)])[0]) / self.gap


def path_effect(model: nn.Module, task: Task, sender, receivers: Iterable | None = None,
                ablation: Ablation | str = Ablation.RESAMPLE, metric: str | None = None) -> float:
    """The effect of `sender` through `receivers` only (see module docstring), as a share of the gap."""
    return PathPatcher.build(model, task, ablation, metric).effect(sender, receivers)


def path_table(model: nn.Module, task: Task, edges: Circuit | Iterable[Edge | str], ablation: Ablation | str | None = None,
               metric: str | None = None, progress: bool = True, pp: PathPatcher | None = None) -> pd.DataFrame:
    """One row per edge (a circuit's, or any list): the edge's path effect removed from the whole model
    (`share_of_gap`) and from the circuit (`share_in_circuit`: (m(C) - m(C without e)) / gap), sorted by
    share_of_gap, largest first. A circuit's own ablation is the default."""
    circuit = edges if isinstance(edges, Circuit) else None
    if circuit is not None:
        ablation = ablation or circuit.ablation
        edge_list = circuit.edge_list()
    else:
        edge_list = [Edge.parse(e) if isinstance(e, str) else e for e in edges]
    pp = pp or PathPatcher.build(model, task, ablation or Ablation.RESAMPLE, metric)
    g = pp.graph
    singles = []
    for e in edge_list:
        m = g.empty_mask()
        m[g.edge_index(e)] = True
        singles.append(m)
    in_model = pp.without(singles, progress=progress, desc="edge paths")
    circuit_mask = g.mask_from_edges(edge_list)
    with torch.no_grad(), eval_mode(pp.patcher.model):
        m_circuit = float(pp.patcher.evaluate(circuit_mask, pp.metric_fn)[0])
    whole = torch.equal(circuit_mask, g.valid)  # every edge: the circuit is the model
    in_circuit = in_model if whole else pp.without(singles, base=circuit_mask, progress=progress, desc="edge paths in circuit")
    frame = pd.DataFrame({
        "edge": [str(e) for e in edge_list],
        "sender": [str(e.src) for e in edge_list],
        "receiver": [str(e.dst) for e in edge_list],
        "port": [e.port.value for e in edge_list],
        "share_of_gap": [(pp.metric_full - v) / pp.gap for v in in_model],
        "share_in_circuit": [(m_circuit - v) / pp.gap for v in in_circuit],
    })
    frame.attrs.update(model=pp.model_name, task=pp.task_name, metric=pp.metric_name, ablation=pp.ablation.value,
                       metric_full=pp.metric_full, metric_empty=pp.metric_empty, metric_circuit=m_circuit)
    return frame.sort_values("share_of_gap", ascending=False, kind="stable").reset_index(drop=True)


def path_bars(table: pd.DataFrame, ax=None) -> Figure:
    """Horizontal bars of each edge's share of the gap, removed from the model and from the circuit."""
    n = len(table)
    if ax is None:
        fig = Figure(figsize=(8, 1.5 + 0.3 * max(n, 1)), layout="constrained")
        ax = fig.add_subplot()
    else:
        fig = ax.figure
    y = range(n)
    ax.barh([i - 0.2 for i in y], table["share_of_gap"], height=0.4, color="#b2182b", label="removed from the model")
    ax.barh([i + 0.2 for i in y], table["share_in_circuit"], height=0.4, color="#2166ac", label="removed from the circuit")
    ax.set_yticks(list(y), list(table["edge"]))
    ax.invert_yaxis()
    ax.axvline(0, color="black", lw=0.8)
    ax.set_xlabel("share of clean-corrupt gap lost")
    ax.set_ylabel("edge")
    a = table.attrs
    ax.set_title(f"path effects of circuit edges\n{a.get('model', '')} / {a.get('task', '')} / {a.get('metric', '')}, "
                 f"{a.get('ablation', '')} ablation")
    ax.legend(loc="lower right")
    return fig


__all__ = ["PathPatcher", "path_bars", "path_effect", "path_table"]


def write_paths(table: pd.DataFrame, out_dir, formats=("png", "svg")) -> list:
    """The path table as `paths.csv`, its bars as `paths.png` / `paths.svg`, and an index; returns the paths."""
    from .figures import IndexEntry, save_figure, save_table, write_index

    paths = [save_table(table, out_dir, "paths")]
    entries = [IndexEntry("paths.csv", "table", "path effect of each edge, removed from the model and from the circuit")]
    for p in save_figure(path_bars(table), out_dir, "paths", formats):
        paths.append(p)
        entries.append(IndexEntry(p.name, "figure" if p.suffix == ".png" else "vector figure", "path effects of the edges"))
    a = table.attrs
    paths.append(write_index(out_dir, f"path patching: {a.get('model')} / {a.get('task')}", entries,
                             params={k: (round(v, 4) if isinstance(v, float) else v) for k, v in a.items()}))
    return paths


__all__ += ["write_paths"]
