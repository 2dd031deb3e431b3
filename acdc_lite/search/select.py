"""Turning edge scores into a circuit: top-n, a threshold, or the smallest prefix reaching a faithfulness.

Selection works on units (`ModelGraph.edge_units`): with grouped-query attention the k (v) edges from one
sender into a k/v group's heads are ranked, kept and dropped together, by the sum of their scores.
Elsewhere a unit is one edge and nothing changes.

`select_faithful` costs about as much as one or two forward passes, not a bisection's log2(E): the scores
already estimate the metric of every prefix of the ranking (`predicted_faithfulness`), so it evaluates the
prefix they predict, corrects the prediction by what it measured, and tries once more where that helps.
"""

from __future__ import annotations

import bisect
import math
from collections.abc import Callable
from dataclasses import dataclass

import torch

from acdc_lite.graph import ModelGraph
from acdc_lite.ranking import ranked_edges, ranking, threshold, top_n, unit_ends
from acdc_lite.search.common import SearchContext

__all__ = ["Selection", "predicted_faithfulness", "ranked_edges", "ranking", "select_faithful", "threshold", "top_n",
           "unit_ends", "until_faithful"]


@dataclass(frozen=True)
class Selection:
    """The chosen circuit `kept` [S, R] bool, its measured metric, and what choosing it cost."""

    kept: torch.Tensor
    metric: float
    faithfulness: float
    evaluations: int  # patched evaluations of candidate circuits
    forward_passes: float  # those evaluations in units of one forward pass over all examples
    predicted: float  # the faithfulness the scores predicted for the first candidate


def predicted_faithfulness(graph: ModelGraph, scores: torch.Tensor, ranked: torch.Tensor, ends: list[int],
                           metric_full: float, metric_empty: float) -> torch.Tensor:
    """Faithfulness of each prefix `ranked[:ends[i]]` as the scores predict it: [len(ends)] float64.

    A score estimates the metric's drop when its edge alone is removed from the full model, so keeping a prefix
    predicts metric_full minus the scores of the rest. Summed over all edges that misses the ablated model's
    metric by some error (the drops do not add up exactly); the error is spread over the removed edges in
    proportion to their |score|, so the prediction is exact at both ends (0 for no edge, 1 for all).
    """
    values = scores.flatten()[ranked].double().nan_to_num(0.0)
    rest = values.flip(0).cumsum(0).flip(0)  # rest[j] = sum of values[j:]
    rest_abs = values.abs().flip(0).cumsum(0).flip(0)
    zero = torch.zeros(1, dtype=torch.float64)
    rest, rest_abs = torch.cat([rest, zero]), torch.cat([rest_abs, zero])
    index = torch.tensor(ends)
    error = metric_empty - (metric_full - float(rest[0]))
    share = rest_abs[index] / rest_abs[0] if float(rest_abs[0]) > 0 else 1 - index.double() / max(len(ranked), 1)
    metric = metric_full - rest[index] + error * share
    return (metric - metric_empty) / (metric_full - metric_empty)


def select_faithful(ctx: SearchContext, scores: torch.Tensor, target: float = 0.9, *, metric_full: float,
                    metric_empty: float, absolute: bool = True, grid: int = 8, rounds: int = 2,
                    round_passes: float = 0.75, finalize: Callable[[torch.Tensor], torch.Tensor] | None = None) -> Selection:
    """The smallest prefix of the ranking whose (finalized, e.g. dangling-pruned) circuit reaches `target`
    faithfulness, for about as many passes as the scoring took.

    1. Sketch the faithfulness curve cheaply: `rounds` batched passes over a few spread-out prompts (sized so a
       round costs `round_passes` forward passes over all examples), each evaluating `grid` prefixes at once:
       first spread geometrically over the ranking, then linearly inside the bracket where the sketch crosses.
    2. Confirm on all prompts the shortest sketched prefix that reaches the target; after a miss the next longer
       one that does, and after two misses (a sketch that flatters) the 2nd, 4th, ... next; past the last sketched
       prefix, bisect between the longest prefix seen failing and every edge. Every edge passes, so the result
       always reaches the target.
    The prefix the scores alone predict (`predicted_faithfulness`) joins the first round's grid.
    """
    graph = ctx.graph
    ranked = ranked_edges(graph, scores, absolute)
    ends = unit_ends(graph, ranked)
    last = len(ends) - 1
    finalize = finalize or (lambda m: m)
    predicted = predicted_faithfulness(graph, scores, ranked, ends, metric_full, metric_empty)
    guess = _first_reaching(predicted, target, 0, last)
    passes_before = ctx.patcher.forward_passes
    n_examples = len(ctx.patcher.tokens)
    rows = torch.linspace(0, n_examples - 1, max(1, min(n_examples, round(n_examples * round_passes / (grid + 2))))).round().long().unique()

    def mask(i: int) -> torch.Tensor:
        m = torch.zeros(graph.valid.numel(), dtype=torch.bool)
        m[ranked[:ends[i]]] = True
        return finalize(m.view_as(graph.valid))

    def faithfulness(value: float, full: float, empty: float) -> float:
        return (value - empty) / (full - empty) if full != empty else 0.0

    sketch: dict[int, float] = {}  # prefix index -> faithfulness on the sketch prompts
    lo, hi = 0, last
    for r in range(rounds):
        if hi - lo <= 1:
            break
        if r == 0:
            low = max(1.0, ends[guess] / 4)  # from a quarter of the predicted size to every edge
            points = torch.logspace(math.log10(low), math.log10(ends[hi]), grid).tolist()
            points = [_unit_at(ends, p) for p in points] + [guess]
        else:
            points = torch.linspace(lo, hi, grid + 2).round().long().tolist()
        points = sorted({p for p in points if lo < p < hi})
        if not points:
            break
        values = _evaluate_on(ctx, rows, torch.stack([graph.valid, torch.zeros_like(graph.valid)] + [mask(p) for p in points]))
        for p, v in zip(points, values[2:], strict=True):
            sketch[p] = faithfulness(v, values[0], values[1])
        reaching = [p for p in points if sketch[p] >= target]
        hi = reaching[0] if reaching else hi
        lo = max([p for p in points if p < hi], default=lo)

    measured: dict[int, float] = {}
    lo, hi, jump = 0, last, 1  # now on all prompts: lo fails (no edge), hi passes (every edge)
    while True:
        ahead = sorted(p for p, f in sketch.items() if lo < p < hi and f >= target)
        candidate = ahead[min(jump, len(ahead)) - 1] if ahead else (lo + hi + 1) // 2  # else bisect the bracket
        if candidate >= hi:
            break
        value = float(ctx.evaluate(mask(candidate)))
        measured[candidate] = value
        faith = faithfulness(value, metric_full, metric_empty)
        if faith >= target:
            hi = candidate
            if ahead:
                break
        else:
            lo, jump = candidate, 2 * jump if len(measured) >= 2 else jump
    kept = mask(hi)
    value = measured[hi] if hi in measured else metric_full if hi == last else float(ctx.evaluate(kept))
    return Selection(kept, value, faithfulness(value, metric_full, metric_empty), len(measured),
                     ctx.patcher.forward_passes - passes_before, float(predicted[guess]))


def _first_reaching(level: torch.Tensor, target: float, lo: int, hi: int) -> int:
    """The smallest i in (lo, hi] with level[i] >= target (hi if none)."""
    hits = (level[lo + 1:hi + 1] >= target).nonzero()
    return lo + 1 + int(hits[0]) if len(hits) else hi


def _unit_at(ends: list[int], n_edges: float) -> int:
    """The index of the first prefix (a unit boundary) holding at least `n_edges` edges."""
    return min(bisect.bisect_left(ends, n_edges), len(ends) - 1)


def _evaluate_on(ctx: SearchContext, rows: torch.Tensor, masks: torch.Tensor) -> list[float]:
    """Mean metric of each of `masks` [C, S, R] over the examples `rows` only, in one batched pass; the pass is
    counted on `ctx.patcher` as a share of one over all examples."""
    sub = ctx.patcher.subset(rows)
    values = sub.evaluate(masks, lambda logits, ex: ctx.metric(logits, rows.to(ex.device)[ex]))
    ctx.patcher.forward_passes += sub.forward_passes * len(rows) / len(ctx.patcher.tokens)
    return values.tolist()


def until_faithful(ctx: SearchContext, scores: torch.Tensor, target: float = 0.9, absolute: bool = True,
                   metric_full: float | None = None, metric_empty: float | None = None) -> torch.Tensor:
    """[S, R] bool: a short prefix of the ranking whose faithfulness reaches `target` (see `select_faithful`)."""
    full = float(ctx.evaluate(ctx.graph.full_mask())) if metric_full is None else metric_full
    empty = float(ctx.evaluate(ctx.graph.empty_mask())) if metric_empty is None else metric_empty
    return select_faithful(ctx, scores, target, metric_full=full, metric_empty=empty, absolute=absolute).kept
