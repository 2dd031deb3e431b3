"""circuit-tracer's graph JSON, so its attribution-graph viewer can open our circuits (export only: lossy).

Facts from circuit-tracer's frontend models (`frontend/graph_models.py`) and writer (`utils/create_graph_files.py`):
a graph file is `{"metadata": {slug, scan, transcoder_list, prompt_tokens, prompt, node_threshold},
"qParams": {pinnedIds, supernodes, linkType, clickedId, sg_pos}, "nodes": [...], "links": [{source, target,
weight}]}`; a node has node_id, feature (int), layer (str), ctx_idx (int), feature_type, token_prob,
is_target_logit, run_idx, reverse_ctx_idx, jsNodeId, clerp, influence, activation. The viewer lists graphs
from `graph-metadata.json` (`{"graphs": [metadata, ...]}`) in the same folder.

Mapping: circuit-tracer's nodes are features at token positions; ours are components over all positions. So
every node sits at position 0 (prompt_tokens names the task), `input` is the embedding node (layer "E"),
`logits` the target logit node (layer L+1), heads and MLPs are nodes of their layer with feature = head index
(MLP = n_heads) and a `clerp` label naming the component (and its role). A link's weight is the sum of the
scores of the kept edges between two components (q, k and v edges of a head merge: the viewer has no ports).
"""

from __future__ import annotations

import json
from pathlib import Path

from acdc_lite.circuit import Circuit, write_atomic
from acdc_lite.graph import Edge, Node, NodeKind

FEATURE_TYPES = {NodeKind.INPUT: "embedding", NodeKind.HEAD: "cross layer transcoder", NodeKind.MLP: "cross layer transcoder",
                 NodeKind.LOGITS: "logit"}


def _node(node: Node, n_layers: int, n_heads: int, role: str | None) -> dict:
    if node.kind is NodeKind.INPUT:
        node_id, js, layer, feature = "E_0_0", "E_0-0", "E", 0
    elif node.kind is NodeKind.LOGITS:
        node_id, js, layer, feature = f"{n_layers + 1}_0_0", "L_0-0", str(n_layers + 1), 0
    else:
        feature = node.head if node.kind is NodeKind.HEAD else n_heads
        node_id, js, layer = f"{node.layer}_{feature}_0", f"{node.layer}_{feature}-0", str(node.layer)
    label = str(node) + (f" ({role})" if role else "")
    return {"node_id": node_id, "feature": feature, "layer": layer, "ctx_idx": 0, "feature_type": FEATURE_TYPES[node.kind],
            "token_prob": 0.0, "is_target_logit": node.kind is NodeKind.LOGITS, "run_idx": 0, "reverse_ctx_idx": 0,
            "jsNodeId": js, "clerp": label, "influence": None, "activation": None}


def to_graph_json(circuit: Circuit, slug: str | None = None, roles: dict[str, str] | None = None) -> dict:
    """The circuit as a circuit-tracer graph dict (see the module docstring)."""
    graph, roles = circuit.graph, roles or {}
    task = circuit.task.get("name", "task") if isinstance(circuit.task, dict) else str(circuit.task)
    slug = slug or f"{task}-{circuit.model.name}-{circuit.method.get('name', 'circuit')}"
    used = [Node.parse(n) for n in circuit.nodes]
    nodes = {n: _node(n, graph.n_layers, graph.n_heads, roles.get(str(n))) for n in used}
    weights: dict[tuple[str, str], float] = {}
    for name, score in circuit.edges.items():
        e = Edge.parse(name)
        key = (nodes[e.src]["node_id"], nodes[e.dst]["node_id"])
        weights[key] = weights.get(key, 0.0) + (0.0 if score is None else float(score))
    metadata = {"slug": slug, "scan": "acdc-lite", "transcoder_list": [], "prompt_tokens": [str(task)],
                "prompt": str(task), "node_threshold": None}
    return {"metadata": metadata,
            "qParams": {"pinnedIds": [], "supernodes": [], "linkType": "both", "clickedId": "", "sg_pos": ""},
            "nodes": list(nodes.values()),
            "links": [{"source": s, "target": t, "weight": w} for (s, t), w in sorted(weights.items())]}


def to_circuit_tracer(circuit: Circuit, path: str | Path, roles: dict[str, str] | None = None) -> Path:
    """Write the graph JSON. A directory (or a path without .json) gets `{slug}.json` plus an updated
    `graph-metadata.json`, the layout circuit-tracer's viewer serves."""
    path = Path(path)
    directory = path if path.suffix != ".json" else None
    d = to_graph_json(circuit, slug=None if directory else path.stem, roles=roles)
    if directory is None:
        write_atomic(path, json.dumps(d, indent=1) + "\n")
        return path
    out = directory / f"{d['metadata']['slug']}.json"
    write_atomic(out, json.dumps(d, indent=1) + "\n")
    index_path = directory / "graph-metadata.json"
    index = json.loads(index_path.read_text()) if index_path.is_file() else {"graphs": []}
    index["graphs"] = [g for g in index.get("graphs", []) if g.get("slug") != d["metadata"]["slug"]] + [d["metadata"]]
    write_atomic(index_path, json.dumps(index, indent=1) + "\n")
    return out
