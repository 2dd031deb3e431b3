"""The value types `validate` returns: one frozen dataclass per measure and the whole report (`to_dict()`
is JSON-able, NaN becoming null)."""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass, field


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
