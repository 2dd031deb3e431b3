"""Circuit search: `discover(model, task, method=...)` -> Circuit, and `search(...)` -> SearchResult.

Methods (edge level unless stated):
- acdc: exact ACDC edge pruning with threshold tau (KL to the clean model by default).
- head-pruning: iterative node pruning (node level), exact effects re-estimated as nodes go.
- hisp: one-shot head-importance-score ranking (node level).
- eap / eap-ig: attribution scores, then a circuit by top-n, threshold, or target faithfulness.
- exact: true single-edge removal effects, then selected like eap.
- hybrid: attribution-ordered block removal with bisection, then an ACDC sweep at the boundary.
"""

from __future__ import annotations

import logging
import math
import time
from pathlib import Path

import torch
from torch import nn

from acdc_lite.boundary import UsageError
from acdc_lite.circuit import Circuit, ModelRef
from acdc_lite.patching import Ablation
from acdc_lite.runs import Checkpointer
from acdc_lite.search import acdc, attribution, head_pruning, hybrid, select
from acdc_lite.search.common import SearchContext, SearchResult, node_mask_to_edges, prune_dangling
from acdc_lite.task import Task

log = logging.getLogger(__name__)

METHODS = ("acdc", "head-pruning", "hisp", "eap", "eap-ig", "exact", "hybrid")
GRADIENT_METHODS = ("eap", "eap-ig", "hybrid", "hisp")


class SearchError(UsageError):
    """Search arguments that cannot work; the message says what to change (a usage error: exit code 2)."""

CHECKPOINTED = ("acdc", "hybrid", "exact", "head-pruning")  # methods that can resume from a checkpoint


def default_metric(method: str, task: Task) -> str:
    """KL for ACDC (label-free); the task's metric for gradient methods (KL has zero gradient at the clean model)."""
    return "kl" if method == "acdc" else task.default_metric


def default_tau(method: str, metric: str, metric_full: float, metric_empty: float) -> float:
    """0.01 nats for KL; otherwise 2% of the full-vs-ablated gap (5% for node-level pruning)."""
    if metric == "kl":
        return 0.01
    share = 0.05 if method in ("head-pruning", "hisp") else 0.02
    return share * abs(metric_full - metric_empty)


def search(model: nn.Module, task: Task, method: str = "hybrid", *, tau: float | None = None, metric: str | None = None,
           ablation: Ablation | str = Ablation.RESAMPLE, level: str = "edge", top_n: int | None = None,
           threshold: float | None = None, target_faithfulness: float = 0.9, ig_steps: int = 5, batch_size: int = 32,
           include_mlps: bool = False, checkpoint: Checkpointer | str | Path | None = None,
           shuffle_seed: int | None = None, seed: int = 0, progress: bool = True) -> SearchResult:
    """Run one search method; see the module docstring. Never mutates the model or task.

    checkpoint: a `Checkpointer` (or a path: one with these search settings) for the methods in CHECKPOINTED.
    """
    if method not in METHODS:
        raise SearchError(f"unknown method {method!r}; choose one of {', '.join(METHODS)}")
    if level not in ("edge", "node"):
        raise SearchError(f"level must be 'edge' or 'node', got {level!r}")
    if tau is not None and not (math.isfinite(tau) and tau >= 0):
        raise SearchError(f"tau must be a finite number >= 0, got {tau}")
    if top_n is not None and top_n < 1:
        raise SearchError(f"top_n must be at least 1 (the number of edges to keep), got {top_n}")
    if not 0 < target_faithfulness <= 1:
        raise SearchError(f"target_faithfulness must be in (0, 1] (a share of the full model's behaviour), got {target_faithfulness}")
    if batch_size < 1 or ig_steps < 1:
        raise SearchError(f"batch_size and ig_steps must be at least 1, got {batch_size} and {ig_steps}")
    if isinstance(checkpoint, (str, Path)):
        checkpoint = Checkpointer(Path(checkpoint), {"method": method, "tau": tau, "metric": metric, "seed": seed,
                                                     "ablation": str(Ablation(ablation).value), "top_n": top_n,
                                                     "target_faithfulness": target_faithfulness, "ig_steps": ig_steps})
    metric = metric or default_metric(method, task)
    if metric == "kl" and method in GRADIENT_METHODS:
        suggestion = task.default_metric if task.default_metric != "kl" else "logprob" if task.foils is None else "logit_diff"
        raise SearchError(f"{method} needs a task metric: KL has zero gradient at the clean model; use --metric {suggestion}")
    if metric == "accuracy" and method != "exact":
        raise SearchError("accuracy is not a search metric (flat almost everywhere); use logit_diff, prob_diff, logprob or kl")
    torch.manual_seed(seed)
    with torch.inference_mode(False):
        model.eval()
        ctx = SearchContext.build(model, task, metric, ablation, batch_size)
        needs_tau = method in ("acdc", "head-pruning", "hisp", "hybrid")
        if needs_tau and tau is None:
            full, empty = float(ctx.evaluate(ctx.graph.full_mask())), float(ctx.evaluate(ctx.graph.empty_mask()))
            _refuse_constant_metric(metric, full, empty)  # before any search: nothing would be explained
            tau = default_tau(method, metric, full, empty)
            log.info("tau defaults to %.4g", tau)
        if method == "acdc":
            result = acdc.run(ctx, acdc.ACDCConfig(tau=tau, checkpoint=checkpoint, shuffle_seed=shuffle_seed, progress=progress))
        elif method == "head-pruning":
            result = head_pruning.run(ctx, head_pruning.HeadPruningConfig(tau=tau, include_mlps=include_mlps, progress=progress,
                                                                          checkpoint=checkpoint))
        elif method == "hisp":
            result = head_pruning.hisp(ctx, head_pruning.HeadPruningConfig(tau=tau, include_mlps=include_mlps, progress=progress))
        elif method == "hybrid":
            result = hybrid.run(ctx, hybrid.HybridConfig(tau=tau, ig_steps=ig_steps, progress=progress, checkpoint=checkpoint))
        else:
            result = _scored(ctx, method, level, top_n, threshold, target_faithfulness, ig_steps, progress, checkpoint)
        _refuse_constant_metric(metric, result.metric_full, result.metric_empty)  # with an explicit tau: after the search
        return result


def _refuse_constant_metric(metric: str, full: float, empty: float) -> None:
    """SearchError when the metric is the same with every edge kept and every edge ablated: any circuit (the empty
    one included) would 'explain' it, so a search result would mean nothing (e.g. KL on a one-output tracr program)."""
    if abs(full - empty) <= 1e-9 * max(1.0, abs(full)):
        raise SearchError(f"metric {metric} is {full:.4g} with every edge kept and with every edge ablated: nothing separates "
                          "the clean from the ablated model, so no circuit can be found. Check that the corrupted prompts "
                          "change the answer, or pick another --metric (e.g. l2 or proj for tracr programs)")


def _scored(ctx: SearchContext, method, level, top_n, threshold, target, ig_steps, progress, checkpoint) -> SearchResult:
    graph = ctx.graph
    if method == "eap":
        attr = attribution.eap(ctx)
    elif method == "eap-ig":
        attr = attribution.eap_ig(ctx, ig_steps)
    else:
        attr = attribution.exact(ctx, progress=progress, checkpoint=checkpoint)
    scores = attr.scores
    metric_empty = float(ctx.evaluate(graph.empty_mask()))
    _refuse_constant_metric(ctx.metric_name, attr.metric_full, metric_empty)
    if level == "node":
        node_scores = scores.nan_to_num(0).sum(dim=1)  # a node's score: the sum over its outgoing edges
        scores = node_scores[:, None].expand_as(scores).masked_fill(~graph.valid, float("nan")).clone()
    if top_n is not None:
        kept = select.top_n(graph, scores, top_n)
    elif threshold is not None:
        kept = select.threshold(graph, scores, threshold)
    else:
        kept = select.until_faithful(ctx, scores, target, metric_full=attr.metric_full, metric_empty=metric_empty)
    if level == "node":
        dropped = {s for s in range(graph.n_senders) if not kept[s].any()}
        kept = node_mask_to_edges(graph, dropped)
    kept = prune_dangling(graph, kept)  # selection keeps grouped k/v edges tied
    params = {"level": level, "top_n": top_n, "threshold": threshold, "target_faithfulness": target,
              "ig_steps": ig_steps if method == "eap-ig" else None, "ranking": "absolute score"}
    return SearchResult(method=method, params=params, kept=kept, scores=scores, trajectory=[],
                        forward_passes=ctx.patcher.forward_passes, backward_passes=ctx.patcher.backward_passes,
                        seconds=ctx.seconds(), metric_full=attr.metric_full, metric_empty=metric_empty,
                        metric_circuit=float(ctx.evaluate(kept)))


def to_circuit(model: nn.Module, task: Task, result: SearchResult, ablation: str, metric: str, seed: int) -> Circuit:
    """Package a SearchResult as a Circuit with metrics and provenance."""
    from acdc_lite import __version__

    return Circuit.from_mask(
        ModelRef.of(model), result.kept, result.scores, task=task.describe(),
        method={"name": result.method, "params": result.params, "metric": metric},
        ablation=str(Ablation(ablation).value),
        metrics={k: (None if v != v else v) for k, v in  # NaN (metric blind to the ablation) is stored as null
                 {"faithfulness": result.faithfulness, "metric_full": result.metric_full,
                  "metric_empty": result.metric_empty, "metric_circuit": result.metric_circuit}.items()},
        provenance={"package_version": __version__, "seed": seed, "torch_version": torch.__version__},
        cost={"seconds": round(result.seconds, 3), "forward_passes": round(result.forward_passes, 3),
              "backward_passes": round(result.backward_passes, 3)},
    )


def discover(model: nn.Module, task: Task, method: str = "hybrid", *, seed: int = 0, ablation: Ablation | str = "resample",
             metric: str | None = None, **kwargs) -> Circuit:
    """Find a circuit for `task` in `model`; returns a Circuit (faithfulness in .metrics; seconds and passes in .cost, which
    is not saved: a circuit file holds only what the same inputs reproduce, the cost goes to run.json)."""
    started = time.perf_counter()
    result = search(model, task, method, seed=seed, ablation=ablation, metric=metric, **kwargs)
    result.seconds = time.perf_counter() - started
    return to_circuit(model, task, result, str(Ablation(ablation).value), metric or default_metric(method, task), seed)


__all__ = ["METHODS", "SearchError", "SearchResult", "discover", "search", "to_circuit", "prune_dangling"]
