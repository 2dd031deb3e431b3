"""Grouped-query attention, native in every method: tied k/v units, and a trained GQA induction model.

The k (v) edges from one sender into the query heads of one k/v group are one unit (see `acdc_lite.graph`):
every step that adds or removes edges keeps it whole. The `induction_gqa` fixture trains a 2-layer Llama with
4 query heads sharing 2 k/v heads (d_model 48, 64 tokens, so d_vocab != d_model) on the zoo's induction data
for GQA_STEPS steps, single-threaded (seed 0: previous-token heads a0.h3 and a0.h2, four induction heads in
layer 1, accuracy 0.97), and every method must find those heads.
"""

import copy

import pytest
import torch

from acdc_lite import ModelGraph, Task, load_model, load_task, search
from acdc_lite.patching import EdgePatcher
from acdc_lite.search import METHODS
from acdc_lite.validate import validate
from tests.architectures import BY_NAME, VOCAB
from tests.test_architectures import spearman

GQA_STEPS = 800  # training steps of the fixture (seed 0)


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
    """Every mask any method patches, on all prompts or a few (selection's sketch), keeps each k/v unit whole
    (ACDC removes a unit in one test)."""
    graph = ModelGraph.from_model(gqa)
    seen = []
    real = EdgePatcher.evaluate

    def spy(self, kept, *args, **kw):
        seen.extend(kept.clone() if kept.dim() == 3 else [kept.clone()])
        return real(self, kept, *args, **kw)

    monkeypatch.setattr(EdgePatcher, "evaluate", spy)
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


def test_circuit_file_and_drawing_say_kv_edges_are_tied(gqa, toy_task, tmp_path):
    from acdc_lite import Circuit, discover
    from acdc_lite.render import to_dot

    circuit = discover(gqa, toy_task, "eap", top_n=30, progress=False)
    again = Circuit.load(circuit.save(tmp_path / "c.json"))
    assert again.model.n_kv_heads == 2 and again.graph == ModelGraph.from_model(gqa)
    assert again.to_dict()["kv_grouping"] == {**circuit.to_dict()["kv_grouping"], "group_size": 2, "n_kv_heads": 2}
    n_kv = sum(name.endswith(("<k>", "<v>")) for name in circuit.edges)
    assert n_kv % 2 == 0 and n_kv > 0
    dot = to_dot(circuit)
    assert "{h0,h1} {h2,h3} share one k and one v input" in dot and f"the {n_kv} k/v edges drawn are {n_kv // 2} tied units" in dot


# ---- a trained GQA induction model -----------------------------------------------------------------------
@pytest.fixture(scope="module")
def induction_gqa():
    """(hooked model, induction task, {"previous-token": [...], "induction": [...]}) after GQA_STEPS steps."""
    from transformers import LlamaConfig, LlamaForCausalLM

    from acdc_lite.zoo import measure
    from acdc_lite.zoo.data import SegmentRecipe, repeated_random
    from acdc_lite.zoo.train import N_TOKENS, Recipe, fit

    recipe = Recipe(description="GQA induction fixture", builder="llama", arch={}, steps=GQA_STEPS, seq_len=32,
                    data=SegmentRecipe(min_seg=4, max_seg=10, p_gap=0.5, max_gap=12))
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        torch.manual_seed(0)
        hf = LlamaForCausalLM(LlamaConfig(vocab_size=N_TOKENS, hidden_size=48, intermediate_size=96, num_hidden_layers=2,
                                          num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=32,
                                          bos_token_id=0, eos_token_id=0, tie_word_embeddings=False))
        fit(hf, recipe, seed=0)
    finally:
        torch.set_num_threads(threads)
    model = load_model(copy.deepcopy(hf))
    task = load_task("induction", model, n_examples=32)
    reps = repeated_random(50, 10, N_TOKENS, seed=1)
    truth = measure.classify_heads(measure.prev_token_scores(model, reps), measure.induction_scores(model, reps, 10),
                                   measure.head_ablation_effects(model, task))
    heads = {cls: sorted(t["head"] for t in truth if t["class"] == cls) for cls in ("previous-token", "induction")}
    return model, task, heads


def test_fixture_learned_induction_with_shared_kv(induction_gqa):
    model, task, heads = induction_gqa
    from acdc_lite import model_info
    from acdc_lite.zoo import measure

    info = model_info(model)
    assert (info.n_heads, info.n_kv_heads, info.d_model, info.d_vocab) == (4, 2, 48, 64)
    assert measure.task_metrics(model, task)["accuracy"] >= 0.9
    assert heads["previous-token"] and all(h.startswith("a0.") for h in heads["previous-token"]), heads
    assert heads["induction"] and all(h.startswith("a1.") for h in heads["induction"]), heads


@pytest.mark.parametrize("method", METHODS)
def test_every_method_finds_the_previous_token_and_induction_heads(induction_gqa, method):
    model, task, heads = induction_gqa
    res = search(model, task, method, progress=False)
    graph = ModelGraph.from_model(model)
    nodes = {str(e.src) for e in graph.edges_from_mask(res.kept)}
    missing = [h for h in heads["previous-token"] + heads["induction"] if h not in nodes]
    assert not missing, (method, missing, sorted(nodes))
    assert graph.is_tied(res.kept) and res.faithfulness >= 0.8, (method, res.faithfulness)


def test_attribution_ranks_edges_like_exact_on_the_trained_model(induction_gqa):
    model, task, _ = induction_gqa
    """|EAP-IG| against |exact patching| over every edge (selection ranks by |score|): 0.93 at seed 0."""
    exact = search(model, task, "exact", top_n=1, progress=False).scores
    rho = spearman(search(model, task, "eap-ig", top_n=1, progress=False).scores.abs(), exact.abs())
    assert rho >= 0.8, rho


def test_validation_on_the_trained_model_is_tied(induction_gqa):
    from acdc_lite import discover

    model, task, _ = induction_gqa
    circuit = discover(model, task, "eap-ig", progress=False)
    report = validate(model, task, circuit, random_seeds=2, max_minimality_edges=16, progress=False)
    assert report.curve.faithfulness[-1] == pytest.approx(1.0, abs=1e-4)
    assert report.faithfulness == pytest.approx(circuit.metrics["faithfulness"], abs=1e-4)
    assert circuit.to_dict()["kv_grouping"]["group_size"] == 2


@pytest.mark.parametrize("family", ["llama-gqa", "llama-mqa"])
def test_a_kv_units_gradient_is_the_derivative_of_its_shared_input(family):
    """The k (v) edges from one sender into a group's heads move the group's one input together: the sum of their
    gradients is the derivative of the metric along that unit (a central difference), with 2 k/v heads and with 1."""
    import transformers

    from acdc_lite.graph import Port
    from acdc_lite.patching import ablated_outputs

    torch.manual_seed(0)  # larger weights than HF's 0.02, so that one unit moves the metric well above float noise
    config = transformers.LlamaConfig(**{**BY_NAME[family].kwargs, "initializer_range": 0.2})
    model = load_model(transformers.LlamaForCausalLM(config).eval())
    graph = ModelGraph.from_model(model)
    g = torch.Generator().manual_seed(0)
    clean, corrupt = torch.randint(1, VOCAB, (4, 6), generator=g), torch.randint(1, VOCAB, (4, 6), generator=g)
    patcher = EdgePatcher(model, graph, clean, ablated_outputs(model, graph, corrupt))

    def metric(logits, idx):
        return logits[:, -1, 3] - logits[:, -1, 5]

    _, grad = patcher.mask_gradient(metric)
    for port in (Port.K, Port.V):
        cols = [graph.head_receiver(1, port, h) for h in range(graph.kv_group)]  # the first group's heads
        sender = int(grad[:, cols].sum(1).abs().argmax())  # the unit that moves the metric most
        unit = torch.zeros(graph.valid.shape)
        unit[sender, cols] = 1.0
        eps = 1e-2
        up, down = (float(patcher.evaluate(graph.valid.float() + e * unit, metric)[0]) for e in (eps, -eps))
        derivative = (up - down) / (2 * eps)
        assert abs(derivative) > 1e-2
        assert float(grad[sender, cols].sum()) == pytest.approx(derivative, rel=2e-2)
