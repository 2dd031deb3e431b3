"""Rendering (SVG/DOT) and circuit diffs."""

import json
import xml.etree.ElementTree as ET

import pytest
import torch

from acdc_lite import ModelGraph, SmallTransformer, SmallTransformerConfig, load_model
from acdc_lite.circuit import Circuit, CircuitError, ModelRef
from acdc_lite.diff import COLOR_A, COLOR_B, diff
from acdc_lite.render import WEAK, RenderError, render, render_svg, to_dot
from acdc_lite.validate import connected_mask

SVG_NS = "{http://www.w3.org/2000/svg}"


def svg_texts(svg: str) -> list[str]:
    root = ET.fromstring(svg)  # valid XML or this raises
    return [t.text.strip() for t in root.iter(f"{SVG_NS}text") if t.text and t.text.strip()]


def connected_circuit(model, seed=0, threshold=0.5, power=1, **kw):
    graph = ModelGraph.from_model(model)
    scores = torch.randn(graph.valid.shape, generator=torch.Generator().manual_seed(seed)) ** power * graph.valid
    mask = connected_mask(graph, scores.abs() > threshold)
    return Circuit.from_mask(ModelRef.of(model), mask, scores, task={"name": "toy-task"}, method={"name": "eap"},
                             metrics={"faithfulness": 0.875}, **kw)


def test_svg_is_xml_and_names_every_node(small_model):
    c = connected_circuit(small_model)
    svg = render(c, roles={"a1.h0": "induction"})
    texts = svg_texts(svg)
    for node in c.nodes:
        assert node in texts, node
    joined = " ".join(texts)
    for word in ("toy-task", small_model.cfg.name, "eap", "faithfulness 0.875", "legend"):
        assert word in joined
    if "a1.h0" in c.nodes:
        assert "induction" in texts
    assert {"q", "k", "v"} <= set(texts)  # head input ports


def test_dangling_nodes_are_pruned(small_model):
    graph = ModelGraph.from_model(small_model)
    ref = ModelRef.of(small_model)
    # a1.h2 has no incoming edge (no path from input); m0 has no path to logits
    c = Circuit(ref, {"input->a1.h0<v>": 1.0, "a1.h0->logits": 2.0, "a1.h2->logits": 0.5, "input->m0": 0.3})
    texts = svg_texts(render(c))
    assert "a1.h0" in texts and "a1.h2" not in texts and "m0" not in texts
    assert len(render(c, prune=False)) > 0 and "a1.h2" in svg_texts(render(c, prune=False))
    assert graph.n_edges() > 0


def test_large_circuit_fades_weak_edges_and_writes_files(tmp_path):
    torch.manual_seed(0)
    model = load_model(SmallTransformer(SmallTransformerConfig(n_layers=4, n_heads=6, d_model=24, d_head=4, d_vocab=20,
                                                               n_ctx=16, d_mlp=32)))
    c = connected_circuit(model, seed=1, threshold=0.2, power=3)  # a long tail of weak edges
    assert len(c.edges) >= 100
    dot = to_dot(c)
    assert dot.startswith("//") or dot.startswith("digraph")
    assert WEAK in dot and "merged per sender" in dot
    svg = render(c, tmp_path / "c.svg", direction="TB")
    assert (tmp_path / "c.svg").read_text() == svg
    svg_texts(svg)
    assert render(c, tmp_path / "c.dot").startswith("digraph") or (tmp_path / "c.dot").read_text().count("->") > 100
    assert render_svg(c, max_edges=20).count("<g id=\"edge") < len(c.edges)


def test_missing_dot_is_a_clear_error(small_model, monkeypatch):
    monkeypatch.setattr("shutil.which", lambda name: None)
    with pytest.raises(RenderError, match="apt-get install graphviz"):
        render(connected_circuit(small_model))
    assert "digraph" in to_dot(connected_circuit(small_model))  # DOT text needs no dot


def test_diff_with_itself_is_empty(small_model):
    c = connected_circuit(small_model)
    d = diff(c, c)
    assert d.is_empty and d.edge_jaccard == 1.0 and d.node_jaccard == 1.0
    assert d.alignment == "identity"
    assert len(d.shared_edges) == len(c.edges)
    assert set(d.to_frame()["status"]) == {"shared"}


def test_diff_of_two_circuits(small_model, tmp_path):
    ref = ModelRef.of(small_model)
    a = Circuit(ref, {"input->a1.h0<q>": 1.0, "a1.h0->logits": 1.0, "input->logits": 0.2})
    b = Circuit(ref, {"input->a1.h0<q>": 0.5, "a1.h0->logits": 1.0, "a0.h1->logits": 0.1, "input->a0.h1<k>": 0.3})
    d = diff(a, b)
    assert d.only_a_edges == ("input->logits",)
    assert set(d.only_b_edges) == {"a0.h1->logits", "input->a0.h1<k>"}
    assert d.edge_jaccard == pytest.approx(2 / 5)
    assert d.only_b_nodes == ("a0.h1",) and d.only_a_nodes == ()
    frame = d.to_frame()
    assert set(frame.columns) == {"level", "item", "status", "score_a", "score_b"}
    assert frame.query("item == 'input->a1.h0<q>'")["score_b"].item() == 0.5
    json.loads(d.to_json())
    svg = d.to_svg(tmp_path / "d.svg")
    texts = svg_texts(svg)
    assert "a0.h1" in texts and COLOR_A in svg and COLOR_B in svg
    # files and dicts work as inputs too
    a.save(tmp_path / "a.json")
    assert diff(tmp_path / "a.json", b.to_dict()).edge_jaccard == pytest.approx(2 / 5)


def test_diff_refuses_other_edge_conventions(small_model):
    c = connected_circuit(small_model)
    d = c.to_dict()
    d["edge_convention"] = "acdc"
    with pytest.raises(CircuitError, match="edge convention"):
        diff(c, d)


def test_cross_model_diff_aligns_by_depth_and_roles(small_model):
    torch.manual_seed(0)
    deep = load_model(SmallTransformer(SmallTransformerConfig(n_layers=4, n_heads=2, d_model=16, d_head=4, d_vocab=20,
                                                              n_ctx=16, d_mlp=16)))
    a = Circuit(ModelRef.of(small_model), {"input->a0.h1<v>": 1.0, "a0.h1->a1.h0<k>": 1.0, "a1.h0->logits": 1.0})
    b = Circuit(ModelRef.of(deep), {"input->a1.h0<v>": 1.0, "a1.h0->a3.h1<k>": 1.0, "a3.h1->logits": 1.0})
    d = diff(a, b)
    assert d.alignment.startswith("depth")
    assert d.is_empty  # layer 1 of 4 and layer 0 of 2 fall in the same depth bin, as do 3/4 and 1/2
    with pytest.raises(CircuitError, match="identity"):
        diff(a, b, align="identity")
    r = diff(a, b, roles_a={"a0.h1": "prev", "a1.h0": "ind"}, roles_b={"a1.h0": "prev", "a3.h1": "ind"})
    assert "role" in r.alignment and "a:ind->logits" in r.shared_edges and r.is_empty
    svg_texts(r.to_svg())
