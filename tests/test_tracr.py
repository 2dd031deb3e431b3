"""tracr programs: exact conversion, ground-truth circuits, tasks (skipped when tracr is not installed)."""

import json
import math
import sys
from pathlib import Path

import pandas as pd
import pytest
import torch

pytest.importorskip("tracr", reason="tracr is not installed (pip install 'acdc-lite[tracr]')")

from acdc_lite import Ablation, Circuit, EdgePatcher, ModelGraph, ablated_outputs, fingerprint  # noqa: E402
from acdc_lite import tracr as T  # noqa: E402
from acdc_lite.graph import Edge, NodeKind  # noqa: E402
from acdc_lite.models import ModelLoadError, load_model  # noqa: E402
from acdc_lite.search import METHODS, search  # noqa: E402
from acdc_lite.task import TaskError, load_task  # noqa: E402
from acdc_lite.transformer import SmallTransformer  # noqa: E402

CIRCUITS = Path(__file__).resolve().parents[1] / "circuits" / "tracr"
METHODS_CSV = Path(__file__).resolve().parents[1] / "benchmarks" / "tracr_methods.csv"

# the ACDC paper's zero-ablation ground truths, in our convention (embed and pos merged into `input`)
ACDC_REVERSE = {"a3.h0->logits", "m2->a3.h0<q>", "input->a3.h0<k>", "input->a3.h0<v>", "m1->m2", "m0->m1", "input->m1",
                "a0.h0->m0", "input->m0", "input->a0.h0<v>"}
ACDC_PROPORTION = {"a1.h0->logits", "input->a1.h0<q>", "input->a1.h0<k>", "m0->a1.h0<v>", "input->m0"}


@pytest.fixture(scope="module")
def programs():
    return {}  # name -> compiled program, filled on first use (compiling takes 2-5 s each)


def get(programs, name):
    if name not in programs:
        programs[name] = T.program_by_name(name)  # compiled once per process, shared with load_model/load_task
    return programs[name]


@pytest.fixture(params=list(T.PROGRAMS))
def prog(request, programs):
    return get(programs, request.param)


def test_registry_has_suite():
    assert {"reverse", "proportion", "sort", "hist"} <= set(T.PROGRAMS) and len(T.PROGRAMS) >= 5


def test_converted_model_equals_tracr(prog):
    result = T.compare_with_tracr(prog)  # every input of the task length
    assert result["n_inputs"] == len(prog.all_inputs()) > 0
    assert result["decoded_equal"], result
    assert result["max_abs_residual"] < 1e-4 and result["max_abs_output"] < 1e-4, result


def test_ground_truth_edges_are_graph_edges_and_connected(prog):
    graph = ModelGraph.from_model(prog.model)
    edges = [Edge.parse(e) for e in prog.ground_truth.edges]
    assert edges and all(graph.valid[graph.edge_index(e)] for e in edges)
    assert any(e.dst.kind is NodeKind.LOGITS for e in edges)
    receivers = {e.dst for e in edges}
    senders = {e.src for e in edges}
    assert all(s.kind is NodeKind.INPUT or s in receivers for s in senders)  # every sender computes from something
    assert all(r.kind is NodeKind.LOGITS or r in senders for r in receivers)  # and feeds something


def test_full_circuit_reproduces_model(prog):
    task = prog.make_task(8, seed=1)
    graph = ModelGraph.from_model(prog.model)
    patcher = EdgePatcher(prog.model, graph, task.clean, ablated_outputs(prog.model, graph, task.corrupt))
    with torch.no_grad():
        assert (patcher.logits(graph.full_mask())[0] - prog.model(task.clean)).abs().max() < 1e-5


@pytest.mark.parametrize("name", ["reverse", "proportion"])
def test_ground_truth_is_faithful_under_zero_ablation(name, programs):
    prog = get(programs, name)
    task = prog.make_task()
    graph = ModelGraph.from_model(prog.model)
    patcher = EdgePatcher(prog.model, graph, task.clean, ablated_outputs(prog.model, graph, task.corrupt, Ablation.ZERO))
    l2 = task.metric("l2", prog.model)
    assert abs(float(patcher.evaluate(prog.ground_truth.mask(), l2)[0])) < 1e-8
    assert float(patcher.evaluate(graph.empty_mask(), l2)[0]) < -0.1  # the empty circuit is far off
    if prog.categorical:
        assert float(patcher.evaluate(prog.ground_truth.mask(), task.metric("match"))[0]) == 1.0


def test_comparison_with_acdc_paper(programs):
    reverse = get(programs, "reverse")
    proportion = get(programs, "proportion")
    assert set(proportion.ground_truth.edges) == ACDC_PROPORTION
    assert len(T.acdc_convention(proportion.directions)) == 10  # the paper's count
    extra = set(reverse.ground_truth.edges) - ACDC_REVERSE
    assert ACDC_REVERSE <= set(reverse.ground_truth.edges)
    assert extra == {"input->a0.h0<q>", "input->a0.h0<k>", "input->a3.h0<q>"}  # explained in benchmarks/tracr_ground_truth.md


def test_committed_circuits_are_current(prog):
    saved = Circuit.load(CIRCUITS / f"{prog.name}.json")
    assert saved.method["name"] == T.METHOD
    assert saved.edges == prog.ground_truth.edges and saved.method == prog.ground_truth.method
    saved.check_model(prog.model)  # same weights: the compiled model is deterministic


def test_compilation_is_deterministic():
    first, second = T.load_program("hist"), T.load_program("hist")  # different RASP label ids
    assert fingerprint(first.model) == fingerprint(second.model)


def test_reverse_task_follows_acdc(programs):
    prog = get(programs, "reverse")
    task = prog.make_task()
    assert len(task) == 6 and len({tuple(r) for r in task.clean.tolist()}) == 6
    assert (task.clean[:, 0] == prog.vocab.index("BOS")).all()
    assert not (task.clean == task.corrupt).all(dim=1).any()  # a permutation of the batch without fixed points
    sub = task.subset(torch.tensor([2, 0]))
    metric = sub.metric("l2", prog.model)
    with torch.no_grad():
        assert metric(prog.model(sub.clean), torch.arange(2)).abs().max() == 0
        assert (metric(prog.model(sub.corrupt), torch.arange(2)) < 0).all()
    assert json.dumps(task.describe())


# ---- by name ------------------------------------------------------------------------------------------
@pytest.mark.parametrize("name", list(T.PROGRAMS))
def test_load_model_and_task_by_name(name, programs):
    prog = get(programs, name)
    model = load_model(f"tracr-{name}")
    assert isinstance(model, SmallTransformer) and model is not prog.model  # a copy: callers may move it
    assert fingerprint(model) == fingerprint(prog.model)
    task = load_task(f"tracr-{name}", model)  # load_task's default n_examples (64), capped at the distinct inputs
    assert task.name == f"tracr-{name}" and task.default_metric == "l2"
    assert len(task) == min(64, len(prog.all_inputs()))
    assert len({tuple(r) for r in task.clean.tolist()}) == len(task)
    assert load_task(f"tracr-{name}", model, metric="proj").default_metric == "proj"


def test_by_name_is_cached_and_errors_are_clear(programs):
    get(programs, "reverse")
    assert T.program_by_name("tracr-reverse") is T.program_by_name("reverse")  # compiled once per process
    assert len(load_task("tracr-reverse", load_model("tracr-reverse"))) == 6  # the ACDC paper's 6 permutations
    with pytest.raises(ModelLoadError, match="tracr-reverse, tracr-proportion"):
        load_model("tracr-nope")
    with pytest.raises(TaskError, match="unknown tracr program"):
        load_task("tracr-nope", load_model("tracr-reverse"))
    with pytest.raises(TaskError, match=r"load_model\('tracr-proportion'\)"):
        load_task("tracr-proportion", load_model("tracr-reverse"))


def test_missing_tracr_says_how_to_install(monkeypatch, programs):
    model = get(programs, "reverse").model  # compiled and cached: the error must come all the same
    monkeypatch.setitem(sys.modules, "tracr.rasp", None)  # as if tracr were not installed
    with pytest.raises(ModelLoadError, match=r"pip install 'acdc-lite\[tracr\]'"):
        load_model("tracr-reverse")
    with pytest.raises(TaskError, match=r"pip install 'acdc-lite\[tracr\]'"):
        load_task("tracr-reverse", model)


# ---- benchmark ----------------------------------------------------------------------------------------
def test_sweep_auc_matches_acdc_paper():
    # the ACDC paper's pessimistic AUC on its own examples (points plus (0, 0) and (1, 1))
    assert T.sweep_auc([(0.25, 0.25)]) == pytest.approx(0.25 * 0.75)
    assert T.sweep_auc([(0.25, 0.25), (0.5, 0.5)]) == pytest.approx(5 / 16)
    assert T.sweep_auc([(0.25, 0.25), (0.75, 0.5)]) == pytest.approx(4 / 16)
    assert T.sweep_auc([(0.0, 1.0)]) == 1.0 and T.sweep_auc([]) == 0.0
    assert T.sweep_auc([(0.5, 0.25), (0.25, 0.5)]) == pytest.approx(0.75 * 0.5)  # dominated points change nothing


def test_benchmark_on_proportion(programs):
    get(programs, "proportion")
    rows = T.benchmark(["proportion"], ["acdc", "exact", "eap", "hisp"])
    assert [r["method"] for r in rows] == ["acdc", "exact", "eap", "hisp"]
    for r in rows:
        assert r["graph_edges"] == 23 and r["gt_edges"] == 5 and r["ablation"] == "zero"
        for key in ("roc_auc", "roc_auc_scores", "roc_auc_tol", "roc_auc_binary", "node_roc_auc"):
            assert 0.0 <= r[key] <= 1.0, (r["method"], key, r[key])
        assert r["forward_passes"] > 0 and r["seconds"] > 0
    by = {r["method"]: r for r in rows}
    assert by["eap"]["metric"] == "proj" and by["hisp"]["metric"] == "proj" and by["acdc"]["metric"] == "l2"
    assert by["eap"]["backward_passes"] >= 1 and by["acdc"]["backward_passes"] == 0
    # Every ground-truth edge of proportion moves l2 when removed and no other edge does (tracr_ground_truth.md),
    # so ACDC finds exactly the ground truth and its tau sweep, like exact patching's ranking, separates perfectly.
    for method in ("acdc", "exact"):
        r = by[method]
        assert r["edges"] == 5 and r["edge_precision"] == r["edge_recall"] == 1.0
        assert r["node_precision"] == r["node_recall"] == 1.0 and r["faithfulness"] == pytest.approx(1.0)
        assert r["roc_auc"] == 1.0
    assert by["acdc"]["roc_from"].startswith("tau sweep") and by["acdc"]["sweep_runs"] == len(T.SWEEP_FRACTIONS)
    assert by["hisp"]["roc_from"].startswith("node scores")


def test_edge_scores_from_nodes_rank_edges_between_kept_nodes(programs):
    graph = ModelGraph.from_model(get(programs, "proportion").model)
    scores = torch.full(graph.valid.shape, float("nan"))
    scores[graph.head_sender(0, 0)] = 0.1
    scores[graph.mlp_sender(0)] = -2.0
    scores[graph.head_sender(1, 0)] = 1.0
    edge = T.edge_scores_from_nodes(graph, scores.masked_fill(~graph.valid, float("nan")))
    assert edge[graph.edge_index("input->logits")] == math.inf
    assert edge[graph.edge_index("m0->a1.h0<v>")] == 1.0  # min(|-2|, 1)
    assert edge[graph.edge_index("a0.h0->m0")] == pytest.approx(0.1)
    assert edge[graph.edge_index("input->m1")] == math.inf  # m1 has no score: an unscored node is always kept


@pytest.mark.slow
def test_committed_methods_table_is_current():
    rows = pd.DataFrame(T.benchmark())
    saved = pd.read_csv(METHODS_CSV)
    assert list(saved["program"]) == list(rows["program"]) and list(saved["method"]) == list(rows["method"])
    for key in ("edges", "roc_auc", "roc_auc_scores", "roc_auc_tol", "roc_auc_binary", "edge_precision", "edge_recall"):
        assert saved[key].to_numpy() == pytest.approx(rows[key].to_numpy(), abs=1e-5, nan_ok=True), key
    assert (rows[rows["method"] == "acdc"]["edge_precision"] == 1.0).all()  # ACDC never keeps a non-ground-truth edge


@pytest.mark.parametrize("method", [m for m, spec in METHODS.items() if spec.gradient])
def test_declared_clean_gradient_matches_behaviour_on_a_flat_metric(method):
    """On tracr-hist with l2 (zero gradient at the clean model) exactly the clean-gradient methods score all 0."""
    prog = T.program_by_name("hist")
    spec = METHODS[method]
    opts = {"top_n": 3} if "top_n" in spec.option_names() else {"tau": 0.0}
    result = search(prog.model, prog.make_task(), method, metric="l2", ablation="zero", progress=False, **opts)
    scored = result.scores[torch.isfinite(result.scores)]
    assert bool((scored == 0).all()) == spec.clean_gradient
