import json

import pytest
import torch

from acdc_lite import ModelGraph, SmallTransformer, SmallTransformerConfig, load_model
from acdc_lite.circuit import Circuit, CircuitError, ModelRef


def make_circuit(model, seed=0):
    graph = ModelGraph.from_model(model)
    g = torch.Generator().manual_seed(seed)
    scores = torch.randn(graph.valid.shape, generator=g) * graph.valid
    return Circuit.from_mask(ModelRef.of(model), scores > 0.8, scores, task={"name": "toy"},
                             method={"name": "test", "params": {"tau": 0.1}}, metrics={"faithfulness": 0.93},
                             provenance={"seed": seed, "forward_passes": 3})


def test_save_load_round_trip_and_byte_identical(small_model, tmp_path):
    c = make_circuit(small_model)
    assert len(c.edges) > 0
    c.save(tmp_path / "a.json")
    make_circuit(small_model).save(tmp_path / "b.json")
    assert (tmp_path / "a.json").read_bytes() == (tmp_path / "b.json").read_bytes()
    back = Circuit.load(tmp_path / "a.json")
    assert back == c
    assert torch.equal(back.mask(), c.mask())
    d = json.loads((tmp_path / "a.json").read_text())
    for key in ["schema_version", "model", "task", "method", "edges", "nodes", "metrics", "provenance"]:
        assert key in d
    assert {"name", "architecture", "n_layers", "n_heads", "fingerprint"} <= set(d["model"])


def test_other_schema_version_is_refused(small_model, tmp_path):
    d = make_circuit(small_model).to_dict()
    d["schema_version"] = 99
    (tmp_path / "c.json").write_text(json.dumps(d))
    with pytest.raises(CircuitError, match="schema_version 99"):
        Circuit.load(tmp_path / "c.json")


def test_circuit_from_other_model_is_refused(small_model):
    c = make_circuit(small_model)
    c.check_model(small_model)
    torch.manual_seed(5)
    same_shape = load_model(SmallTransformer(small_model.cfg))
    with pytest.raises(CircuitError, match="weights"):
        c.check_model(same_shape)
    other_shape = load_model(SmallTransformer(SmallTransformerConfig(n_layers=1, n_heads=1, d_model=8, d_head=8, d_vocab=20, n_ctx=8)))
    with pytest.raises(CircuitError, match="layers"):
        c.check_model(other_shape)


def test_unknown_edge_is_refused(small_model):
    with pytest.raises(CircuitError, match="does not exist"):
        Circuit(ModelRef.of(small_model), {"a5.h0->logits": 1.0})


def test_save_is_atomic(small_model, tmp_path, monkeypatch):
    path = tmp_path / "c.json"
    c = make_circuit(small_model)
    c.save(path)
    before = path.read_bytes()

    def boom(*a, **k):
        raise OSError("disk full")

    monkeypatch.setattr("os.replace", boom)
    with pytest.raises(OSError):
        make_circuit(small_model, seed=1).save(path)
    assert path.read_bytes() == before
    assert list(tmp_path.iterdir()) == [path]


def test_unmeasured_scores_round_trip_as_null(small_model, tmp_path):
    """ACDC leaves edges it never tested without a score (NaN): saved as null, loaded back equal."""
    from acdc_lite import ModelGraph
    from acdc_lite.circuit import ModelRef

    graph = ModelGraph.from_model(small_model)
    scores = torch.rand(graph.valid.shape)
    scores[0] = float("nan")
    c = Circuit.from_mask(ModelRef.of(small_model), graph.full_mask(), scores)
    c.save(tmp_path / "nan.json")
    back = Circuit.load(tmp_path / "nan.json")
    assert back == c and any(v is None for v in back.edges.values())
    assert torch.equal(back.score_tensor().isnan(), c.score_tensor().isnan())


def test_version_1_files_load_and_save_as_version_2(small_model, tmp_path):
    c = make_circuit(small_model)
    old = c.to_dict()
    old["schema_version"] = 1
    old["edges"] = {k: round(v, 8) for k, v in old["edges"].items()}  # version 1 rounded scores
    old["scores"] = {k: None if v is None else round(v, 8) for k, v in old["scores"].items()}
    (tmp_path / "v1.json").write_text(json.dumps(old))
    back = Circuit.load(tmp_path / "v1.json")
    assert set(back.edges) == set(c.edges)
    assert back.edges == old["edges"]
    back.save(tmp_path / "v2.json")
    assert json.loads((tmp_path / "v2.json").read_text())["schema_version"] == 2


def test_scores_keep_full_precision_so_rankings_survive_a_file(small_model, tmp_path):
    graph = ModelGraph.from_model(small_model)
    # scores that differ only past the 8th decimal: rounding would tie them all
    scores = (1e-9 * torch.arange(graph.valid.numel(), dtype=torch.float64).reshape(graph.valid.shape)) * graph.valid
    c = Circuit.from_mask(ModelRef.of(small_model), graph.valid, scores)
    back = Circuit.load(c.save(tmp_path / "c.json"))
    assert back.scores == c.scores
    values = [v for v in back.scores.values() if v]
    assert len(set(values)) == len(values) == graph.n_edges() - 1  # all distinct (the first edge scores 0)
    assert torch.equal(back.score_tensor().nan_to_num(), c.score_tensor().nan_to_num())


def test_repr_is_short_and_says_what_the_circuit_is(small_model):
    c = make_circuit(small_model)
    text = repr(c)
    assert text == f"Circuit('{c.model.name}', method='test', edges={len(c.edges)}, nodes={len(c.nodes)}, " \
                   "faithfulness=0.930)"
    assert len(text) < 120 and len(c.to_json()) > 1000
    assert "source" not in repr(c.model)


def test_frame_and_networkx_views_agree_with_the_circuit(small_model):
    c = make_circuit(small_model)
    frame = c.to_frame()
    assert len(frame) == len(c.scores) and int(frame["in_circuit"].sum()) == len(c.edges)
    assert frame["abs_score"].is_monotonic_decreasing
    row = frame.set_index("edge").loc[next(iter(c.edges))]
    assert row["score"] == c.edges[next(iter(c.edges))] and bool(row["in_circuit"])
    g = c.to_networkx()
    assert g.number_of_edges() == len(c.edges)
    assert {float(d["score"]) for *_, d in g.edges(data=True)} == {float(v) for v in c.edges.values()}
    assert g.graph["metrics"]["faithfulness"] == 0.93


def test_notebook_svg(small_model):
    from acdc_lite.render import RenderError, require_dot

    c = make_circuit(small_model)
    try:
        require_dot()
    except RenderError:
        assert c._repr_svg_() is None  # no graphviz: notebooks fall back to the text repr
        return
    svg = c._repr_svg_()
    assert "<svg" in svg and "</svg>" in svg


@pytest.mark.parametrize("shape", [(2, 3, True, False, None), (3, 4, True, True, 2), (2, 2, False, False, 1)])
def test_from_mask_matches_the_edge_by_edge_construction(shape):
    """The vectorised from_mask (names and scores read off the valid mask in one go) gives exactly what the former
    per-edge path gave: edge names from `edges_from_mask`, each score looked up with `edge_index`."""
    n_layers, n_heads, has_mlp, parallel, n_kv = shape
    ref = ModelRef("toy", "toy", n_layers, n_heads, has_mlp, parallel, "f", 8, n_kv_heads=n_kv)
    graph = ref.graph()
    assert graph.edge_names == tuple(str(e) for e in graph.edges)
    g = torch.Generator().manual_seed(1)
    scores = torch.randn(graph.valid.shape, generator=g)
    scores[0, 0] = float("nan")  # not measured: stored as None on both paths
    mask = scores > 0.3
    c = Circuit.from_mask(ref, mask, scores)
    old_edges = {str(e): float(scores[graph.edge_index(e)]) for e in graph.edges_from_mask(mask)}
    old_scores = {str(e): float(scores[graph.edge_index(e)]) for e in graph.edges}
    old = Circuit(model=ref, edges=old_edges, scores=old_scores)
    assert c.to_json() == old.to_json()
    assert list(c.edges) == list(old.edges) and list(c.scores) == list(old.scores)
    assert torch.equal(c.mask(), (mask & graph.valid))
    unscored = Circuit.from_mask(ref, mask, keep_all_scores=True)
    assert unscored.scores is None and set(unscored.edges) == set(old_edges) and set(unscored.edges.values()) == {1.0}
    assert Circuit.from_mask(ref, mask, scores, keep_all_scores=False).scores is None


def test_circuit_edge_names_checked_by_set_and_by_parsing():
    ref = ModelRef("toy", "toy", 2, 2, True, False, "f", 8)
    assert Circuit(model=ref, edges={"a0.h01->m1": 0.5}).edges == {"a0.h01->m1": 0.5}  # another spelling still parses
    with pytest.raises(CircuitError, match=r"'a1.h0->a0.h0<q>' does not exist"):
        Circuit(model=ref, edges={"input->m0": 1.0, "a1.h0->a0.h0<q>": 0.5})
    with pytest.raises(CircuitError, match=r"'bogus' does not exist"):
        Circuit(model=ref, edges={}, scores={"bogus": 1.0})
