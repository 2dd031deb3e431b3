"""Attention figures: one head's attention pattern on chosen prompts, tokens on both axes.

`attention_figure` draws a static matplotlib Figure (save it as PNG or SVG with
`explore.figures.save_figure`). `attention_html` writes circuitsvis' interactive view in its
self-contained mode (its JavaScript inlined from the installed package, nothing loaded from the
internet); it needs `pip install 'acdc-lite[circuitsvis]'`.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import nn

from acdc_lite.explore.heads import attention_patterns
from acdc_lite.graph import Node, NodeKind
from acdc_lite.task import Task, TaskError, Vocabulary


def token_labels(model: nn.Module, ids: Sequence[int]) -> list[str]:
    """Display strings for token ids: the model's vocabulary or tokenizer, else the ids; positions are appended
    so repeated tokens stay distinguishable (`Mary@3`)."""
    try:
        words = Vocabulary.of(model).decode(list(ids))
    except TaskError:
        words = [str(i) for i in ids]
    return [f"{w.strip() or repr(w)}@{p}" for p, w in enumerate(words)]


def _head(head: str | Node) -> Node:
    node = head if isinstance(head, Node) else Node.parse(str(head))
    if node.kind is not NodeKind.HEAD:
        raise ValueError(f"{head} is not an attention head; name one like a1.h0")
    return node


def head_pattern(model: nn.Module, tokens: torch.Tensor, head: str | Node,
                 attention_mask: torch.Tensor | None = None) -> torch.Tensor:
    """[b, query, key] attention probabilities of `head` ("a1.h0") on `tokens` [b, p] (`attention_mask` [b, p]
    for padded prompts)."""
    node = _head(head)
    return attention_patterns(model, tokens, attention_mask)[node.layer][:, node.head]


def attention_figure(model: nn.Module, task: Task, head: str | Node, prompts: Sequence[int] = (0,),
                     corrupt: bool = False, title: str | None = None):
    """One panel per prompt index: `head`'s attention pattern, queries down, keys across, token labels on
    both axes, a colour bar of attention probability; the answer position's row is marked."""
    from matplotlib.figure import Figure

    node = _head(head)
    prompts = list(prompts)
    bad = [i for i in prompts if not 0 <= i < len(task)]
    if bad:
        raise ValueError(f"prompt indices {bad} are outside the task's {len(task)} prompts")
    tokens = (task.corrupt if corrupt else task.clean)[prompts]
    pattern = head_pattern(model, tokens, node, task.attention_mask[prompts])
    p = tokens.shape[1]
    side = min(2.0 + 0.32 * p, 12.0)
    fig = Figure(figsize=(side * len(prompts) + 1.0, side), layout="constrained")
    axes = fig.subplots(1, len(prompts), squeeze=False)[0]
    image = None
    for ax, i, pat, ids in zip(axes, prompts, pattern, tokens, strict=True):
        labels = token_labels(model, ids.tolist())
        image = ax.imshow(pat.numpy(), cmap="Blues", vmin=0.0, vmax=1.0, interpolation="nearest")
        ax.set_xticks(range(p), labels, rotation=90, fontsize=7)
        ax.set_yticks(range(p), labels, fontsize=7)
        ax.set_xlabel("key (attended-to token)")
        ax.set_ylabel("query (attending token)")
        ax.set_title(f"prompt {i}{' (corrupted)' if corrupt else ''}", fontsize=9)
        answer = int(task.answer_pos[i])
        ax.axhline(answer - 0.5, color="#d95f02", linewidth=0.8)
        ax.axhline(answer + 0.5, color="#d95f02", linewidth=0.8)
    bar = fig.colorbar(image, ax=list(axes))
    bar.set_label("attention probability")
    fig.suptitle(title or f"{node} attention pattern ({task.name})")
    return fig


def attention_html(model: nn.Module, task: Task, head: str | Node, prompt: int = 0) -> str:
    """A self-contained HTML page of circuitsvis' interactive attention view of `head` on one prompt."""
    try:
        from circuitsvis.attention import attention_pattern
    except ImportError as e:
        raise ImportError("interactive attention views need circuitsvis: pip install 'acdc-lite[circuitsvis]'") from e
    node = _head(head)
    tokens = task.clean[prompt:prompt + 1]
    pattern = head_pattern(model, tokens, node, task.attention_mask[prompt:prompt + 1])[0]
    view = attention_pattern(tokens=token_labels(model, tokens[0].tolist()), attention=pattern.numpy())
    return (f"<!DOCTYPE html>\n<html><head><meta charset=\"utf-8\"><title>{node} attention ({task.name}, prompt "
            f"{prompt})</title></head>\n<body>\n<h3>{node} attention ({task.name}, prompt {prompt})</h3>\n"
            f"{view.local_src}\n</body></html>\n")
