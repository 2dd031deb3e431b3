"""Validation: faithfulness/completeness invariants, minimality, curves and areas, baselines, stability, AUC."""

import json

import numpy as np
import pytest
import torch

from acdc_lite import ModelGraph, Task, fingerprint
from acdc_lite.circuit import Circuit, CircuitError, ModelRef
from acdc_lite.search.select import top_n
from acdc_lite.validate import (
    MIB_FRACTIONS,
    area_under,
    connected_mask,
    cpr_cmd,
    ground_truth,
    precision_recall,
    roc_auc,
    stability,
    validate,
)
from tests.conftest import VOCAB


@pytest.fixture(scope="module")
def task():
    g = torch.Generator().manual_seed(5)
    n = 8
    return Task("toy", torch.randint(0, VOCAB, (n, 6), generator=g), torch.randint(0, VOCAB, (n, 6), generator=g),
                torch.randint(0, VOCAB, (n, 1), generator=g), torch.randint(0, VOCAB, (n, 1), generator=g))


def circuit_of(model, mask, scores=None, **kw):
    return Circuit.from_mask(ModelRef.of(model), mask, scores, task={"name": "toy"}, method={"name": "test"}, **kw)


def random_scores(graph, seed=0):
    return torch.randn(graph.valid.shape, generator=torch.Generator().manual_seed(seed)) * graph.valid


FAST = dict(check_minimality=False, curve=False, random_seeds=0, progress=False)


def test_full_and_empty_circuits(small_model, task):
    graph = ModelGraph.from_model(small_model)
    full = validate(small_model, task, circuit_of(small_model, graph.full_mask()), **FAST)
    assert full.faithfulness == pytest.approx(1.0, abs=1e-5)
    assert full.completeness == pytest.approx(0.0, abs=1e-5)
    assert full.kl_circuit == pytest.approx(0.0, abs=1e-5)
    assert np.allclose([v for v in full.per_example.values if v == v], 1.0, atol=1e-4)
    empty = validate(small_model, task, circuit_of(small_model, graph.empty_mask()), **FAST)
    assert empty.faithfulness == pytest.approx(0.0, abs=1e-5)
    assert empty.completeness == pytest.approx(1.0, abs=1e-5)
    assert empty.kl_circuit == pytest.approx(empty.kl_empty)


def test_report_is_json_and_inputs_untouched(small_model, task):
    graph = ModelGraph.from_model(small_model)
    scores = random_scores(graph)
    circuit = circuit_of(small_model, scores > 0.5, scores)
    before = (circuit.to_json(), task.clean.clone(), fingerprint(small_model))
    other = circuit_of(small_model, scores > 0.0, scores)
    report = validate(small_model, task, circuit, reference=other, search=lambda t: circuit, n_bootstrap=2,
                      random_seeds=2, max_minimality_edges=6, progress=False)
    text = json.dumps(report.to_dict(), allow_nan=False)
    assert json.loads(text)["faithfulness"] == pytest.approx(report.faithfulness)
    assert 0 < report.n_edges < report.n_edges_total
    assert report.minimality.n_checked == 6
    assert report.stability.edge_jaccard_mean == 1.0
    assert report.ground_truth.edges.precision == 1.0
    assert "faithfulness" in report.summary()
    assert (circuit.to_json(), fingerprint(small_model)) == (before[0], before[2])
    assert torch.equal(task.clean, before[1])


def test_minimality_finds_a_useless_edge(small_model, task):
    graph = ModelGraph.from_model(small_model)
    core = connected_mask(graph, random_scores(graph, 1) > 0.3)
    # an edge into a node with no outgoing circuit edge carries nothing to the logits
    nodes_out = core.any(1)
    dead = next(r for r, (n, _) in enumerate(graph.receivers)
                if n in graph.senders and not nodes_out[graph.senders.index(n)] and graph.valid[0, r])
    mask = core.clone()
    mask[0, dead] = True
    report = validate(small_model, task, circuit_of(small_model, mask), curve=False, random_seeds=0, progress=False,
                      max_minimality_edges=1000, candidates=3)
    dead_name = f"input->{graph.receivers[dead][0]}" + (f"<{graph.receivers[dead][1].value}>"
                                                       if graph.receivers[dead][0].kind.value == "head" else "")
    assert dead_name in report.minimality.useless_edges
    assert report.minimality.edge_necessity[dead_name] == pytest.approx(0.0, abs=1e-6)
    # batched candidates with layer reuse agree with one plain evaluation
    from acdc_lite.patching import EdgePatcher, ablated_outputs

    name, value = next((k, v) for k, v in report.minimality.edge_necessity.items() if k != dead_name)
    patcher = EdgePatcher(small_model, graph, task.clean, ablated_outputs(small_model, graph, task.corrupt))
    metric = task.metric()
    without = mask.clone()
    without[graph.edge_index(name)] = False
    m_c, m_w, m_f, m_e = (float(patcher.evaluate(m, metric)) for m in (mask, without, graph.full_mask(), graph.empty_mask()))
    assert value == pytest.approx((m_c - m_w) / (m_f - m_e), abs=1e-4)


def test_areas_match_hand_computation():
    assert area_under([0, 0.5, 1], [0, 0.5, 1]) == pytest.approx(0.5)
    cpr, cmd = cpr_cmd([0.0, 0.1, 0.5, 1.0], [0.2, 0.6, 0.9, 1.0])
    # trapezoids: 0.1*(0.2+0.6)/2 + 0.4*(0.6+0.9)/2 + 0.5*(0.9+1.0)/2
    assert cpr == pytest.approx(0.04 + 0.3 + 0.475)
    # |1 - f|: 0.8, 0.4, 0.1, 0.0
    assert cmd == pytest.approx(0.1 * 1.2 / 2 + 0.4 * 0.5 / 2 + 0.5 * 0.1 / 2)
    cpr, cmd = cpr_cmd(MIB_FRACTIONS, [1.0] * len(MIB_FRACTIONS))
    assert (cpr, cmd) == (pytest.approx(0.999), pytest.approx(0.0))
    with pytest.raises(ValueError):
        area_under([0.1], [1.0])


def test_curve_on_a_model(small_model, task):
    graph = ModelGraph.from_model(small_model)
    scores = random_scores(graph, 2)
    report = validate(small_model, task, circuit_of(small_model, scores > 1.0, scores), check_minimality=False,
                      random_seeds=0, progress=False)
    curve = report.curve
    assert curve.fractions == list(MIB_FRACTIONS)
    assert curve.n_requested[-1] == graph.n_edges() and curve.n_requested[0] == 0
    assert curve.faithfulness[0] == pytest.approx(0.0, abs=1e-5) and curve.faithfulness[-1] == pytest.approx(1.0, abs=1e-5)
    assert curve.cpr == pytest.approx(area_under(curve.fractions, curve.faithfulness))
    assert report.curve_abs.absolute and not curve.absolute
    assert report.cmd == report.curve_abs.cmd


def test_random_baseline(small_model, task):
    graph = ModelGraph.from_model(small_model)
    report = validate(small_model, task, circuit_of(small_model, random_scores(graph) > 0.5), check_minimality=False,
                      curve=False, random_seeds=3, progress=False)
    r = report.random_baseline
    assert r.n_seeds == 3 and len(r.faithfulness) == 3 and r.faithfulness_std >= 0
    assert r.n_edges == report.n_edges


def test_roc_auc():
    assert roc_auc([3, 2, 1, 0], [1, 1, 0, 0]) == 1.0
    assert roc_auc([0, 1, 2, 3], [1, 1, 0, 0]) == 0.0
    assert roc_auc([1, 1, 0], [1, 0, 0]) == pytest.approx(0.75)  # tie counted as half
    assert roc_auc([5, 5, 5, 5], [1, 0, 1, 0]) == pytest.approx(0.5)
    assert roc_auc([np.nan, 1.0], [0, 1]) == 1.0  # NaN ranks last
    rng = np.random.default_rng(0)
    assert abs(roc_auc(rng.normal(size=4000), rng.random(4000) < 0.3) - 0.5) < 0.03
    assert np.isnan(roc_auc([1, 2], [1, 1]))


def test_ground_truth_auc_and_precision_recall(small_model):
    graph = ModelGraph.from_model(small_model)
    reference = circuit_of(small_model, connected_mask(graph, random_scores(graph, 3) > 0.8))
    perfect = reference.mask().float()  # ground truth ranked first
    gt = ground_truth(reference, perfect)
    assert gt.edge_auc == 1.0 and gt.node_auc == 1.0
    noisy = torch.randn(graph.valid.shape, generator=torch.Generator().manual_seed(9))
    assert 0.2 < ground_truth(reference, noisy).edge_auc < 0.8
    half = dict(list(reference.edges.items())[: len(reference.edges) // 2])
    pr = ground_truth(reference, circuit=Circuit(reference.model, half)).edges
    assert pr.precision == 1.0 and pr.recall == pytest.approx(len(half) / len(reference.edges))
    assert precision_recall({"a", "b"}, {"b", "c"}).f1 == pytest.approx(0.5)


def test_stability_lists_unstable_edges(small_model, task):
    graph = ModelGraph.from_model(small_model)
    scores = random_scores(graph, 4)
    ref = ModelRef.of(small_model)

    def search(t):  # the edge set's size depends on which examples were drawn
        k = 10 + int(t.clean.sum()) % 10
        return Circuit.from_mask(ref, top_n(graph, scores, k, absolute=False), scores)

    s = stability(task, search, n_resamples=4, seed=1)
    assert s.n_resamples == 4 and len(s.n_edges) == 4
    assert 0 < s.edge_jaccard_min <= s.edge_jaccard_mean <= 1
    assert all(0 < f < 1 for f in s.unstable_edges.values())
    assert len(s.unstable_edges) > 0
    with pytest.raises(ValueError):
        stability(task, search, n_resamples=1)


def test_refuses_other_weights(small_model, task):
    graph = ModelGraph.from_model(small_model)
    foreign = Circuit(ModelRef(**{**ModelRef.of(small_model).__dict__, "fingerprint": "gpt2-hub"}),
                      {str(e): 1.0 for e in graph.edges[:3]})
    with pytest.raises(CircuitError, match="weights"):
        validate(small_model, task, foreign, **FAST)
    assert validate(small_model, task, foreign, check_weights=False, **FAST).n_edges == 3


def test_grouped_query_attention_model(task):
    from acdc_lite import load_model
    from tests.conftest import _llama_gqa

    torch.manual_seed(0)
    model = load_model(_llama_gqa())
    graph = ModelGraph.from_model(model)
    mask = connected_mask(graph, graph.tie(random_scores(graph, 5) > 0.8))
    scores = random_scores(graph, 6)
    report = validate(model, task, circuit_of(model, mask, scores), random_seeds=2, max_minimality_edges=8, progress=False)
    # 8 units checked; a tied k/v unit counts its 2 edges, each with the unit's necessity
    assert 8 < report.minimality.n_checked <= 16 and len(report.curve.faithfulness) == len(MIB_FRACTIONS)
    necessity = report.minimality.edge_necessity
    tied = [e for e in necessity if e.endswith("<k>") or e.endswith("<v>")]
    for e in tied:
        head = int(e.split("->")[1].split(".h")[1][0])
        sibling = e.replace(f".h{head}<", f".h{head ^ 1}<")
        assert necessity[sibling] == necessity[e]
    assert report.curve.faithfulness[-1] == pytest.approx(1.0, abs=1e-4)


def test_validator_is_one_frozen_setting_and_reads_the_circuits_own(small_model, task):
    """`Validator(...).run` is `validate`; by default it measures on the circuit's recorded metric and batch size."""
    import dataclasses

    from acdc_lite.validate import Validator

    graph = ModelGraph.from_model(small_model)
    scores = random_scores(graph, 3)
    circuit = circuit_of(small_model, connected_mask(graph, scores > 0.4), scores)
    validator = Validator(**FAST)
    with pytest.raises(dataclasses.FrozenInstanceError):
        validator.metric = "kl"
    a = validator.run(small_model, task, circuit)
    b = validate(small_model, task, circuit, **FAST)
    assert (a.faithfulness, a.completeness, a.metric) == (b.faithfulness, b.completeness, b.metric) == (
        a.faithfulness, a.completeness, task.default_metric)
    on_kl = dataclasses.replace(circuit, method={"name": "acdc", "metric": "kl", "batch_size": 3})
    report = validator.run(small_model, task, on_kl)
    assert report.metric == "kl" and report.notes == []
    assert report.metric_full == pytest.approx(0.0, abs=1e-6)  # -KL of the full model to itself
    other = Validator(metric="logit_diff", **FAST).run(small_model, task, on_kl)
    assert other.metric == "logit_diff" and other.notes == ["validated on logit_diff; the circuit was found on kl"]
    assert other.faithfulness == pytest.approx(a.faithfulness, abs=1e-5)
