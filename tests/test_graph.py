import pytest
import torch

from acdc_lite import Edge, ModelGraph, Node, NodeKind, Port


def eap_ig_formula(n_layers, n_heads):
    L, H = n_layers, n_heads
    return 3 * H * L + (3 * H + 1) * (H + 1) * L * (L - 1) // 2 + 2 * L * (H + 1) + 1


def test_gpt2_small_edge_counts():
    g = ModelGraph(12, 12)
    assert g.n_edges() == 32491
    assert g.n_edges(include_qkv_to_head=True) == 32923


@pytest.mark.parametrize("n_layers,n_heads", [(1, 1), (2, 8), (4, 8), (3, 5), (6, 2)])
def test_formula_holds_for_other_shapes(n_layers, n_heads):
    assert ModelGraph(n_layers, n_heads).n_edges() == eap_ig_formula(n_layers, n_heads)


@pytest.mark.parametrize("n_layers,n_heads,expected", [(2, 8, 257), (4, 8, 1281)])
def test_attention_only_counts_match_acdc(n_layers, n_heads, expected):
    # ACDC's addition-edge counts for redwood_attn_2l and attn-only-4l (known_circuits.json)
    g = ModelGraph(n_layers, n_heads, has_mlp=False)
    assert g.n_edges() == expected
    assert not any(n.kind is NodeKind.MLP for n in g.nodes)


def test_parallel_blocks_drop_same_layer_head_to_mlp_edges():
    seq, par = ModelGraph(3, 4), ModelGraph(3, 4, parallel_attn_mlp=True)
    assert seq.n_edges() - par.n_edges() == 3 * 4
    with pytest.raises(ValueError):
        par.edge_index("a1.h0->m1")
    seq.edge_index("a1.h0->m1")


def test_names_round_trip_through_parse():
    g = ModelGraph(3, 2)
    for node in g.nodes:
        assert Node.parse(str(node)) == node
    for edge in g.edges:
        assert Edge.parse(str(edge)) == edge
    assert str(Edge(Node.parse("a0.h1"), Node.parse("a2.h3"), Port.Q)) == "a0.h1->a2.h3<q>"
    assert str(Edge.parse("input->m0")) == "input->m0"


@pytest.mark.parametrize("bad", ["a0.h1->a2.h3", "m1->logits<q>", "x->y", "a0h1->m0", ""])
def test_bad_names_are_rejected(bad):
    with pytest.raises(ValueError):
        Edge.parse(bad)


def test_edges_only_flow_forward():
    g = ModelGraph(3, 2)
    with pytest.raises(ValueError):
        g.edge_index("a1.h0->a0.h0<k>")
    with pytest.raises(ValueError):
        g.edge_index("a1.h0->a1.h1<q>")  # same layer heads do not feed each other
    g.edge_index("a0.h0->a1.h1<v>")


def test_mask_round_trip_and_networkx():
    g = ModelGraph(2, 2)
    chosen = [g.edges[i] for i in torch.randperm(g.n_edges(), generator=torch.Generator().manual_seed(0))[:10]]
    mask = g.mask_from_edges(chosen)
    assert sorted(g.edges_from_mask(mask)) == sorted(chosen)
    nxg = g.to_networkx(mask)
    assert nxg.number_of_edges() == 10
    assert g.to_networkx().number_of_edges() == g.n_edges()
