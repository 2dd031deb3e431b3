"""Edge rankings and the masks they give: the one ranking search and validation share (below both)."""

from __future__ import annotations

import math

import torch

from acdc_lite.graph import ModelGraph


def ranked_edges(graph: ModelGraph, scores: torch.Tensor, absolute: bool = True) -> torch.Tensor:
    """Flat indices into [S, R] of the valid edges, most important first (by |score| when `absolute`);
    NaN scores last; ties keep graph order. [E]"""
    flat = graph.valid.flatten().nonzero().flatten()
    values = scores.flatten()[flat].double()
    values = (values.abs() if absolute else values).nan_to_num(nan=-math.inf)
    return flat[torch.sort(-values, stable=True).indices]


def ranking(graph: ModelGraph, scores: torch.Tensor, absolute: bool = True) -> list[tuple[int, int]]:
    """Valid edges as (sender, receiver), most important first (see `ranked_edges`)."""
    n_r = graph.n_receivers
    return [(int(i) // n_r, int(i) % n_r) for i in ranked_edges(graph, scores, absolute)]


def top_n(graph: ModelGraph, scores: torch.Tensor, n: int, absolute: bool = True) -> torch.Tensor:
    """[S, R] bool: the n highest-scoring edges."""
    kept = torch.zeros(graph.valid.numel(), dtype=torch.bool)
    kept[ranked_edges(graph, scores, absolute)[:n]] = True
    return kept.view_as(graph.valid)


def threshold(graph: ModelGraph, scores: torch.Tensor, value: float, absolute: bool = True) -> torch.Tensor:
    """[S, R] bool: edges scoring at least `value` (|score| when `absolute`)."""
    s = scores.abs() if absolute else scores
    return graph.valid & (s.nan_to_num(float("-inf")) >= value)
