"""Exchange formats: lossless round trips, and schema checks written from the other tools' loaders.

Circuits are built straight from a ModelRef (no model needed) on several graph shapes: with MLPs,
attention-only, parallel attention/MLP, and GPT-2 small's 12 x 12 for MIB.
"""

import json
import math

import pytest
import torch

from acdc_lite.circuit import Circuit, CircuitError, ModelRef
from acdc_lite.graph import Edge, NodeKind
from acdc_lite.interop import FORMATS, export_circuit, export_mib, import_circuit, to_graph_json, to_prune_scores

SHAPES = {
    "mlp": (2, 3, True, False),
    "attn-only": (3, 2, False, False),
    "parallel": (2, 2, True, True),
}


def ref(n_layers, n_heads, has_mlp=True, parallel=False, d_model=16, name="toy"):
    return ModelRef(name=name, architecture="test", n_layers=n_layers, n_heads=n_heads, has_mlp=has_mlp,
                    parallel_attn_mlp=parallel, fingerprint="f00d", d_model=d_model)


def scored(model: ModelRef, seed=0, ranking=True) -> Circuit:
    graph = model.graph()
    g = torch.Generator().manual_seed(seed)
    scores = torch.randn(graph.valid.shape, generator=g, dtype=torch.float64) * graph.valid
    kept = (scores.abs() > 0.8) & graph.valid
    return Circuit.from_mask(model, kept, scores, keep_all_scores=ranking, task={"name": "toy", "n_examples": 8},
                             method={"name": "eap-ig", "params": {"ig_steps": 5}}, ablation="mean",
                             metrics={"faithfulness": 0.8125}, provenance={"seed": 3})


def same(a: Circuit, b: Circuit):
    assert a.model == b.model
    assert a.edges == b.edges  # names and exact scores
    assert a.scores == b.scores
    assert (a.task, a.method, a.ablation, a.metrics) == (b.task, b.method, b.ablation, b.metrics)


LOSSLESS = [name for name, f in FORMATS.items() if f.lossless]


@pytest.mark.parametrize("fmt", LOSSLESS)
@pytest.mark.parametrize("shape", list(SHAPES))
@pytest.mark.parametrize("ranking", [True, False])
def test_lossless_round_trip(fmt, shape, ranking, tmp_path):
    c = scored(ref(*SHAPES[shape]), seed=len(shape), ranking=ranking)
    assert len(c.edges) > 3
    path = tmp_path / f"c{FORMATS[fmt].suffix}"
    export_circuit(c, path, fmt)
    same(import_circuit(path, fmt), c)


def test_formats_are_named_like_the_issue():
    assert set(FORMATS) == {"eap-json", "eap-pt", "mib", "auto-circuit", "circuit-tracer", "safetensors", "graphml", "csv"}


# ---- EAP-IG / MIB, checked against the index conventions of EAP-IG's Graph.from_model ---------------
def eap_forward(name, n_heads):
    if name == "input":
        return 0
    if name.startswith("m"):
        return 1 + int(name[1:]) * (n_heads + 1) + n_heads
    layer, head = name.split(".")
    return 1 + int(layer[1:]) * (n_heads + 1) + int(head[1:])


def eap_backward(name, port, n_heads, n_layers):
    if name == "logits":
        return n_layers * (3 * n_heads + 1)
    if name.startswith("m"):
        return int(name[1:]) * (3 * n_heads + 1) + 3 * n_heads
    layer, head = name.split(".")
    return int(layer[1:]) * (3 * n_heads + 1) + "qkv".index(port) * n_heads + int(head[1:])


@pytest.mark.parametrize("shape", list(SHAPES))
def test_eap_pt_layout_matches_eap_ig(shape, tmp_path):
    n_layers, n_heads, has_mlp, parallel = SHAPES[shape]
    c = scored(ref(*SHAPES[shape]))
    export_circuit(c, tmp_path / "g.pt", "eap-pt")
    d = torch.load(tmp_path / "g.pt", weights_only=True)
    n_fwd, n_bwd = 1 + n_layers * (n_heads + 1), n_layers * (3 * n_heads + 1) + 1
    assert {"cfg", "src_nodes", "dst_nodes", "edges_scores", "edges_in_graph", "nodes_in_graph"} <= set(d)
    assert d["edges_scores"].shape == d["edges_in_graph"].shape == (n_fwd, n_bwd)
    assert d["nodes_in_graph"].shape == (n_fwd,) and d["edges_in_graph"].dtype == torch.bool
    assert d["cfg"] == {"n_layers": n_layers, "n_heads": n_heads, "parallel_attn_mlp": parallel, "d_model": 16, "has_mlp": has_mlp}
    assert len(d["src_nodes"]) == n_fwd and len(d["dst_nodes"]) == n_bwd and d["dst_nodes"][-1] == "logits"
    assert int(d["edges_in_graph"].sum()) == len(c.edges)
    for name, score in c.edges.items():
        e = Edge.parse(name)
        i, j = eap_forward(str(e.src), n_heads), eap_backward(str(e.dst), e.port.value, n_heads, n_layers)
        assert d["src_nodes"][i] == str(e.src)
        assert bool(d["edges_in_graph"][i, j]) and float(d["edges_scores"][i, j]) == score
    for name in c.nodes:
        if name != "logits":
            assert bool(d["nodes_in_graph"][eap_forward(name, n_heads)])


def test_eap_json_is_what_eap_ig_from_json_reads(tmp_path):
    c = scored(ref(*SHAPES["attn-only"]))
    export_circuit(c, tmp_path / "g.json", "eap-json")
    d = json.loads((tmp_path / "g.json").read_text())
    assert isinstance(d["cfg"]["d_model"], int)  # EAP-IG's Graph.from_model needs it
    assert all(set(v) == {"score", "in_graph"} and isinstance(v["score"], float) for v in d["edges"].values())
    assert all(isinstance(v["in_graph"], bool) for v in d["nodes"].values())
    assert sum(v["in_graph"] for v in d["edges"].values()) == len(c.edges)
    # EAP-IG's graph always has MLP nodes: our attention-only names are a subset of its names
    n_layers, n_heads = 3, 2
    eap_names = {"input", "logits"} | {f"a{i}.h{h}" for i in range(n_layers) for h in range(n_heads)} | {f"m{i}" for i in range(n_layers)}
    assert set(d["nodes"]) <= eap_names


def test_eap_pt_refuses_pickled_code_and_bad_shapes(tmp_path):
    class Evil:
        def __reduce__(self):
            return (print, ("owned",))

    torch.save({"cfg": {"n_layers": 1, "n_heads": 1}, "x": Evil()}, tmp_path / "evil.pt")
    with pytest.raises(CircuitError, match="not a safe EAP-IG .pt"):
        import_circuit(tmp_path / "evil.pt", "eap-pt")
    c = scored(ref(*SHAPES["mlp"]))
    export_circuit(c, tmp_path / "g.pt", "eap-pt")
    d = torch.load(tmp_path / "g.pt", weights_only=True)
    d["edges_scores"] = d["edges_scores"][:, :-1]
    torch.save(d, tmp_path / "bad.pt")
    with pytest.raises(CircuitError, match="edges_scores must be"):
        import_circuit(tmp_path / "bad.pt", "eap-pt")
    d = {"cfg": {"n_layers": 10**6, "n_heads": 10**6}, "src_nodes": [], "dst_nodes": [], "edges_scores": torch.zeros(1),
         "edges_in_graph": torch.zeros(1), "nodes_in_graph": torch.zeros(1)}
    torch.save(d, tmp_path / "huge.pt")
    with pytest.raises(CircuitError, match="outside"):
        import_circuit(tmp_path / "huge.pt", "eap-pt")


# ---- MIB ---------------------------------------------------------------------------------------------
def test_mib_layout_on_a_gpt2_small_shaped_circuit(tmp_path):
    c = scored(ref(12, 12, d_model=768, name="gpt2-shaped"))
    assert c.graph.n_edges() == 32491
    [path] = export_mib(c, tmp_path, task="ioi", model="gpt2")
    assert path.relative_to(tmp_path).as_posix() == "ioi_gpt2/importances.json"
    d = json.loads(path.read_text())
    assert d["cfg"]["d_model"] == 768 and len(d["edges"]) == 32491
    with pytest.raises(CircuitError, match="gpt2 has 12 layers"):
        export_mib(scored(ref(2, 3)), tmp_path, task="ioi", model="gpt2")
    with pytest.raises(CircuitError, match="not a MIB task"):
        export_mib(c, tmp_path, task="induction", model="gpt2")
    with pytest.raises(CircuitError, match="score for every edge"):
        export_mib(Circuit(model=c.model, edges=c.edges), tmp_path, task="ioi", model="gpt2")


def test_mib_several_circuits_at_the_standard_fractions(tmp_path):
    c = scored(ref(4, 4))
    n_all = c.graph.n_edges()
    several = export_mib(c, tmp_path, task="arithmetic_addition", model="toy", several=True, strict=False)
    assert [p.parent.name for p in several] == ["arithmetic-addition_toy"] * 9
    counts = [sum(v["in_graph"] for v in json.loads(p.read_text())["edges"].values()) for p in several]
    assert counts == sorted(counts) and counts[-1] > 0
    for pct, n in zip((0.1, 0.2, 0.5, 1, 2, 5, 10, 20, 50), counts, strict=True):
        assert n <= pct / 100 * n_all
    with pytest.raises(CircuitError, match="not a MIB model"):
        export_mib(c, tmp_path, task="ioi", model="toy")


# ---- auto-circuit ---------------------------------------------------------------------------------------
@pytest.mark.parametrize("shape", list(SHAPES))
def test_auto_circuit_prune_scores_shapes_and_round_trip(shape, tmp_path):
    n_layers, n_heads, has_mlp, parallel = SHAPES[shape]
    c = scored(ref(*SHAPES[shape]))
    ps = to_prune_scores(c)
    # auto-circuit's factorized graph: a destination sees every source of an earlier layer
    per_layer = n_heads + (1 if has_mlp else 0)
    for layer in range(n_layers):
        for port in "qkv":
            assert ps[f"blocks.{layer}.hook_{port}_input"].shape == (n_heads, 1 + layer * per_layer)
        if has_mlp:
            assert ps[f"blocks.{layer}.hook_mlp_in"].shape == (1 + layer * per_layer + (0 if parallel else n_heads),)
    assert ps[f"blocks.{n_layers - 1}.hook_resid_post"].shape == (1 + n_layers * per_layer,)
    src = c.graph.senders.index(Edge.parse(next(iter(c.edges))).src)
    assert src >= 0
    export_circuit(c, tmp_path / "ps.safetensors", "auto-circuit")
    back = import_circuit(tmp_path / "ps.safetensors", "auto-circuit", model=c.model, top_n=len(c.edges))
    assert set(back.edges) == set(c.edges)
    assert all(math.isclose(back.scores[k], v, rel_tol=1e-6) for k, v in c.scores.items())


# ---- circuit-tracer ------------------------------------------------------------------------------------
TRACER_NODE = {"node_id": str, "feature": int, "layer": str, "ctx_idx": int, "feature_type": str, "token_prob": float,
               "is_target_logit": bool, "run_idx": int, "reverse_ctx_idx": int, "jsNodeId": str, "clerp": str}
TRACER_META = {"slug": str, "scan": str, "transcoder_list": list, "prompt_tokens": list, "prompt": str}


def test_circuit_tracer_graph_matches_the_viewer_models(tmp_path):
    c = scored(ref(*SHAPES["mlp"]))
    d = to_graph_json(c, roles={"a1.h0": "induction"})
    assert set(d) == {"metadata", "qParams", "nodes", "links"}
    for key, typ in TRACER_META.items():
        assert isinstance(d["metadata"][key], typ)
    assert set(d["qParams"]) == {"pinnedIds", "supernodes", "linkType", "clickedId", "sg_pos"}
    ids = set()
    for node in d["nodes"]:
        for key, typ in TRACER_NODE.items():
            assert isinstance(node[key], typ), (key, node)
        assert node["feature_type"] in ("embedding", "cross layer transcoder", "logit", "mlp reconstruction error")
        ids.add(node["node_id"])
    assert len(ids) == len(d["nodes"]) == len(c.nodes)
    assert {n["layer"] for n in d["nodes"] if n["feature_type"] == "embedding"} == {"E"}
    assert [n["is_target_logit"] for n in d["nodes"] if n["feature_type"] == "logit"] == [True]
    assert all(set(link) == {"source", "target", "weight"} and link["source"] in ids and link["target"] in ids
               for link in d["links"])
    pairs = {(str(e.src), str(e.dst)) for e in c.edge_list()}
    assert len(d["links"]) == len(pairs)
    assert any("induction" in n["clerp"] for n in d["nodes"])
    out = export_circuit(c, tmp_path / "viewer", "circuit-tracer")
    index = json.loads((tmp_path / "viewer" / "graph-metadata.json").read_text())
    assert [g["slug"] for g in index["graphs"]] == [out.stem]
    with pytest.raises(CircuitError, match="export-only"):
        import_circuit(out, "circuit-tracer")


def test_unknown_format_names_the_choices():
    with pytest.raises(CircuitError, match="eap-json"):
        import_circuit("x", "eap")


def test_node_kinds_survive_in_attention_only_exports(tmp_path):
    c = scored(ref(*SHAPES["attn-only"]))
    assert not any(e.src.kind is NodeKind.MLP for e in c.edge_list())
    export_circuit(c, tmp_path / "g.graphml", "graphml")
    assert import_circuit(tmp_path / "g.graphml", "graphml").model.has_mlp is False


def test_ablation_accepts_the_fields_names():
    from acdc_lite.patching import Ablation

    assert Ablation("patching") is Ablation.RESAMPLE and Ablation("mean_positional") is Ablation.MEAN_POSITIONAL
    with pytest.raises(ValueError):
        Ablation("threshold")
