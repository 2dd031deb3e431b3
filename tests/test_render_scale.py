"""Renders that scale: heads in index order, necessary edges never faded, a node-level view, roles in diffs."""

import json
import shutil

import pytest
import torch

from acdc_lite.circuit import Circuit, ModelRef
from acdc_lite.diff import diff
from acdc_lite.render import WEAK, circuit_specs, to_dot

needs_dot = pytest.mark.skipif(shutil.which("dot") is None, reason="graphviz's dot is not installed")


def ref(n_layers=2, n_heads=4):
    return ModelRef("toy", "test", n_layers, n_heads, True, False, "f00d", 16)


def crossing_circuit() -> Circuit:
    """Heads of layer 0 wired so that a crossing-minimising layout would reorder them (h3 first)."""
    edges = {}
    for h, target in zip((3, 1, 0, 2), ("a1.h0", "a1.h1", "a1.h2", "a1.h3"), strict=True):
        edges[f"input->a0.h{h}<q>"] = 1.0
        edges[f"a0.h{h}->{target}<v>"] = 1.0
    for h in range(4):
        edges[f"a1.h{h}->logits"] = 1.0
    return Circuit(model=ref(), edges=edges)


def positions(dot_text: str) -> dict[str, float]:
    """x position of every labelled node, laid out by graphviz (`dot -Tjson`)."""
    import graphviz

    layout = json.loads(graphviz.pipe("dot", "json", dot_text.encode()))
    out = {}
    for obj in layout.get("objects", []):
        tip = obj.get("tooltip", "")
        if tip and not tip.startswith("__") and "pos" in obj:
            out[tip.split(":")[0]] = float(obj["pos"].split(",")[0])
    return out


@needs_dot
@pytest.mark.parametrize("level", ["edge", "node"])
def test_heads_are_drawn_in_index_order(level):
    x = positions(to_dot(crossing_circuit(), level=level))
    for layer in (0, 1):
        xs = [x[f"a{layer}.h{h}"] for h in range(4)]
        assert xs == sorted(xs), (layer, xs)


def big_circuit(n_edges_target=320, seed=0) -> Circuit:
    model = ModelRef("gpt2-shaped", "test", 12, 12, True, False, "f00d", 768)
    graph = model.graph()
    g = torch.Generator().manual_seed(seed)
    scores = torch.randn(graph.valid.shape, generator=g).abs() ** 8 * graph.valid
    cut = scores.flatten().sort(descending=True).values[n_edges_target]
    return Circuit.from_mask(model, scores > cut, scores, keep_all_scores=False, task={"name": "toy"},
                             method={"name": "eap"})


def test_necessary_edges_are_never_faded_or_dropped():
    c = big_circuit()
    weakest = min(c.edges, key=lambda e: abs(c.edges[e]))
    _, edges, _, _ = circuit_specs(c, prune=False)
    faded = [e for e in edges if e.color == WEAK and weakest in e.attrs["acdc_edge"].split(";")]
    assert faded, "the weakest edge of a 320-edge circuit should be faded by default"
    _, edges, _, _ = circuit_specs(c, prune=False, necessary={weakest})
    drawn = [e for e in edges if weakest in e.attrs["acdc_edge"].split(";")]
    assert drawn and all(e.color != WEAK for e in drawn)
    _, edges, _, _ = circuit_specs(c, prune=False, max_edges=10, necessary={weakest})
    assert any(weakest in e.attrs["acdc_edge"].split(";") for e in edges)


def test_node_level_view_merges_ports_and_sums_scores():
    c = Circuit(model=ref(), edges={"a0.h1->a1.h0<q>": 0.5, "a0.h1->a1.h0<k>": -0.2, "a0.h1->a1.h0<v>": 0.1,
                                    "input->a0.h1<v>": 1.0, "a1.h0->logits": 1.0})
    nodes, edges, _, _ = circuit_specs(c, level="node")
    assert not any(n.ports for n in nodes)
    [merged] = [e for e in edges if e.src == "a0.h1"]
    assert merged.attrs["headlabel"] == "qkv" and merged.color != WEAK
    assert set(merged.attrs["acdc_edge"].split(";")) == {"a0.h1->a1.h0<q>", "a0.h1->a1.h0<k>", "a0.h1->a1.h0<v>"}
    nodes, _, _, _ = circuit_specs(big_circuit(), level="auto")
    assert not any(n.ports for n in nodes)
    with pytest.raises(ValueError, match="level"):
        circuit_specs(c, level="neuron")


def test_diff_drawing_shows_roles():
    a = crossing_circuit()
    b = Circuit(model=ref(), edges={k: v for k, v in a.edges.items() if "a0.h3" not in k})
    d = diff(a, b, roles_a={"a0.h1": "prev-token"}, roles_b={"a0.h1": "prev-token", "a1.h0": "induction"})
    assert d.roles == {"a0.h1": "prev-token", "a1.h0": "A: - / B: induction"}
    text = d.to_dot()
    assert "prev-token" in text and "induction" in text
