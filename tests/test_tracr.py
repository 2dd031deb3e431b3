"""tracr programs: exact conversion, ground-truth circuits, tasks (skipped when tracr is not installed)."""

import json
from pathlib import Path

import pytest
import torch

pytest.importorskip("tracr", reason="tracr is not installed (pip install 'acdc-lite[tracr]')")

from acdc_lite import Ablation, Circuit, EdgePatcher, ModelGraph, ablated_outputs, fingerprint  # noqa: E402
from acdc_lite import tracr as T  # noqa: E402
from acdc_lite.graph import Edge, NodeKind  # noqa: E402

CIRCUITS = Path(__file__).resolve().parents[1] / "circuits" / "tracr"

# the ACDC paper's zero-ablation ground truths, in our convention (embed and pos merged into `input`)
ACDC_REVERSE = {"a3.h0->logits", "m2->a3.h0<q>", "input->a3.h0<k>", "input->a3.h0<v>", "m1->m2", "m0->m1", "input->m1",
                "a0.h0->m0", "input->m0", "input->a0.h0<v>"}
ACDC_PROPORTION = {"a1.h0->logits", "input->a1.h0<q>", "input->a1.h0<k>", "m0->a1.h0<v>", "input->m0"}


@pytest.fixture(scope="module")
def programs():
    return {}  # name -> compiled program, filled on first use (compiling takes 2-5 s each)


def get(programs, name):
    if name not in programs:
        programs[name] = T.load_program(name)
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
