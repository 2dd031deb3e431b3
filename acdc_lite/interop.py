"""Circuits to and from other formats: EAP-IG / MIB JSON, networkx, DOT, pandas; node-level circuits.

EAP-IG / MIB JSON (EAP-IG's `Graph.to_json`, read by `Graph.from_json` and MIB's evaluation):
    {"cfg": {"n_layers", "n_heads", "parallel_attn_mlp", "d_model", ...},
     "nodes": {name: {"in_graph": bool, optional "score": float}},
     "edges": {name: {"score": float, "in_graph": bool}}}
Node and edge names are the same as ours (`input`, `a3.h7`, `m3`, `logits`; `a0.h1->a3.h7<q>`,
`m2->logits`). EAP-IG always builds MLP nodes; for attention-only models we write only the edges
that exist and put `has_mlp: false` in `cfg` (EAP-IG ignores extra cfg keys). Scores we do not know
are written as 0.0. Our provenance goes under an extra top-level key `acdc_lite`.
"""

from __future__ import annotations

import json
import logging
import math
import re
from dataclasses import asdict
from pathlib import Path

import networkx as nx
import pandas as pd

from acdc_lite.circuit import Circuit, CircuitError, ModelRef, write_atomic
from acdc_lite.graph import Edge, Node, NodeKind

log = logging.getLogger(__name__)

_DOT_HEADER = "acdc-lite circuit "


def _known(x) -> bool:
    return x is not None and not (isinstance(x, float) and math.isnan(x))


def _score_table(circuit: Circuit) -> dict[str, float | None]:
    """Every score the circuit knows: all edges' if it has a ranking, else the kept edges'."""
    return {**(circuit.scores or {}), **{k: v for k, v in circuit.edges.items() if k not in (circuit.scores or {})}}


# ---- EAP-IG / MIB ---------------------------------------------------------------------------------
def to_eap_json(circuit: Circuit, path: str | Path | None = None, d_model: int | None = None) -> dict:
    """The circuit in EAP-IG / MIB JSON; written to `path` if given. d_model: EAP-IG's loader needs it."""
    graph = circuit.graph
    scores = _score_table(circuit)
    kept = set(circuit.edges)
    in_nodes = set(circuit.nodes)
    d_model = d_model if d_model is not None else circuit.model.d_model
    if d_model is None:
        log.warning("d_model unknown: EAP-IG's Graph.from_json needs cfg.d_model; pass d_model=")
    d = {
        "cfg": {"n_layers": graph.n_layers, "n_heads": graph.n_heads, "parallel_attn_mlp": graph.parallel_attn_mlp,
                "d_model": d_model, "has_mlp": graph.has_mlp},
        "nodes": {str(n): {"in_graph": str(n) in in_nodes or n.kind is NodeKind.LOGITS} for n in graph.nodes},
        "edges": {str(e): {"score": float(scores[str(e)]) if _known(scores.get(str(e))) else 0.0,
                           "in_graph": str(e) in kept} for e in graph.edges},
        "acdc_lite": {"model": asdict(circuit.model), "task": circuit.task, "method": circuit.method,
                      "ablation": circuit.ablation, "metrics": circuit.metrics, "provenance": circuit.provenance,
                      "has_ranking": circuit.scores is not None},
    }
    if path is not None:
        write_atomic(Path(path), json.dumps(d, allow_nan=False) + "\n")
    return d


def from_eap_json(source: dict | str | Path, model: ModelRef | None = None, **fields) -> Circuit:
    """A Circuit from EAP-IG / MIB JSON (a dict or a file). Edges with in_graph true are kept; every
    score becomes the ranking. model: the ModelRef to attach (default: rebuilt from cfg and our
    provenance, or a ref with fingerprint 'unknown'). fields: task=, method=, ... override."""
    d = json.loads(Path(source).read_text()) if isinstance(source, (str, Path)) else source
    where = str(source) if isinstance(source, (str, Path)) else "EAP-IG JSON"
    missing = [k for k in ("cfg", "nodes", "edges") if k not in d]
    if missing:
        if "edges" in missing and "nodes" in d:
            raise CircuitError(f"{where} is a node-level file (no 'edges'); edge-level circuits only. Build one from its "
                               "nodes with interop.circuit_from_nodes")
        raise CircuitError(f"{where} is not EAP-IG/MIB circuit JSON: missing {missing} (expected cfg, nodes, edges)")
    cfg, extra = d["cfg"], d.get("acdc_lite", {})
    if model is None:
        if "model" in extra:
            model = ModelRef(**extra["model"])
        else:
            model = ModelRef(name=str(cfg.get("model_name", "eap-ig-import")), architecture="unknown",
                             n_layers=int(cfg["n_layers"]), n_heads=int(cfg["n_heads"]), has_mlp=bool(cfg.get("has_mlp", True)),
                             parallel_attn_mlp=bool(cfg.get("parallel_attn_mlp", False)), fingerprint="unknown")
    if (model.n_layers, model.n_heads) != (int(cfg["n_layers"]), int(cfg["n_heads"])):
        raise CircuitError(f"{where} is for {cfg['n_layers']} layers x {cfg['n_heads']} heads but the model ref is "
                           f"{model.n_layers} x {model.n_heads}")
    graph = model.graph()
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
        log.warning("%s: skipped %d edges (not in the circuit) that a %r does not have", where, skipped, graph)
    has_ranking = extra.get("has_ranking", True)
    kwargs = {"task": extra.get("task", {}), "method": extra.get("method", {"name": "eap-ig-import"}),
              "ablation": extra.get("ablation", "resample"), "metrics": extra.get("metrics", {}),
              "provenance": extra.get("provenance", {}), **fields}
    return Circuit(model=model, edges=edges, scores=scores if has_ranking else None, **kwargs)


# ---- networkx -------------------------------------------------------------------------------------
def to_networkx(circuit: Circuit) -> nx.MultiDiGraph:
    """Kept edges as a MultiDiGraph (edge key = port, attribute score); model and task in g.graph."""
    g = circuit.graph.to_networkx(circuit.mask())
    for (u, v, key), score in ((_nx_key(Edge.parse(n)), s) for n, s in circuit.edges.items()):
        g.edges[u, v, key]["score"] = float("nan") if score is None else score
    g.remove_nodes_from([n for n in list(g.nodes) if g.degree(n) == 0])
    g.graph.update({"model": asdict(circuit.model), "task": circuit.task, "method": circuit.method,
                    "ablation": circuit.ablation, "metrics": circuit.metrics})
    return g


def _nx_key(e: Edge) -> tuple[str, str, str]:
    return str(e.src), str(e.dst), e.port.value


def from_networkx(g: nx.MultiDiGraph, model: ModelRef | None = None, **fields) -> Circuit:
    """A Circuit from `to_networkx` output (or any graph with canonical node names, port keys, score attributes)."""
    model = model or (ModelRef(**g.graph["model"]) if "model" in g.graph else None)
    if model is None:
        raise CircuitError("the networkx graph has no 'model' attribute; pass model=ModelRef(...)")
    edges = {}
    for u, v, key, data in g.edges(keys=True, data=True):
        port = data.get("port", key)
        dst = Node.parse(v)
        name = f"{u}->{v}<{port}>" if dst.kind is NodeKind.HEAD else f"{u}->{v}"
        edges[name] = float(data.get("score", 1.0))
    kwargs = {k: g.graph[k] for k in ("task", "method", "ablation", "metrics") if k in g.graph}
    return Circuit(model=model, edges=edges, **{**kwargs, **fields})


# ---- DOT ------------------------------------------------------------------------------------------
def to_dot(circuit: Circuit, **render_kwargs) -> str:
    """DOT text of the drawing (see render.to_dot), readable back with `from_dot`: every edge carries
    `acdc_edge` and `acdc_score` attributes and the model ref is in a header comment. Not pruned."""
    from acdc_lite.render import to_dot as render_dot

    header = _DOT_HEADER + json.dumps({"model": asdict(circuit.model), "ablation": circuit.ablation,
                                       "task": circuit.task, "method": circuit.method}, sort_keys=True)
    render_kwargs = {"prune": False, "fade_above": 10**9, "merge_above": 10**9, **render_kwargs}
    return render_dot(circuit, comment=header, **render_kwargs)


_ATTR = re.compile(r'(acdc_edge|acdc_score)="?([^"\]\s]+)"?')


def from_dot(text: str, model: ModelRef | None = None, **fields) -> Circuit:
    """A Circuit from DOT written by `to_dot` (edges from their acdc_edge/acdc_score attributes)."""
    meta = {}
    for line in text.splitlines():
        if line.startswith("// " + _DOT_HEADER):
            meta = json.loads(line[len("// " + _DOT_HEADER):])
            break
    model = model or (ModelRef(**meta["model"]) if "model" in meta else None)
    if model is None:
        raise CircuitError("this DOT text has no acdc-lite header (not written by interop.to_dot); pass model=ModelRef(...)")
    edges: dict[str, float] = {}
    for line in text.splitlines():
        attrs = dict(_ATTR.findall(line))
        if "acdc_edge" in attrs:
            names = attrs["acdc_edge"].split(";")
            score = float(attrs["acdc_score"]) if "acdc_score" in attrs and len(names) == 1 else float("nan")
            for name in names:
                edges[name] = score
    kwargs = {k: meta[k] for k in ("task", "method", "ablation") if k in meta}
    return Circuit(model=model, edges=edges, **{**kwargs, **fields})


# ---- pandas ---------------------------------------------------------------------------------------
EDGE_COLUMNS = ["edge", "src", "dst", "port", "src_layer", "dst_layer", "score", "abs_score", "in_circuit"]


def edges_frame(circuit: Circuit) -> pd.DataFrame:
    """One row per scored edge (every edge if the circuit has a ranking, else the kept ones), best |score| first."""
    kept = set(circuit.edges)
    rows = []
    for name, score in _score_table(circuit).items():
        e = Edge.parse(name)
        s = float("nan") if score is None else float(score)
        rows.append((name, str(e.src), str(e.dst), e.port.value, e.src.layer, e.dst.layer, s, abs(s), name in kept))
    df = pd.DataFrame(rows, columns=EDGE_COLUMNS)
    return df.sort_values(["abs_score", "edge"], ascending=[False, True], na_position="last").reset_index(drop=True)


def from_frame(df: pd.DataFrame, model: ModelRef, **fields) -> Circuit:
    """A Circuit from a frame with columns edge, score and (optionally) in_circuit (default: all rows kept)."""
    if "edge" not in df.columns:
        raise CircuitError("the frame needs an 'edge' column of canonical edge names (e.g. a0.h1->a2.h3<q>)")
    score = df["score"] if "score" in df.columns else pd.Series(1.0, index=df.index)
    keep = df["in_circuit"].astype(bool) if "in_circuit" in df.columns else pd.Series(True, index=df.index)
    edges = {e: float(s) for e, s, k in zip(df["edge"], score, keep, strict=True) if k}
    scores = {e: float(s) for e, s in zip(df["edge"], score, strict=True)} if "in_circuit" in df.columns else None
    return Circuit(model=model, edges=edges, scores=scores, **fields)


# ---- node-level circuits --------------------------------------------------------------------------
def circuit_from_nodes(model: ModelRef, nodes, **fields) -> Circuit:
    """The node-induced circuit: every edge whose sender and receiver are both in `nodes` (names or Nodes).

    `input` and `logits` are added if missing. This is how head-level facts (e.g. the IOI heads of
    Wang et al. 2022) become an edge set; it over-counts edges the original analysis did not claim.
    """
    names = {str(n) for n in nodes} | {"input", "logits"}
    graph = model.graph()
    known = {str(n) for n in graph.nodes}
    unknown = sorted(names - known)
    if unknown:
        raise CircuitError(f"nodes {unknown[:5]} are not in a {model.n_layers} x {model.n_heads} graph of {model.name}")
    edges = {str(e): 1.0 for e in graph.edges if str(e.src) in names and str(e.dst) in names}
    return Circuit(model=model, edges=edges, **fields)
