"""Circuits as graphs and tables: networkx, GraphML, DOT, pandas / CSV, safetensors; node-level circuits.

Lossless (export then import gives the same circuit and scores): GraphML, CSV and safetensors carry the
circuit's header (model, task, method, ablation, metrics, provenance) beside every scored edge:
- GraphML: every scored edge of a networkx MultiDiGraph (key = port; attributes `score`, `in_circuit`,
  `port`), the header as a JSON string in the graph attribute `acdc_lite`.
- CSV: one row per scored edge (`edge`, `score`, `in_circuit` and readable columns), after one comment line
  `# acdc-lite circuit {header JSON}`.
- safetensors: `scores` [senders, receivers] float64 (NaN = not scored) and `kept` [senders, receivers] uint8 in
  our graph's layout (EAP-IG's, for models with MLPs), the header JSON in the file's metadata.
"""

from __future__ import annotations

import io
import json
import logging
import math
import re
from dataclasses import asdict
from pathlib import Path

import networkx as nx
import pandas as pd
import torch

from acdc_lite.circuit import EDGE_COLUMNS as CIRCUIT_EDGE_COLUMNS
from acdc_lite.circuit import Circuit, CircuitError, ModelRef, write_atomic
from acdc_lite.graph import Edge, Node, NodeKind
from acdc_lite.interop.common import dense, from_dense, header, header_json, rebuild, score_table

log = logging.getLogger(__name__)

_DOT_HEADER = "acdc-lite circuit "
_CSV_HEADER = "# acdc-lite circuit "


# ---- networkx -------------------------------------------------------------------------------------
def to_networkx(circuit: Circuit) -> nx.MultiDiGraph:
    """Kept edges as a MultiDiGraph (edge key = port, attribute score); model and task in g.graph (`Circuit.to_networkx`)."""
    return circuit.to_networkx()


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
EDGE_COLUMNS = list(CIRCUIT_EDGE_COLUMNS)


def edges_frame(circuit: Circuit) -> pd.DataFrame:
    """One row per scored edge, best |score| first (`Circuit.to_frame`)."""
    return circuit.to_frame()


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


# ---- GraphML --------------------------------------------------------------------------------------
def to_graphml(circuit: Circuit, path: str | Path) -> Path:
    """Every scored edge (kept or not) with `score`, `in_circuit` and `port`; the header in graph attribute `acdc_lite`."""
    g = nx.MultiDiGraph(acdc_lite=header_json(circuit))
    g.add_nodes_from(str(n) for n in circuit.graph.nodes)
    kept = set(circuit.edges)
    for name, score in score_table(circuit).items():
        e = Edge.parse(name)
        g.add_edge(str(e.src), str(e.dst), key=e.port.value, port=e.port.value, edge=name,
                   score=float("nan") if score is None else float(score), in_circuit=name in kept)
    buf = io.BytesIO()
    nx.write_graphml(g, buf)
    path = Path(path)
    write_atomic(path, buf.getvalue())
    return path


def from_graphml(path: str | Path, model: ModelRef | None = None, **fields) -> Circuit:
    """Inverse of `to_graphml`; `model` replaces the recorded model description."""
    where = str(path)
    try:
        g = nx.read_graphml(Path(path), force_multigraph=True)
    except FileNotFoundError as e:
        raise CircuitError(f"{where} does not exist") from e
    except Exception as e:  # networkx raises parser errors of several types
        raise CircuitError(f"{where} is not GraphML ({type(e).__name__}: {str(e)[:200]})") from e
    if "acdc_lite" not in g.graph:
        raise CircuitError(f"{where} has no acdc_lite header (graph attribute); it was not written by acdc-lite export")
    head = {**json.loads(g.graph["acdc_lite"]), **fields, **({"model": asdict(model)} if model is not None else {})}
    edges, scores = {}, {}
    for _, _, data in g.edges(data=True):
        name = data.get("edge")
        if name is None:
            raise CircuitError(f"{where}: an edge lacks its 'edge' attribute (canonical name)")
        score = float(data.get("score", float("nan")))
        scores[name] = None if math.isnan(score) else score
        if data.get("in_circuit"):
            edges[name] = scores[name]
    return rebuild(head, edges, scores, where)


# ---- CSV ------------------------------------------------------------------------------------------
def to_csv(circuit: Circuit, path: str | Path) -> Path:
    """`edges_frame` as CSV after a `# acdc-lite circuit {header}` line; scores written exactly (repr)."""
    frame = edges_frame(circuit)
    body = frame.to_csv(index=False, float_format=None)
    path = Path(path)
    write_atomic(path, _CSV_HEADER + header_json(circuit) + "\n" + body)
    return path


def from_csv(path: str | Path, model: ModelRef | None = None, **fields) -> Circuit:
    """A circuit from CSV with columns `edge`, `score` and optionally `in_circuit` (default: every row kept).
    The header line written by `to_csv` restores model, task, method and the rest; without it pass `model`."""
    where = str(path)
    try:
        text = Path(path).read_text(encoding="utf-8")
    except FileNotFoundError as e:
        raise CircuitError(f"{where} does not exist") from e
    except UnicodeDecodeError as e:
        raise CircuitError(f"{where} is not UTF-8 text") from e
    first, _, rest = text.partition("\n")
    if first.startswith(_CSV_HEADER):
        head = json.loads(first[len(_CSV_HEADER):])
    elif model is not None:
        head, rest = {"model": asdict(model), "has_ranking": False}, text
    else:
        raise CircuitError(f"{where} has no '# acdc-lite circuit' header line; pass the model (its ModelRef) to import it")
    if model is not None:
        head["model"] = asdict(model)
    try:
        df = pd.read_csv(io.StringIO(rest))
    except Exception as e:  # pandas parser errors
        raise CircuitError(f"{where} is not CSV ({type(e).__name__}: {str(e)[:200]})") from e
    if "edge" not in df.columns:
        raise CircuitError(f"{where} needs an 'edge' column of canonical edge names (e.g. a0.h1->a2.h3<q>)")
    score = df["score"] if "score" in df.columns else pd.Series(float("nan"), index=df.index)
    keep = df["in_circuit"].astype(bool) if "in_circuit" in df.columns else pd.Series(True, index=df.index)
    scores = {e: (None if math.isnan(s) else float(s)) for e, s in zip(df["edge"], score.astype(float), strict=True)}
    edges = {e: scores[e] for e, k in zip(df["edge"], keep, strict=True) if k}
    if "schema_version" not in head:
        from acdc_lite.circuit import SCHEMA_VERSION

        head["schema_version"] = SCHEMA_VERSION
    return rebuild({**head, **fields}, edges, scores, where)


# ---- safetensors ----------------------------------------------------------------------------------
def to_safetensors(circuit: Circuit, path: str | Path) -> Path:
    """`scores` [S, R] float64 (NaN = unscored) and `kept` [S, R] uint8, the header JSON as metadata."""
    from safetensors.torch import save

    scores, kept = dense(circuit)
    path = Path(path)
    write_atomic(path, save({"scores": scores.contiguous(), "kept": kept.to(torch.uint8).contiguous()},
                            metadata={"acdc_lite": json.dumps(header(circuit), allow_nan=False)}))
    return path


def from_safetensors(path: str | Path, model: ModelRef | None = None, **fields) -> Circuit:
    """Inverse of `to_safetensors` (no code is ever loaded: safetensors holds tensors and strings only)."""
    from safetensors import safe_open

    where = str(path)
    if not Path(path).is_file():
        raise CircuitError(f"{where} does not exist")
    try:
        with safe_open(str(path), framework="pt") as f:
            meta = f.metadata() or {}
            tensors = {k: f.get_tensor(k) for k in f.keys()}
    except Exception as e:  # safetensors raises its own error types for malformed headers
        raise CircuitError(f"{where} is not a safetensors file ({type(e).__name__}: {str(e)[:200]})") from e
    if "acdc_lite" not in meta or not {"scores", "kept"} <= set(tensors):
        raise CircuitError(f"{where} is not an acdc-lite score file: needs tensors 'scores' and 'kept' and the acdc_lite "
                           f"metadata (has tensors {sorted(tensors)})")
    head = {**json.loads(meta["acdc_lite"]), **fields, **({"model": asdict(model)} if model is not None else {})}
    return from_dense(head, tensors["scores"].to(torch.float64), tensors["kept"], where)
