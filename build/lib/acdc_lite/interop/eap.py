"""EAP-IG / MIB circuit files: JSON (`Graph.to_json` / `Graph.from_json`) and .pt (`Graph.to_pt` / `Graph.from_pt`).

Facts taken from EAP-IG's published loader (not installable beside transformer-lens 4):
- JSON: `{"cfg": {n_layers, n_heads, parallel_attn_mlp, d_model, ...}, "nodes": {name: {"in_graph": bool,
  optional "score"}}, "edges": {name: {"score": float, "in_graph": bool}}}`. The loader builds the graph from
  `cfg` and looks every listed node and edge up by name, so `d_model` must be a number and every name must exist.
- .pt: a dict with `cfg`, `src_nodes` (every node but logits, forward order), `dst_nodes` (per layer the q, k, v
  inputs of every head and the MLP, then logits), `edges_scores` and `edges_in_graph` ([n_forward, n_backward]),
  `nodes_in_graph` ([n_forward]). n_forward = 1 + L(H+1), n_backward = L(3H+1) + 1: EAP-IG always has MLP nodes.
Names are ours (`input`, `a3.h7`, `m3`, `logits`; `a0.h1->a3.h7<q>`). For attention-only models the MLP rows and
columns stay empty and `cfg.has_mlp` is false (an extra key EAP-IG ignores). Unknown scores are written as 0.0
(EAP-IG has no missing value). Our header (model, task, method, ...) goes under an extra key `acdc_lite`
(a JSON string in .pt files), which EAP-IG ignores; files without it are read from `cfg` alone.
.pt files are read with `torch.load(weights_only=True)`: tensors, lists, dicts and strings only, never pickled code.
"""

from __future__ import annotations

import io
import json
import logging
from dataclasses import asdict
from pathlib import Path

import torch

from acdc_lite.circuit import Circuit, CircuitError, ModelRef, write_atomic
from acdc_lite.graph import ModelGraph, Node, NodeKind
from acdc_lite.interop.common import header, known, rebuild, score_table

log = logging.getLogger(__name__)

MAX_LAYERS, MAX_HEADS = 1024, 1024  # sanity limits before allocating a graph from a foreign cfg


def _cfg(circuit: Circuit, d_model: int | None) -> dict:
    graph = circuit.graph
    d_model = d_model if d_model is not None else circuit.model.d_model
    if d_model is None:
        log.warning("d_model unknown (a circuit saved before it was recorded): EAP-IG's Graph.from_json needs cfg.d_model; "
                    "pass d_model=")
    return {"n_layers": graph.n_layers, "n_heads": graph.n_heads, "parallel_attn_mlp": graph.parallel_attn_mlp,
            "d_model": d_model, "has_mlp": graph.has_mlp}


def forward_index(node: Node, n_heads: int) -> int:
    """EAP-IG's source (forward) index of a node: input 0, then per layer its heads and its MLP."""
    if node.kind is NodeKind.INPUT:
        return 0
    if node.kind is NodeKind.HEAD:
        return 1 + node.layer * (n_heads + 1) + node.head
    if node.kind is NodeKind.MLP:
        return 1 + node.layer * (n_heads + 1) + n_heads
    raise ValueError("logits has no forward index")


def backward_index(node: Node, port: str, n_heads: int, n_layers: int) -> int:
    """EAP-IG's destination (backward) index: per layer q, k, v of every head, then the MLP; logits last."""
    if node.kind is NodeKind.LOGITS:
        return n_layers * (3 * n_heads + 1)
    if node.kind is NodeKind.HEAD:
        return node.layer * (3 * n_heads + 1) + "qkv".index(port) * n_heads + node.head
    if node.kind is NodeKind.MLP:
        return node.layer * (3 * n_heads + 1) + 3 * n_heads
    raise ValueError("input has no backward index")


def _eap_node_names(n_layers: int, n_heads: int) -> tuple[list[str], list[str]]:
    src = ["input"]
    dst = []
    for layer in range(n_layers):
        src += [f"a{layer}.h{h}" for h in range(n_heads)] + [f"m{layer}"]
        dst += [f"a{layer}.h{h}<{p}>" for p in "qkv" for h in range(n_heads)] + [f"m{layer}"]
    return src, dst + ["logits"]


def _index_maps(graph: ModelGraph) -> tuple[torch.Tensor, torch.Tensor]:
    """Our sender -> EAP-IG forward index [S], our receiver -> EAP-IG backward index [R]."""
    fwd = torch.tensor([forward_index(n, graph.n_heads) for n in graph.senders])
    bwd = torch.tensor([backward_index(n, p.value, graph.n_heads, graph.n_layers) for n, p in graph.receivers])
    return fwd, bwd


# ---- JSON -----------------------------------------------------------------------------------------
def to_eap_json(circuit: Circuit, path: str | Path | None = None, d_model: int | None = None) -> dict:
    """The circuit in EAP-IG / MIB JSON; written to `path` if given. d_model defaults to the circuit's."""
    graph = circuit.graph
    scores = score_table(circuit)
    kept = set(circuit.edges)
    in_nodes = set(circuit.nodes)
    d = {
        "cfg": _cfg(circuit, d_model),
        "nodes": {str(n): {"in_graph": str(n) in in_nodes or n.kind is NodeKind.LOGITS} for n in graph.nodes},
        "edges": {str(e): {"score": float(scores[str(e)]) if known(scores.get(str(e))) else 0.0,
                           "in_graph": str(e) in kept} for e in graph.edges},
        "acdc_lite": header(circuit),
    }
    if path is not None:
        write_atomic(Path(path), json.dumps(d, allow_nan=False) + "\n")
    return d


def _shape_from_cfg(cfg, where: str) -> tuple[int, int, bool, bool]:
    try:
        n_layers, n_heads = int(cfg["n_layers"]), int(cfg["n_heads"])
    except (KeyError, TypeError, ValueError) as e:
        raise CircuitError(f"{where}: cfg needs integer n_layers and n_heads ({e})") from e
    if not (0 < n_layers <= MAX_LAYERS and 0 < n_heads <= MAX_HEADS):
        raise CircuitError(f"{where}: cfg declares {n_layers} layers x {n_heads} heads, outside 1..{MAX_LAYERS} x 1..{MAX_HEADS}")
    return n_layers, n_heads, bool(cfg.get("has_mlp", True)), bool(cfg.get("parallel_attn_mlp", False))


def _foreign_model(cfg: dict, where: str) -> ModelRef:
    n_layers, n_heads, has_mlp, parallel = _shape_from_cfg(cfg, where)
    d_model = cfg.get("d_model")
    return ModelRef(name=str(cfg.get("model_name", "eap-ig-import")), architecture="unknown", n_layers=n_layers,
                    n_heads=n_heads, has_mlp=has_mlp, parallel_attn_mlp=parallel, fingerprint="unknown",
                    d_model=int(d_model) if isinstance(d_model, (int, float)) else None)


def _header_for(extra: dict | None, cfg: dict, model: ModelRef | None, where: str, fields: dict) -> dict:
    """Our header from the file's `acdc_lite` key, else one built from cfg; `model`/`fields` override."""
    head = dict(extra) if extra else {"schema_version": None, "method": {"name": "eap-ig-import"}, "has_ranking": True}
    if model is not None:
        head["model"] = asdict(model)
    elif "model" not in head:
        head["model"] = asdict(_foreign_model(cfg, where))
    ref = ModelRef(**head["model"])
    n_layers, n_heads, _, _ = _shape_from_cfg(cfg, where)
    if (ref.n_layers, ref.n_heads) != (n_layers, n_heads):
        raise CircuitError(f"{where} is for {n_layers} layers x {n_heads} heads but the model ref is "
                           f"{ref.n_layers} x {ref.n_heads}")
    head.update(fields)
    if head.get("schema_version") is None:
        from acdc_lite.circuit import SCHEMA_VERSION

        head["schema_version"] = SCHEMA_VERSION
    return head


def from_eap_json(source: dict | str | Path, model: ModelRef | None = None, **fields) -> Circuit:
    """A Circuit from EAP-IG / MIB JSON (a dict or a file). Edges with in_graph true are kept; every
    score becomes the ranking. model: the ModelRef to attach (default: from our header, else from cfg).
    fields: task=, method=, ... override."""
    where = str(source) if isinstance(source, (str, Path)) else "EAP-IG JSON"
    if isinstance(source, (str, Path)):
        try:
            d = json.loads(Path(source).read_text(encoding="utf-8"))
        except (OSError, UnicodeDecodeError, json.JSONDecodeError) as e:
            raise CircuitError(f"{where} is not a readable JSON file ({e})") from e
    else:
        d = source
    if not isinstance(d, dict):
        raise CircuitError(f"{where} is not EAP-IG/MIB circuit JSON: the top level is a {type(d).__name__}, not an object")
    missing = [k for k in ("cfg", "nodes", "edges") if k not in d]
    if missing:
        if "edges" in missing and "nodes" in d:
            raise CircuitError(f"{where} is a node-level file (no 'edges'); edge-level circuits only. Build one from its "
                               "nodes with interop.circuit_from_nodes")
        raise CircuitError(f"{where} is not EAP-IG/MIB circuit JSON: missing {missing} (expected cfg, nodes, edges)")
    if not isinstance(d["edges"], dict):
        raise CircuitError(f"{where}: 'edges' must be an object of edge name -> {{score, in_graph}}")
    head = _header_for(d.get("acdc_lite"), d["cfg"], model, where, fields)
    graph = ModelRef(**head["model"]).graph()
    valid_names = {str(e) for e in graph.edges}
    edges, scores, skipped = {}, {}, 0
    for name, info in d["edges"].items():
        info = info if isinstance(info, dict) else {"in_graph": bool(info), "score": None}
        if name not in valid_names:
            if info.get("in_graph"):
                raise CircuitError(f"{where}: circuit edge {name!r} is not in a {graph!r}")
            skipped += 1  # e.g. MLP edges EAP-IG builds for an attention-only model
            continue
        score = info.get("score")
        scores[name] = float(score) if score is not None else float("nan")
        if info.get("in_graph"):
            edges[name] = scores[name]
    if skipped:
        log.info("%s: skipped %d edges (not in the circuit) that a %r does not have", where, skipped, graph)
    return rebuild(head, edges, scores, where)


# ---- .pt ------------------------------------------------------------------------------------------
def to_eap_pt(circuit: Circuit, path: str | Path, d_model: int | None = None) -> Path:
    """Write EAP-IG's `Graph.to_pt` layout (see the module docstring); scores float64 (NaN -> 0.0)."""
    graph = circuit.graph
    n_fwd, n_bwd = 1 + graph.n_layers * (graph.n_heads + 1), graph.n_layers * (3 * graph.n_heads + 1) + 1
    fwd, bwd = _index_maps(graph)
    scores = torch.zeros(n_fwd, n_bwd, dtype=torch.float64)
    in_graph = torch.zeros(n_fwd, n_bwd, dtype=torch.bool)
    for name, value in score_table(circuit).items():
        s, r = graph.edge_index(name)
        scores[fwd[s], bwd[r]] = float(value) if known(value) else 0.0
    kept = circuit.mask()
    for s, r in kept.nonzero().tolist():
        in_graph[fwd[s], bwd[r]] = True
    nodes_in_graph = torch.zeros(n_fwd, dtype=torch.bool)
    for name in circuit.nodes:
        node = Node.parse(name)
        if node.kind is not NodeKind.LOGITS:
            nodes_in_graph[forward_index(node, graph.n_heads)] = True
    src, dst = _eap_node_names(graph.n_layers, graph.n_heads)
    d = {"cfg": _cfg(circuit, d_model), "src_nodes": src, "dst_nodes": dst, "edges_scores": scores,
         "edges_in_graph": in_graph, "nodes_in_graph": nodes_in_graph, "acdc_lite": json.dumps(header(circuit), allow_nan=False)}
    buf = io.BytesIO()
    torch.save(d, buf)
    path = Path(path)
    write_atomic(path, buf.getvalue())
    return path


def from_eap_pt(path: str | Path, model: ModelRef | None = None, **fields) -> Circuit:
    """A Circuit from an EAP-IG .pt circuit file, loaded with weights_only=True and checked key by key."""
    where = str(path)
    try:
        d = torch.load(Path(path), map_location="cpu", weights_only=True)
    except FileNotFoundError as e:
        raise CircuitError(f"{where} does not exist") from e
    except Exception as e:  # weights_only refuses anything but tensors and plain containers
        raise CircuitError(f"{where} is not a safe EAP-IG .pt circuit file ({type(e).__name__}: {str(e)[:200]})") from e
    required = ["cfg", "src_nodes", "dst_nodes", "edges_scores", "edges_in_graph", "nodes_in_graph"]
    if not isinstance(d, dict) or any(k not in d for k in required):
        have = sorted(d) if isinstance(d, dict) else type(d).__name__
        raise CircuitError(f"{where} is not an EAP-IG .pt circuit: needs keys {required}, has {have}")
    cfg = d["cfg"]
    n_layers, n_heads, _, _ = _shape_from_cfg(cfg, where)
    n_fwd, n_bwd = 1 + n_layers * (n_heads + 1), n_layers * (3 * n_heads + 1) + 1
    for key in ("edges_scores", "edges_in_graph"):
        t = d[key]
        if not isinstance(t, torch.Tensor) or tuple(t.shape) != (n_fwd, n_bwd):
            shape = tuple(t.shape) if isinstance(t, torch.Tensor) else type(t).__name__
            raise CircuitError(f"{where}: {key} must be a [{n_fwd}, {n_bwd}] tensor for {n_layers} x {n_heads}, got {shape}")
    src, dst = _eap_node_names(n_layers, n_heads)
    if list(d["src_nodes"]) != src or list(d["dst_nodes"]) != dst:
        raise CircuitError(f"{where}: src_nodes/dst_nodes are not EAP-IG's order for {n_layers} x {n_heads}")
    extra = json.loads(d["acdc_lite"]) if isinstance(d.get("acdc_lite"), str) else None
    head = _header_for(extra, cfg, model, where, fields)
    graph = ModelRef(**head["model"]).graph()
    fwd, bwd = _index_maps(graph)
    ours_scores = d["edges_scores"].to(torch.float64)[fwd][:, bwd]
    ours_kept = d["edges_in_graph"].bool()[fwd][:, bwd]
    outside = d["edges_in_graph"].bool().clone()
    outside[fwd[:, None], bwd[None, :]] = False
    if bool(outside.any()):
        raise CircuitError(f"{where}: edges in the circuit that a {graph!r} does not have (e.g. MLP edges of an attention-only model)")
    if bool((ours_kept & ~graph.valid).any()):
        raise CircuitError(f"{where}: edges_in_graph marks edges that do not exist (a receiver before its sender)")
    names = {graph.edge_index(e): str(e) for e in graph.edges}
    scores = {name: float(ours_scores[s, r]) for (s, r), name in names.items()}
    edges = {names[(s, r)]: scores[names[(s, r)]] for s, r in ours_kept.nonzero().tolist()}
    return rebuild(head, edges, scores, where)
