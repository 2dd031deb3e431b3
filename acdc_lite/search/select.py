"""Turning edge scores into a circuit: top-n, a threshold, or the smallest prefix reaching a faithfulness.

Selection works on units (`ModelGraph.edge_units`): with grouped-query attention the k (v) edges from one
sender into a k/v group's heads are ranked, kept and dropped together, by the sum of their scores.
Elsewhere a unit is one edge and nothing changes.

`select_faithful` costs about two to three forward passes, not a bisection's log2(E): a sketch of the
faithfulness curve on a few prompts says where it crosses the target, one prefix there is measured on every
prompt, prompt by prompt, and prefixes near it are then estimated on a few prompts by their per-prompt
difference from it (far less noisy than the sketch: neighbouring circuits differ little on each prompt) before
the best of them is confirmed.
"""

from __future__ import annotations

import bisect
import math
from collections.abc import Callable
from dataclasses import dataclass

import torch

from acdc_lite.graph import ModelGraph
from acdc_lite.metrics import on_rows
from acdc_lite.ranking import ranked_edges, ranking, threshold, top_n, unit_ends
from acdc_lite.search.common import SearchContext

__all__ = ["Selection", "predicted_faithfulness", "ranked_edges", "ranking", "select_faithful", "threshold", "top_n",
           "unit_ends", "until_faithful"]


NOISE_LIMIT = 0.25  # standard error of a circuit's faithfulness over the prompts above which selection stops


@dataclass(frozen=True)
class Selection:
    """The chosen circuit `kept` [S, R] bool, its measured metric, and what choosing it cost."""

    kept: torch.Tensor
    metric: float
    faithfulness: float
    evaluations: int  # candidate circuits measured on every prompt
    forward_passes: float  # all passes spent choosing, in units of one forward pass over all examples
    predicted: float  # the faithfulness the scores predicted for the size they expect


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
                    metric_empty: float, absolute: bool = True, sketch_passes: float = 0.5, scan_passes: float = 0.5,
                    budget: float = 2.6, limit: float = 5.0, reach: float = 1.5,
                    finalize: Callable[[torch.Tensor], torch.Tensor] | None = None,
                    full_values: torch.Tensor | None = None, empty_values: torch.Tensor | None = None) -> Selection:
    """A short prefix of the ranking whose (finalized, e.g. dangling-pruned) circuit reaches `target` faithfulness,
    close to the shortest one, for about `budget` forward passes (never more than `limit`).

    1. Sketch: one batched pass over a few spread-out prompts (costing `sketch_passes` passes over all prompts)
       evaluates the full and empty circuits and ~8 prefixes spread geometrically from a quarter of the size the
       scores predict (`predicted_faithfulness`) to every edge; the anchor is where the sketch crosses the target.
    2. Anchor: that prefix on every prompt, keeping each prompt's metric.
    3. Scan: ~6 prefixes on the side the anchor points to (shorter if it reached the target, else longer; within
       a factor `reach` of its size or as far as the sketch's neighbour), on a few prompts (`scan_passes`), each
       estimated as the anchor's faithfulness plus their mean per-prompt difference from it.
    4. Confirm, completing the prompts the scan did not see: the shortest scanned prefix estimated to reach the
       target, while the spend stays under `budget` and the bracket (longest failing, shortest passing prefix
       measured) is wider than 5%; with no prefix confirmed yet, step up (by 10% to 50%) to the next prefix the scan
       or the sketch says reaches it (doubling once the scan has misled), until `limit`: then every edge.
    `full_values`, `empty_values` [N]: each prompt's metric with every edge kept and with none, when earlier passes
    measured them (a gradient pass, the corrupted run under resample ablation): the sketch then skips those circuits.
    Every edge passes, so the result always reaches the target. When the anchor's faithfulness is too uncertain
    over the prompts (standard error > `NOISE_LIMIT`, e.g. a random model whose clean and corrupted metrics
    barely differ), no finer choice means anything: the anchor if it reaches the target, else every edge.
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
    gap = metric_full - metric_empty

    masks: dict[int, torch.Tensor] = {}

    def mask(i: int) -> torch.Tensor:
        if i not in masks:
            m = torch.zeros(graph.valid.numel(), dtype=torch.bool)
            m[ranked[:ends[i]]] = True
            masks[i] = finalize(m.view_as(graph.valid))
        return masks[i]

    def twin(i: int, among) -> int | None:
        """A prefix in `among` whose finalized circuit is the same as prefix i's (pruning can make them equal)."""
        return next((j for j in among if j != i and torch.equal(mask(j), mask(i))), None)

    def faith(value: float) -> float:
        return (value - metric_empty) / gap if gap else 0.0

    measured = {0: metric_empty, last: metric_full}  # prefix index -> mean metric over all prompts
    if last <= 1:
        return Selection(mask(last), metric_full, 1.0, 0, 0.0, float(predicted[guess]))

    # 1. sketch
    rows, n_points = _rows_for(n_examples, sketch_passes, 8, extra=2)
    low = max(1.0, ends[guess] / 4)
    points = {_unit_at(ends, p) for p in torch.logspace(math.log10(low), math.log10(ends[last]), n_points).tolist()}
    points = sorted((points | {guess}) - {0, last})
    owner = {0: 0, last: last}  # each point -> the first point (or end) with the same circuit
    for p in points:
        same = twin(p, list(owner))
        owner[p] = p if same is None else same
    unique = [p for p in points if owner[p] == p]
    if full_values is not None and empty_values is not None:  # the full and empty circuits' values here are known
        known = torch.stack([full_values[rows], empty_values[rows]]).to(torch.float64)
        values = torch.cat([known, _values_on(ctx, rows, torch.stack([mask(p) for p in unique])).double()]) if unique else known
    else:
        values = _values_on(ctx, rows, torch.stack([graph.valid, torch.zeros_like(graph.valid)] + [mask(p) for p in unique]))
    values = values.double().mean(1)
    sub_gap = float(values[0] - values[1])
    sketch = {0: 0.0, last: 1.0} | {p: float(v - values[1]) / sub_gap if sub_gap else 0.0
                                    for p, v in zip(unique, values[2:], strict=True)}
    sketch |= {p: sketch[owner[p]] for p in points}
    sketched = sorted(sketch.items())
    anchor = min(max(int(_crossing(sketched, target)), 1), last - 1)
    while anchor < last - 1 and twin(anchor, [0]) is not None:  # pruned to nothing: its metric is known
        anchor += 1

    # 2. the anchor on every prompt
    everyone = torch.arange(n_examples)
    anchor_values = _values_on(ctx, everyone, mask(anchor)[None])[0].double()
    measured[anchor] = float(anchor_values.mean())
    evaluated = [anchor]  # prefixes measured on every prompt
    reached = faith(measured[anchor]) >= target
    noise = float(anchor_values.std()) / math.sqrt(n_examples) / abs(gap) if gap and n_examples > 1 else math.inf
    if noise > NOISE_LIMIT:  # the metric cannot tell circuits apart on these prompts: no finer choice is possible
        chosen = anchor if reached else last
        return Selection(mask(chosen), measured[chosen], faith(measured[chosen]), 1,
                         ctx.patcher.forward_passes - passes_before, float(predicted[guess]))

    # 3. scan beside the anchor, paired with it prompt by prompt
    if reached:
        below = max([p for p, f in sketched if p < anchor and f < target], default=0)
        lo, hi = min(below, _unit_at(ends, ends[anchor] / reach)), anchor
    else:
        above = min([p for p, f in sketched if p > anchor and f >= target], default=last)
        lo = anchor
        hi = min(max(above, _unit_at(ends, ends[anchor] * reach)), _unit_at(ends, ends[anchor] * reach * reach))
    scan: list[int] = []
    for p in sorted(set(torch.linspace(lo, hi, 7).round().long().tolist()[1:]) - set(measured)):
        if twin(p, list(measured) + scan) is None:
            scan.append(p)
    estimate: dict[int, float] = {}
    seen: dict[int, torch.Tensor] = {}  # prefix index -> its metric on the scan's prompts
    scan_rows = torch.zeros(0, dtype=torch.long)
    if scan:
        scan_rows, n_scan = _rows_for(n_examples, scan_passes, len(scan), extra=0, min_rows=2)
        scan = scan[::math.ceil(len(scan) / n_scan)]
        scanned = _values_on(ctx, scan_rows, torch.stack([mask(p) for p in scan])).double()
        for p, v in zip(scan, scanned, strict=True):
            estimate[p] = faith(measured[anchor]) + float((v - anchor_values[scan_rows]).mean()) / gap if gap else 0.0
            seen[p] = v
    unseen = torch.ones(n_examples, dtype=torch.bool)
    unseen[scan_rows] = False
    unseen = unseen.nonzero().flatten()

    # 4. confirm
    def confirm(i: int) -> None:
        same = twin(i, list(measured))
        if same is not None:
            measured[i] = measured[same]
            return
        evaluated.append(i)
        if i in seen:  # the scan measured it on some prompts: the others complete it
            rest = _values_on(ctx, unseen, mask(i)[None])[0].double() if len(unseen) else torch.zeros(0)
            measured[i] = (float(seen[i].sum()) + float(rest.sum())) / n_examples
        else:
            measured[i] = float(_values_on(ctx, everyone, mask(i)[None])[0].double().mean())

    def bracket() -> tuple[int, int]:
        """(longest prefix measured failing below the shortest measured passing, that shortest passing one)."""
        hi = min(p for p, v in measured.items() if p == last or faith(v) >= target)
        return max(p for p, v in measured.items() if p < hi and (p == 0 or faith(v) < target)), hi

    for _ in range(6):
        lo, hi = bracket()
        if hi - lo <= 1:
            break
        if hi < last:
            spent = ctx.patcher.forward_passes - passes_before
            if spent >= budget or ends[hi] - ends[lo] <= max(1.0, 0.05 * ends[hi]):
                break
            ahead = [p for p in sorted(estimate) if lo < p < hi and estimate[p] >= target]
            candidate = ahead[0] if ahead else _unit_at(ends, math.sqrt(max(ends[lo], 1) * ends[hi]))
        else:  # nothing confirmed yet: step up, by 10% to 50%; twice as far once the scan has misled
            if ctx.patcher.forward_passes - passes_before + 1 > limit:
                break
            misled = any(p in measured for p in estimate if estimate[p] >= target + 0.02)
            ahead = [p for p in sorted(estimate) if p > lo and estimate[p] >= target + 0.02 and not misled]
            ahead += [p for p, f in sketched if p > lo and f >= target]
            candidate = min(ahead[0], _unit_at(ends, ends[lo] * 1.5)) if not misled else _unit_at(ends, ends[lo] * 2)
            candidate = max(candidate, _unit_at(ends, ends[lo] * 1.1))
        confirm(min(max(candidate, lo + 1), hi - 1))
    hi = bracket()[1]
    return Selection(mask(hi), measured[hi], faith(measured[hi]), len(evaluated),
                     ctx.patcher.forward_passes - passes_before, float(predicted[guess]))


def _crossing(curve: list[tuple[int, float]], target: float) -> float:
    """Where the piecewise-linear `curve` [(prefix index, faithfulness)], sorted, first reaches `target` (the
    last index if it never does)."""
    for (x0, y0), (x1, y1) in zip(curve, curve[1:], strict=False):
        if y1 >= target:
            return x0 + (x1 - x0) * (target - y0) / (y1 - y0) if y0 < target else float(x0)
    return float(curve[-1][0])


def _rows_for(n_examples: int, passes: float, points: int, extra: int, min_rows: int = 1) -> tuple[torch.Tensor, int]:
    """Spread-out prompts and a number of masks (<= `points`, plus `extra`) whose evaluation on those prompts
    costs about `passes` passes over all prompts: (rows [m], number of masks besides the extra)."""
    m = max(min_rows, min(n_examples, round(n_examples * passes / (points + extra))))
    points = max(1, min(points, math.floor(n_examples * passes / m) - extra))
    return torch.linspace(0, n_examples - 1, m).round().long().unique(), points


def _first_reaching(level: torch.Tensor, target: float, lo: int, hi: int) -> int:
    """The smallest i in (lo, hi] with level[i] >= target (hi if none)."""
    hits = (level[lo + 1:hi + 1] >= target).nonzero()
    return lo + 1 + int(hits[0]) if len(hits) else hi


def _unit_at(ends: list[int], n_edges: float) -> int:
    """The index of the first prefix (a unit boundary) holding at least `n_edges` edges."""
    return min(bisect.bisect_left(ends, n_edges), len(ends) - 1)


def _values_on(ctx: SearchContext, rows: torch.Tensor, masks: torch.Tensor) -> torch.Tensor:
    """The metric of each of `masks` [C, S, R] on each of the examples `rows` [m], in one batched pass: [C, m].
    The pass is counted on `ctx.patcher` as a share of one over all examples."""
    if len(rows) == len(ctx.patcher.tokens):
        return ctx.patcher.evaluate(masks, ctx.metric, per_example=True)
    sub = ctx.patcher.subset(rows)
    values = sub.evaluate(masks, on_rows(ctx.metric, rows), per_example=True)
    ctx.patcher.forward_passes += sub.forward_passes * len(rows) / len(ctx.patcher.tokens)
    return values


def until_faithful(ctx: SearchContext, scores: torch.Tensor, target: float = 0.9, absolute: bool = True,
                   metric_full: float | None = None, metric_empty: float | None = None) -> torch.Tensor:
    """[S, R] bool: a short prefix of the ranking whose faithfulness reaches `target` (see `select_faithful`)."""
    full = float(ctx.evaluate(ctx.graph.full_mask())) if metric_full is None else metric_full
    empty = float(ctx.evaluate(ctx.graph.empty_mask())) if metric_empty is None else metric_empty
    return select_faithful(ctx, scores, target, metric_full=full, metric_empty=empty, absolute=absolute).kept
