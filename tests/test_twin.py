"""The native twin (acdc_lite.twin): a SmallTransformer computing what a GPT-2 TransformerBridge computes, used by
searches for their passes; it must never change a result."""

import logging

import pytest
import torch

from acdc_lite import SmallTransformer, SmallTransformerConfig, Task, discover, load_model, search
from acdc_lite.graph import ModelGraph
from acdc_lite.models import EQUIVALENCE_TOLERANCE, compare_logits
from acdc_lite.padding import forward, pad_rows
from acdc_lite.patching import EdgePatcher, ablated_outputs
from acdc_lite.search.common import SearchContext
from acdc_lite.task import task_from_rows
from acdc_lite.twin import native_twin
from tests.conftest import BUILDERS

VOCAB = 24


def _gpt2(**extra):
    from transformers import GPT2Config, GPT2LMHeadModel

    torch.manual_seed(0)  # larger weights than GPT-2's 0.02: ablating an edge moves the metric
    config = GPT2Config(n_layer=2, n_head=4, n_embd=32, n_inner=48, vocab_size=VOCAB, n_positions=16, bos_token_id=0,
                        eos_token_id=0, layer_norm_epsilon=1e-4, initializer_range=0.3, **extra)
    return GPT2LMHeadModel(config).eval()


@pytest.fixture(scope="module")
def bridge():
    return load_model(_gpt2())


@pytest.fixture(scope="module")
def task():
    g = torch.Generator().manual_seed(0)
    clean, corrupt = torch.randint(1, VOCAB, (12, 8), generator=g), torch.randint(1, VOCAB, (12, 8), generator=g)
    answers, foils = torch.randint(1, VOCAB, (12, 1), generator=g), torch.randint(1, VOCAB, (12, 1), generator=g)
    return Task("random", clean, corrupt, answers, foils)


def test_twin_reproduces_the_bridge(bridge):
    state = torch.get_rng_state()
    twin = native_twin(bridge)
    assert isinstance(twin, SmallTransformer)
    assert torch.equal(state, torch.get_rng_state())  # built without random initialisation
    assert twin.cfg.act_fn == "gelu_new" and twin.cfg.ln_eps == 1e-4 and twin.cfg.d_mlp == 48
    assert ModelGraph.from_model(twin) == ModelGraph.from_model(bridge)
    tokens = torch.randint(0, VOCAB, (3, 16), generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        assert compare_logits(twin(tokens), bridge(tokens), "bridge").max_abs_diff < 1e-5
    # prompts of different lengths, padded either side: real positions agree
    rows = [[3, 4, 5], [6, 7, 8, 9, 10, 11, 2], [1] * 5]
    for side in ("left", "right"):
        padded, mask = pad_rows(rows, side, pad_id=0)
        with torch.no_grad():
            a, b = forward(twin, padded, mask), forward(bridge, padded, mask)
        assert compare_logits(a[mask][None], b[mask][None], "bridge").max_abs_diff < 1e-5


def test_the_padded_path_is_verified_when_the_task_pads(bridge, task, monkeypatch):
    embed = SmallTransformer.embed  # a twin that counts positions from column 0 on padded rows: wrong when left-padded
    monkeypatch.setattr(SmallTransformer, "embed", lambda self, tokens, attention_mask=None: embed(self, tokens))
    assert native_twin(bridge) is None
    assert isinstance(native_twin(bridge, padded=False), SmallTransformer)  # unpadded passes never take that path
    assert SearchContext.build(bridge, task, "kl").executor == "native-twin"  # an unpadded task
    padded = task_from_rows("padded", _padded_rows(VOCAB), padding_side="left", pad_id=0)
    assert SearchContext.build(bridge, padded, "kl").executor == "model"


def test_patched_passes_agree_under_any_edge_set(bridge, task):
    twin = native_twin(bridge)
    graph = ModelGraph.from_model(bridge)
    kept = torch.rand(graph.valid.shape, generator=torch.Generator().manual_seed(2)) < 0.5
    logits = [EdgePatcher(m, graph, task.clean, ablated_outputs(m, graph, task.corrupt), batch_size=5).logits(kept)
              for m in (bridge, twin)]
    assert float((logits[0] - logits[1]).abs().max()) < 1e-4


def test_acdc_finds_the_same_circuit_with_and_without_the_twin(bridge, task):
    on = search(bridge, task, "acdc", metric="kl", tau=0.002, progress=False)
    off = search(bridge, task, "acdc", metric="kl", tau=0.002, progress=False, twin=False)
    assert on.stats["executor"] == on.settings.executor == "native-twin" and off.stats["executor"] == "model"
    assert 5 < on.n_edges < ModelGraph.from_model(bridge).n_edges()  # a circuit, not everything or nothing
    assert torch.equal(on.kept, off.kept)
    assert torch.allclose(on.scores.nan_to_num(0), off.scores.nan_to_num(0), atol=1e-4)
    assert on.metric_circuit == pytest.approx(off.metric_circuit, abs=1e-4)
    assert on.forward_passes <= off.forward_passes  # the twin may take ACDC's node steps (acdc_lite.incremental)


def test_eap_scores_agree_with_and_without_the_twin(bridge, task):
    on = search(bridge, task, "eap", metric="logit_diff", top_n=20, progress=False)
    off = search(bridge, task, "eap", metric="logit_diff", top_n=20, progress=False, twin=False)
    assert on.stats["executor"] == "native-twin"
    assert torch.allclose(on.scores.nan_to_num(0), off.scores.nan_to_num(0), atol=1e-4)
    assert torch.equal(on.kept, off.kept)


def _padded_rows(vocab: int) -> list[tuple]:
    """8 (clean, corrupt, answer, foil) rows of 4-7 random tokens below `vocab`."""
    g = torch.Generator().manual_seed(3)
    rows = []
    for i in range(8):
        n = 4 + i % 4
        rows.append((torch.randint(1, vocab, (n,), generator=g).tolist(), torch.randint(1, vocab, (n,), generator=g).tolist(),
                     [1 + i], [vocab - 1 - i]))
    return rows


def test_padded_prompts_search_alike():
    bridge = load_model(_gpt2())
    rows = _padded_rows(VOCAB)
    for side in ("left", "right"):
        task = task_from_rows("padded", rows, padding_side=side, pad_id=0)
        on, off = (search(bridge, task, "acdc", metric="kl", tau=0.002, progress=False, twin=t) for t in (True, False))
        assert on.stats["executor"] == "native-twin"
        assert torch.equal(on.kept, off.kept)
        assert on.metric_circuit == pytest.approx(off.metric_circuit, abs=1e-4)


def test_the_circuit_records_the_executor_and_stays_the_same(bridge, task):
    on = discover(bridge, task, "acdc", metric="kl", tau=0.002, progress=False)
    off = discover(bridge, task, "acdc", metric="kl", tau=0.002, progress=False, twin=False)
    assert on.provenance["executor"] == "native-twin" and off.provenance["executor"] == "model"
    assert on.model == off.model and on.edges.keys() == off.edges.keys()
    ctx = SearchContext.build(bridge, task, "kl")
    assert ctx.model is bridge and ctx.executor == "native-twin" and ctx.patcher.model is not bridge


@pytest.mark.parametrize("family", ["neox", "small-ln-mlp"])
def test_other_models_get_no_twin_and_search_as_before(family, task):
    torch.manual_seed(0)
    model = load_model(BUILDERS[family]())
    assert native_twin(model) is None
    vocab = 20  # the conftest models' vocabulary
    small = Task("small", task.clean % vocab, task.corrupt % vocab, task.answers % vocab, task.foils % vocab)
    result = search(model, small, "acdc", metric="kl", tau=0.01, progress=False)
    assert result.stats["executor"] == "model" and result.n_edges >= 0


def test_attention_the_twin_does_not_mirror_is_refused(caplog):
    with caplog.at_level(logging.INFO, logger="acdc_lite.twin"):
        assert native_twin(load_model(_gpt2(scale_attn_by_inverse_layer_idx=True))) is None
    assert "attention flags" in caplog.text


def test_a_twin_that_fails_verification_is_not_used(monkeypatch, task, caplog):
    from acdc_lite import twin as twin_module

    # a config the twin does not mirror, let through the up-front check: only the probe comparison stands in the way
    bridge = load_model(_gpt2(scale_attn_by_inverse_layer_idx=True))
    monkeypatch.setattr(twin_module, "_refusal", lambda model: None)
    with caplog.at_level(logging.INFO, logger="acdc_lite.twin"):
        assert native_twin(bridge) is None
    assert "does not reproduce the bridge" in caplog.text
    assert search(bridge, task, "acdc", metric="kl", tau=0.01, progress=False).stats["executor"] == "model"

    # a twin with one weight 1% off: refused too
    build = twin_module._build

    def perturbed(model):
        twin = build(model)
        twin.blocks[1].attn.W_V = torch.nn.Parameter(twin.blocks[1].attn.W_V * 1.01, requires_grad=False)
        return twin

    monkeypatch.setattr(twin_module, "_build", perturbed)
    assert native_twin(load_model(_gpt2())) is None


def test_the_bridge_with_user_hooks_gets_no_twin():
    bridge = load_model(_gpt2())
    bridge.blocks[0].attn.hook_pattern.add_hook(lambda x, hook: x * 1.0)
    try:
        assert native_twin(bridge) is None
    finally:
        bridge.reset_hooks(including_permanent=True)
    assert native_twin(bridge) is not None


def test_gelu_new_and_ln_eps_round_trip(tmp_path):
    cfg = SmallTransformerConfig(n_layers=1, n_heads=2, d_model=8, d_head=4, d_vocab=10, n_ctx=8, d_mlp=16,
                                 normalization="layernorm", act_fn="gelu_new", ln_eps=1e-3)
    model = SmallTransformer(cfg).eval()
    x = torch.linspace(-3, 3, 7)
    assert torch.allclose(model.blocks[0].mlp.act(x), 0.5 * x * (1 + torch.tanh((2 / torch.pi) ** 0.5 * (x + 0.044715 * x**3))),
                          atol=1e-6)
    assert model.blocks[0].ln1.eps == 1e-3
    model.save(tmp_path)
    again = SmallTransformer.from_dir(tmp_path)
    assert again.cfg == cfg
    tokens = torch.arange(6)[None]
    assert torch.equal(again(tokens), model(tokens))
    with pytest.raises(ValueError, match="act_fn"):
        SmallTransformerConfig(n_layers=1, n_heads=2, d_model=8, d_head=4, d_vocab=10, n_ctx=8, act_fn="swish")
    with pytest.raises(ValueError, match="ln_eps"):
        SmallTransformerConfig(n_layers=1, n_heads=2, d_model=8, d_head=4, d_vocab=10, n_ctx=8, ln_eps=0.0)


def test_tolerance_is_the_projects():
    from acdc_lite import twin as twin_module

    assert twin_module.native_twin.__defaults__[0] == EQUIVALENCE_TOLERANCE


# ---- the Llama family: Llama (multi-head, grouped- and multi-query), Mistral, Qwen2 ----------------------------------
LLAMA_FAMILIES = ["llama", "llama-gqa", "llama-mqa", "mistral", "qwen2"]


def _llama_like(family: str, seed: int = 0, **config):
    """A tiny HF model of `family` (tests/architectures.py) with larger weights and non-zero biases and norm gains
    than its initialisation, so ablating an edge moves the metric and every parameter counts; loaded as a bridge."""
    import transformers

    from tests.architectures import BY_NAME

    fam = BY_NAME[family]
    hf_config = getattr(transformers, fam.config_class)(**{**fam.kwargs, **config})
    torch.manual_seed(seed)
    hf = getattr(transformers, fam.model_class)(hf_config).eval()
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in hf.parameters():
            p.add_(torch.randn(p.shape, generator=g) * (0.3 if p.dim() > 1 else 0.2))
    return load_model(hf)


def _llama_task(n: int = 10, length: int = 8, seed: int = 0) -> Task:
    from tests.architectures import VOCAB as V

    g = torch.Generator().manual_seed(seed)
    clean, corrupt = torch.randint(1, V, (n, length), generator=g), torch.randint(1, V, (n, length), generator=g)
    return Task("random", clean, corrupt, torch.randint(1, V, (n, 1), generator=g), torch.randint(1, V, (n, 1), generator=g))


@pytest.mark.parametrize("family", LLAMA_FAMILIES)
def test_llama_family_twin_reproduces_the_bridge(family):
    from acdc_lite import twin as twin_module

    bridge = _llama_like(family)
    twin = native_twin(bridge)
    assert isinstance(twin, SmallTransformer)
    hf = bridge.original_model.config
    c = twin.cfg
    assert (c.normalization, c.positional, c.mlp_kind, c.act_fn) == ("rmsnorm", "rotary", "gated", "silu")
    assert c.kv_heads == hf.num_key_value_heads and c.d_mlp == hf.intermediate_size
    assert ModelGraph.from_model(twin) == ModelGraph.from_model(bridge)  # one k/v receiver column per query head, grouped
    # logits and every sender's output, unpadded and padded, far inside the project's tolerance
    assert twin_module._disagreement(bridge, twin, 1e-5) is None
    from tests.architectures import VOCAB as V

    tokens = torch.randint(0, V, (3, 20), generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        assert float((twin(tokens) - bridge(tokens)).abs().max()) < 1e-4
    rows = [[3, 4, 5], [6, 7, 8, 9, 10, 11, 2, 5, 5], [1] * 5]
    for side in ("left", "right"):
        padded, mask = pad_rows(rows, side, pad_id=0)
        with torch.no_grad():
            a, b = forward(twin, padded, mask), forward(bridge, padded, mask)
        assert float((a[mask] - b[mask]).abs().max()) < 1e-4


def test_llama_twin_with_tied_embeddings_and_scaled_rotary():
    bridge = _llama_like("llama-gqa", tie_word_embeddings=True,
                         rope_parameters={"rope_type": "llama3", "rope_theta": 500000.0, "factor": 8.0,
                                          "low_freq_factor": 1.0, "high_freq_factor": 4.0,
                                          "original_max_position_embeddings": 8})
    twin = native_twin(bridge)
    assert twin is not None and twin.W_U.data_ptr() == twin.W_E.data_ptr()  # shared storage, no copy
    assert twin.blocks[0].attn.rotary.inv_freq.tolist() != SmallTransformer(twin.cfg).blocks[0].attn.rotary.inv_freq.tolist()


@pytest.mark.parametrize("family", LLAMA_FAMILIES)
def test_llama_family_acdc_and_eap_alike_with_and_without_the_twin(family):
    bridge, task = _llama_like(family), _llama_task()
    on = search(bridge, task, "acdc", metric="kl", tau=0.01, progress=False)
    off = search(bridge, task, "acdc", metric="kl", tau=0.01, progress=False, twin=False)
    assert on.stats["executor"] == "native-twin" and off.stats["executor"] == "model"
    assert 5 < on.n_edges < ModelGraph.from_model(bridge).n_edges()
    assert torch.equal(on.kept, off.kept)
    assert torch.allclose(on.scores.nan_to_num(0), off.scores.nan_to_num(0), atol=1e-4)
    assert on.metric_circuit == pytest.approx(off.metric_circuit, abs=1e-4)
    eap_on = search(bridge, task, "eap", metric="logit_diff", top_n=20, progress=False)
    eap_off = search(bridge, task, "eap", metric="logit_diff", top_n=20, progress=False, twin=False)
    assert eap_on.stats["executor"] == "native-twin"
    assert torch.allclose(eap_on.scores.nan_to_num(0), eap_off.scores.nan_to_num(0), atol=1e-4)
    assert torch.equal(eap_on.kept, eap_off.kept)


@pytest.mark.parametrize("family", ["llama", "llama-gqa"])
def test_llama_padded_prompts_search_alike(family):
    from tests.architectures import VOCAB as V

    bridge = _llama_like(family)
    rows = _padded_rows(V)
    for side in ("left", "right"):
        task = task_from_rows("padded", rows, padding_side=side, pad_id=0)
        on, off = (search(bridge, task, "acdc", metric="kl", tau=0.01, progress=False, twin=t) for t in (True, False))
        assert on.stats["executor"] == "native-twin"
        assert 5 < on.n_edges < ModelGraph.from_model(bridge).n_edges()
        assert torch.equal(on.kept, off.kept)
        assert torch.allclose(on.scores.nan_to_num(0), off.scores.nan_to_num(0), atol=1e-4)
        eap_on, eap_off = (search(bridge, task, "eap", metric="logit_diff", top_n=20, progress=False, twin=t)
                           for t in (True, False))
        assert torch.allclose(eap_on.scores.nan_to_num(0), eap_off.scores.nan_to_num(0), atol=1e-4)


@pytest.mark.parametrize("family,config,reason", [
    ("mistral", {"sliding_window": 8}, "sliding-window"),
    ("llama", {"rope_parameters": {"rope_type": "dynamic", "rope_theta": 10000.0, "factor": 2.0}}, "rotary variant"),
])
def test_llama_family_attention_the_twin_does_not_mirror_is_refused(family, config, reason, caplog):
    with caplog.at_level(logging.INFO, logger="acdc_lite.twin"):
        assert native_twin(_llama_like(family, **config)) is None
    assert reason in caplog.text


def test_grouped_rotary_gated_config_round_trips(tmp_path):
    cfg = SmallTransformerConfig(n_layers=2, n_heads=4, d_model=16, d_head=4, d_vocab=10, n_ctx=12, d_mlp=24,
                                 normalization="rmsnorm", act_fn="silu", positional="rotary", mlp_kind="gated",
                                 n_kv_heads=2, rope_theta=100.0, ln_eps=1e-6)
    torch.manual_seed(0)
    model = SmallTransformer(cfg).eval()
    assert model.blocks[0].attn.W_K.shape == (2, 16, 4) and model.blocks[0].mlp.W_gate.shape == (16, 24)
    model.save(tmp_path)
    again = SmallTransformer.from_dir(tmp_path)
    assert again.cfg == cfg
    tokens = torch.arange(8)[None] % 10
    assert torch.equal(again(tokens), model(tokens))
    # a shifted prompt, left-padded with an attention mask, gives the same logits at its real positions
    padded, mask = pad_rows([[1, 2, 3, 4], [1, 2, 3, 4, 5, 6]], "left", pad_id=0)
    with torch.no_grad():
        alone, batch = model(torch.tensor([[1, 2, 3, 4]])), forward(model, padded, mask)
    assert torch.allclose(batch[0, 2:], alone[0], atol=1e-5)
    with pytest.raises(ValueError, match="k/v heads"):
        SmallTransformerConfig(n_layers=1, n_heads=4, d_model=8, d_head=2, d_vocab=10, n_ctx=8, n_kv_heads=3)


@pytest.mark.parametrize("family", ["gemma", "qwen3", "phi3"])
def test_other_llama_like_families_get_no_twin(family):
    from tests.architectures import BY_NAME

    assert native_twin(load_model(BY_NAME[family].build())) is None
