"""Suffix passes on TransformerBridge models: running blocks l.. on the cached residual equals the full pass."""

import dataclasses

import pytest
import torch

from acdc_lite import EdgePatcher, ModelGraph, Task, ablated_outputs, hooks, load_model, search
from acdc_lite.padding import forward, pad_rows
from acdc_lite.shape import model_info
from acdc_lite.suffix import padded_position_ids
from tests.architectures import FAMILIES, VOCAB

LAYERS = 3  # so a suffix can start in the middle as well as at the last layer


def _build(family_name: str, seed: int = 0):
    family = next(f for f in FAMILIES if f.name == family_name)
    key = "n_layer" if "n_layer" in family.kwargs else "num_hidden_layers"
    family = dataclasses.replace(family, kwargs={**family.kwargs, key: LAYERS})
    return load_model(family.build(seed))


@pytest.fixture(scope="module", params=["gpt2", "gpt-neox", "llama-gqa", "bloom"])
def bridge(request):
    return request.param, _build(request.param)


def _prompts(n=4, p=6, seed=1):
    g = torch.Generator().manual_seed(seed)
    return torch.randint(1, VOCAB, (n, p), generator=g), torch.randint(1, VOCAB, (n, p), generator=g)


def _resid_pre(model, tokens, mask=None):
    store = {}

    def make(layer):
        def hook(x, hook):
            store[layer] = x.detach().clone()
        return hook

    with torch.no_grad(), model.hooks(fwd_hooks=[(hooks.resid_pre(li), make(li)) for li in range(LAYERS)]):
        logits = forward(model, tokens, mask)
    return logits, store


def test_bridges_declare_suffix_support(bridge):
    name, model = bridge
    assert model_info(model).supports_start_at_layer
    assert model.acdc_block_tuple is (name == "bloom")  # Bloom's HF loop reads its blocks' output[0]


@pytest.mark.parametrize("side", [None, "left"])
def test_suffix_logits_equal_full_pass_and_skip_the_prefix_blocks(bridge, side):
    _, model = bridge
    tokens, _ = _prompts()
    mask = None
    if side == "left":  # rows of 3..6 real tokens, left-padded: rotary positions must count from the first real one
        tokens, mask = pad_rows([row[: 3 + i].tolist() for i, row in enumerate(tokens)], side, 0)
    full, resid = _resid_pre(model, tokens, mask)
    calls = []
    counter = model.blocks[0].original_component.register_forward_hook(lambda *a: calls.append(1))
    try:
        for start in range(1, LAYERS):
            with torch.no_grad():
                suffix = forward(model, tokens, mask, start_at_layer=start, resid=resid[start])
            real = slice(None) if mask is None else mask
            assert torch.allclose(suffix[real], full[real], atol=1e-5), start
    finally:
        counter.remove()
    assert calls == []  # block 0 never ran
    assert "forward" not in vars(model.blocks[0])  # the skip is undone


def test_padded_position_ids_count_from_the_first_real_token():
    mask = torch.tensor([[0, 0, 1, 1], [1, 1, 1, 1], [1, 1, 0, 0]])
    assert padded_position_ids(mask).tolist() == [[1, 1, 0, 1], [0, 1, 2, 3], [0, 1, 2, 3]]


def test_patched_suffix_pass_equals_full_patched_pass(bridge):
    _, model = bridge
    clean, corrupt = _prompts()
    graph = ModelGraph.from_model(model)
    patcher = EdgePatcher(model, graph, clean, ablated_outputs(model, graph, corrupt), batch_size=2)
    weights = torch.randn(VOCAB, generator=torch.Generator().manual_seed(3))

    def metric(logits, idx):  # sees every position and logit
        return (logits * weights).sum(dim=(1, 2))

    g = torch.Generator().manual_seed(4)
    for trial in range(3):
        base = graph.tie(graph.valid & (torch.rand(graph.valid.shape, generator=g) < 0.7))
        prefix = patcher.record_prefix(base)
        for start in range(1, LAYERS):
            changed = base.clone()
            first = graph.receiver_layer(0) + start * graph.receivers_per_layer  # receivers of layers >= start
            changed[:, first:] = graph.tie(graph.valid & (torch.rand(graph.valid.shape, generator=g) < 0.5))[:, first:]
            before = patcher.forward_passes
            fast = patcher.evaluate(changed, metric, start_layer=start, prefix=prefix)
            assert patcher.forward_passes - before == pytest.approx((LAYERS - start) / LAYERS)
            full = patcher.evaluate(changed, metric)
            assert torch.allclose(fast, full, atol=1e-4, rtol=1e-5), (trial, start)
            assert not torch.allclose(full, patcher.evaluate(base, metric), atol=1e-4)  # the change mattered


@pytest.mark.parametrize("family", ["gpt2", "llama-gqa"])
def test_acdc_circuit_is_the_same_with_and_without_suffix_passes(family, monkeypatch):
    model = _build(family, seed=2)
    clean, corrupt = _prompts(n=6, p=5, seed=5)
    g = torch.Generator().manual_seed(6)
    task = Task("toy", clean, corrupt, torch.randint(0, VOCAB, (6, 1), generator=g))
    # twin=False: the bridge's own suffix passes (a GPT-2 bridge would otherwise run on its native twin)
    fast = search(model, task, "acdc", metric="kl", tau=0.002, progress=False, twin=False)
    monkeypatch.setattr("acdc_lite.shape.can_start_at_layer", lambda model: False)
    full = search(model, task, "acdc", metric="kl", tau=0.002, progress=False, twin=False)
    assert torch.equal(fast.kept, full.kept)
    assert 0 < int(fast.kept.sum()) < int(ModelGraph.from_model(model).valid.sum())  # a real circuit, not all or none
    assert fast.forward_passes < 0.8 * full.forward_passes


def test_a_suffix_pass_that_differs_from_the_full_pass_turns_suffix_passes_off(bridge, monkeypatch):
    from acdc_lite import suffix

    _, model = bridge
    assert suffix.probe_suffix(model) is model.acdc_block_tuple
    monkeypatch.setattr(suffix, "_run", lambda model, resid, *a, **k: torch.zeros(1, resid.shape[1], model.cfg.d_vocab))
    assert suffix.probe_suffix(model) is None
