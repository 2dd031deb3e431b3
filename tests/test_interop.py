"""Interop round trips (EAP-IG/MIB JSON, networkx, DOT, pandas), node-level circuits, reference circuits."""

import json
import math
from pathlib import Path

import pytest
import torch

from acdc_lite import ModelGraph, SmallTransformer, SmallTransformerConfig, load_model
from acdc_lite.circuit import Circuit, CircuitError, ModelRef
from acdc_lite.graph import Edge, NodeKind
from acdc_lite.interop import (
    circuit_from_nodes,
    edges_frame,
    from_dot,
    from_eap_json,
    from_frame,
    from_networkx,
    to_dot,
    to_eap_json,
    to_networkx,
)

CIRCUITS = Path(__file__).parent.parent / "circuits"


def scored_circuit(model, seed=0):
    graph = ModelGraph.from_model(model)
    scores = torch.randn(graph.valid.shape, generator=torch.Generator().manual_seed(seed)) * graph.valid
    return Circuit.from_mask(ModelRef.of(model), scores > 0.7, scores, task={"name": "toy"}, method={"name": "eap-ig"},
                             metrics={"faithfulness": 0.8})


def same(a: Circuit, b: Circuit):
    assert a.model == b.model
    assert a.edges == b.edges
    assert (a.scores is None) == (b.scores is None)
    if a.scores is not None:
        assert a.scores.keys() == b.scores.keys()
        assert all(math.isclose(a.scores[k], b.scores[k], abs_tol=1e-7) for k in a.scores)


def test_eap_json_round_trip_and_format(small_model, tmp_path):
    c = scored_circuit(small_model)
    d = to_eap_json(c, tmp_path / "g.json", d_model=16)
    assert set(d) >= {"cfg", "nodes", "edges"}
    assert {"n_layers", "n_heads", "parallel_attn_mlp", "d_model"} <= set(d["cfg"])
    assert len(d["edges"]) == c.graph.n_edges()
    assert all(set(v) == {"score", "in_graph"} for v in d["edges"].values())
    assert d["nodes"]["logits"] == {"in_graph": True}
    assert sum(v["in_graph"] for v in d["edges"].values()) == len(c.edges)
    same(from_eap_json(tmp_path / "g.json"), c)
    same(from_eap_json(json.loads((tmp_path / "g.json").read_text())), c)


def test_eap_json_from_a_foreign_file(small_model):
    """A file as EAP-IG writes it: no acdc_lite key, no has_mlp; our shape comes from cfg."""
    graph = ModelGraph.from_model(small_model)
    kept = {"input->a1.h0<q>", "a1.h0->logits", "m0->m1"}
    d = {"cfg": {"n_layers": 2, "n_heads": 3, "parallel_attn_mlp": False, "d_model": 16},
         "nodes": {str(n): {"in_graph": True} for n in graph.nodes},
         "edges": {str(e): {"score": 0.5 if str(e) in kept else 0.01, "in_graph": str(e) in kept} for e in graph.edges}}
    c = from_eap_json(d)
    assert set(c.edges) == kept and c.model.fingerprint == "unknown" and c.graph == graph
    assert len(c.scores) == graph.n_edges()
    with pytest.raises(CircuitError, match="node-level"):
        from_eap_json({"cfg": d["cfg"], "nodes": d["nodes"]})


def test_eap_json_attention_only_round_trip():
    torch.manual_seed(0)
    model = load_model(SmallTransformer(SmallTransformerConfig(n_layers=3, n_heads=2, d_model=16, d_head=4, d_vocab=20, n_ctx=16)))
    c = scored_circuit(model)
    d = to_eap_json(c)
    assert d["cfg"]["has_mlp"] is False and not any(k.startswith("m") for k in d["nodes"])
    same(from_eap_json(d), c)


def test_networkx_dot_and_frame_round_trips(small_model):
    c = scored_circuit(small_model)
    kept_only = Circuit(c.model, c.edges, task=c.task, method=c.method)
    g = to_networkx(c)
    assert g.number_of_edges() == len(c.edges) and set(g.nodes) == set(c.nodes)
    assert g.graph["model"]["fingerprint"] == c.model.fingerprint
    same(from_networkx(g), kept_only)
    dot = to_dot(c)
    assert "digraph" in dot
    same(from_dot(dot), kept_only)
    df = edges_frame(c)
    assert len(df) == c.graph.n_edges() and df["in_circuit"].sum() == len(c.edges)
    assert df["abs_score"].is_monotonic_decreasing
    same(from_frame(df, c.model), c)
    same(from_frame(df[df["in_circuit"]][["edge", "score"]], c.model), kept_only)


def test_circuit_from_nodes(small_model):
    ref = ModelRef.of(small_model)
    c = circuit_from_nodes(ref, ["a0.h1", "a1.h2"])
    # input -> a0.h1 (3 ports), input -> a1.h2 (3), a0.h1 -> a1.h2 (3), input/a0.h1/a1.h2 -> logits (3)
    assert len(c.edges) == 12
    assert set(c.nodes) == {"input", "a0.h1", "a1.h2", "logits"}
    with pytest.raises(CircuitError, match="not in"):
        circuit_from_nodes(ref, ["a7.h0"])


# ---- reference circuits ----------------------------------------------------------------------------
def test_reference_circuits_match_published_counts():
    ioi = Circuit.load(CIRCUITS / "ioi_gpt2_acdc.json")
    assert len(ioi.edges) == 963  # ACDC's 1041 minus 78 q/k/v -> head edges
    kinds = {}
    for e in ioi.edge_list():
        key = f"{e.src.kind.value}->{e.dst.kind.value}"
        kinds[key] = kinds.get(key, 0) + 1
    assert kinds == {"head->head": 124, "input->head": 45, "head->logits": 13, "input->logits": 1, "mlp->head": 567,
                     "head->mlp": 123, "mlp->mlp": 66, "input->mlp": 12, "mlp->logits": 12}
    assert len(Circuit.load(CIRCUITS / "greaterthan_gpt2_acdc.json").edges) == 235
    wang = Circuit.load(CIRCUITS / "ioi_gpt2_wang2022.json")
    assert len(wang.heads()) == 26 and not any(n.startswith("m") for n in wang.nodes)
    roles = wang.method["params"]["roles"]
    assert roles["a9.h9"] == "name_mover" and len(roles) == 26
    hanna = Circuit.load(CIRCUITS / "greaterthan_gpt2_hanna2023.json")
    assert {"m9", "m10", "a9.h1", "a5.h5"} <= set(hanna.nodes)
    for path in CIRCUITS.glob("*.json"):
        c = Circuit.load(path)
        assert "source" in c.task and "source" in c.method["params"] and c.model.fingerprint == "gpt2-hub"


def test_reference_circuit_refuses_other_gpt2_shaped_weights():
    torch.manual_seed(0)
    gpt2_shaped = load_model(SmallTransformer(SmallTransformerConfig(n_layers=12, n_heads=12, d_model=24, d_head=2,
                                                                     d_vocab=20, n_ctx=8, d_mlp=8)))
    ioi = Circuit.load(CIRCUITS / "ioi_gpt2_wang2022.json")
    assert ioi.graph == ModelGraph.from_model(gpt2_shaped)
    with pytest.raises(CircuitError, match="weights gpt2-hub"):
        ioi.check_model(gpt2_shaped)


def test_reference_circuits_render(tmp_path):
    from acdc_lite.render import render

    svg = render(Circuit.load(CIRCUITS / "ioi_gpt2_wang2022.json"))
    assert "name_mover" in svg and "a9.h9" in svg
    assert all(Edge.parse(e).dst.kind is not NodeKind.MLP for e in Circuit.load(CIRCUITS / "ioi_gpt2_wang2022.json").edges)
