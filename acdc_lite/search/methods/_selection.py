"""What the score methods (eap, eap-ig, exact) share: options for turning edge scores into a circuit, and doing it.

A circuit is chosen from the ranking by |score| in one of three ways, exactly one of which applies: the `top_n`
edges, the edges with |score| >= `threshold`, or (when neither is given) the smallest top-k whose faithfulness
reaches `target_faithfulness` (default 0.9; `select.select_faithful`: a sketch on a few prompts, one prefix measured
on every prompt and its neighbours estimated against it, about three passes, not a bisection). The selection's
forward passes are bookkeeping ("selection").
"""

from __future__ import annotations

from dataclasses import dataclass, field, replace
from typing import Literal

DEFAULT_TARGET = 0.9


@dataclass(frozen=True)
class SelectionOptions:
    """How a score method picks its circuit; give at most one of top_n, threshold, target_faithfulness."""

    level: Literal["edge", "node"] = field(default="edge", metadata={
        "help": "edge: rank edges; node: rank nodes by the sum of their outgoing edges' scores and keep whole nodes."})
    top_n: int | None = field(default=None, metadata={"ge": 1, "help": "Keep the n best-scored edges."})
    threshold: float | None = field(default=None, metadata={"ge": 0, "help": "Keep the edges with |score| >= this."})
    target_faithfulness: float | None = field(default=None, metadata={
        "gt": 0, "le": 1, "help": f"Keep the smallest top-k reaching this faithfulness (default {DEFAULT_TARGET} when "
                                  "neither top_n nor threshold is given)."})

    def __post_init__(self):
        given = [name for name in ("top_n", "threshold", "target_faithfulness") if getattr(self, name) is not None]
        if len(given) > 1:
            raise ValueError(f"give one of top_n, threshold, target_faithfulness, not {' and '.join(given)}: each "
                             "alone decides the circuit")

    def resolved(self):
        """The options with the selection rule decided (target_faithfulness 0.9 when no rule is given)."""
        if self.top_n is None and self.threshold is None and self.target_faithfulness is None:
            return replace(self, target_faithfulness=DEFAULT_TARGET)
        return self


def select_circuit(ctx, method: str, attr, options: SelectionOptions, params: dict | None = None):
    """A SearchResult from `attr` (attribution.Scores) by `options`' rule; node level keeps whole nodes."""
    from acdc_lite.search import select
    from acdc_lite.search.common import SearchResult, node_mask_to_edges, prune_dangling

    graph = ctx.graph
    scores = attr.scores
    metric_full, metric_empty = ctx.reference(full=attr.metric_full)  # the gradient pass ran the clean model
    if options.level == "node":
        node_scores = scores.nan_to_num(0).sum(dim=1)  # a node's score: the sum over its outgoing edges
        scores = node_scores[:, None].expand_as(scores).masked_fill(~graph.valid, float("nan")).clone()
    metric_circuit = None
    with ctx.counted_as("selection"):
        if options.top_n is not None:
            kept = select.top_n(graph, scores, options.top_n)
        elif options.threshold is not None:
            kept = select.threshold(graph, scores, options.threshold)
        elif options.level == "edge":  # measures the circuit it picks (dangling edges pruned): no final evaluation
            chosen = select.select_faithful(ctx, scores, options.target_faithfulness, metric_full=metric_full,
                                            metric_empty=metric_empty, finalize=lambda m: prune_dangling(graph, m),
                                            full_values=attr.full_values, empty_values=ctx.corrupt_values)
            kept, metric_circuit = chosen.kept, chosen.metric
        else:
            kept = select.until_faithful(ctx, scores, options.target_faithfulness, metric_full=metric_full,
                                         metric_empty=metric_empty)
    if options.level == "node":
        dropped = {s for s in range(graph.n_senders) if not kept[s].any()}
        kept = node_mask_to_edges(graph, dropped)
    kept = prune_dangling(graph, kept)  # selection keeps grouped k/v edges tied
    return SearchResult(method=method, params={**(params or {}), "ranking": "absolute score"}, kept=kept, scores=scores,
                        trajectory=[], forward_passes=ctx.patcher.forward_passes,
                        backward_passes=ctx.patcher.backward_passes, seconds=ctx.seconds(), metric_full=metric_full,
                        metric_empty=metric_empty, metric_circuit=ctx.final(kept) if metric_circuit is None else metric_circuit)
