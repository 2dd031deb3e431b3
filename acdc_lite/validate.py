"""Validate a circuit by ablation: faithfulness, completeness, minimality, curves, baselines, stability, ground truth.

Notation: m(X) is the task metric (mean over examples, higher = more clean behaviour) when only the
edges in X are kept and every other edge is ablated (the circuit's ablation unless told otherwise).
N is the full model, the empty set is the fully ablated model, C the circuit.

- faithfulness f(C) = (m(C) - m(empty)) / (m(N) - m(empty)): 1 = the circuit alone does what the model does.
- completeness = f(N minus C): the faithfulness of the complement. 0 = without the circuit the behaviour is
  gone (a complete circuit); 1 = the rest of the model does the task just as well.
- minimality: each edge's (node's) necessity (m(C) - m(C minus e)) / (m(N) - m(empty)); edges with
  |necessity| below a tolerance do nothing.
- curve, CPR and CMD (as in the MIB benchmark, Mueller et al. 2025): rank edges by score, keep the top
  int(k * |E|) for k in 0.1%, 0.2%, 0.5%, 1%, 2%, 5%, 10%, 20%, 50%, 100%, prune edges off every
  input -> logits path, and measure f. CPR (circuit performance ratio) = trapezoidal area under f(k)
  over k (higher is better); CMD (circuit-model distance) = trapezoidal area under |1 - f(k)| (lower is
  better). MIB ranks by signed scores for CPR and by absolute scores for CMD; `validate` does the same.
- ground truth: ROC AUC of a score ranking against a reference circuit's edges (nodes), and
  precision / recall of a circuit's edge (node) set.

Everything is a pure function of its inputs; nothing mutates the model, task or circuit.
"""

from __future__ import annotations

import logging
import math
import time
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, field

import numpy as np
import torch
from torch import nn
from tqdm.auto import tqdm

from acdc_lite.circuit import Circuit, CircuitError, ModelRef
from acdc_lite.faithfulness import PER_EXAMPLE_RTOL, faithfulness, gap_is_zero
from acdc_lite.graph import Edge, ModelGraph, Node, NodeKind, connected_mask, jaccard, receiver_nodes, unit_members
from acdc_lite.patching import Ablation, EdgePatcher, ablated_outputs, eval_mode
from acdc_lite.ranking import top_n
from acdc_lite.task import Task

log = logging.getLogger(__name__)

MIB_FRACTIONS = (0.001, 0.002, 0.005, 0.01, 0.02, 0.05, 0.1, 0.2, 0.5, 1.0)


# ---- result types ------------------------------------------------------------------------------
@dataclass(frozen=True)
class PerExample:
    """Distribution over examples of the circuit's faithfulness (m_i(C) - m_i(empty)) / (m_i(N) - m_i(empty)).

    Examples whose own gap |m_i(N) - m_i(empty)| is below `min_gap` are left out (NaN in `values`).
    """

    n: int
    n_excluded: int
    min_gap: float
    mean: float
    std: float
    q05: float
    q25: float
    median: float
    q75: float
    q95: float
    values: list[float]  # per example, NaN where excluded
    metric_circuit: list[float]  # raw per-example metric of the circuit


@dataclass(frozen=True)
class Minimality:
    """Necessity of each checked circuit edge (node): the normalised metric drop when only it is removed."""

    n_edges: int
    n_checked: int  # edges checked (a random sample of units when the circuit has more than the cap; a tied k/v unit counts its edges)
    tol: float
    edge_necessity: dict[str, float]
    useless_edges: list[str]  # |necessity| < tol
    harmful_edges: list[str]  # necessity <= -tol: removing the edge brings the circuit closer to the model
    node_necessity: dict[str, float]
    useless_nodes: list[str]

    @property
    def useless_fraction(self) -> float:
        return len(self.useless_edges) / self.n_checked if self.n_checked else float("nan")


@dataclass(frozen=True)
class FaithfulnessCurve:
    """f at circuit sizes given as fractions of all edges; `n_edges` is after pruning dangling edges."""

    fractions: list[float]
    n_requested: list[int]
    n_edges: list[int]
    faithfulness: list[float]
    metric: list[float]
    absolute: bool  # ranked by |score|
    cpr: float  # trapezoidal area under f over the fractions
    cmd: float  # trapezoidal area under |1 - f|


@dataclass(frozen=True)
class RandomBaseline:
    """The same measurements for random edge sets of the circuit's size (unpruned), over seeds."""

    n_seeds: int
    n_edges: int
    faithfulness_mean: float
    faithfulness_std: float
    completeness_mean: float
    completeness_std: float
    kl_mean: float
    kl_std: float
    faithfulness: list[float]


@dataclass(frozen=True)
class Stability:
    """Agreement of a search re-run on bootstrap resamples of the task's examples."""

    n_resamples: int
    n_edges: list[int]
    edge_jaccard_mean: float
    edge_jaccard_min: float
    node_jaccard_mean: float
    node_jaccard_min: float
    stable_edges: list[str]  # found in every resample
    unstable_edges: dict[str, float]  # edge -> fraction of resamples that found it (0 < fraction < 1)
    edge_jaccard_to_circuit: list[float]  # each resample against the validated circuit (empty if none)


@dataclass(frozen=True)
class PrecisionRecall:
    tp: int
    n_predicted: int
    n_reference: int
    precision: float
    recall: float
    f1: float


@dataclass(frozen=True)
class GroundTruth:
    """Comparison with a reference circuit. Node level counts heads and MLPs (input and logits are in every circuit)."""

    reference: str
    absolute: bool  # AUC ranked by |score|
    edge_auc: float
    node_auc: float
    n_scored_edges: int  # edges with a known score; the rest rank last (tied)
    edges: PrecisionRecall | None
    nodes: PrecisionRecall | None


@dataclass(frozen=True)
class ValidationReport:
    """Everything `validate` measured. `to_dict()` is JSON-able (NaN becomes null)."""

    task: str
    model: str
    method: str
    ablation: str
    metric: str
    n_examples: int
    n_edges: int
    n_nodes: int
    n_edges_total: int
    metric_full: float
    metric_empty: float
    metric_circuit: float
    metric_complement: float
    faithfulness: float
    completeness: float
    kl_circuit: float  # mean KL(full model || circuit) at the answer position
    kl_empty: float
    kl_complement: float
    per_example: PerExample
    minimality: Minimality | None = None
    curve: FaithfulnessCurve | None = None  # signed ranking: CPR
    curve_abs: FaithfulnessCurve | None = None  # |score| ranking: CMD
    random_baseline: RandomBaseline | None = None
    stability: Stability | None = None
    ground_truth: GroundTruth | None = None
    forward_passes: float = 0.0
    seconds: float = 0.0
    notes: list[str] = field(default_factory=list)

    @property
    def cpr(self) -> float:
        return self.curve.cpr if self.curve else float("nan")

    @property
    def cmd(self) -> float:
        return self.curve_abs.cmd if self.curve_abs else float("nan")

    def to_dict(self) -> dict:
        d = _json_clean(asdict(self))
        d["cpr"], d["cmd"] = _json_clean(self.cpr), _json_clean(self.cmd)
        return d

    def summary(self) -> str:
        """A few human-readable lines."""
        lines = [f"{self.task} / {self.model} / {self.method}: {self.n_edges} of {self.n_edges_total} edges, "
                 f"{self.n_nodes} nodes, {self.ablation} ablation, metric {self.metric}",
                 f"faithfulness {self.faithfulness:.3f} (per example median {self.per_example.median:.3f}, "
                 f"IQR {self.per_example.q25:.3f}..{self.per_example.q75:.3f}), completeness {self.completeness:.3f}, "
                 f"KL {self.kl_circuit:.4f} (empty {self.kl_empty:.4f})"]
        if self.curve or self.curve_abs:
            lines.append(f"CPR {self.cpr:.3f}, CMD {self.cmd:.3f}")
        if self.minimality:
            m = self.minimality
            lines.append(f"minimality: {len(m.useless_edges)} of {m.n_checked} checked edges do nothing (|necessity| < {m.tol})")
        if self.random_baseline:
            r = self.random_baseline
            lines.append(f"random circuits of {r.n_edges} edges: faithfulness {r.faithfulness_mean:.3f} +- {r.faithfulness_std:.3f}")
        if self.stability:
            s = self.stability
            lines.append(f"stability over {s.n_resamples} bootstrap resamples: edge Jaccard {s.edge_jaccard_mean:.3f} "
                         f"(min {s.edge_jaccard_min:.3f}), node Jaccard {s.node_jaccard_mean:.3f}")
        if self.ground_truth:
            g = self.ground_truth
            lines.append(f"vs {g.reference}: edge AUC {g.edge_auc:.3f}, node AUC {g.node_auc:.3f}"
                         + (f", edge precision {g.edges.precision:.3f} recall {g.edges.recall:.3f}" if g.edges else ""))
        return "\n".join(lines)


def _json_clean(x):
    """Dataclass dicts -> JSON-able: NaN/inf -> None, numpy/torch scalars -> float."""
    if isinstance(x, dict):
        return {str(k): _json_clean(v) for k, v in x.items()}
    if isinstance(x, (list, tuple)):
        return [_json_clean(v) for v in x]
    if isinstance(x, (bool, int, str)) or x is None:
        return x
    x = float(x)
    return x if math.isfinite(x) else None


# ---- graph helpers ---------------------------------------------------------------------------------
def node_set(graph: ModelGraph, kept: torch.Tensor) -> set[str]:
    """Names of nodes touched by an edge of `kept` [S, R]."""
    kept = kept.bool() & graph.valid
    rnode = receiver_nodes(graph)
    touched = set(kept.any(1).nonzero().flatten().tolist()) | set(rnode[kept.any(0)].tolist())
    return {str(graph.nodes[i]) for i in touched}


def _node_edges(graph: ModelGraph, node: Node) -> torch.Tensor:
    """[S, R] bool: every edge into or out of `node`."""
    out = torch.zeros_like(graph.valid)
    if node in graph.senders:
        out[graph.senders.index(node)] = True
    cols = [i for i, (n, _) in enumerate(graph.receivers) if n == node]
    out[:, cols] = True
    return out & graph.valid


# ---- measurement helpers --------------------------------------------------------------------------
def per_example_metrics(patcher: EdgePatcher, kept: torch.Tensor, metrics: dict[str, Callable],
                        start_layer: int = 0, prefix=None) -> dict[str, torch.Tensor]:
    """Per-example values of several metrics for C candidate masks in one patched pass: name -> [C, N].

    kept: [S, R] or [C, S, R]. The first metric is the one the patcher checks for NaN.
    """
    c = 1 if kept.dim() == 2 else kept.shape[0]
    n = len(patcher.tokens)
    out = {name: torch.full((c, n), float("nan")) for name in metrics}

    def recorder(logits, idx):
        examples = idx.view(c, -1)[0].cpu()
        first = None
        for name, fn in metrics.items():
            values = fn(logits, idx)
            out[name][:, examples] = values.detach().float().view(c, -1).cpu()
            first = values if first is None else first
        return first

    patcher.evaluate(kept, recorder, start_layer=start_layer, prefix=prefix)
    return out


def _batched(items: Sequence, size: int):
    for i in range(0, len(items), size):
        yield items[i:i + size]


# ---- curves and areas -----------------------------------------------------------------------------
def area_under(fractions: Sequence[float], values: Sequence[float]) -> float:
    """Trapezoidal area under values(fractions), x not rescaled (MIB's convention): sum (x2-x1)(y1+y2)/2."""
    if len(fractions) != len(values) or len(fractions) < 2:
        raise ValueError("area_under needs two or more (fraction, value) points of equal count")
    x, y = np.asarray(fractions, dtype=float), np.asarray(values, dtype=float)
    return float(np.sum((x[1:] - x[:-1]) * (y[1:] + y[:-1]) / 2))


def cpr_cmd(fractions: Sequence[float], faithfulness: Sequence[float]) -> tuple[float, float]:
    """(CPR, CMD): areas under f and under |1 - f| over the fractions."""
    f = np.asarray(faithfulness, dtype=float)
    return area_under(fractions, f), area_under(fractions, np.abs(1 - f))


def faithfulness_curve(patcher: EdgePatcher, metric: Callable, scores: torch.Tensor, metric_full: float,
                       metric_empty: float, fractions: Sequence[float] = MIB_FRACTIONS, absolute: bool = False,
                       prune: bool = True, candidates: int = 4, progress: bool = False) -> FaithfulnessCurve:
    """f of the top int(k * |E|) edges by `scores` [S, R] for each fraction k; CPR and CMD of the curve."""
    graph = patcher.graph
    n_total = graph.n_edges()
    if torch.isnan(scores[graph.valid]).any():
        log.warning("%d of %d edges have no score; they rank last in the faithfulness curve",
                    int(torch.isnan(scores[graph.valid]).sum()), n_total)
    requested = [int(k * n_total) for k in fractions]
    masks = [top_n(graph, scores, n, absolute) for n in requested]
    masks = [connected_mask(graph, m) if prune else m for m in masks]  # top_n and pruning keep k/v units tied
    values: list[float] = []
    for batch in tqdm(list(_batched(masks, candidates)), desc="faithfulness curve", disable=not progress, leave=False):
        values += patcher.evaluate(torch.stack(batch), metric).tolist()
    f = [faithfulness(v, metric_full, metric_empty) for v in values]
    cpr, cmd = cpr_cmd(fractions, f)
    return FaithfulnessCurve(list(fractions), requested, [int(m.sum()) for m in masks], f, values, absolute, cpr, cmd)


# ---- minimality -----------------------------------------------------------------------------------
def minimality(patcher: EdgePatcher, metric: Callable, circuit_mask: torch.Tensor, metric_circuit: float,
               gap: float, max_edges: int = 256, tol: float = 0.01, candidates: int = 8, seed: int = 0,
               check_nodes: bool = True, progress: bool = False) -> Minimality:
    """Remove each circuit edge (node) alone and measure the normalised drop; [C, S, R] candidate batches.

    gap = m(N) - m(empty). With more than `max_edges` edges a seeded random sample is checked. A node is
    removed by dropping its outgoing circuit edges (its output is then ablated everywhere). With grouped-query
    attention an edge into a shared k/v input is removed for the whole group. Candidates are grouped by
    receiver layer so layers below the change are reused when the model allows it.
    """
    graph = patcher.graph
    circuit_mask = circuit_mask.bool() & graph.valid
    units = unit_members(graph, circuit_mask)  # a tied k/v unit (grouped-query attention) goes as one
    if len(units) > max_edges:
        pick = torch.randperm(len(units), generator=torch.Generator().manual_seed(seed))[:max_edges]
        units = [units[i] for i in sorted(pick.tolist())]
        log.info("minimality: checking a random %d of %d circuit edges (units)", max_edges, len(unit_members(graph, circuit_mask)))
    last = graph.n_layers - 1
    prefix = patcher.record_prefix(circuit_mask) if patcher.supports_start else None

    jobs = []  # (kind, names, start layer, mask)
    for rows, cols in units:
        m = circuit_mask.clone()
        m[rows, cols] = False
        names = tuple(str(Edge(graph.senders[s], *graph.receivers[r])) for s, r in zip(rows.tolist(), cols.tolist(), strict=True))
        jobs.append(("edge", names, min(graph.receiver_layer(int(cols[0])), last), m))
    if check_nodes:
        for name in sorted(node_set(graph, circuit_mask)):
            node = Node.parse(name)
            if node.kind is NodeKind.LOGITS:
                continue
            m = circuit_mask.clone()
            m[graph.senders.index(node)] = False  # no outgoing edge: the node's output is ablated everywhere
            first_receiver = max(node.layer, 0) + int(node.kind is NodeKind.MLP)  # a head feeds its layer's MLP
            jobs.append(("node", (name,), min(first_receiver, last), m))
    jobs.sort(key=lambda j: j[2])

    necessity: dict[tuple[str, str], float] = {}
    for batch in tqdm(list(_batched(jobs, candidates)), desc="minimality", disable=not progress, leave=False):
        start = batch[0][2] if prefix is not None else 0
        values = patcher.evaluate(torch.stack([j[3] for j in batch]), metric, start_layer=start, prefix=prefix)
        for job, v in zip(batch, values.tolist(), strict=True):
            for name in job[1]:  # every edge of a tied unit gets the unit's necessity
                necessity[(job[0], name)] = (metric_circuit - v) / gap
    edge_n = {k[1]: v for k, v in sorted(necessity.items()) if k[0] == "edge"}
    node_n = {k[1]: v for k, v in sorted(necessity.items()) if k[0] == "node"}
    return Minimality(
        n_edges=int(circuit_mask.sum()), n_checked=len(edge_n), tol=tol, edge_necessity=edge_n,
        useless_edges=[e for e, v in edge_n.items() if abs(v) < tol],
        harmful_edges=[e for e, v in edge_n.items() if v <= -tol],
        node_necessity=node_n, useless_nodes=[n for n, v in node_n.items() if abs(v) < tol],
    )


# ---- random baseline ------------------------------------------------------------------------------
def random_baseline(patcher: EdgePatcher, metric: Callable, kl: Callable, n_edges: int, metric_full: float,
                    metric_empty: float, n_seeds: int = 5, seed: int = 0, candidates: int = 4,
                    progress: bool = False) -> RandomBaseline:
    """Faithfulness, completeness and KL of `n_seeds` uniformly random edge sets of `n_edges` edges."""
    graph = patcher.graph
    units = unit_members(graph)
    masks = []
    for i in range(n_seeds):  # whole units (tied k/v edges) in random order until n_edges are reached
        m = torch.zeros_like(graph.valid)
        count = 0
        for u in torch.randperm(len(units), generator=torch.Generator().manual_seed(seed + i)).tolist():
            if count >= n_edges:
                break
            rows, cols = units[u]
            m[rows, cols] = True
            count += len(rows)
        masks += [m, graph.valid & ~m]
    metric_v, kl_v = [], []
    for batch in tqdm(list(_batched(masks, candidates)), desc="random circuits", disable=not progress, leave=False):
        out = per_example_metrics(patcher, torch.stack(batch), {"metric": metric, "kl": kl})
        metric_v += out["metric"].mean(1).tolist()
        kl_v += (-out["kl"]).mean(1).tolist()
    f = np.array([faithfulness(v, metric_full, metric_empty) for v in metric_v[0::2]])
    comp = np.array([faithfulness(v, metric_full, metric_empty) for v in metric_v[1::2]])
    kls = np.array(kl_v[0::2])
    return RandomBaseline(n_seeds, n_edges, float(f.mean()), float(f.std()), float(comp.mean()), float(comp.std()),
                          float(kls.mean()), float(kls.std()), f.tolist())


# ---- stability ------------------------------------------------------------------------------------
def stability(task: Task, search: Callable[[Task], Circuit], n_resamples: int = 5, seed: int = 0,
              circuit: Circuit | None = None, progress: bool = False) -> Stability:
    """Re-run `search(task) -> Circuit` on bootstrap resamples (examples drawn with replacement)."""
    if n_resamples < 2:
        raise ValueError(f"stability needs at least 2 resamples, got {n_resamples}")
    g = torch.Generator().manual_seed(seed)
    edge_sets, node_sets = [], []
    for _ in tqdm(range(n_resamples), desc="bootstrap searches", disable=not progress, leave=False):
        idx = torch.randint(len(task), (len(task),), generator=g)
        found = search(task.subset(idx))
        edge_sets.append(set(found.edges))
        node_sets.append(set(found.nodes))
    pairs = [(i, j) for i in range(n_resamples) for j in range(i + 1, n_resamples)]
    ej = [jaccard(edge_sets[i], edge_sets[j]) for i, j in pairs]
    nj = [jaccard(node_sets[i], node_sets[j]) for i, j in pairs]
    counts: dict[str, int] = {}
    for s in edge_sets:
        for e in s:
            counts[e] = counts.get(e, 0) + 1
    unstable = {e: c / n_resamples for e, c in sorted(counts.items(), key=lambda kv: (-kv[1], kv[0])) if c < n_resamples}
    return Stability(
        n_resamples=n_resamples, n_edges=[len(s) for s in edge_sets],
        edge_jaccard_mean=float(np.mean(ej)), edge_jaccard_min=float(np.min(ej)),
        node_jaccard_mean=float(np.mean(nj)), node_jaccard_min=float(np.min(nj)),
        stable_edges=sorted(e for e, c in counts.items() if c == n_resamples), unstable_edges=unstable,
        edge_jaccard_to_circuit=[jaccard(s, set(circuit.edges)) for s in edge_sets] if circuit else [],
    )


# ---- ground truth ---------------------------------------------------------------------------------
def roc_auc(scores, labels) -> float:
    """Area under the ROC curve of `scores` [n] for boolean `labels` [n] (Mann-Whitney U, ties as average rank).

    NaN scores count as the lowest score. NaN if there are no positives or no negatives.
    """
    s = np.asarray(scores, dtype=float).ravel()
    y = np.asarray(labels, dtype=bool).ravel()
    if s.shape != y.shape:
        raise ValueError(f"scores {s.shape} and labels {y.shape} differ in length")
    n_pos, n_neg = int(y.sum()), int((~y).sum())
    if n_pos == 0 or n_neg == 0:
        log.warning("ROC AUC needs positives and negatives (got %d and %d)", n_pos, n_neg)
        return float("nan")
    s = np.where(np.isnan(s), -np.inf, s)
    order = np.argsort(s, kind="mergesort")
    sorted_s = s[order]
    ranks = np.empty(len(s), dtype=float)
    _, starts, counts = np.unique(sorted_s, return_index=True, return_counts=True)
    for start, count in zip(starts, counts, strict=True):
        ranks[order[start:start + count]] = start + (count + 1) / 2  # 1-based average rank of the tie group
    return float((ranks[y].sum() - n_pos * (n_pos + 1) / 2) / (n_pos * n_neg))


def precision_recall(predicted: set, reference: set) -> PrecisionRecall:
    tp = len(predicted & reference)
    p = tp / len(predicted) if predicted else float("nan")
    r = tp / len(reference) if reference else float("nan")
    f1 = 2 * p * r / (p + r) if predicted and reference and (p + r) > 0 else 0.0
    return PrecisionRecall(tp, len(predicted), len(reference), p, r, f1)


def node_scores(graph: ModelGraph, scores: torch.Tensor, absolute: bool = True) -> dict[str, float]:
    """Head and MLP node scores from edge scores [S, R]: the max (|)score(|) over edges into or out of the node."""
    s = scores.abs() if absolute else scores
    s = torch.where(graph.valid & ~torch.isnan(s), s, torch.tensor(-math.inf))
    out = {}
    for node in graph.nodes:
        if node.kind in (NodeKind.HEAD, NodeKind.MLP):
            out[str(node)] = float(s[_node_edges(graph, node)].max())
    return out


def _component_nodes(names) -> set[str]:
    return {n for n in names if n not in ("input", "logits")}


def ground_truth(reference: Circuit, scores: torch.Tensor | None = None, circuit: Circuit | None = None,
                 absolute: bool = True) -> GroundTruth:
    """ROC AUC of `scores` [S, R] (default: the circuit's score_tensor()) against `reference`'s edges and
    nodes, and precision/recall of `circuit`'s edge and node sets. Both must be over the same graph shape."""
    graph = reference.graph
    if circuit is not None and circuit.graph != graph:
        raise CircuitError(f"reference is a {reference.model.n_layers}x{reference.model.n_heads} graph but the circuit is "
                           f"{circuit.model.n_layers}x{circuit.model.n_heads}; compare circuits of the same model shape "
                           "(acdc_lite.diff aligns different models)")
    if scores is None and circuit is not None:
        scores = circuit.score_tensor()
    edge_auc = node_auc = float("nan")
    n_scored = 0
    if scores is not None:
        if scores.shape != graph.valid.shape:
            raise ValueError(f"scores {tuple(scores.shape)} do not match the reference graph {tuple(graph.valid.shape)}")
        ref_mask = reference.mask()
        s = scores.abs() if absolute else scores
        edge_auc = roc_auc(s[graph.valid].numpy(), ref_mask[graph.valid].numpy())
        n_scored = int((~torch.isnan(scores[graph.valid])).sum())
        ns = node_scores(graph, scores, absolute)
        ref_nodes = _component_nodes(reference.nodes)
        node_auc = roc_auc([ns[n] for n in ns], [n in ref_nodes for n in ns])
    edges_pr = nodes_pr = None
    if circuit is not None:
        edges_pr = precision_recall(set(circuit.edges), set(reference.edges))
        nodes_pr = precision_recall(_component_nodes(circuit.nodes), _component_nodes(reference.nodes))
    name = str(reference.task.get("name", "reference")) + ":" + str(reference.method.get("name", ""))
    return GroundTruth(name, absolute, edge_auc, node_auc, n_scored, edges_pr, nodes_pr)


# ---- the whole report -----------------------------------------------------------------------------
def validate(model: nn.Module, task: Task, circuit: Circuit, ablation: Ablation | str | None = None,
             metric: str | None = None, *, check_minimality: bool = True, max_minimality_edges: int = 256,
             minimality_tol: float = 0.01, curve: bool = True, curve_scores: torch.Tensor | None = None,
             fractions: Sequence[float] = MIB_FRACTIONS, random_seeds: int = 5,
             search: Callable[[Task], Circuit] | None = None, n_bootstrap: int = 5,
             reference: Circuit | None = None, check_weights: bool = True, batch_size: int | None = None,
             candidates: int = 8, seed: int = 0, progress: bool = True) -> ValidationReport:
    """Validate `circuit` on `model` and `task`; see the module docstring for every number.

    ablation, metric, batch_size: default the circuit's own (the settings its search recorded; a file without a
    recorded metric: the task's), so validate measures what discover reported.
    curve_scores: [S, R] ranking for the curve, default `circuit.score_tensor()`. search: a callable
    `(task) -> Circuit` re-run on `n_bootstrap` resamples for stability (skipped if None).
    reference: a reference circuit for ROC AUC and precision/recall. random_seeds=0 skips the baseline.
    check_weights: refuse a model whose weights differ from the circuit's (shape is always checked).
    batch_size: examples per patched pass; candidates: masks per batched pass (C x batch_size sequences
    run at once; lower both for big models). minimality checks at most `max_minimality_edges` edges.
    """
    started = time.perf_counter()
    notes = []
    if check_weights:
        circuit.check_model(model)
    elif ModelRef.of(model).graph() != circuit.graph:
            raise CircuitError(f"circuit is for a {circuit.model.n_layers} x {circuit.model.n_heads} graph; "
                           "this model has a different shape")
    ablation = Ablation(ablation or circuit.ablation)
    if ablation.value != circuit.ablation:
        notes.append(f"validated with {ablation.value} ablation; the circuit was found with {circuit.ablation}")
        log.warning(notes[-1])
    recorded = circuit.method if isinstance(circuit.method, dict) else {}
    metric_name = metric or recorded.get("metric") or task.default_metric
    if recorded.get("metric") and metric_name != recorded["metric"]:
        notes.append(f"validated on {metric_name}; the circuit was found on {recorded['metric']}")
        log.warning(notes[-1])
    batch_size = batch_size or int(recorded.get("batch_size") or 32)
    graph = circuit.graph
    circuit_mask = circuit.mask()
    if not graph.is_tied(circuit_mask):
        circuit_mask = graph.tie(circuit_mask)
        notes.append(f"the circuit keeps some but not all k/v edges of a k/v group (grouped-query attention); "
                     f"validated with those groups' k/v edges kept whole ({int(circuit_mask.sum())} edges)")
        log.warning(notes[-1])
    with torch.no_grad(), eval_mode(model):
        metric_fn = task.metric(metric_name, model=model)
        kl_fn = task.metric("kl", model=model)
        ablated = ablated_outputs(model, graph, task.corrupt, ablation, batch_size, task.attention_mask)
        patcher = EdgePatcher(model, graph, task.clean, ablated, batch_size, task.attention_mask)

        base = torch.stack([graph.full_mask(), graph.empty_mask(), circuit_mask, graph.valid & ~circuit_mask])
        out = per_example_metrics(patcher, base, {"metric": metric_fn, "kl": kl_fn})
        m, kl = out["metric"], -out["kl"]  # [4, N]
        full, empty, circ, comp = (float(x) for x in m.mean(1))
        gap = full - empty
        if gap_is_zero(full, empty):
            raise ValueError(f"the full and the ablated model give the same {metric_name} ({full:.4g}); faithfulness "
                             "is undefined. Check that the corrupted prompts change the behaviour")
        report = dict(
            task=task.name, model=circuit.model.name, method=str(circuit.method.get("name", "")), ablation=ablation.value,
            metric=metric_name, n_examples=len(task), n_edges=len(circuit.edges),
            n_nodes=len(circuit.nodes), n_edges_total=graph.n_edges(), metric_full=full, metric_empty=empty,
            metric_circuit=circ, metric_complement=comp, faithfulness=faithfulness(circ, full, empty),
            completeness=faithfulness(comp, full, empty), kl_circuit=float(kl[2].mean()), kl_empty=float(kl[1].mean()),
            kl_complement=float(kl[3].mean()), per_example=_per_example(m, abs(gap)),
        )
        if check_minimality and circuit.edges:
            report["minimality"] = minimality(patcher, metric_fn, circuit_mask, circ, gap, max_minimality_edges,
                                              minimality_tol, candidates, seed, progress=progress)
        scores = curve_scores if curve_scores is not None else circuit.score_tensor()
        if curve:
            if torch.isnan(scores[graph.valid]).all():
                notes.append("no edge scores: faithfulness curve skipped")
            else:
                report["curve"] = faithfulness_curve(patcher, metric_fn, scores, full, empty, fractions, False,
                                                     candidates=candidates, progress=progress)
                if (scores[graph.valid] < 0).any():
                    report["curve_abs"] = faithfulness_curve(patcher, metric_fn, scores, full, empty, fractions, True,
                                                             candidates=candidates, progress=progress)
                else:
                    report["curve_abs"] = report["curve"]
        if random_seeds > 0:
            report["random_baseline"] = random_baseline(patcher, metric_fn, kl_fn, len(circuit.edges), full, empty,
                                                        random_seeds, seed, candidates, progress)
    if search is not None and n_bootstrap > 0:
        report["stability"] = stability(task, search, n_bootstrap, seed, circuit, progress)
    if reference is not None:
        report["ground_truth"] = ground_truth(reference, curve_scores, circuit)
    result = ValidationReport(**report, forward_passes=round(patcher.forward_passes, 3),
                              seconds=round(time.perf_counter() - started, 3), notes=notes)
    log.info("validated %s: faithfulness %.3f, completeness %.3f", circuit.model.name, result.faithfulness, result.completeness)
    return result


def _per_example(m: torch.Tensor, mean_gap: float, rel: float = PER_EXAMPLE_RTOL) -> PerExample:
    """m: [4, N] per-example metric of full, empty, circuit, complement."""
    full, empty, circ = m[0].double(), m[1].double(), m[2].double()
    gap = full - empty
    min_gap = rel * mean_gap
    ok = gap.abs() >= min_gap
    safe_full = torch.where(ok, full, empty + 1)  # an excluded example divides by 1, then becomes NaN
    f = torch.where(ok, faithfulness(circ, safe_full, empty), torch.tensor(float("nan"), dtype=torch.float64))
    kept = f[ok].numpy()
    if len(kept) == 0:
        q = [float("nan")] * 5
        mean = std = float("nan")
    else:
        q = np.quantile(kept, [0.05, 0.25, 0.5, 0.75, 0.95]).tolist()
        mean, std = float(kept.mean()), float(kept.std())
    return PerExample(n=len(f), n_excluded=int((~ok).sum()), min_gap=float(min_gap), mean=mean, std=std,
                      q05=q[0], q25=q[1], median=q[2], q75=q[3], q95=q[4], values=f.tolist(), metric_circuit=circ.tolist())
