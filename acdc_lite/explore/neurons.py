"""The neuron view of one MLP: its neurons' effects on the task metric and what makes them fire.

A neuron's effect is how much of the mean metric is lost when its activation (the input to W_out, at
every position) takes its value on the corrupted prompt. Every neuron is scored at once by attribution
(gradient of the metric times the activation's clean-to-corrupted change, one forward and backward pass);
the top neurons are then patched one by one for their exact effect. Where the metric is linear in the
MLP's output (e.g. the last MLP of a model with no final normalisation, under the logit difference),
attribution is exact and the neuron effects add up to the effect of resample-ablating the whole MLP
(`mlp_effect`); elsewhere `additivity_gap` says how far they are from it.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn

from acdc_lite import hooks
from acdc_lite.graph import Node, NodeKind
from acdc_lite.padding import forward
from acdc_lite.shape import model_info
from acdc_lite.task import Task, TaskError, Vocabulary


def _mlp(mlp: str | Node, model: nn.Module) -> Node:
    node = mlp if isinstance(mlp, Node) else Node.parse(str(mlp))
    info = model_info(model)
    if node.kind is not NodeKind.MLP:
        raise ValueError(f"{mlp} is not an MLP; name one like m1")
    if not info.has_mlp:
        raise ValueError(f"{info.name} has no MLPs")
    if not 0 <= node.layer < info.n_layers:
        raise ValueError(f"{mlp}: the model has MLPs m0 to m{info.n_layers - 1}")
    return node


@dataclass(frozen=True)
class NeuronView:
    """Neuron effects of one MLP on the task metric (see module docstring); effects are metric units, higher =
    more of the clean behaviour lost when the neuron is resample-ablated."""

    mlp: str
    metric_name: str
    attribution: torch.Tensor  # [d_mlp] estimated effect of each neuron
    patched: dict[int, float]  # neuron -> exact effect, for the top neurons
    mlp_effect: float  # exact effect of resample-ablating the whole MLP output
    activations: torch.Tensor  # [N, P, d_mlp] clean activations (float32)
    tokens: tuple[tuple[str, ...], ...]  # [N][P] token strings of the clean prompts

    @property
    def additivity_gap(self) -> float:
        """mlp_effect minus the sum of every neuron's attribution (0 where the metric is linear in the MLP output)."""
        return self.mlp_effect - float(self.attribution.sum())

    def top(self, k: int = 10) -> list[int]:
        """Neurons by descending |attribution|."""
        return self.attribution.abs().argsort(descending=True)[:k].tolist()

    def to_frame(self, k: int = 10):
        """The top k neurons: attribution, exact patched effect (where measured), share of the MLP's effect."""
        import pandas as pd

        rows = []
        for n in self.top(k):
            a = float(self.attribution[n])
            rows.append({"neuron": n, "attribution": round(a, 6), "patched_effect": self.patched.get(n),
                         "share_of_mlp_effect": round(a / self.mlp_effect, 4) if self.mlp_effect else None})
        return pd.DataFrame(rows)

    def examples(self, k: int = 10, n_examples: int = 5):
        """For each of the top k neurons, its n_examples highest activations on the clean prompts: prompt,
        position, token, the tokens before it, activation."""
        import pandas as pd

        rows = []
        n, p, _ = self.activations.shape
        for neuron in self.top(k):
            values, flat = self.activations[:, :, neuron].flatten().topk(min(n_examples, n * p))
            for rank, (v, i) in enumerate(zip(values.tolist(), flat.tolist(), strict=True)):
                prompt, pos = divmod(i, p)
                toks = self.tokens[prompt]
                rows.append({"neuron": neuron, "rank": rank, "prompt": prompt, "position": pos, "token": toks[pos],
                             "context": " ".join(toks[max(0, pos - 4):pos]), "activation": round(v, 5)})
        return pd.DataFrame(rows)

    def figure(self, k: int = 10, title: str | None = None):
        """Bar chart of the top k neurons' effects (attribution bars, exact patched effects as dots)."""
        from matplotlib.figure import Figure

        top = self.top(k)
        fig = Figure(figsize=(max(5.0, 1.2 + 0.45 * len(top)), 3.6), layout="constrained")
        ax = fig.add_subplot()
        x = range(len(top))
        ax.bar(x, [float(self.attribution[n]) for n in top], color="#fdae61", label="attribution")
        exact = [(i, self.patched[n]) for i, n in enumerate(top) if n in self.patched]
        if exact:
            ax.plot([i for i, _ in exact], [v for _, v in exact], "o", color="#2166ac", label="patched (exact)")
        ax.axhline(0.0, color="#404040", linewidth=0.8)
        ax.set_xticks(list(x), [str(n) for n in top])
        ax.set_xlabel(f"{self.mlp} neuron")
        ax.set_ylabel(f"effect on {self.metric_name}")
        ax.set_title(title or f"{self.mlp}: top neurons (whole MLP {self.mlp_effect:.3f})")
        ax.legend(fontsize=8)
        return fig


def _token_strings(model: nn.Module, tokens: torch.Tensor) -> tuple[tuple[str, ...], ...]:
    try:
        vocab = Vocabulary.of(model)
        return tuple(tuple(vocab.decode(row.tolist())) for row in tokens)
    except TaskError:
        return tuple(tuple(str(t) for t in row.tolist()) for row in tokens)


def neuron_view(model: nn.Module, task: Task, mlp: str | Node, metric: str | None = None, top_k: int = 10) -> NeuronView:
    """Score every neuron of `mlp` ("m1") on the task (see module docstring); patch the top_k exactly."""
    node = _mlp(mlp, model)
    name = metric or ("logit_diff" if task.foils is not None else "logprob")
    m = task.metric(name, model)
    idx = torch.arange(len(task))
    post_name, out_name = hooks.mlp_post(node.layer), hooks.mlp_out(node.layer)
    store: dict[str, torch.Tensor] = {}

    def keep(key, grad=False):
        def hook(x, hook):
            if grad:
                x = x.detach().requires_grad_(True)
            store[key] = x
            return x
        return hook

    with torch.no_grad(), model.hooks(fwd_hooks=[(post_name, keep("corrupt")), (out_name, keep("corrupt_out"))]):
        forward(model, task.corrupt, task.attention_mask)
    with torch.enable_grad(), model.hooks(fwd_hooks=[(post_name, keep("clean", grad=True))]):
        clean_metric = m(forward(model, task.clean, task.attention_mask), idx).mean()
        (grad,) = torch.autograd.grad(clean_metric, [store["clean"]])
    clean, corrupt = store["clean"].detach(), store["corrupt"]
    attribution = -((corrupt - clean) * grad).sum((0, 1)).float().cpu()  # metric is a mean: grad carries 1/N
    base = float(clean_metric.detach())

    @torch.no_grad()
    def patched_metric(fwd_hooks) -> float:
        with model.hooks(fwd_hooks=fwd_hooks):
            return float(m(forward(model, task.clean, task.attention_mask), idx).mean())

    mlp_effect = base - patched_metric([(out_name, lambda x, hook: store["corrupt_out"])])
    patched = {}
    for neuron in attribution.abs().argsort(descending=True)[:top_k].tolist():
        def patch(x, hook, neuron=neuron):
            x = x.clone()
            x[..., neuron] = corrupt[..., neuron]
            return x
        patched[neuron] = round(base - patched_metric([(post_name, patch)]), 6)
    return NeuronView(str(node), name, attribution, patched, mlp_effect, clean.float().cpu(),
                      _token_strings(model, task.clean))
