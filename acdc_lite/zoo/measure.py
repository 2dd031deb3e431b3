"""Measurements behind the zoo's model cards: head attention scores, task accuracy, head ablations.

All functions are pure (they read the model, never change it) and work on any model from
`load_model` (our SmallTransformer or a TransformerBridge).
"""

from __future__ import annotations

import importlib
from types import ModuleType

import torch
from torch import nn

from acdc_lite import hooks
from acdc_lite.models import model_info
from acdc_lite.task import Task


def builtin_task_module(name: str) -> ModuleType:
    """A task module from `acdc_lite.tasks`; from the `tasks` folder in a source checkout that is not installed."""
    try:
        return importlib.import_module(f"acdc_lite.tasks.{name}")
    except ModuleNotFoundError as e:
        if not (e.name or "").startswith("acdc_lite.tasks"):
            raise
        return importlib.import_module(f"tasks.{name}")


@torch.no_grad()
def attention_patterns(model: nn.Module, tokens: torch.Tensor) -> list[torch.Tensor]:
    """Per layer, the attention probabilities [b, head, query, key] on `tokens` [b, p]."""
    n_layers = model_info(model).n_layers
    store: dict[int, torch.Tensor] = {}

    def keep(layer):
        def hook(x, hook):
            store[layer] = x.detach().float().cpu()
        return hook

    with model.hooks(fwd_hooks=[(hooks.attn_pattern(layer), keep(layer)) for layer in range(n_layers)]):
        model(tokens)
    return [store[layer] for layer in range(n_layers)]


def offset_scores(patterns: list[torch.Tensor], offset: int, queries: slice) -> torch.Tensor:
    """[layers, heads]: mean attention from query q to key q - offset over the query positions `queries`."""
    out = []
    for pat in patterns:
        q = torch.arange(pat.shape[-2])[queries]
        out.append(pat[:, :, q, q - offset].mean(dim=(0, 2)))
    return torch.stack(out)


def prev_token_scores(model: nn.Module, tokens: torch.Tensor) -> torch.Tensor:
    """[layers, heads]: mean attention to the previous token, queries from position 2 on."""
    return offset_scores(attention_patterns(model, tokens), 1, slice(2, None))


def induction_scores(model: nn.Module, tokens: torch.Tensor, half: int) -> torch.Tensor:
    """[layers, heads] on BOS R R sequences (R of `half` tokens): mean attention from each second-copy
    token to the token after its first occurrence (key q - half + 1)."""
    return offset_scores(attention_patterns(model, tokens), half - 1, slice(tokens.shape[1] - half, None))


@torch.no_grad()
def task_metrics(model: nn.Module, task: Task) -> dict[str, float]:
    """Mean logit difference on clean and corrupted prompts, and clean top-1 accuracy."""
    idx = torch.arange(len(task))
    logits_clean, logits_corrupt = model(task.clean), model(task.corrupt)
    diff = task.metric("logit_diff")
    acc = task.metric("accuracy")
    return {"logit_diff_clean": float(diff(logits_clean, idx).mean()),
            "logit_diff_corrupt": float(diff(logits_corrupt, idx).mean()),
            "accuracy": float(acc(logits_clean, idx).mean()),
            "accuracy_corrupt": float(acc(logits_corrupt, idx).mean())}


def _corrupt_head_results(model: nn.Module, task: Task) -> tuple[dict[int, torch.Tensor], float, float]:
    """Every layer's head results [b, p, h, d] on the corrupted prompts, and mean clean / corrupt logit difference."""
    metric, idx = task.metric("logit_diff"), torch.arange(len(task))
    results: dict[int, torch.Tensor] = {}

    def keep(layer):
        def hook(x, hook):
            results[layer] = x.detach().clone()
        return hook

    n_layers = model_info(model).n_layers
    with model.hooks(fwd_hooks=[(hooks.head_result(layer), keep(layer)) for layer in range(n_layers)]):
        corrupt = float(metric(model(task.corrupt), idx).mean())
    return results, float(metric(model(task.clean), idx).mean()), corrupt


def _patched_metric(model: nn.Module, task: Task, results: dict[int, torch.Tensor], heads: list[tuple[int, int]]) -> float:
    """Mean logit difference on clean prompts with `heads` [(layer, head)] replaced by their corrupted outputs."""
    by_layer: dict[int, list[int]] = {}
    for layer, head in heads:
        by_layer.setdefault(layer, []).append(head)

    def make(layer, hs):
        def patch(x, hook):
            x = x.clone()
            x[:, :, hs] = results[layer][:, :, hs]
            return x
        return patch

    with model.hooks(fwd_hooks=[(hooks.head_result(layer), make(layer, hs)) for layer, hs in by_layer.items()]):
        return float(task.metric("logit_diff")(model(task.clean), torch.arange(len(task))).mean())


@torch.no_grad()
def head_ablation_effects(model: nn.Module, task: Task) -> torch.Tensor:
    """[layers, heads]: share of the clean-minus-corrupt logit difference lost when one head's output
    (at every position) is replaced by its output on the corrupted prompt (resample ablation)."""
    info = model_info(model)
    results, clean, corrupt = _corrupt_head_results(model, task)
    effects = torch.zeros(info.n_layers, info.n_heads)
    for layer in range(info.n_layers):
        for head in range(info.n_heads):
            effects[layer, head] = (clean - _patched_metric(model, task, results, [(layer, head)])) / (clean - corrupt)
    return effects


@torch.no_grad()
def joint_ablation_effect(model: nn.Module, task: Task, heads: list[str]) -> float:
    """Share of the clean-minus-corrupt logit difference lost when all `heads` ("a0.h1", ...) are resample-ablated together."""
    from acdc_lite.graph import Node

    nodes = [Node.parse(h) for h in heads]
    results, clean, corrupt = _corrupt_head_results(model, task)
    return (clean - _patched_metric(model, task, results, [(n.layer, n.head) for n in nodes])) / (clean - corrupt)


def classify_heads(prev: torch.Tensor, induction: torch.Tensor, effects: torch.Tensor,
                   min_score: float = 0.5, min_effect: float = 0.1) -> list[dict]:
    """Ground-truth heads: attention score >= min_score AND ablation effect >= min_effect."""
    out = []
    for layer in range(prev.shape[0]):
        for head in range(prev.shape[1]):
            for cls, score in (("previous-token", prev), ("induction", induction)):
                if score[layer, head] >= min_score and effects[layer, head] >= min_effect:
                    out.append({"head": f"a{layer}.h{head}", "class": cls, "score": round(float(score[layer, head]), 3),
                                "ablation_effect": round(float(effects[layer, head]), 3)})
    return out
