"""Logit lens and direct logit attribution on a task's clean prompts.

- `logit_lens`: the residual stream entering each layer (and leaving the last) read through the model's
  final norm and unembedding, at each prompt's answer position: the answer's rank and the task's metric
  (logit difference by default) per layer. On a TransformerBridge the readout is transformer-lens'
  `tools.analysis.logit_readout`; on our SmallTransformer it is `ln_final(x) @ W_U + b_U`. The last
  stage is the model's own output.
- `direct_attribution`: each component's output (the input embedding, every head's result, every MLP's
  output) at the answer position, through the final norm with its scale frozen at the clean run, dotted
  with the metric's unembedding direction (mean W_U[answers] - mean W_U[foils], or W_U[answer] when the
  task has no foils). The contributions plus `biases` (attention and MLP biases, the final norm's bias
  and b_U) add up to the metric exactly.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass

import torch
from torch import nn

from acdc_lite import hooks
from acdc_lite.graph import INPUT_NODE, Node, NodeKind
from acdc_lite.padding import forward
from acdc_lite.shape import model_info
from acdc_lite.task import Task

log = logging.getLogger(__name__)

BIASES = "biases"  # the component name of everything no hook carries: biases, final-norm bias, b_U


def _is_small(model: nn.Module) -> bool:
    from acdc_lite.transformer import SmallTransformer

    return isinstance(model, SmallTransformer)


def _chunks(n: int, size: int = 32):
    for i in range(0, n, size):
        yield slice(i, min(n, i + size))


def unembed(model: nn.Module, x: torch.Tensor) -> torch.Tensor:
    """[..., d_model] residual-stream vectors -> [..., d_vocab] logits through the final norm and W_U
    (transformer-lens' `logit_readout` on a bridge)."""
    if _is_small(model):
        return model.ln_final(x) @ model.W_U + model.b_U
    from transformer_lens.tools.analysis import logit_readout

    return logit_readout(model, x).values


def metric_at(task: Task, logits: torch.Tensor, metric: str | None = None) -> torch.Tensor:
    """[N] the task's metric from logits [N, d_vocab] already taken at each prompt's answer position."""
    name = metric or default_metric(task)
    full = logits[:, None, :].expand(-1, task.seq_len, -1)  # a view: every position holds the row's logits
    return task.metric(name)(full, torch.arange(len(task)))


def default_metric(task: Task) -> str:
    """logit_diff when the task has foils, else logprob (the answer's log-probability)."""
    return "logit_diff" if task.foils is not None else "logprob"


# ---- logit lens -----------------------------------------------------------------------------
@dataclass(frozen=True)
class LensResult:
    """The logit lens at the answer position. Stage s < L reads the stream entering layer s (stage 0 is the
    embedding), stage L the stream leaving the last layer: the model's own output."""

    labels: tuple[str, ...]  # "embed", "after a0/m0", ..., one per stage
    answer_rank: torch.Tensor  # [stages, N] zero-based rank of the first answer id in the full vocabulary
    metric: torch.Tensor  # [stages, N] the task's metric read at each stage
    metric_name: str
    final_logits: torch.Tensor  # [N, d_vocab] the last stage's logits

    def to_frame(self):
        """One row per stage: mean metric, mean and median answer rank, share of prompts with rank 0."""
        import pandas as pd

        return pd.DataFrame({
            "stage": list(self.labels),
            f"mean_{self.metric_name}": self.metric.mean(1).tolist(),
            "mean_answer_rank": self.answer_rank.float().mean(1).tolist(),
            "median_answer_rank": self.answer_rank.float().median(1).values.tolist(),
            "top1_share": (self.answer_rank == 0).float().mean(1).tolist(),
        })

    def figure(self, title: str | None = None):
        """Line plot across stages: mean metric (left axis) and mean answer rank (right axis)."""
        from matplotlib.figure import Figure

        fig = Figure(figsize=(max(5.0, 1.0 + 0.6 * len(self.labels)), 3.6), layout="constrained")
        ax = fig.add_subplot()
        x = range(len(self.labels))
        ax.plot(x, self.metric.mean(1).tolist(), marker="o", color="#2166ac", label=f"mean {self.metric_name}")
        ax.axhline(0.0, color="#909090", linewidth=0.8)
        ax.set_xticks(list(x), list(self.labels), rotation=30 if len(self.labels) > 8 else 0)
        ax.set_xlabel("residual stream read after")
        ax.set_ylabel(f"mean {self.metric_name}")
        ax.set_title(title or "logit lens at the answer position")
        right = ax.twinx()
        right.plot(x, self.answer_rank.float().mean(1).tolist(), marker="s", color="#b2182b", label="mean answer rank")
        right.set_ylabel("mean answer rank (0 = top)")
        lines = ax.get_lines()[:1] + right.get_lines()
        ax.legend(lines, [line.get_label() for line in lines], loc="best", fontsize=8)
        return fig


def _stage_label(stage: int, n_layers: int) -> str:
    return "embed" if stage == 0 else f"layer {stage - 1}"


@torch.no_grad()
def residual_stages(model: nn.Module, tokens: torch.Tensor, positions: torch.Tensor,
                    attention_mask: torch.Tensor | None = None) -> torch.Tensor:
    """[L + 1, N, d_model]: the residual stream at `positions` [N] entering each layer, then leaving the last
    (`attention_mask` [N, p] for padded prompts)."""
    n_layers = model_info(model).n_layers
    names = [hooks.resid_pre(layer) for layer in range(n_layers)] + [hooks.resid_post(n_layers - 1)]
    store: dict[str, torch.Tensor] = {}
    rows = torch.arange(len(tokens))

    def keep(name):
        def hook(x, hook):
            store[name] = x[rows, positions.to(x.device)].detach().float()
        return hook

    with model.hooks(fwd_hooks=[(n, keep(n)) for n in names]):
        forward(model, tokens, attention_mask)
    return torch.stack([store[n] for n in names])


@torch.no_grad()
def logit_lens(model: nn.Module, task: Task, metric: str | None = None, batch_size: int = 32) -> LensResult:
    """The logit lens on the task's clean prompts (see `LensResult`)."""
    name = metric or default_metric(task)
    n_layers = model_info(model).n_layers
    ranks, values, finals = [], [], []
    for part in _chunks(len(task), batch_size):
        sub = task.subset(torch.arange(len(task))[part])
        stages = residual_stages(model, sub.clean, sub.answer_pos, sub.attention_mask)
        logits = torch.stack([unembed(model, s.to(next(model.parameters()).dtype)).float() for s in stages])
        answer = logits.gather(2, sub.answers[:, :1].expand(len(stages), -1, 1).to(logits.device))  # [S, n, 1]
        ranks.append((logits > answer).sum(-1).cpu())
        values.append(torch.stack([metric_at(sub, lg, name).cpu() for lg in logits]))
        finals.append(logits[-1].cpu())
    return LensResult(tuple(_stage_label(s, n_layers) for s in range(n_layers + 1)), torch.cat(ranks, 1),
                      torch.cat(values, 1), name, torch.cat(finals))


# ---- direct logit attribution -----------------------------------------------------------------
@dataclass(frozen=True)
class Attribution:
    """Direct contributions to the metric at the answer position; `values` rows follow `components`
    (node names, then `biases`); they add up to `metric` per prompt."""

    components: tuple[str, ...]
    values: torch.Tensor  # [components, N]
    metric: torch.Tensor  # [N] the model's own metric on the clean prompts
    metric_name: str

    def of(self, name: str) -> float:
        """Mean direct contribution of component `name` ("a1.h0", "m0", "input", "biases")."""
        return float(self.values[self.components.index(name)].mean())

    def head_matrix(self, n_layers: int, n_heads: int) -> torch.Tensor:
        """[layers, heads] mean direct contribution of each head."""
        out = torch.zeros(n_layers, n_heads)
        for i, name in enumerate(self.components):
            if name.startswith("a"):
                node = Node.parse(name)
                out[node.layer, node.head] = self.values[i].mean()
        return out

    def to_frame(self):
        import pandas as pd

        return pd.DataFrame({"component": list(self.components), "mean_direct_contribution": self.values.mean(1).tolist(),
                             "std": self.values.std(1).tolist() if self.values.shape[1] > 1 else [0.0] * len(self.components)})

    def restrict(self, nodes) -> Attribution:
        """Only the components in `nodes` (node names); the others are summed into one `rest` row."""
        keep = [i for i, c in enumerate(self.components) if c in set(map(str, nodes)) or c == BIASES]
        rest = [i for i in range(len(self.components)) if i not in keep]
        values = self.values[keep]
        names = [self.components[i] for i in keep]
        if rest:
            values = torch.cat([values, self.values[rest].sum(0, keepdim=True)])
            names.append("rest")
        return Attribution(tuple(names), values, self.metric, self.metric_name)

    def figure(self, title: str | None = None):
        """Bar chart of each component's mean direct contribution."""
        from matplotlib.figure import Figure

        means = self.values.mean(1).tolist()
        fig = Figure(figsize=(max(5.0, 1.0 + 0.35 * len(means)), 3.6), layout="constrained")
        ax = fig.add_subplot()
        ax.bar(range(len(means)), means, color=["#2166ac" if v >= 0 else "#b2182b" for v in means])
        ax.axhline(0.0, color="#404040", linewidth=0.8)
        ax.set_xticks(range(len(means)), list(self.components), rotation=90 if len(means) > 10 else 0)
        ax.set_xlabel("component")
        ax.set_ylabel(f"direct contribution to {self.metric_name}")
        ax.set_title(title or f"direct logit attribution (mean {self.metric_name} {float(self.metric.mean()):.3f})")
        return fig


def _final_norm_frozen(model: nn.Module, x_final: torch.Tensor):
    """(f, bias): f maps [..., N, d] to the final norm's output with its scale frozen at x_final [N, d]
    (linear, no bias); bias [d] or None is the norm's additive part."""
    if _is_small(model):
        kind = "LN" if model.cfg.normalization == "layernorm" else None
        eps = model.ln_final.eps if kind else 0.0
    else:
        kind = getattr(model.cfg, "normalization_type", None)
        eps = float(getattr(model.cfg, "eps", 1e-5))
    weight = getattr(model.ln_final, "weight", None) if kind else None
    bias = getattr(model.ln_final, "bias", None) if kind else None
    if kind is None:
        return (lambda c: c), None
    if kind in ("LN", "LNPre"):
        centred = x_final - x_final.mean(-1, keepdim=True)
        scale = (centred.pow(2).mean(-1, keepdim=True) + eps).sqrt()

        def f(c):
            out = (c - c.mean(-1, keepdim=True)) / scale
            return out * weight.float() if isinstance(weight, torch.Tensor) else out
    elif kind in ("RMS", "RMSPre"):
        scale = (x_final.pow(2).mean(-1, keepdim=True) + eps).sqrt()
        offset = 1.0 if getattr(model.cfg, "rmsnorm_uses_offset", False) else 0.0

        def f(c):
            out = c / scale
            return out * (weight.float() + offset) if isinstance(weight, torch.Tensor) else out
    else:
        raise ValueError(f"direct attribution does not know the final normalisation {kind!r}")
    return f, (bias.float() if isinstance(bias, torch.Tensor) else None)


def _direction(model: nn.Module, task: Task, metric: str) -> tuple[torch.Tensor, torch.Tensor]:
    """([N, d_model] unembedding direction, [N] its b_U part) of the metric; linear metrics only."""
    w_u, b_u = model.W_U.detach().float(), model.b_U.detach().float()

    def mean_cols(ids):
        mask = (ids >= 0).float()
        cols = w_u[:, ids.clamp(min=0)]  # [d, N, K]
        return (cols * mask).sum(-1).T / mask.sum(-1, keepdim=True), (b_u[ids.clamp(min=0)] * mask).sum(-1) / mask.sum(-1)

    d_a, b_a = mean_cols(task.answers.to(w_u.device))
    if metric == "logit_diff":
        d_f, b_f = mean_cols(task.foils.to(w_u.device))
        return d_a - d_f, b_a - b_f
    if metric == "logit":
        return d_a, b_a
    raise ValueError(f"direct attribution needs a metric linear in the logits (logit_diff, or logit for tasks with no "
                     f"foils), not {metric!r}")


@torch.no_grad()
def component_outputs(model: nn.Module, tokens: torch.Tensor, positions: torch.Tensor,
                      attention_mask: torch.Tensor | None = None) -> tuple[list[str], torch.Tensor, torch.Tensor]:
    """(names, [components, N, d] each component's output at `positions`, [N, d] the final residual stream there);
    `attention_mask` [N, p] for padded prompts."""
    info = model_info(model)
    rows = torch.arange(len(tokens))
    store: dict[str, torch.Tensor] = {}

    def keep(key):
        def hook(x, hook):
            store[key] = x[rows, positions.to(x.device)].detach().float()
        return hook

    names = [(hooks.INPUT, str(INPUT_NODE))]
    for layer in range(info.n_layers):
        names.append((hooks.head_result(layer), f"a{layer}"))
        if info.has_mlp:
            names.append((hooks.mlp_out(layer), str(Node(NodeKind.MLP, layer))))
    final = hooks.resid_post(info.n_layers - 1)
    with model.hooks(fwd_hooks=[(h, keep(h)) for h, _ in names] + [(final, keep(final))]):
        forward(model, tokens, attention_mask)
    labels, outs = [], []
    for hook_name, label in names:
        x = store[hook_name]
        if x.dim() == 3:  # per-head results [N, H, d]
            for head in range(x.shape[1]):
                labels.append(f"{label}.h{head}")
                outs.append(x[:, head])
        else:
            labels.append(label)
            outs.append(x)
    return labels, torch.stack(outs), store[final]


@torch.no_grad()
def direct_attribution(model: nn.Module, task: Task, metric: str | None = None, batch_size: int = 32) -> Attribution:
    """Every component's direct contribution to the metric at the answer position (see module docstring).
    metric: logit_diff (default with foils) or logit (the mean answer logit)."""
    name = metric or ("logit_diff" if task.foils is not None else "logit")
    if task.multi_token:
        raise ValueError(f"direct logit attribution reads one answer token, and task {task.name!r} has answers of several")
    values, totals = [], []
    labels: list[str] = []
    for part in _chunks(len(task), batch_size):
        sub = task.subset(torch.arange(len(task))[part])
        labels, outs, x_final = component_outputs(model, sub.clean, sub.answer_pos, sub.attention_mask)
        direction, b_dir = _direction(model, sub, name)
        direction = direction.to(outs.device)
        frozen, norm_bias = _final_norm_frozen(model, x_final)
        contrib = (frozen(outs) * direction).sum(-1)  # [C, n]
        rest = (frozen(x_final - outs.sum(0)) * direction).sum(-1) + b_dir.to(outs.device)
        if norm_bias is not None:
            rest = rest + direction @ norm_bias.to(direction.device)
        values.append(torch.cat([contrib, rest[None]]).cpu())
        logits = forward(model, sub.clean, sub.attention_mask)[torch.arange(len(sub)), sub.answer_pos].float()
        own = (logits.gather(1, sub.answers.clamp(min=0)) * (sub.answers >= 0)).sum(1) / (sub.answers >= 0).sum(1)
        if name == "logit_diff":
            own = own - (logits.gather(1, sub.foils.clamp(min=0)) * (sub.foils >= 0)).sum(1) / (sub.foils >= 0).sum(1)
        totals.append(own.cpu())
    return Attribution(tuple(labels) + (BIASES,), torch.cat(values, 1), torch.cat(totals), name)
