"""Turning edge scores into a circuit: top-n, a threshold, or the smallest prefix reaching a faithfulness."""

from __future__ import annotations

import math

import torch

from acdc_lite.graph import ModelGraph
from acdc_lite.search.common import SearchContext


def ranked_edges(graph: ModelGraph, scores: torch.Tensor, absolute: bool = True) -> torch.Tensor:
    """Flat indices into [S, R] of the valid edges, most important first (by |score| when `absolute`);
    NaN scores last; ties keep graph order. [E]"""
    flat = graph.valid.flatten().nonzero().flatten()
    values = scores.flatten()[flat].double()
    values = (values.abs() if absolute else values).nan_to_num(nan=-math.inf)
    return flat[torch.sort(-values, stable=True).indices]


def ranking(graph: ModelGraph, scores: torch.Tensor, absolute: bool = True) -> list[tuple[int, int]]:
    """Valid edges as (sender, receiver), most important first (see `ranked_edges`)."""
    n_r = graph.n_receivers
    return [(int(i) // n_r, int(i) % n_r) for i in ranked_edges(graph, scores, absolute)]


def top_n(graph: ModelGraph, scores: torch.Tensor, n: int, absolute: bool = True) -> torch.Tensor:
    """[S, R] bool: the n highest-scoring edges."""
    kept = torch.zeros(graph.valid.numel(), dtype=torch.bool)
    kept[ranked_edges(graph, scores, absolute)[:n]] = True
    return kept.view_as(graph.valid)


def threshold(graph: ModelGraph, scores: torch.Tensor, value: float, absolute: bool = True) -> torch.Tensor:
    """[S, R] bool: edges scoring at least `value` (|score| when `absolute`)."""
    s = scores.abs() if absolute else scores
    return graph.valid & (s.nan_to_num(float("-inf")) >= value)


def until_faithful(ctx: SearchContext, scores: torch.Tensor, target: float = 0.9, absolute: bool = True,
                   metric_full: float | None = None, metric_empty: float | None = None) -> torch.Tensor:
    """[S, R] bool: the smallest top-k (found by bisection on k) whose faithfulness reaches `target`.

    Faithfulness is not always monotone in k; bisection finds a k where it crosses the target.
    """
    graph = ctx.graph
    order = ranking(graph, scores, absolute)
    full = ctx.evaluate(graph.full_mask()) if metric_full is None else metric_full
    empty = ctx.evaluate(graph.empty_mask()) if metric_empty is None else metric_empty

    def mask(k):
        m = torch.zeros_like(graph.valid)
        for s, r in order[:k]:
            m[s, r] = True
        return m

    def faithful(k):
        return (float(ctx.evaluate(mask(k))) - empty) / (full - empty) >= target

    lo, hi = 0, len(order)  # invariant: faithful(hi)
    while lo < hi:
        mid = (lo + hi) // 2
        if faithful(mid):
            hi = mid
        else:
            lo = mid + 1
    return mask(hi)
