"""Build the reference (published) circuits in this directory from head-level facts.

Run from the repository root: `python circuits/build_reference.py`. Writes four GPT-2 small circuits:

- ioi_gpt2_wang2022.json: the 26 IOI heads of Wang et al. 2022 (Fig. 2), node level. Edge rule: the
  node-induced subgraph, i.e. every edge whose two ends are circuit nodes (input, the 26 heads,
  logits; the paper names no MLPs). It over-counts: the paper claims only some head-to-head paths.
- ioi_gpt2_acdc.json: the edge-level IOI ground truth Conmy et al. 2023 evaluate against (ACDC's
  get_ioi_true_edges): 963 edges in our (EAP-IG) convention = ACDC's 1041 minus its 78 q/k/v -> head edges.
- greaterthan_gpt2_hanna2023.json: the greater-than heads and MLPs of Hanna et al. 2023, node-induced.
- greaterthan_gpt2_acdc.json: ACDC's greater-than ground truth (get_greaterthan_true_edges): 235 edges.

The weights these circuits describe are GPT-2 small from the Hugging Face hub, which this project cannot
download; their fingerprint is "gpt2-hub", so Circuit.check_model refuses any other weights (validate
with check_weights=False on a real GPT-2 whose fingerprint differs only by how it was loaded).
Roles (head classes) are stored in method.params.roles, where render() picks them up.
"""

from __future__ import annotations

import sys
from pathlib import Path

from acdc_lite import __version__
from acdc_lite.circuit import Circuit, ModelRef
from acdc_lite.graph import Edge, ModelGraph, Node, NodeKind, Port
from acdc_lite.interop import circuit_from_nodes

GPT2 = ModelRef(name="gpt2", architecture="GPT2LMHeadModel", n_layers=12, n_heads=12, has_mlp=True,
                parallel_attn_mlp=False, fingerprint="gpt2-hub")

# Wang et al. 2022, Fig. 2 (same 26 heads as ACDC's IOI_CIRCUIT and AutoCircuit's ioi_official.py)
IOI_CLASSES = {
    "name_mover": ["9.9", "10.0", "9.6"],
    "backup_name_mover": ["10.10", "10.6", "10.2", "10.1", "11.2", "9.7", "9.0", "11.9"],
    "negative_name_mover": ["10.7", "11.10"],
    "s_inhibition": ["7.3", "7.9", "8.6", "8.10"],
    "induction": ["5.5", "5.8", "5.9", "6.9"],
    "duplicate_token": ["0.1", "0.10", "3.0"],
    "previous_token": ["2.2", "4.11"],
}
# (sender group, receiver group, ports); INPUT = embeddings + every MLP, OUTPUT = logits + every MLP
IOI_ACDC_CONNECTIONS = [
    ("INPUT", "previous_token", "qkv"), ("INPUT", "duplicate_token", "qkv"), ("INPUT", "s_inhibition", "q"),
    ("INPUT", "negative_name_mover", "kv"), ("INPUT", "name_mover", "kv"), ("INPUT", "backup_name_mover", "kv"),
    ("previous_token", "induction", "kv"), ("induction", "s_inhibition", "kv"), ("duplicate_token", "s_inhibition", "kv"),
    ("s_inhibition", "negative_name_mover", "q"), ("s_inhibition", "name_mover", "q"),
    ("s_inhibition", "backup_name_mover", "q"),
    ("negative_name_mover", "OUTPUT", ""), ("name_mover", "OUTPUT", ""), ("backup_name_mover", "OUTPUT", ""),
]

# Hanna et al. 2023 (hannamw/gpt2-greater-than circuit_discovery.py): heads at END and at YY, MLPs
GT_HANNA = {
    "attend_to_YY_at_END": ["5.1", "5.5", "6.9", "7.10", "8.8", "8.11", "9.1"],
    "early_head_at_YY": ["0.1", "0.3", "0.5"],
    "mlp_compute_greater_than_END": ["m8", "m9", "m10", "m11"],
    "mlp_early_YY": ["m0", "m1", "m2", "m3"],
}
# ACDC's greater-than ground truth groups (acdc/greaterthan/utils.py CIRCUIT)
GT_ACDC = {
    "0305": ["0.3", "0.5"], "01": ["0.1"], "MEARLY": ["m0", "m1", "m2", "m3"],
    "AMID": ["5.5", "6.1", "6.9", "7.10", "8.11", "9.1"], "MLATE": ["m8", "m9", "m10", "m11"],
}

ACDC_REPO = "ArthurConmy/Automatic-Circuit-Discovery@bc99ace817974b5584b7ee203d596a8e2bbcd399"


def node(name: str) -> Node:
    """'9.9' -> a9.h9, 'm8' -> m8."""
    if name.startswith("m"):
        return Node.parse(name)
    layer, head = name.split(".")
    return Node(NodeKind.HEAD, int(layer), int(head))


def roles(classes: dict[str, list[str]]) -> dict[str, str]:
    return {str(node(n)): cls for cls, names in classes.items() for n in names}


def layer_of(n: Node) -> int:
    return {NodeKind.INPUT: -1, NodeKind.LOGITS: 99}.get(n.kind, n.layer)


def receivers(n: Node, ports: str) -> list[tuple[Node, Port]]:
    return [(n, Port(p)) for p in ports] if n.kind is NodeKind.HEAD else [(n, Port.IN)]


def ioi_acdc_edges(graph: ModelGraph) -> set[Edge]:
    """ACDC's rule: all edges among {input, 26 heads, all MLPs, logits}, minus input -> circuit head,
    head -> head and head -> logits; then the group connections, where a receiver layer must exceed the sender's."""
    heads = {node(n) for names in IOI_CLASSES.values() for n in names}
    mlps = [Node(NodeKind.MLP, layer) for layer in range(graph.n_layers)]
    keep = heads | set(mlps) | {Node(NodeKind.INPUT), Node(NodeKind.LOGITS)}
    edges = set()
    for e in graph.edges:
        if e.src not in keep or e.dst not in keep:
            continue
        if e.dst.kind is NodeKind.HEAD and e.src.kind in (NodeKind.INPUT, NodeKind.HEAD):
            continue
        if e.src.kind is NodeKind.HEAD and e.dst.kind is NodeKind.LOGITS:
            continue
        edges.add(e)
    for src_group, dst_group, ports in IOI_ACDC_CONNECTIONS:
        srcs = [Node(NodeKind.INPUT), *mlps] if src_group == "INPUT" else [node(n) for n in IOI_CLASSES[src_group]]
        if dst_group == "OUTPUT":
            dsts = [(Node(NodeKind.LOGITS), Port.IN)] + [(m, Port.IN) for m in mlps]
        else:
            dsts = [rp for n in IOI_CLASSES[dst_group] for rp in receivers(node(n), ports)]
        for s in srcs:
            for d, port in dsts:
                if layer_of(d) > layer_of(s):
                    edges.add(Edge(s, d, port))
    return edges


def greaterthan_acdc_edges(graph: ModelGraph) -> set[Edge]:
    """ACDC's greater-than rule (see module docstring of acdc/greaterthan/utils.py in ACDC_REPO)."""
    group = {k: [node(n) for n in v] for k, v in GT_ACDC.items()}
    inp, logits = Node(NodeKind.INPUT), Node(NodeKind.LOGITS)
    edges = set()

    def connect(s: Node, d: Node, ports: str = "qkv"):
        for dst, port in receivers(d, ports):
            edges.add(Edge(s, dst, port))

    for g in ("0305", "01", "MEARLY"):
        for d in group[g]:
            connect(inp, d)
    for g in ("AMID", "MLATE"):
        for s in group[g]:
            connect(s, logits)
    for g in ("MEARLY", "MLATE"):
        for s in group[g]:
            for d in group[g]:
                if s.layer < d.layer:
                    connect(s, d)
    for g1, g2 in (("01", "MEARLY"), ("01", "AMID"), ("0305", "AMID"), ("MEARLY", "AMID"), ("AMID", "MLATE")):
        for s in group[g1]:
            for d in group[g2]:
                head_to_same_layer_mlp = s.layer == d.layer and s.kind is NodeKind.HEAD and d.kind is NodeKind.MLP
                if s.layer < d.layer or head_to_same_layer_mlp:
                    connect(s, d)
    max_amid = max(n.layer for n in group["AMID"])
    for s in range(max_amid):
        for d in range(s + 1, max_amid):
            connect(Node(NodeKind.MLP, s), Node(NodeKind.MLP, d))
    for h in group["AMID"]:
        for s in range(h.layer):
            connect(Node(NodeKind.MLP, s), h, "q")
    for e in edges:
        graph.edge_index(e)  # every rule edge must exist in the EAP-IG graph
    return edges


def build() -> dict[str, Circuit]:
    graph = GPT2.graph()
    prov = {"package_version": __version__, "built_by": "circuits/build_reference.py", "weights": "none (facts only)"}
    ioi_task = {"name": "ioi", "metric": "logit difference logit(IO) - logit(S) at END",
                "corruption": "ABC: IO, S1 and S2 replaced by three random names",
                "source": "Wang et al. 2022, Interpretability in the Wild (arXiv 2211.00593), Fig. 2"}
    gt_task = {"name": "greater-than", "metric": "probability difference sum_{y>YY} p(y) - sum_{y<=YY} p(y)",
               "corruption": "01-dataset: YY replaced by 01",
               "source": "Hanna, Liu, Variengien 2023, How does GPT-2 compute greater-than? (arXiv 2305.00586)"}
    out = {}
    ioi_roles = roles(IOI_CLASSES)
    out["ioi_gpt2_wang2022"] = circuit_from_nodes(
        GPT2, ioi_roles, task=ioi_task, ablation="mean",
        method={"name": "reference", "params": {
            "source": "Wang et al. 2022 Fig. 2; the same 26 heads in " + ACDC_REPO + " acdc/ioi/utils.py IOI_CIRCUIT",
            "level": "node", "edge_rule": "node-induced: every edge whose sender and receiver are both circuit nodes "
                                          "(input, the 26 heads, logits); no MLPs (the paper names none)",
            "nodes": sorted(ioi_roles), "roles": ioi_roles,
            "ablation_note": "the paper mean-ablates over the ABC distribution"}},
        provenance=prov)
    ioi_acdc = ioi_acdc_edges(graph)
    out["ioi_gpt2_acdc"] = Circuit(
        GPT2, {str(e): 1.0 for e in ioi_acdc}, task=ioi_task, ablation="resample",
        method={"name": "reference", "params": {
            "source": ACDC_REPO + " acdc/ioi/utils.py get_ioi_true_edges (Conmy et al. 2023, arXiv 2304.14997)",
            "level": "edge", "edge_rule": "26 heads, all MLPs; group connections with q/k/v ports; INPUT = embeddings + "
                                          "every MLP, OUTPUT = logits + every MLP; every MLP edge kept",
            "edge_count_note": "963 in the EAP-IG convention = ACDC's 1041 minus 78 q/k/v-input -> head edges",
            "roles": ioi_roles}},
        provenance=prov)
    hanna_roles = roles(GT_HANNA)
    out["greaterthan_gpt2_hanna2023"] = circuit_from_nodes(
        GPT2, hanna_roles, task=gt_task, ablation="resample",
        method={"name": "reference", "params": {
            "source": "Hanna et al. 2023; hannamw/gpt2-greater-than@0e6dc8c2da87f7d2befeb2a4dd432fae404ea35a "
                      "circuit_discovery.py", "level": "node",
            "edge_rule": "node-induced: every edge whose sender and receiver are both circuit nodes (input, 10 heads, "
                         "MLPs 0-3 and 8-11, logits)", "nodes": sorted(hanna_roles), "roles": hanna_roles}},
        provenance=prov)
    acdc_roles = roles(GT_ACDC)
    out["greaterthan_gpt2_acdc"] = Circuit(
        GPT2, {str(e): 1.0 for e in greaterthan_acdc_edges(graph)}, task=gt_task, ablation="resample",
        method={"name": "reference", "params": {
            "source": ACDC_REPO + " acdc/greaterthan/utils.py get_greaterthan_true_edges (Conmy et al. 2023)",
            "level": "edge", "edge_rule": "groups 0305, 01, MEARLY, AMID, MLATE; connected pairs, MLP chains, MLP -> AMID q",
            "edge_count_note": "235 in the EAP-IG convention = ACDC's 262 minus 27 q/k/v-input -> head edges",
            "roles": acdc_roles}},
        provenance=prov)
    return out


def main(directory: str | Path = Path(__file__).parent) -> None:
    for name, circuit in build().items():
        path = circuit.save(Path(directory) / f"{name}.json")
        sys.stdout.write(f"{path}: {len(circuit.edges)} edges, {len(circuit.nodes)} nodes\n")


if __name__ == "__main__":
    main()
