"""Linear probes: how well a task variable can be read off each layer's residual stream and each head's output.

For every site (`resid 0` .. `resid L`: the residual stream entering each layer and after the last; with
`heads`, every head's result) a logistic regression (scikit-learn, standardised inputs; `pip install
'acdc-lite[probe]'`) reads the variable (`acdc_lite.features.variables`) from the clean prompt's activation at the
answer position. Examples are split once by distinct prompt (`split_examples`), so no prompt is in both sides.
The control is the same probe trained and tested on labels shuffled across examples (seeded, one permutation
for every site): what a probe reaches with no information, e.g. the majority class. Selectivity = accuracy -
control accuracy.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import asdict, dataclass

import torch
from torch import nn

from acdc_lite.shape import model_info
from acdc_lite.task import Task

from .sae import split_examples
from .sites import collect, parse_site
from .variables import labels as variable_labels


def _sklearn():
    try:
        from sklearn.linear_model import LogisticRegression
        from sklearn.pipeline import make_pipeline
        from sklearn.preprocessing import StandardScaler
    except ImportError as e:
        raise ImportError(f"probes need scikit-learn ({e}); install it with pip install 'acdc-lite[probe]'") from None
    return LogisticRegression, make_pipeline, StandardScaler


@dataclass(frozen=True)
class ProbeRow:
    site: str
    layer: int  # resid L: L; a head or MLP: its layer
    accuracy: float
    control_accuracy: float
    n_train: int
    n_test: int

    @property
    def selectivity(self) -> float:
        return round(self.accuracy - self.control_accuracy, 4)


@dataclass(frozen=True)
class ProbeReport:
    """One row per site; `majority`: the test split's majority-class rate."""

    model: str
    task: str
    variable: str
    n_classes: int
    majority: float
    rows: tuple[ProbeRow, ...]

    def row(self, site: str) -> ProbeRow:
        return next(r for r in self.rows if r.site == site)

    def to_dict(self) -> dict:
        return {**{k: v for k, v in asdict(self).items() if k != "rows"},
                "rows": [{**asdict(r), "selectivity": r.selectivity} for r in self.rows]}

    def to_frame(self):
        import pandas as pd

        return pd.DataFrame(self.to_dict()["rows"])

    def figure(self):
        """Accuracy and control accuracy by layer: the residual stream as lines, heads as points at their layer."""
        from matplotlib.figure import Figure

        fig = Figure(figsize=(6.4, 3.8), layout="constrained")
        ax = fig.add_subplot()
        resid = [r for r in self.rows if r.site.startswith("resid")]
        others = [r for r in self.rows if not r.site.startswith("resid")]
        if resid:
            ax.plot([r.layer for r in resid], [r.accuracy for r in resid], "o-", color="#2166ac", label="probe, residual stream")
            ax.plot([r.layer for r in resid], [r.control_accuracy for r in resid], "s--", color="#999999",
                    label="control (shuffled labels)")
        if others:
            per_layer: dict[int, list[ProbeRow]] = {}
            for r in others:
                per_layer.setdefault(r.layer, []).append(r)
            xs = {r.site: r.layer + 0.15 + 0.7 * i / len(rs) for rs in per_layer.values() for i, r in enumerate(rs)}
            ax.plot([xs[r.site] for r in others], [r.accuracy for r in others], "^", color="#d6604d", alpha=0.85,
                    label="probe, head outputs (between layer L and L + 1)")
            for r in others:
                ax.annotate(r.site, (xs[r.site], r.accuracy), fontsize=6, rotation=90, xytext=(0, 4),
                            textcoords="offset points", ha="center")
        ax.set_xticks(sorted({r.layer for r in self.rows} | {r.layer + 1 for r in others}))
        ax.axhline(self.majority, color="#404040", linewidth=0.7, linestyle=":", label="majority class")
        ax.set_xlabel("layer (resid L = residual stream entering layer L)")
        ax.set_ylabel(f"test accuracy ({self.variable})")
        ax.set_ylim(0, 1.12)
        ax.set_title(f"Linear probes for {self.variable}: {self.model} on {self.task}")
        ax.legend(fontsize=7, loc="best")
        return fig


def default_sites(model: nn.Module, heads: bool = True) -> list[str]:
    info = model_info(model)
    sites = [f"resid {layer}" for layer in range(info.n_layers + 1)]
    if heads:
        sites += [f"a{layer}.h{h}" for layer in range(info.n_layers) for h in range(info.n_heads)]
    return sites


def run_probes(model: nn.Module, task: Task, variable: str, sites: Sequence[str] | None = None, heads: bool = True,
               holdout: float = 0.3, seed: int = 0, c: float = 1.0) -> ProbeReport:
    """Probe `variable` at every site (see module docstring)."""
    LogisticRegression, make_pipeline, StandardScaler = _sklearn()
    y = variable_labels(task, variable)
    chosen = [parse_site(s, model) for s in (sites or default_sites(model, heads))]
    train, test = split_examples(task, holdout, seed)
    if len(set(y[train].tolist())) < 2:
        raise ValueError(f"variable {variable} takes one value on the training examples; a probe needs two (use more --n-examples)")
    shuffled = y[torch.randperm(len(y), generator=torch.Generator().manual_seed(seed))]
    rows = []
    pos = task.answer_pos
    for site in chosen:
        x = collect(model, task.clean, task.attention_mask, site)[torch.arange(len(task)), pos].double().numpy()

        def score(target: torch.Tensor, x=x) -> float:
            probe = make_pipeline(StandardScaler(), LogisticRegression(C=c, max_iter=2000))
            probe.fit(x[train.numpy()], target[train].numpy())
            return float(probe.score(x[test.numpy()], target[test].numpy()))

        layer = int(site.name.split()[1]) if site.name.startswith("resid") else int(site.read.split(".")[1])
        rows.append(ProbeRow(site.name, layer, round(score(y), 4), round(score(shuffled), 4), len(train), len(test)))
    counts = torch.bincount(y[test] - int(y.min()))
    info = model_info(model)
    return ProbeReport(info.name, task.name, variable, len(set(y.tolist())), round(float(counts.max()) / len(test), 4),
                       tuple(rows))
