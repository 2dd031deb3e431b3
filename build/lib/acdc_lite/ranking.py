"""Edge rankings and the masks they give: the one ranking search and validation share (below both).

Rankings work on units (`ModelGraph.edge_units`): with grouped-query attention the k (v) edges from one
sender into a k/v group's heads are ranked, kept and dropped together, by the sum of their scores.
Elsewhere a unit is one edge and nothing changes.
"""

from __future__ import annotations

import math

import torch

from acdc_lite.graph import ModelGraph


def ranked_edges(graph: ModelGraph, scores: torch.Tensor, absolute: bool = True) -> torch.Tensor:
    """Flat indices into [S, R] of the valid edges, most important first (by the |score| of their unit when
    `absolute`); NaN scores last; ties keep graph order; the edges of a unit are adjacent. [E]"""
    flat = graph.valid.flatten().nonzero().flatten()
    units = graph.edge_units.flatten()[flat]
    flat = flat[torch.sort(units, stable=True).indices]  # units contiguous, graph order inside and between them
    values = graph.unit_sum(scores).flatten()[flat].double()
    values = (values.abs() if absolute else values).nan_to_num(nan=-math.inf)
    return flat[torch.sort(-values, stable=True).indices]


def unit_ends(graph: ModelGraph, ranked: torch.Tensor) -> list[int]:
    """Prefix lengths of `ranked` (from `ranked_edges`) that end on a unit boundary: [0, ..., E]."""
    units = graph.edge_units.flatten()[ranked]
    ends = (units[1:] != units[:-1]).nonzero().flatten() + 1
    return [0] + ends.tolist() + [len(ranked)]


def ranking(graph: ModelGraph, scores: torch.Tensor, absolute: bool = True) -> list[tuple[int, int]]:
    """Valid edges as (sender, receiver), most important first (see `ranked_edges`)."""
    n_r = graph.n_receivers
    return [(int(i) // n_r, int(i) % n_r) for i in ranked_edges(graph, scores, absolute)]


def top_n(graph: ModelGraph, scores: torch.Tensor, n: int, absolute: bool = True) -> torch.Tensor:
    """[S, R] bool: the n highest-scoring edges (with tied k/v units, the last unit is completed, so up to
    kv_group - 1 more)."""
    kept = torch.zeros(graph.valid.numel(), dtype=torch.bool)
    kept[ranked_edges(graph, scores, absolute)[:n]] = True
    return graph.tie(kept.view_as(graph.valid))


def threshold(graph: ModelGraph, scores: torch.Tensor, value: float, absolute: bool = True) -> torch.Tensor:
    """[S, R] bool: edges whose unit scores at least `value` (|score| when `absolute`)."""
    s = graph.unit_sum(scores)
    s = s.abs() if absolute else s
    return graph.valid & (s.nan_to_num(float("-inf")) >= value)
