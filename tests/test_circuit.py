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
