"""The architecture matrix: every decoder family TransformerLens 4.3 boots, as a tiny random model built here.

Per family: the hooked model computes what the Hugging Face model computes; the full circuit is the clean
model and the empty circuit the ablated model under all four ablations; every search method returns a
(tied, for grouped k/v) circuit; attribution ranks edges as exact patching does. Families whose heads
cannot be separate senders are refused with a ModelLoadError naming the model type.
`docs/architectures.py` runs this file and writes the status table in docs/architectures.md and the README.
"""

import numpy as np
import pytest
import torch

from acdc_lite import Ablation, Circuit, EdgePatcher, ModelGraph, Task, ablated_outputs, load_model, model_info, search
from acdc_lite.models import ModelLoadError
from acdc_lite.search import METHODS, discover
from tests.architectures import BY_NAME, FAMILIES, VOCAB
from tests.test_patching import replace_senders_hooks

NO_HOOK, NOT_ADDITIVE = "cannot hook this family's attention per head", "do not add up"
# family -> what the refusal must say (the reason TransformerLens 4.3 cannot give separable heads)
REFUSED = {"gpt-j": NO_HOOK, "gpt-neo": NO_HOOK, "opt": NO_HOOK, "gemma2": NOT_ADDITIVE, "olmo2": NOT_ADDITIVE}
REASON = {NO_HOOK: "TL 4.3 has no per-head attention hook for it",
          NOT_ADDITIVE: "a norm after attention: heads do not add up to the block's output"}
SUPPORTED = [f.name for f in FAMILIES if f.name not in REFUSED]


@pytest.fixture(scope="module")
def models():
    """family name -> (HF model, hooked model), built on first use and shared by this module's tests."""
    cache = {}

    def get(name):
        if name not in cache:
            hf = BY_NAME[name].build(seed=0)
            cache[name] = hf, load_model(BY_NAME[name].build(seed=0))
        return cache[name]
    return get


@pytest.fixture(scope="module")
def prompts():
    g = torch.Generator().manual_seed(1)
    clean = torch.randint(1, VOCAB, (4, 8), generator=g)
    corrupt = torch.randint(1, VOCAB, (4, 8), generator=g)
    return clean, corrupt


@pytest.fixture(scope="module")
def task(prompts):
    """Random prompts whose corrupted version differs in the last position only: the edges' effects stay small
    enough that a first-order estimate (attribution) is meaningful on random weights."""
    clean, _ = prompts
    g = torch.Generator().manual_seed(2)
    corrupt = clean.clone()
    corrupt[:, -1] = (clean[:, -1] + torch.randint(1, VOCAB - 1, (len(clean),), generator=g)) % VOCAB
    answers, foils = torch.randint(1, VOCAB, (len(clean), 1), generator=g), torch.randint(1, VOCAB, (len(clean), 1), generator=g)
    return Task("last-token", clean, corrupt, answers, foils)


@pytest.mark.parametrize("family", list(REFUSED))
def test_refused_family_names_its_model_type(family, record_property):
    record_property("detail", REASON[REFUSED[family]])
    hf = BY_NAME[family].build()
    with pytest.raises(ModelLoadError, match=REFUSED[family]) as err:
        load_model(hf)
    assert hf.config.model_type in str(err.value) and type(hf).__name__ in str(err.value)


@pytest.mark.parametrize("family", SUPPORTED)
def test_hooked_equals_hf_logits(models, prompts, family):
    hf, model = models(family)
    clean, _ = prompts
    with torch.no_grad():
        ours, theirs = model(clean).log_softmax(-1), hf(clean).logits.log_softmax(-1)
    assert (ours - theirs).abs().max() < 1e-4
    info = model_info(model)
    assert info.supports_start_at_layer  # the load-time check: a suffix pass reproduces the full pass (acdc_lite.suffix)
    assert info.n_kv_heads == getattr(hf.config, "num_key_value_heads", None) or info.n_kv_heads == (
        1 if getattr(hf.config, "multi_query", False) else info.n_heads)


@pytest.mark.parametrize("ablation", list(Ablation))
@pytest.mark.parametrize("family", SUPPORTED)
def test_full_and_empty_circuits(models, prompts, family, ablation):
    _, model = models(family)
    clean, corrupt = prompts
    graph = ModelGraph.from_model(model)
    ablated = ablated_outputs(model, graph, corrupt, ablation)
    patcher = EdgePatcher(model, graph, clean, ablated, batch_size=4)
    with torch.no_grad():
        clean_logits = model(clean)
        with model.hooks(fwd_hooks=replace_senders_hooks(graph, ablated)):
            ablated_logits = model(clean)
        empty = patcher.logits(graph.empty_mask())[0]
        assert (patcher.logits(graph.full_mask())[0] - clean_logits).abs().max() < 1e-4
        assert (empty - ablated_logits).abs().max() < 1e-4
        if ablation is Ablation.RESAMPLE:
            assert (empty - model(corrupt)).abs().max() < 1e-4
        assert (empty - clean_logits).abs().max() > 1e-3  # the ablation really changed something


@pytest.mark.parametrize("family", SUPPORTED)
def test_every_method_returns_a_circuit(models, task, family, tmp_path):
    _, model = models(family)
    graph = ModelGraph.from_model(model)
    for method in METHODS:
        res = search(model, task, method, progress=False)
        assert res.kept.shape == graph.valid.shape and res.n_edges <= graph.n_edges(), method
        assert graph.is_tied(res.kept), method  # grouped k/v edges kept or removed together
        assert abs(res.metric_full - float(res.metric_full)) == 0 and res.forward_passes > 0, method
    circuit = discover(model, task, "eap", top_n=20, progress=False)
    again = Circuit.load(circuit.save(tmp_path / "c.json"))
    assert again.edges == circuit.edges and again.graph == graph
    grouping = circuit.to_dict().get("kv_grouping")
    assert (grouping is not None) == (graph.kv_group > 1)
    if grouping:
        assert grouping["group_size"] == graph.kv_group and grouping["n_kv_heads"] == graph.n_kv_heads


def spearman(a: torch.Tensor, b: torch.Tensor) -> float:
    ok = ~torch.isnan(a) & ~torch.isnan(b)
    ra, rb = a[ok].argsort().argsort().double(), b[ok].argsort().argsort().double()
    return float(np.corrcoef(ra, rb)[0, 1])


@pytest.mark.parametrize("family", SUPPORTED)
def test_attribution_ranks_edges_like_exact_patching(models, task, family, record_property):
    """EAP against exact single-edge patching, Spearman over every edge of |score|: circuits are selected by
    |score|, and the sign of the many near-zero effects of random weights is noise (signed correlations, and
    EAP-IG's, are recorded for the docs table, not asserted). Tied k/v edges carry equal shares of their unit."""
    _, model = models(family)
    exact = search(model, task, "exact", top_n=1, progress=False).scores
    eap = search(model, task, "eap", top_n=1, progress=False).scores
    eap_ig = search(model, task, "eap-ig", top_n=1, progress=False).scores
    rho = spearman(eap.abs(), exact.abs())
    record_property("detail", f"EAP {rho:.2f}, EAP-IG {spearman(eap_ig.abs(), exact.abs()):.2f}; signed "
                              f"{spearman(eap, exact):.2f} / {spearman(eap_ig, exact):.2f}")
    assert rho >= 0.8, rho
