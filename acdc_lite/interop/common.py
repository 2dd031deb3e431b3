"""What every exchange format shares: a circuit's header (everything but its edges), its dense score
table, and rebuilding a circuit from a header plus edges and scores."""

from __future__ import annotations

import json
import math

import torch

from acdc_lite.circuit import Circuit, CircuitError

_EDGE_FIELDS = ("edges", "scores", "nodes", "n_edges")


def known(x) -> bool:
    """A score that was measured (not None, not NaN)."""
    return x is not None and not (isinstance(x, float) and math.isnan(x))


def score_table(circuit: Circuit) -> dict[str, float | None]:
    """Every score the circuit knows: all edges' if it has a ranking, else the kept edges' (`Circuit.score_table`)."""
    return circuit.score_table()


def header(circuit: Circuit) -> dict:
    """The circuit file's fields other than its edges and scores (model, task, method, ablation, metrics, ...),
    plus `has_ranking` (whether every edge has a score)."""
    d = {k: v for k, v in circuit.to_dict().items() if k not in _EDGE_FIELDS}
    d["has_ranking"] = circuit.scores is not None
    return d


def header_json(circuit: Circuit) -> str:
    return json.dumps(header(circuit), sort_keys=True, allow_nan=False)


def rebuild(head: dict, edges: dict[str, float | None], scores: dict[str, float | None] | None, source: str) -> Circuit:
    """A Circuit from `header()` output plus its kept edges and (if it had a ranking) every edge's score."""
    d = {k: v for k, v in head.items() if k != "has_ranking"}
    d["edges"] = edges
    if head.get("has_ranking", scores is not None) and scores is not None:
        d["scores"] = scores
    return Circuit.from_dict(d, source=source)


def dense(circuit: Circuit) -> tuple[torch.Tensor, torch.Tensor]:
    """(scores [S, R] float64 with NaN where unknown, kept [S, R] bool) over `circuit.graph`."""
    graph = circuit.graph
    scores = torch.full(graph.valid.shape, float("nan"), dtype=torch.float64)
    for name, value in score_table(circuit).items():
        scores[graph.edge_index(name)] = float("nan") if value is None else float(value)
    return scores, circuit.mask()


def from_dense(head: dict, scores: torch.Tensor, kept: torch.Tensor, source: str) -> Circuit:
    """Inverse of `dense` given the header: [S, R] scores (NaN unknown) and kept mask over the header's graph."""
    from acdc_lite.circuit import ModelRef

    graph = ModelRef(**head["model"]).graph() if isinstance(head.get("model"), dict) else None
    if graph is None:
        raise CircuitError(f"{source}: no model description in its metadata")
    if tuple(scores.shape) != tuple(graph.valid.shape) or tuple(kept.shape) != tuple(graph.valid.shape):
        raise CircuitError(f"{source}: score/mask tensors are {tuple(scores.shape)} / {tuple(kept.shape)} but the model's "
                           f"graph is {tuple(graph.valid.shape)} (senders x receivers)")
    if bool((kept.bool() & ~graph.valid).any()):
        raise CircuitError(f"{source}: the kept mask marks edges that do not exist in a {graph!r}")

    def value(s, r):
        v = float(scores[s, r])
        return None if math.isnan(v) else v

    edge_names = {(s, r): str(e) for e, (s, r) in ((e, graph.edge_index(e)) for e in graph.edges)}
    edges = {edge_names[(s, r)]: value(s, r) for s, r in kept.bool().nonzero().tolist()}
    all_scores = {name: value(s, r) for (s, r), name in edge_names.items()}
    return rebuild(head, edges, all_scores, source)
