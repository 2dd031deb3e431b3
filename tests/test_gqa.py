"""Grouped-query attention, native in every method: tied k/v units.

The k (v) edges from one sender into the query heads of one k/v group are one unit (see `acdc_lite.graph`):
every step that adds or removes edges keeps it whole.
"""

import pytest
import torch

from acdc_lite import ModelGraph, Task, load_model, search
from acdc_lite.search import METHODS
from acdc_lite.search.common import SearchContext
from tests.architectures import BY_NAME, VOCAB


@pytest.fixture(scope="module")
def gqa():
    torch.manual_seed(0)
    return load_model(BY_NAME["llama-gqa"].build())


@pytest.fixture(scope="module")
def toy_task():
    g = torch.Generator().manual_seed(0)
    clean, corrupt = torch.randint(1, VOCAB, (6, 7), generator=g), torch.randint(1, VOCAB, (6, 7), generator=g)
    return Task("toy", clean, corrupt, torch.randint(1, VOCAB, (6, 1), generator=g), torch.randint(1, VOCAB, (6, 1), generator=g))


def test_units_group_k_and_v_edges_of_a_kv_group():
    g = ModelGraph(2, 4, n_kv_heads=2)
    assert g.kv_group == 2 and g.n_edges() == ModelGraph(2, 4).n_edges()  # edge count as without grouping
    # per sender and layer: 4 q units, 2 k units and 2 v units of 2 edges each
    kv_edges = sum(int(g.valid[:, g.head_receiver(layer, port, 0)].sum()) * 4 for layer in range(2) for port in "kv")
    assert g.n_units == g.n_edges() - kv_edges // 2
    a, b = g.edge_index("input->a1.h0<k>"), g.edge_index("input->a1.h1<k>")
    assert g.edge_units[a] == g.edge_units[b] != g.edge_units[g.edge_index("input->a1.h2<k>")]
    assert g.edge_units[g.edge_index("input->a1.h0<q>")] != g.edge_units[g.edge_index("input->a1.h1<q>")]
    one = g.mask_from_edges(["input->a1.h0<k>"])
    assert g.tie(one).sum() == 2 and not g.is_tied(one) and g.is_tied(g.tie(one))
    mqa = ModelGraph(2, 4, n_kv_heads=1)
    assert mqa.tie(mqa.mask_from_edges(["a0.h3->a1.h2<v>"])).sum() == 4


def test_dangling_pruning_keeps_a_group_whole():
    """Head a1.h1 feeds nothing, its group sibling a1.h0 does: their shared k input stays, whole."""
    from acdc_lite.graph import connected_mask

    g = ModelGraph(2, 4, has_mlp=False, n_kv_heads=2)
    kept = g.mask_from_edges(["input->a1.h0<q>", "input->a1.h0<k>", "input->a1.h1<k>", "input->a1.h1<q>",
                              "a1.h0->logits", "input->logits"])
    pruned = connected_mask(g, kept)
    names = {str(e) for e in g.edges_from_mask(pruned)}
    assert names == {"input->a1.h0<q>", "input->a1.h0<k>", "input->a1.h1<k>", "a1.h0->logits", "input->logits"}
    assert g.is_tied(pruned)


def test_selection_ranks_units_by_summed_scores():
    from acdc_lite.search import select

    g = ModelGraph(1, 2, has_mlp=False, n_kv_heads=1)
    scores = torch.zeros(g.valid.shape)
    for name, v in {"input->a0.h0<k>": 0.3, "input->a0.h1<k>": 0.3, "input->a0.h0<q>": 0.5, "input->logits": 0.1}.items():
        scores[g.edge_index(name)] = v
    order = [str(g.edges_from_mask(torch.zeros_like(g.valid).flatten().index_fill(0, i, True).view_as(g.valid))[0])
             for i in select.ranked_edges(g, scores)[:4]]
    assert order[:2] == ["input->a0.h0<k>", "input->a0.h1<k>"] and order[2] == "input->a0.h0<q>"  # 0.6 > 0.5
    assert {str(e) for e in g.edges_from_mask(select.top_n(g, scores, 1))} == {"input->a0.h0<k>", "input->a0.h1<k>"}
    assert select.threshold(g, scores, 0.55).sum() == 2


@pytest.mark.parametrize("method", METHODS)
def test_every_candidate_a_method_evaluates_is_tied(gqa, toy_task, method, monkeypatch):
    """Every mask any method patches keeps each k/v unit whole (ACDC removes a unit in one test)."""
    graph = ModelGraph.from_model(gqa)
    seen = []
    real = SearchContext.evaluate

    def spy(self, kept, **kw):
        seen.append(kept.clone())
        return real(self, kept, **kw)

    monkeypatch.setattr(SearchContext, "evaluate", spy)
    res = search(gqa, toy_task, method, progress=False)
    binary = [m for m in seen if bool(((m == 0) | (m == 1)).all())]
    assert binary and all(graph.is_tied(m) for m in binary)
    assert graph.is_tied(res.kept)
    if method in ("acdc", "exact"):  # the tied edges of a tested unit share its measured drop equally
        s = res.scores
        for layer in range(graph.n_layers):
            a = s[:, graph.head_receiver(layer, "k", 0)]
            b = s[:, graph.head_receiver(layer, "k", 1)]
            assert torch.equal(a.isnan(), b.isnan()) and torch.allclose(a.nan_to_num(0), b.nan_to_num(0))
