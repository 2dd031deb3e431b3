"""Edge scores from gradients (EAP, EAP-IG) and from exact single-edge patching.

Every score is the estimated (or, for exact patching, true) drop of the metric when that one edge
is removed from the full model: higher = more important to the clean behaviour, signed.

- EAP: d metric / d kept at the full mask = <clean - ablated sender output, gradient at the receiver
  input>: 2 forward passes (corrupted cache + clean) and 1 backward pass per batch.
- EAP-IG: the receiver gradients averaged over `ig_steps` inputs interpolated from the ablated input
  to the clean one (EAP-IG's "inputs" variant), times the same differences.
- exact: metric(full) - metric(full without the edge) for every edge, batched `batch` candidates per
  pass, recomputing only from the receiver's layer on. With grouped-query attention a tied k/v unit (the
  edges from one sender into a k/v group's shared input) is removed whole and each of its edges gets an
  equal share of the drop, so a unit's score (the sum) is its true effect, as for the gradient scores.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from tqdm.auto import tqdm

from acdc_lite.boundary import InputError
from acdc_lite.graph import unit_members
from acdc_lite.runs import Checkpointer
from acdc_lite.search.common import SearchContext


@dataclass(frozen=True)
class Scores:
    """[S, R] edge scores (NaN outside valid edges) and the full model's metric."""

    scores: torch.Tensor
    metric_full: float
    full_values: torch.Tensor | None = None  # [N] each example's metric with every edge kept, when measured


def eap(ctx: SearchContext, ig_steps: int = 1) -> Scores:
    value, grad, each = ctx.patcher.mask_gradient(ctx.metric, ig_steps=ig_steps, per_example=True)
    return Scores(grad.masked_fill(~ctx.graph.valid, float("nan")), value, each)


def eap_ig(ctx: SearchContext, ig_steps: int = 5) -> Scores:
    return eap(ctx, ig_steps=ig_steps)


def exact(ctx: SearchContext, batch: int = 16, progress: bool = True, max_edges: int = 20_000,
          checkpoint: Checkpointer | None = None) -> Scores:
    """Exact single-edge effects; with `checkpoint`, the scores so far are saved on its interval and on
    interruption, and a saved state is continued from."""
    graph = ctx.graph
    if graph.n_edges() > max_edges:
        raise ValueError(f"exact patching of {graph.n_edges()} edges is too slow; raise max_edges or use eap-ig")
    full = graph.full_mask()
    metric_full = ctx.metric_full
    prefix = ctx.patcher.record_prefix(full)
    scores = torch.full(graph.valid.shape, float("nan"))
    by_layer: dict[int, list] = {}
    for rows, cols in unit_members(graph):  # a tied k/v unit is patched whole
        by_layer.setdefault(min(graph.receiver_layer(int(cols[0])), graph.n_layers - 1), []).append((rows, cols))
    chunks = [(layer, layer_edges[i:i + batch]) for layer, layer_edges in sorted(by_layer.items())
              for i in range(0, len(layer_edges), batch)]
    done = _resume_exact(checkpoint, graph, scores)
    snapshot = _exact_state(graph, scores, done)

    def save():
        checkpoint.save("exact", {**snapshot, "forward_passes": ctx.patcher.forward_passes})

    with tqdm(total=sum(len(c) for _, c in chunks), initial=sum(len(c) for _, c in chunks[:done]),
              desc="exact patching", disable=not progress, unit="edge") as bar:
        try:
            for n, (layer, chunk) in enumerate(chunks[done:], done + 1):
                cands = full[None].repeat(len(chunk), 1, 1)
                for k, (rows, cols) in enumerate(chunk):
                    cands[k, rows, cols] = False
                values = ctx.evaluate(cands, start_layer=layer, prefix=prefix)
                for k, (rows, cols) in enumerate(chunk):  # each edge of a unit gets an equal share
                    scores[rows, cols] = (metric_full - float(values[k])) / len(rows)
                bar.update(len(chunk))
                if checkpoint is not None:
                    snapshot = _exact_state(graph, scores, n)
                    if checkpoint.due():
                        save()
        except KeyboardInterrupt:
            if checkpoint is not None:
                save()
            raise
    return Scores(scores, metric_full)


def _exact_state(graph, scores: torch.Tensor, done: int) -> dict:
    return {"graph": list(graph.shape_key), "chunks_done": done,
            "scores": {str(e): float(scores[graph.edge_index(e)]) for e in graph.edges_from_mask(~scores.isnan())}}


def _resume_exact(checkpoint: Checkpointer | None, graph, scores: torch.Tensor) -> int:
    """Fill `scores` from a saved state; the number of chunks it covers (0 without one)."""
    state = checkpoint.load("exact") if checkpoint is not None else None
    if state is None:
        return 0
    try:
        if tuple(state["graph"]) != graph.shape_key:
            raise InputError(f"checkpoint {checkpoint.path} is for another model graph {state['graph']}")
        for name, value in state["scores"].items():
            scores[graph.edge_index(name)] = float(value)
        return int(state["chunks_done"])
    except (KeyError, TypeError, ValueError) as e:
        if isinstance(e, InputError):
            raise
        raise InputError(f"checkpoint {checkpoint.path}: malformed state ({e}); delete it and start again") from None
