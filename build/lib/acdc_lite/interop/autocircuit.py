"""auto-circuit's prune scores: `{destination module name: score tensor}`, saved as safetensors.

Facts from auto-circuit's factorized graph (`model_utils/transformer_lens_utils.py`, `utils/graph_utils.py`):
destinations are `blocks.{l}.hook_{q,k,v}_input` ([n_heads, n_in]), `blocks.{l}.hook_mlp_in` ([n_in]) and
`blocks.{L-1}.hook_resid_post` ([n_in]); sources are numbered `Resid Start` 0, then per layer heads
`A{l}.{h}` and `MLP {l}`, and a destination's n_in sources are every source of an earlier layer, in that order:
our sender order, and our `n_senders_before` count. auto-circuit keeps its own files as pickles; we write the
same dictionary as safetensors, which `safetensors.torch.load_file` returns as a `PruneScores` dict.

Prune scores are scores only (a circuit is what a threshold keeps), so the format is lossy: an import keeps
the edges with a nonzero score (auto-circuit's convention for boolean, "official" circuits) unless `top_n`
is given.
"""

from __future__ import annotations

from dataclasses import asdict
from pathlib import Path

import torch

from acdc_lite import hooks
from acdc_lite.circuit import Circuit, CircuitError, ModelRef, write_atomic
from acdc_lite.graph import ModelGraph, NodeKind
from acdc_lite.interop.common import dense, rebuild


def _destinations(graph: ModelGraph) -> list[tuple[str, list[int]]]:
    """(module name, our receiver columns) for every auto-circuit destination, heads in index order."""
    out = []
    for layer in range(graph.n_layers):
        for port in "qkv":
            cols = [r for r, (node, p) in enumerate(graph.receivers) if node.kind is NodeKind.HEAD and node.layer == layer
                    and p.value == port]
            out.append((hooks.head_input(layer, port), cols))
        if graph.has_mlp:
            out.append((hooks.mlp_in(layer), [graph.mlp_receiver(layer)]))
    out.append((hooks.resid_post(graph.n_layers - 1), [graph.logits_receiver]))
    return out


def to_prune_scores(circuit: Circuit) -> dict[str, torch.Tensor]:
    """auto-circuit PruneScores of the circuit's scores (unscored edges 0; only kept edges when it has no ranking)."""
    graph = circuit.graph
    scores, kept = dense(circuit)
    if circuit.scores is None:
        scores = torch.where(kept, scores, torch.zeros_like(scores))
    scores = scores.nan_to_num(0.0).to(torch.float32)
    out = {}
    for module, cols in _destinations(graph):
        n_in = graph.n_senders_before(cols[0])
        block = scores[:n_in, cols].T.contiguous()  # [n_heads, n_in] or [1, n_in]
        out[module] = block if len(cols) > 1 or module.endswith(("q_input", "k_input", "v_input")) else block[0]
    return out


def to_autocircuit(circuit: Circuit, path: str | Path) -> Path:
    from safetensors.torch import save

    path = Path(path)
    write_atomic(path, save(to_prune_scores(circuit), metadata={"format": "auto-circuit PruneScores", "model": circuit.model.name}))
    return path


def from_prune_scores(prune_scores: dict[str, torch.Tensor], model: ModelRef, top_n: int | None = None,
                      source: str = "prune scores", **fields) -> Circuit:
    """A circuit over `model`'s graph from PruneScores; kept = nonzero scores, or the `top_n` by |score|."""
    graph = model.graph()
    scores = torch.zeros(graph.valid.shape, dtype=torch.float64)
    expected = _destinations(graph)
    missing = [m for m, _ in expected if m not in prune_scores]
    if missing:
        raise CircuitError(f"{source}: no scores for destinations {missing[:3]}; is it for a {graph!r}?")
    for module, cols in expected:
        n_in = graph.n_senders_before(cols[0])
        t = prune_scores[module]
        want = (len(cols), n_in) if module.endswith(("q_input", "k_input", "v_input")) else (n_in,)
        if tuple(t.shape) != want:
            raise CircuitError(f"{source}: {module} has shape {tuple(t.shape)}, expected {want} for a {graph!r}")
        scores[:n_in, cols] = t.to(torch.float64).reshape(len(cols), n_in).T
    scores = scores * graph.valid
    if top_n is not None:
        order = scores.abs().flatten().argsort(descending=True, stable=True)[:top_n]
        kept = torch.zeros(scores.numel(), dtype=torch.bool)
        kept[order] = True
        kept = kept.view(scores.shape) & graph.valid
    else:
        kept = (scores != 0) & graph.valid
    names = {graph.edge_index(e): str(e) for e in graph.edges}
    all_scores = {name: float(scores[s, r]) for (s, r), name in names.items()}
    edges = {names[(s, r)]: all_scores[names[(s, r)]] for s, r in kept.nonzero().tolist()}
    from acdc_lite.circuit import SCHEMA_VERSION

    head = {"schema_version": SCHEMA_VERSION, "model": asdict(model), "method": {"name": "auto-circuit-import"},
            "has_ranking": True, **fields}
    return rebuild(head, edges, all_scores, source)


def from_autocircuit(path: str | Path, model: ModelRef, top_n: int | None = None, **fields) -> Circuit:
    from safetensors.torch import load_file

    where = str(path)
    if not Path(path).is_file():
        raise CircuitError(f"{where} does not exist")
    try:
        prune_scores = load_file(str(path))
    except Exception as e:  # malformed safetensors header
        raise CircuitError(f"{where} is not a safetensors file of prune scores ({type(e).__name__})") from e
    return from_prune_scores(prune_scores, model, top_n, where, **fields)
