"""Which dictionary features carry a circuit edge's effect, and which one encodes a task variable.

An edge `src -> dst<port>` moves src's output into dst's input. Resample-ablating the edge subtracts
`out_clean - out_corrupt` of src from dst's input (at every position) and leaves every other path alone; its
effect is the metric lost. Ablating one feature j of a dictionary on src's output through the edge subtracts
only that feature's part of the difference, `(f_j(clean) - f_j(corrupt)) * W_dec[j]`. A feature's share is its
effect over the edge's effect, on the same prompts.

`feature_study` ties a feature to a variable (`acdc_lite.features.variables`). Every value with enough training and
held-out examples is studied; the headline value is the one given, else the value whose training examples lose the
most when the edge is ablated (the value the edge carries most). On the training examples, for a value v, each
feature's activation at the answer position scores `label == v` (AUROC); the feature
with the highest training AUROC is chosen, ties (within 0.001) going to the larger mean activation on the
examples with label v. Its AUROC is then measured on held-out examples, and its share of the edge's effect on
the held-out examples with label v, against features drawn at random (seeded) from those active in training.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Sequence
from dataclasses import asdict, dataclass

import torch
from torch import nn

from acdc_lite import hooks
from acdc_lite.boundary import UsageError
from acdc_lite.graph import Edge, NodeKind
from acdc_lite.padding import forward
from acdc_lite.shape import model_info
from acdc_lite.task import Task, TaskError, Vocabulary

from .sae import Dictionary
from .sites import collect
from .variables import labels as variable_labels

TIE = 1e-3


def auroc(scores: torch.Tensor, positive: torch.Tensor) -> float:
    """Area under the ROC curve of `scores` [n] for the boolean labels `positive` [n] (Mann-Whitney U with tied
    scores counted half); nan when one class is empty."""
    pos, neg = int(positive.sum()), int((~positive).sum())
    if pos == 0 or neg == 0:
        return float("nan")
    s = scores.double()
    order = s.argsort()
    ranks = torch.empty_like(s)
    ranks[order] = torch.arange(1, len(s) + 1, dtype=torch.float64)
    for value in s.unique():  # average ranks over ties
        tied = s == value
        if int(tied.sum()) > 1:
            ranks[tied] = ranks[tied].mean()
    return float((ranks[positive].sum() - pos * (pos + 1) / 2) / (pos * neg))


def _receiver(edge: Edge, model: nn.Module) -> tuple[str, int | None]:
    """(hook, head index or None) of the edge's receiver input."""
    info = model_info(model)
    if edge.dst.kind is NodeKind.HEAD:
        return hooks.head_input(edge.dst.layer, edge.port.value), edge.dst.head
    if edge.dst.kind is NodeKind.MLP:
        return hooks.mlp_in(edge.dst.layer), None
    return hooks.resid_post(info.n_layers - 1), None


def check_edge(edge: Edge | str, dictionary: Dictionary, model: nn.Module) -> Edge:
    """The edge, if it leaves the node whose output the dictionary decomposes and is an edge of the model."""
    from acdc_lite.graph import ModelGraph

    e = edge if isinstance(edge, Edge) else Edge.parse(str(edge))
    if dictionary.site.node is None or str(e.src) != dictionary.site.node:
        raise UsageError(f"edge {e} leaves {e.src}, but the dictionary is on {dictionary.site.name}; train one on "
                         f"{e.src} (acdc-lite sae train --site {e.src}) or pick an edge leaving {dictionary.site.node}")
    if str(e) not in {str(x) for x in ModelGraph.from_model(model).edges}:
        raise UsageError(f"{e} is not an edge of this model (the receiver must come after the sender)")
    return e


@dataclass(frozen=True)
class EdgeEffects:
    """edge: the metric lost when the edge is resample-ablated; features: feature -> metric lost when only that
    feature is ablated through the edge (mean over the same examples)."""

    edge: str
    n_examples: int
    edge_effect: float
    features: dict[int, float]

    def share(self, feature: int) -> float:
        return self.features[feature] / self.edge_effect if self.edge_effect else float("nan")


@torch.no_grad()
def edge_feature_effects(model: nn.Module, task: Task, dictionary: Dictionary, edge: Edge | str,
                         features: Sequence[int], idx: torch.Tensor | None = None, metric: str | None = None) -> EdgeEffects:
    """Effects of ablating `edge` and each of `features` through it, on examples `idx` (see module docstring)."""
    e = check_edge(edge, dictionary, model)
    sub = task.subset(idx) if idx is not None else task
    site, mask = dictionary.site, sub.attention_mask
    clean_out, corrupt_out = (collect(model, t, mask, site) for t in (sub.clean, sub.corrupt))
    f_clean, f_corrupt = dictionary.encode(clean_out), dictionary.encode(corrupt_out)
    m = sub.metric(metric, model)
    rows = torch.arange(len(sub))
    hook, head = _receiver(e, model)
    base = float(m(forward(model, sub.clean, mask), rows).mean())

    def without(delta: torch.Tensor) -> float:
        def patch(x, hook):
            d = delta.to(x.dtype)
            if head is None:
                return x - d
            x = x.clone()
            x[:, :, head] -= d
            return x
        with model.hooks(fwd_hooks=[(hook, patch)]):
            return base - float(m(forward(model, sub.clean, mask), rows).mean())

    edge_effect = without(clean_out - corrupt_out)
    W = dictionary.W_dec.detach().float()
    effects = {int(j): round(without((f_clean[..., j] - f_corrupt[..., j])[..., None] * W[j]), 6) for j in features}
    return EdgeEffects(str(e), len(sub), round(edge_effect, 6), effects)


def answer_activations(model: nn.Module, task: Task, dictionary: Dictionary) -> torch.Tensor:
    """[N, n_latents] feature activations at each example's answer position (clean prompts)."""
    acts = collect(model, task.clean, task.attention_mask, dictionary.site)
    return dictionary.encode(acts[torch.arange(len(task)), task.answer_pos])


def choose_feature(acts: torch.Tensor, positive: torch.Tensor) -> tuple[int, float]:
    """(feature, training AUROC) by the rule of the module docstring."""
    aucs = torch.tensor([auroc(acts[:, j], positive) for j in range(acts.shape[1])]).nan_to_num(0.0)
    best = float(aucs.max())
    mean_pos = acts[positive].mean(0)
    tied = (aucs >= best - TIE).nonzero()[:, 0]
    j = int(tied[mean_pos[tied].argmax()])
    return j, float(aucs[j])


@dataclass(frozen=True)
class ValueStudy:
    """One value of the variable: the chosen feature, its AUROC on training and held-out examples, and its share of
    the edge's effect on the held-out examples with that value."""

    value: int
    n_train_positive: int
    n_heldout_positive: int
    feature: int
    train_auroc: float
    heldout_auroc: float
    edge_effect: float
    feature_effect: float
    share: float


@dataclass(frozen=True)
class FeatureStudy:
    """`headline`: the target value (given, else the one the edge carries most on training examples); `random_shares`: the
    shares of random active features on the headline's examples; `values`: every value with enough examples."""

    edge: str
    variable: str
    headline: ValueStudy
    random_features: tuple[int, ...]
    random_shares: tuple[float, ...]
    values: tuple[ValueStudy, ...]

    def to_dict(self) -> dict:
        d = asdict(self)
        d["random_share_mean"] = round(sum(self.random_shares) / max(1, len(self.random_shares)), 4)
        d["random_share_max"] = round(max(self.random_shares, default=float("nan")), 4)
        return d


def feature_study(model: nn.Module, task: Task, dictionary: Dictionary, edge: Edge | str, train_idx: torch.Tensor,
                  heldout_idx: torch.Tensor, variable: str = "answer", value: int | None = None, n_random: int = 20,
                  min_examples: int = 5, all_values: bool = True, seed: int = 0, metric: str | None = None) -> FeatureStudy:
    """Tie a feature to `variable` and measure it through `edge` (see module docstring)."""
    e = check_edge(edge, dictionary, model)
    y = variable_labels(task, variable)
    acts = answer_activations(model, task, dictionary)
    counts_train = Counter(y[train_idx].tolist())
    counts_held = Counter(y[heldout_idx].tolist())
    eligible = sorted(v for v in counts_train if counts_train[v] >= min_examples and counts_held.get(v, 0) >= min_examples)
    if value is None and eligible:
        carried = {v: edge_feature_effects(model, task, dictionary, e, [], train_idx[y[train_idx] == v], metric).edge_effect
                   for v in eligible}
        value = max(eligible, key=lambda v: (carried[v], -v))
    if not eligible:
        raise UsageError(f"no value of variable {variable} has {min_examples} training and {min_examples} held-out examples "
                         "(use more --n-examples)")
    if value not in eligible:
        raise UsageError(f"variable {variable} = {value}: {counts_train.get(value, 0)} training and {counts_held.get(value, 0)} "
                         f"held-out examples; at least {min_examples} of each are needed (use more --n-examples)")

    def study(v: int, extra: Sequence[int] = ()) -> tuple[ValueStudy, EdgeEffects]:
        pos_train = y[train_idx] == v
        j, auc_train = choose_feature(acts[train_idx], pos_train)
        auc_held = auroc(acts[heldout_idx, j], y[heldout_idx] == v)
        chosen = heldout_idx[y[heldout_idx] == v]
        eff = edge_feature_effects(model, task, dictionary, e, [j, *extra], chosen, metric)
        return ValueStudy(v, int(pos_train.sum()), len(chosen), j, round(auc_train, 4), round(auc_held, 4), eff.edge_effect,
                          eff.features[j], round(eff.share(j), 4)), eff

    alive = ((acts[train_idx] > 0).any(0)).nonzero()[:, 0]
    g = torch.Generator().manual_seed(seed)
    head, _ = study(value)
    pool = alive[alive != head.feature]
    randoms = tuple(int(r) for r in pool[torch.randperm(len(pool), generator=g)[:n_random]])
    _, eff = study(value, randoms)
    shares = tuple(round(eff.share(r), 4) for r in randoms)
    values = tuple(study(v)[0] if v != value else head for v in eligible) if all_values else (head,)
    return FeatureStudy(str(e), variable, head, randoms, shares, values)


def top_examples(model: nn.Module, task: Task, dictionary: Dictionary, feature: int, k: int = 5) -> list[dict]:
    """The k highest activations of `feature` over every real position of the clean prompts: example, position,
    token, the four tokens before it (as text where the model has a vocabulary), activation, and the example's answer
    when the position is its answer position."""
    acts = dictionary.encode(collect(model, task.clean, task.attention_mask, dictionary.site))[..., feature]
    acts = acts.masked_fill(~task.attention_mask, float("-inf"))
    values, flat = acts.flatten().topk(min(k, int(task.attention_mask.sum())))
    try:
        decode = Vocabulary.of(model).decode
    except TaskError:
        decode = lambda ids: [str(i) for i in ids]  # noqa: E731 - a model with no vocabulary: show ids
    rows = []
    for v, i in zip(values.tolist(), flat.tolist(), strict=True):
        ex, pos = divmod(i, task.clean.shape[1])
        rows.append({"example": ex, "position": pos, "token": decode([int(task.clean[ex, pos])])[0],
                     "before": decode(task.clean[ex, max(0, pos - 4):pos].tolist()), "activation": round(v, 4),
                     "answer": decode([int(task.answers[ex, 0])])[0] if pos == int(task.answer_pos[ex]) else ""})
    return rows
