"""Invariants of one-pass edge patching on every architecture and ablation."""

import pytest
import torch

from acdc_lite import Ablation, EdgePatcher, ModelGraph, ablated_outputs, hooks
from acdc_lite.patching import _group_view


def last_logit_diff(logits, idx):
    return logits[:, -1, 3] - logits[:, -1, 5]


def replace_senders_hooks(graph, ablated):
    """Hand-written reference: every sender's output replaced by its ablated value."""
    def make(a, size):
        def hook(x, hook):
            return a.expand(x.shape[0], x.shape[1], size, x.shape[-1]).reshape(x.shape).clone()
        return hook
    return [(g.hook, make(a, g.size)) for g, a in zip(graph.sender_groups, ablated, strict=False)]


@pytest.mark.parametrize("ablation", list(Ablation))
def test_full_and_empty_circuits(any_model, prompts, ablation):
    _, model = any_model
    clean, corrupt = prompts
    graph = ModelGraph.from_model(model)
    ablated = ablated_outputs(model, graph, corrupt, ablation)
    patcher = EdgePatcher(model, graph, clean, ablated, batch_size=2)
    with torch.no_grad():
        clean_logits = model(clean)
        with model.hooks(fwd_hooks=replace_senders_hooks(graph, ablated)):
            ablated_logits = model(clean)
    assert (patcher.logits(graph.full_mask())[0] - clean_logits).abs().max() < 1e-4
    assert (patcher.logits(graph.empty_mask())[0] - ablated_logits).abs().max() < 1e-4
    if ablation is Ablation.RESAMPLE:
        with torch.no_grad():
            assert (patcher.logits(graph.empty_mask())[0] - model(corrupt)).abs().max() < 1e-4


def _one_edge(graph, model, seed):
    """A random edge whose removal is legal on its own (not a shared grouped k/v input)."""
    from acdc_lite import model_info

    grouped = model_info(model).n_kv_heads < model_info(model).n_heads
    edges = [e for e in graph.edges if not (grouped and e.port.value in "kv")]
    return edges[torch.randint(len(edges), (1,), generator=torch.Generator().manual_seed(seed)).item()]


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_removing_one_edge_equals_hand_written_hook(any_model, prompts, seed):
    _, model = any_model
    clean, corrupt = prompts
    graph = ModelGraph.from_model(model)
    edge = _one_edge(graph, model, seed)
    s, r = graph.edge_index(edge)
    patcher = EdgePatcher(model, graph, clean, ablated_outputs(model, graph, corrupt))
    kept = graph.full_mask()
    kept[s, r] = False

    # reference: cache the sender on both prompts, subtract its difference at that receiver only
    with torch.no_grad():
        _, clean_cache = model.run_with_cache(clean)
        _, corrupt_cache = model.run_with_cache(corrupt)
    group = next(g for g in graph.sender_groups if g.start <= s < g.start + g.size)
    j = s - group.start
    diff = _group_view(clean_cache[group.hook], group.size)[:, :, j] - _group_view(corrupt_cache[group.hook], group.size)[:, :, j]
    dst, port = graph.receivers[r]
    if dst.kind.value == "head":
        name, head = hooks.head_input(dst.layer, port.value), dst.head
    elif dst.kind.value == "mlp":
        name, head = hooks.mlp_in(dst.layer), None
    else:
        name, head = hooks.resid_post(graph.n_layers - 1), None

    def hook(x, hook):
        x = x.clone()
        if head is None:
            x -= diff
        else:
            x[:, :, head] -= diff
        return x

    with torch.no_grad(), model.hooks(fwd_hooks=[(name, hook)]):
        expected = model(clean)
    assert (patcher.logits(kept)[0] - expected).abs().max() < 1e-4


def test_mask_gradient_matches_finite_difference(any_model, prompts):
    _, model = any_model
    clean, corrupt = prompts
    graph = ModelGraph.from_model(model)
    patcher = EdgePatcher(model, graph, clean, ablated_outputs(model, graph, corrupt), batch_size=3)
    kept = graph.full_mask().float()
    kept[graph.valid & (torch.rand(graph.valid.shape, generator=torch.Generator().manual_seed(0)) < 0.3)] = 0.5
    value, grad = patcher.mask_gradient(last_logit_diff, kept)
    assert abs(value - float(patcher.evaluate(kept, last_logit_diff))) < 1e-4
    eps = 1e-2
    picks = graph.valid.nonzero()[torch.randperm(graph.n_edges(), generator=torch.Generator().manual_seed(3))[:8]]
    for s, r in picks.tolist():
        up, down = kept.clone(), kept.clone()
        up[s, r] += eps
        down[s, r] -= eps
        fd = float(patcher.evaluate(up, last_logit_diff) - patcher.evaluate(down, last_logit_diff)) / (2 * eps)
        assert abs(fd - float(grad[s, r])) < 2e-3 + 2e-2 * abs(fd), (s, r, fd, float(grad[s, r]))
    assert (grad[~graph.valid] == 0).all()


def test_candidate_batch_equals_separate_passes(any_model, prompts):
    """Alone, a sparse circuit is corrected through its kept edges and a near-full one through its removed
    edges; batched with the full and empty masks, every candidate goes through the dense product."""
    from acdc_lite import model_info
    from acdc_lite.graph import tie_kv_groups

    _, model = any_model
    clean, corrupt = prompts
    graph = ModelGraph.from_model(model)
    patcher = EdgePatcher(model, graph, clean, ablated_outputs(model, graph, corrupt), batch_size=3)
    group = model_info(model).n_heads // model_info(model).n_kv_heads
    rand = torch.rand(graph.valid.shape, generator=torch.Generator().manual_seed(2))
    rand[0] = 0  # keep the input's edges: under resampling, a sender cut off from the input has no effect
    masks = torch.stack([graph.full_mask(), graph.empty_mask()] +
                        [tie_kv_groups(graph, graph.valid & (rand < share), group) for share in (0.05, 0.5, 0.8)])
    together = patcher.evaluate(masks, last_logit_diff)
    apart = torch.stack([patcher.evaluate(m, last_logit_diff)[0] for m in masks])
    assert torch.allclose(together, apart, atol=1e-4)
    # the sparse and near-full circuits really differ from the empty and full ones
    assert (together[2] - together[1]).abs() > 1e-4 and (together[4] - together[0]).abs() > 1e-4


@pytest.mark.parametrize("memory_mb", [384.0, 1e-3])  # every chunk's forward kept for the decision / one pass more
def test_probe_runs_its_backward_only_when_wanted(any_model, prompts, memory_mb):
    """A gradient decided on its forward pass: refused, it costs one forward and no backward; wanted, it equals
    `mask_gradient` and `record_prefix` at the same mask, with one backward (and one more forward when the budget
    cannot keep every chunk's forward pass until the decision)."""
    from acdc_lite.graph import tie_kv_groups

    _, model = any_model
    clean, corrupt = prompts
    graph = ModelGraph.from_model(model)
    patcher = EdgePatcher(model, graph, clean, ablated_outputs(model, graph, corrupt), batch_size=2, memory_mb=memory_mb)
    kept = graph.valid & (torch.rand(graph.valid.shape, generator=torch.Generator().manual_seed(5)) < 0.6)
    kept = tie_kv_groups(graph, kept)
    expected_value, expected_grad = patcher.mask_gradient(last_logit_diff, kept)
    spent = patcher.passes()
    seen = []
    value, grad, prefix = patcher.probe(last_logit_diff, kept, wanted=lambda v: seen.append(v) or False)
    assert grad is None and prefix is None and seen == [pytest.approx(expected_value, abs=1e-5)]
    assert patcher.passes() == pytest.approx({"forward_passes": spent["forward_passes"] + 1,
                                              "backward_passes": spent["backward_passes"]})
    value, grad, prefix = patcher.probe(last_logit_diff, kept, wanted=lambda v: True)
    fits = memory_mb > 1
    assert value == pytest.approx(expected_value, abs=1e-5) and torch.allclose(grad, expected_grad, atol=1e-5)
    assert patcher.passes() == pytest.approx({"forward_passes": spent["forward_passes"] + (2 if fits else 3),
                                              "backward_passes": spent["backward_passes"] + 1})
    if fits:  # the prefix recorded by the same forward serves a suffix pass
        changed = kept.clone()
        changed[:, graph.receiver_layer(0) + graph.receivers_per_layer:] = False
        fast = patcher.evaluate(changed, last_logit_diff, start_layer=1, prefix=prefix)
        assert torch.allclose(fast, patcher.evaluate(changed, last_logit_diff), atol=1e-5)


def test_suffix_recompute_equals_full_pass(small_model, prompts):
    clean, corrupt = prompts
    graph = ModelGraph.from_model(small_model)
    patcher = EdgePatcher(small_model, graph, clean, ablated_outputs(small_model, graph, corrupt), batch_size=2)
    base = graph.valid & (torch.rand(graph.valid.shape, generator=torch.Generator().manual_seed(4)) < 0.7)
    prefix = patcher.record_prefix(base)
    changed = base.clone()
    changed[:, graph.receiver_layer(0) + graph.receivers_per_layer:] = False  # edit only layer >= 1 receivers
    before = patcher.forward_passes
    fast = patcher.evaluate(changed, last_logit_diff, start_layer=1, prefix=prefix)
    assert patcher.forward_passes - before == pytest.approx(0.5)  # half the layers recomputed
    assert torch.allclose(fast, patcher.evaluate(changed, last_logit_diff), atol=1e-5)


def test_identical_inputs_give_zero_gradient(small_model, prompts):
    clean, _ = prompts
    graph = ModelGraph.from_model(small_model)
    patcher = EdgePatcher(small_model, graph, clean, ablated_outputs(small_model, graph, clean))
    _, grad = patcher.mask_gradient(last_logit_diff)
    assert grad.abs().max() < 1e-6
    assert torch.allclose(patcher.evaluate(graph.empty_mask(), last_logit_diff), patcher.evaluate(graph.full_mask(), last_logit_diff))


def test_nan_metric_is_a_clear_error(small_model, prompts):
    clean, corrupt = prompts
    graph = ModelGraph.from_model(small_model)
    patcher = EdgePatcher(small_model, graph, clean, ablated_outputs(small_model, graph, corrupt))
    with pytest.raises(FloatingPointError, match="NaN"):
        patcher.evaluate(graph.full_mask(), lambda logits, idx: logits[:, -1, 0] * float("nan"))


def test_grouped_kv_masks_must_agree():
    from acdc_lite import load_model
    from tests.conftest import _llama_gqa

    model = load_model(_llama_gqa())
    graph = ModelGraph.from_model(model)
    clean = torch.randint(0, 20, (2, 5))
    patcher = EdgePatcher(model, graph, clean, ablated_outputs(model, graph, clean))
    kept = graph.full_mask()
    kept[graph.edge_index("input->a1.h0<k>")] = False
    with pytest.raises(ValueError, match="k/v group"):
        patcher.logits(kept)
    kept[graph.edge_index("input->a1.h1<k>")] = False  # the whole group: fine
    patcher.logits(kept)


def test_the_ablated_cache_runs_without_per_head_inputs_and_equals_the_split_run(any_model, prompts):
    """The cache pass reads q, k and v from the shared residual stream (the bridge's split q/k/v inputs are off during
    it, then on again, also after an error): the senders' outputs are those of the split run."""
    from acdc_lite.models import shared_qkv_input

    name, model = any_model
    _, corrupt = prompts
    graph = ModelGraph.from_model(model)
    fired = []
    probe = [(hooks.head_input(0, "q"), lambda x, hook: fired.append(x.shape))]
    with torch.no_grad(), model.hooks(fwd_hooks=probe):
        split = [model(corrupt)]  # the per-head input hook fires: the split is on
    assert len(fired) == 1
    stored = {}
    with torch.no_grad(), model.hooks(fwd_hooks=[(g.hook, lambda x, hook, i=i: stored.__setitem__(i, x.clone()))
                                                 for i, g in enumerate(graph.sender_groups)]):
        model(corrupt)
    cache = ablated_outputs(model, graph, corrupt)
    for i, g in enumerate(graph.sender_groups):
        torch.testing.assert_close(cache[i], _group_view(stored[i], g.size), atol=1e-5, rtol=1e-5)
    if name.startswith("small"):
        return  # our own model computes per-head inputs always
    with pytest.raises(RuntimeError, match="inside"):
        with shared_qkv_input(model):
            assert not model.cfg.use_split_qkv_input
            raise RuntimeError("inside")
    assert model.cfg.use_split_qkv_input
    with torch.no_grad(), model.hooks(fwd_hooks=probe):
        split.append(model(corrupt))
    assert len(fired) == 2
    torch.testing.assert_close(split[0], split[1])


def test_a_gradient_pass_freezes_the_weights_and_restores_them(any_model, prompts):
    """Gradients are taken at receiver inputs only, so a gradient pass runs with the weights frozen (autograd keeps
    nothing for their gradients) and gives every parameter its flag back, also when the metric fails (the gradients
    themselves are checked against exact patching in test_search and test_architectures)."""
    from acdc_lite.patching import frozen_weights

    _, model = any_model
    clean, corrupt = prompts
    graph = ModelGraph.from_model(model)
    patcher = EdgePatcher(model, graph, clean, ablated_outputs(model, graph, corrupt), batch_size=2)
    flags = [p.requires_grad for p in model.parameters()]
    assert all(flags)
    seen = []

    def metric(logits, idx):
        seen.append([p.requires_grad for p in model.parameters()])
        return last_logit_diff(logits, idx)

    _, grad = patcher.mask_gradient(metric)
    assert seen and not any(any(s) for s in seen)
    assert [p.requires_grad for p in model.parameters()] == flags
    with pytest.raises(ZeroDivisionError):
        patcher.mask_gradient(lambda logits, idx: 1 / 0)
    assert [p.requires_grad for p in model.parameters()] == flags
    with frozen_weights(model):
        assert not any(p.requires_grad for p in model.parameters())
    assert grad.abs().max() > 0


@pytest.mark.parametrize("normalization,kv_heads", [("layernorm", None), ("rmsnorm", 1)])
def test_a_gradient_pass_normalises_once_with_each_heads_gradient(normalization, kv_heads, monkeypatch):
    """The gradient pass normalises the unchanged q/k/v input once (transformer._SharedNorm): every edge's gradient is
    what normalising each head's copy gives."""
    from acdc_lite import SmallTransformer, SmallTransformerConfig
    from acdc_lite import transformer as transformer_module

    torch.manual_seed(0)
    model = SmallTransformer(SmallTransformerConfig(n_layers=2, n_heads=4, d_model=16, d_head=4, d_vocab=20, n_ctx=8,
                                                    d_mlp=24, normalization=normalization, n_kv_heads=kv_heads))
    graph = ModelGraph.from_model(model)
    g = torch.Generator().manual_seed(1)
    clean, corrupt = torch.randint(0, 20, (5, 8), generator=g), torch.randint(0, 20, (5, 8), generator=g)
    patcher = EdgePatcher(model, graph, clean, ablated_outputs(model, graph, corrupt))

    def metric(logits, idx):
        return logits[:, -1, 3] - logits[:, -1, 4]

    value, shared = patcher.mask_gradient(metric)
    monkeypatch.setattr(transformer_module, "_same_layout", lambda a, b: False)  # each head's copy normalised
    reference_value, per_copy = patcher.mask_gradient(metric)
    assert value == pytest.approx(reference_value, abs=1e-6)
    assert float(per_copy.abs().max()) > 0.01
    assert torch.allclose(shared, per_copy, atol=1e-5, rtol=1e-4)
