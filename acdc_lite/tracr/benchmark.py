"""Every search method against each program's exact ground truth: edge ROC AUC over a threshold sweep,
precision/recall, faithfulness, cost."""

from __future__ import annotations

import functools
import logging
import math
import time
from collections.abc import Sequence

import torch

from acdc_lite.faithfulness import faithfulness
from acdc_lite.graph import ModelGraph
from acdc_lite.tracr.programs import PROGRAMS, program_by_name

log = logging.getLogger(__name__)

SWEEP_FRACTIONS = (0.0,) + tuple(10 ** (k / 4) for k in range(-24, 1))  # ACDC's tau as a share of |m(full) - m(empty)|


def sweep_auc(points: Sequence[tuple[float, float]]) -> float:
    """ROC AUC of a threshold sweep as the ACDC paper computed it ("pessimistic"): the points (FPR, TPR) plus
    (0, 0) and (1, 1) make a staircase whose height at x is the best TPR of any point with FPR <= x."""
    pts = sorted({(float(x), float(y)) for x, y in points} | {(0.0, 0.0), (1.0, 1.0)})
    area, best = 0.0, 0.0
    for (x, y), (x_next, _) in zip(pts, pts[1:] + [(1.0, 1.0)], strict=True):
        best = max(best, y)
        area += (x_next - x) * best
    return area


def edge_rates(graph: ModelGraph, kept: torch.Tensor, truth: torch.Tensor) -> tuple[float, float]:
    """(false positive rate, true positive rate) of the edge set `kept` [S, R] against `truth` [S, R]."""
    pos, neg = truth & graph.valid, graph.valid & ~truth
    return float((kept & neg).sum() / neg.sum()), float((kept & pos).sum() / pos.sum())


def edge_scores_from_nodes(graph: ModelGraph, scores: torch.Tensor) -> torch.Tensor:
    """Edge scores [S, R] for a node-level method whose node scores fill their sender rows: an edge scores its
    weaker endpoint's |score| (`input`, `logits` and unscored nodes: +inf), so a threshold keeps exactly the
    edges between the nodes it keeps."""
    node = {}
    for i, n in enumerate(graph.senders):
        row = scores[i].abs()
        row = row[~torch.isnan(row)]
        node[n] = float(row.max()) if len(row) else math.inf
    out = torch.full(graph.valid.shape, float("nan"))
    for e in graph.edges:
        out[graph.edge_index(e)] = min(node[e.src], node.get(e.dst, math.inf))
    return out


def benchmark(programs: Sequence[str] | None = None, methods: Sequence[str] | None = None, ablation: str = "zero",
              metric: str = "l2", gradient_metric: str = "proj", *, sweep: Sequence[float] = SWEEP_FRACTIONS,
              n_examples: int | None = None, seed: int = 0, rel_tol: float = 1e-6, progress: bool = False) -> list[dict]:
    """One row per program x method: each search method (default settings) against the program's ground truth.

    Conventions (the ACDC paper's for tracr): zero ablation, metric l2, each program's default task. EAP and
    HISP take gradients at the clean model only, where l2's is zero (every score would be 0), so they search
    on `gradient_metric`; EAP-IG and hybrid (integrated gradients) use `metric`. Faithfulness is always on
    `metric`. Node methods remove heads and MLPs (include_mlps).

    Edge ROC AUC (`roc_auc`, against the ground truth's edges, over every graph edge):
    - acdc: ACDC's tau swept over `sweep` x |metric(full) - metric(empty)|, one run per tau, each circuit a
      (FPR, TPR) point, area by `sweep_auc` (the paper's); its own edge scores give `roc_auc_scores`.
    - edge-scoring methods: Mann-Whitney AUC of |score| (validate.roc_auc; unscored edges rank last).
    - node methods: the same over `edge_scores_from_nodes`.
    - a method without scores: the binary circuit as scores.
    `roc_auc_tol` is the score AUC with every |score| below `rel_tol` x the largest counted as 0: tracr's
    saturated softmax and sharp ReLU steps give some ground-truth edges effects and gradients down to 1e-13
    of the largest, which rank them above the exact zeros of unconnected edges but survive no threshold.
    `roc_auc_binary` is always the binary circuit's (one point, trapezoids: (1 + TPR - FPR) / 2).
    Cost columns are the default run's; the sweep's cost is in `sweep_*`.
    """
    from acdc_lite.patching import EdgePatcher, ablated_outputs
    from acdc_lite.search import METHODS, Level, search, to_circuit
    from acdc_lite.validate import ground_truth, roc_auc

    rows = []
    for name in programs or list(PROGRAMS):
        prog = program_by_name(name)
        task = prog.make_task(n_examples, seed=seed)
        graph = ModelGraph.from_model(prog.model)
        truth = prog.ground_truth.mask()
        valid = graph.valid
        with torch.no_grad():
            patcher = EdgePatcher(prog.model, graph, task.clean, ablated_outputs(prog.model, graph, task.corrupt, ablation))
            judge = task.metric(metric, prog.model)
            full, empty = (float(v) for v in patcher.evaluate(torch.stack([graph.full_mask(), graph.empty_mask()]), judge))
        for method in methods or METHODS:
            spec = METHODS[method]
            node_level = spec.level is Level.NODE
            search_metric = gradient_metric if spec.clean_gradient else metric  # l2's gradient at the clean model is 0
            kw = {"include_mlps": True} if "include_mlps" in spec.option_names() else {}
            run = functools.partial(search, prog.model, task, method, metric=search_metric, ablation=ablation, seed=seed,
                                    progress=progress, **kw)
            started = time.perf_counter()
            result = run()
            seconds = time.perf_counter() - started
            kept = result.kept
            scores = edge_scores_from_nodes(graph, result.scores) if node_level else result.scores
            has_scores = not torch.isnan(scores[valid]).all()
            circuit = to_circuit(prog.model, task, result)
            gt = ground_truth(prog.ground_truth, scores if has_scores else kept.float(), circuit)
            magnitude = scores[valid].abs()
            magnitude = magnitude[torch.isfinite(magnitude)]  # node methods: input/logits edges are +inf
            cutoff = rel_tol * float(magnitude.max()) if len(magnitude) else 0.0
            tol_auc = roc_auc(scores.masked_fill(scores.abs() < cutoff, 0.0)[valid].abs().numpy(), truth[valid].numpy())
            binary = roc_auc(kept[valid].float().numpy(), truth[valid].numpy())
            row = {"program": name, "method": method, "metric": search_metric, "ablation": ablation,
                   "graph_edges": graph.n_edges(), "gt_edges": len(prog.ground_truth.edges), "edges": int(kept.sum()),
                   "roc_auc": gt.edge_auc, "roc_from": "edge scores" if has_scores else "binary circuit",
                   "roc_auc_scores": gt.edge_auc if has_scores else float("nan"),
                   "roc_auc_tol": tol_auc if has_scores else float("nan"), "roc_auc_binary": binary,
                   "edge_precision": gt.edges.precision, "edge_recall": gt.edges.recall,
                   "node_roc_auc": gt.node_auc, "node_precision": gt.nodes.precision, "node_recall": gt.nodes.recall,
                   "faithfulness": faithfulness(float(patcher.evaluate(kept, judge)[0]), full, empty),
                   "forward_passes": result.search_forward_passes,
                   "bookkeeping_passes": result.bookkeeping_forward_passes, "backward_passes": result.backward_passes,
                   "seconds": seconds, "sweep_runs": 0, "sweep_forward_passes": 0.0, "sweep_seconds": 0.0}
            if node_level:
                row["roc_from"] = "node scores (edge: weaker endpoint)"
            if method == "acdc":
                gap = abs(result.metric_full - result.metric_empty)
                started, points, passes = time.perf_counter(), [], 0.0
                for fraction in sweep:
                    swept = run(tau=fraction * gap)
                    points.append(edge_rates(graph, swept.kept, truth))
                    passes += swept.search_forward_passes
                row.update(roc_auc=sweep_auc(points), roc_from=f"tau sweep ({len(sweep)} runs)", sweep_runs=len(sweep),
                           sweep_forward_passes=passes, sweep_seconds=time.perf_counter() - started)
            rows.append(row)
            log.info("%s %s: ROC AUC %.3f (%s), %d edges", name, method, row["roc_auc"], row["roc_from"], row["edges"])
    return rows
