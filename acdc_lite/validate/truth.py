"""Comparison with a reference circuit: ROC AUC of a score ranking, precision and recall of an edge set."""

from __future__ import annotations

import logging
import math

import numpy as np
import torch

from acdc_lite.circuit import Circuit, CircuitError
from acdc_lite.graph import ModelGraph, NodeKind
from acdc_lite.validate.nodes import node_edges
from acdc_lite.validate.report import GroundTruth, PrecisionRecall

log = logging.getLogger(__name__)


def roc_auc(scores, labels) -> float:
    """Area under the ROC curve of `scores` [n] for boolean `labels` [n] (Mann-Whitney U, ties as average rank).

    NaN scores count as the lowest score. NaN if there are no positives or no negatives.
    """
    s = np.asarray(scores, dtype=float).ravel()
    y = np.asarray(labels, dtype=bool).ravel()
    if s.shape != y.shape:
        raise ValueError(f"scores {s.shape} and labels {y.shape} differ in length")
    n_pos, n_neg = int(y.sum()), int((~y).sum())
    if n_pos == 0 or n_neg == 0:
        log.warning("ROC AUC needs positives and negatives (got %d and %d)", n_pos, n_neg)
        return float("nan")
    s = np.where(np.isnan(s), -np.inf, s)
    order = np.argsort(s, kind="mergesort")
    sorted_s = s[order]
    ranks = np.empty(len(s), dtype=float)
    _, starts, counts = np.unique(sorted_s, return_index=True, return_counts=True)
    for start, count in zip(starts, counts, strict=True):
        ranks[order[start:start + count]] = start + (count + 1) / 2  # 1-based average rank of the tie group
    return float((ranks[y].sum() - n_pos * (n_pos + 1) / 2) / (n_pos * n_neg))


def precision_recall(predicted: set, reference: set) -> PrecisionRecall:
    tp = len(predicted & reference)
    p = tp / len(predicted) if predicted else float("nan")
    r = tp / len(reference) if reference else float("nan")
    f1 = 2 * p * r / (p + r) if predicted and reference and (p + r) > 0 else 0.0
    return PrecisionRecall(tp, len(predicted), len(reference), p, r, f1)


def node_scores(graph: ModelGraph, scores: torch.Tensor, absolute: bool = True) -> dict[str, float]:
    """Head and MLP node scores from edge scores [S, R]: the max (|)score(|) over edges into or out of the node."""
    s = scores.abs() if absolute else scores
    s = torch.where(graph.valid & ~torch.isnan(s), s, torch.tensor(-math.inf))
    out = {}
    for node in graph.nodes:
        if node.kind in (NodeKind.HEAD, NodeKind.MLP):
            out[str(node)] = float(s[node_edges(graph, node)].max())
    return out


def _component_nodes(names) -> set[str]:
    return {n for n in names if n not in ("input", "logits")}


def ground_truth(reference: Circuit, scores: torch.Tensor | None = None, circuit: Circuit | None = None,
                 absolute: bool = True) -> GroundTruth:
    """ROC AUC of `scores` [S, R] (default: the circuit's score_tensor()) against `reference`'s edges and
    nodes, and precision/recall of `circuit`'s edge and node sets. Both must be over the same graph shape."""
    graph = reference.graph
    if circuit is not None and circuit.graph != graph:
        raise CircuitError(f"reference is a {reference.model.n_layers}x{reference.model.n_heads} graph but the circuit is "
                           f"{circuit.model.n_layers}x{circuit.model.n_heads}; compare circuits of the same model shape "
                           "(acdc_lite.diff aligns different models)")
    if scores is None and circuit is not None:
        scores = circuit.score_tensor()
    edge_auc = node_auc = float("nan")
    n_scored = 0
    if scores is not None:
        if scores.shape != graph.valid.shape:
            raise ValueError(f"scores {tuple(scores.shape)} do not match the reference graph {tuple(graph.valid.shape)}")
        ref_mask = reference.mask()
        s = scores.abs() if absolute else scores
        edge_auc = roc_auc(s[graph.valid].numpy(), ref_mask[graph.valid].numpy())
        n_scored = int((~torch.isnan(scores[graph.valid])).sum())
        ns = node_scores(graph, scores, absolute)
        ref_nodes = _component_nodes(reference.nodes)
        node_auc = roc_auc([ns[n] for n in ns], [n in ref_nodes for n in ns])
    edges_pr = nodes_pr = None
    if circuit is not None:
        edges_pr = precision_recall(set(circuit.edges), set(reference.edges))
        nodes_pr = precision_recall(_component_nodes(circuit.nodes), _component_nodes(reference.nodes))
    name = str(reference.task.get("name", "reference")) + ":" + str(reference.method.get("name", ""))
    return GroundTruth(name, absolute, edge_auc, node_auc, n_scored, edges_pr, nodes_pr)
