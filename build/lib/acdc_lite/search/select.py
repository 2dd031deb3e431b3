"""Turning edge scores into a circuit: top-n, a threshold, or the smallest prefix reaching a faithfulness.

Selection works on units (`ModelGraph.edge_units`): with grouped-query attention the k (v) edges from one
sender into a k/v group's heads are ranked, kept and dropped together, by the sum of their scores.
Elsewhere a unit is one edge and nothing changes.
"""

from __future__ import annotations

import torch

from acdc_lite.ranking import ranked_edges, ranking, threshold, top_n, unit_ends
from acdc_lite.search.common import SearchContext

__all__ = ["ranked_edges", "ranking", "threshold", "top_n", "unit_ends", "until_faithful"]


def until_faithful(ctx: SearchContext, scores: torch.Tensor, target: float = 0.9, absolute: bool = True,
                   metric_full: float | None = None, metric_empty: float | None = None) -> torch.Tensor:
    """[S, R] bool: the smallest top-k (found by bisection on k) whose faithfulness reaches `target`.

    Faithfulness is not always monotone in k; bisection finds a k where it crosses the target.
    """
    graph = ctx.graph
    ranked = ranked_edges(graph, scores, absolute)
    ends = unit_ends(graph, ranked)  # bisect over whole units
    full = ctx.evaluate(graph.full_mask()) if metric_full is None else metric_full
    empty = ctx.evaluate(graph.empty_mask()) if metric_empty is None else metric_empty

    def mask(i):
        m = torch.zeros(graph.valid.numel(), dtype=torch.bool)
        m[ranked[:ends[i]]] = True
        return m.view_as(graph.valid)

    def faithful(i):
        return (float(ctx.evaluate(mask(i))) - empty) / (full - empty) >= target

    lo, hi = 0, len(ends) - 1  # invariant: faithful(hi)
    while lo < hi:
        mid = (lo + hi) // 2
        if faithful(mid):
            hi = mid
        else:
            lo = mid + 1
    return mask(hi)
