"""Node-level search: iterative head pruning and one-shot head-importance-score pruning (HISP).

Removing a node ablates all of its outgoing edges (its output is replaced by the ablated value).

- Iterative pruning: repeatedly remove the component whose removal hurts least, re-estimating every
  remaining component's effect after each removal (exactly, all candidates batched), while the
  metric stays within tau of the full model: metric(full) - metric(pruned) <= tau.
- HISP: rank components once by |d metric / d node mask| at the full model (one backward pass),
  then remove the lowest-ranked prefix as long as the metric stays within tau (found by bisection).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from tqdm.auto import tqdm

from acdc_lite.boundary import InputError
from acdc_lite.runs import Checkpointer
from acdc_lite.search.common import SearchContext, SearchResult, component_senders, node_mask_to_edges, prune_dangling


@dataclass(frozen=True)
class HeadPruningConfig:
    tau: float = 0.1
    include_mlps: bool = False
    batch: int = 16
    progress: bool = True
    checkpoint: Checkpointer | None = None  # iterative pruning: saved on its interval and on interruption


def _result(ctx, method, params, removed, node_scores, trajectory, metric_full) -> SearchResult:
    graph = ctx.graph
    kept = prune_dangling(graph, node_mask_to_edges(graph, removed))
    scores = torch.full(graph.valid.shape, float("nan"))
    for sender, score in node_scores.items():
        scores[sender] = score
    scores = scores.masked_fill(~graph.valid, float("nan"))
    return SearchResult(method=method, params=params, kept=kept, scores=scores, trajectory=trajectory,
                        forward_passes=ctx.patcher.forward_passes, backward_passes=ctx.patcher.backward_passes,
                        seconds=ctx.seconds(), metric_full=metric_full,
                        metric_empty=ctx.metric_empty, metric_circuit=ctx.final(kept))


def run(ctx: SearchContext, config: HeadPruningConfig = HeadPruningConfig()) -> SearchResult:
    """Iterative pruning. Node score: the metric drop its removal caused (or would cause, if kept)."""
    graph = ctx.graph
    metric_full = ctx.metric_full
    current = metric_full
    removed: list[int] = []
    node_scores: dict[int, float] = {}
    trajectory = []
    components = component_senders(graph, config.include_mlps)
    state = config.checkpoint.load("head-pruning") if config.checkpoint is not None else None
    if state is not None:
        removed, node_scores, trajectory, current = _restore(state, graph, config.checkpoint)
    snapshot = _pruning_state(graph, removed, node_scores, trajectory, current)
    with tqdm(total=len(components), initial=len(removed), desc="head pruning", disable=not config.progress,
              unit="node") as bar:
        try:
            while len(removed) < len(components):
                remaining = [c for c in components if c not in removed]
                values = []
                for i in range(0, len(remaining), config.batch):
                    chunk = remaining[i:i + config.batch]
                    cands = torch.stack([node_mask_to_edges(graph, set(removed) | {c}) for c in chunk])
                    values += ctx.evaluate(cands).tolist()
                for c, v in zip(remaining, values, strict=True):
                    node_scores[c] = current - v
                best = max(range(len(remaining)), key=lambda i: values[i])
                if metric_full - values[best] > config.tau:
                    break
                removed.append(remaining[best])
                current = values[best]
                trajectory.append({"removed": str(graph.senders[remaining[best]]), "metric": current,
                                   "forward_passes": ctx.patcher.forward_passes})
                bar.update(1)
                if config.checkpoint is not None:
                    snapshot = _pruning_state(graph, removed, node_scores, trajectory, current)
                    if config.checkpoint.due():
                        config.checkpoint.save("head-pruning", {**snapshot, "forward_passes": ctx.patcher.forward_passes})
        except KeyboardInterrupt:
            if config.checkpoint is not None:
                config.checkpoint.save("head-pruning", {**snapshot, "forward_passes": ctx.patcher.forward_passes})
            raise
    removed = set(removed)
    params = {"tau": config.tau, "include_mlps": config.include_mlps}
    return _result(ctx, "head-pruning", params, removed, node_scores, trajectory, metric_full)


def hisp(ctx: SearchContext, config: HeadPruningConfig = HeadPruningConfig()) -> SearchResult:
    """One-shot ranking by |node gradient|; the longest low-importance prefix within tau is removed."""
    graph = ctx.graph
    metric_full, grad = ctx.patcher.mask_gradient(ctx.metric)
    components = component_senders(graph, config.include_mlps)
    importance = {c: float(grad[c].sum()) for c in components}  # d metric / d (node kept)
    order = sorted(components, key=lambda c: abs(importance[c]))

    def within(k):
        return metric_full - float(ctx.evaluate(node_mask_to_edges(graph, set(order[:k])))) <= config.tau

    lo, hi = 0, len(order)  # largest k with within(k); within(0) holds
    while lo < hi:
        mid = (lo + hi + 1) // 2
        if within(mid):
            lo = mid
        else:
            hi = mid - 1
    params = {"tau": config.tau, "include_mlps": config.include_mlps}
    trajectory = [{"removed": [str(graph.senders[c]) for c in order[:lo]], "forward_passes": ctx.patcher.forward_passes}]
    return _result(ctx, "hisp", params, set(order[:lo]), importance, trajectory, metric_full)


def _pruning_state(graph, removed: list[int], node_scores: dict[int, float], trajectory: list, current: float) -> dict:
    return {"graph": list(graph.shape_key), "removed": [str(graph.senders[c]) for c in removed],
            "node_scores": {str(graph.senders[c]): v for c, v in node_scores.items()},
            "trajectory": list(trajectory), "current": current}


def _restore(state: dict, graph, checkpoint: Checkpointer):
    index = {str(n): i for i, n in enumerate(graph.senders)}
    try:
        if tuple(state["graph"]) != graph.shape_key:
            raise InputError(f"checkpoint {checkpoint.path} is for another model graph {state['graph']}")
        removed = [index[n] for n in state["removed"]]
        node_scores = {index[n]: float(v) for n, v in state["node_scores"].items()}
        return removed, node_scores, list(state["trajectory"]), float(state["current"])
    except (KeyError, TypeError, ValueError) as e:
        if isinstance(e, InputError):
            raise
        raise InputError(f"checkpoint {checkpoint.path}: malformed state ({e}); delete it and start again") from None
