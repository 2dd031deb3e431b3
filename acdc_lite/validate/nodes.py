"""Which nodes an edge set touches, and every edge of one node (graph helpers the measures share)."""

from __future__ import annotations

import torch

from acdc_lite.graph import ModelGraph, Node, receiver_nodes


def node_set(graph: ModelGraph, kept: torch.Tensor) -> set[str]:
    """Names of nodes touched by an edge of `kept` [S, R]."""
    kept = kept.bool() & graph.valid
    rnode = receiver_nodes(graph)
    touched = set(kept.any(1).nonzero().flatten().tolist()) | set(rnode[kept.any(0)].tolist())
    return {str(graph.nodes[i]) for i in touched}


def node_edges(graph: ModelGraph, node: Node) -> torch.Tensor:
    """[S, R] bool: every edge into or out of `node`."""
    out = torch.zeros_like(graph.valid)
    if node in graph.senders:
        out[graph.senders.index(node)] = True
    cols = [i for i, (n, _) in enumerate(graph.receivers) if n == node]
    out[:, cols] = True
    return out & graph.valid
