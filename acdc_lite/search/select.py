"""Turning edge scores into a circuit: top-n, a threshold, or the smallest prefix reaching a faithfulness."""

from __future__ import annotations

import torch

from acdc_lite.ranking import ranked_edges, ranking, threshold, top_n
from acdc_lite.search.common import SearchContext

__all__ = ["ranked_edges", "ranking", "threshold", "top_n", "until_faithful"]


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
