"""ACDC's node steps (acdc_lite.incremental) against its suffix passes: the same circuit and, within float32
rounding, the same scores, on models, metrics, ablations and padded prompts built here; fewer passes."""

from __future__ import annotations

from dataclasses import replace

import pytest
import torch

from acdc_lite import Task, load_model, search
from acdc_lite.incremental import supports_steps
from acdc_lite.search import acdc
from acdc_lite.search.common import SearchContext
from acdc_lite.task import task_from_rows
from acdc_lite.transformer import SmallTransformer, SmallTransformerConfig

VOCAB = 24


def _model(n_layers: int, d_mlp: int, normalization: str = "layernorm", seed: int = 0) -> SmallTransformer:
    torch.manual_seed(seed)
    cfg = SmallTransformerConfig(n_layers=n_layers, n_heads=3, d_model=16, d_head=4, d_vocab=VOCAB, n_ctx=16,
                                 d_mlp=d_mlp, normalization=normalization, act_fn="gelu")
    model = SmallTransformer(cfg)
    if normalization == "layernorm":
        with torch.no_grad():  # larger weights than the default, so removing edges moves the metric
            for p in model.parameters():
                p.mul_(2.0)
    return model.eval()


def _task(n: int = 12, length: int = 7, seed: int = 0) -> Task:
    g = torch.Generator().manual_seed(seed)
    clean, corrupt = torch.randint(1, VOCAB, (n, length), generator=g), torch.randint(1, VOCAB, (n, length), generator=g)
    return Task("t", clean, corrupt, torch.randint(1, VOCAB, (n, 1), generator=g), torch.randint(1, VOCAB, (n, 1), generator=g))


def _padded_task(side: str) -> Task:
    g = torch.Generator().manual_seed(5)
    rows = []
    for n in (4, 9, 6, 7, 5, 8):
        rows.append((torch.randint(1, VOCAB, (n,), generator=g).tolist(), torch.randint(1, VOCAB, (n,), generator=g).tolist(),
                     [int(torch.randint(1, VOCAB, (1,), generator=g))], [int(torch.randint(1, VOCAB, (1,), generator=g))]))
    return task_from_rows("padded", rows, padding_side=side, pad_id=0)


def _every_position(task, model):
    """A metric that reads every position (no declared positions): mean log-probability of token 1."""
    return lambda logits, idx: logits.log_softmax(-1)[..., 1].mean(-1)


def _both(model, task: Task, tau: float, metric: str | None = None, ablation: str = "resample"):
    out = []
    for steps in (True, False):
        ctx = SearchContext.build(model, task, metric=metric, ablation=ablation)
        out.append(acdc.run(ctx, acdc.ACDCConfig(tau=tau, progress=False, node_steps=steps)))
    return out


def _same(stepped, suffix):
    assert torch.equal(stepped.kept, suffix.kept)
    assert 0 < int(stepped.kept.sum()) < int(suffix.kept.numel())  # a non-trivial circuit: both decisions taken
    assert torch.equal(stepped.scores.isnan(), suffix.scores.isnan())
    scale = float(suffix.scores.nan_to_num().abs().max())
    assert float((stepped.scores - suffix.scores).nan_to_num().abs().max()) < 2e-5 * max(1.0, scale)
    assert stepped.metric_circuit == pytest.approx(suffix.metric_circuit, abs=1e-5)


@pytest.mark.parametrize("n_layers,d_mlp,normalization", [(2, 32, "layernorm"), (3, 0, "none"), (3, 32, "none")])
@pytest.mark.parametrize("metric,tau", [("kl", 0.02), ("logit_diff", 0.05)])
def test_node_steps_give_the_suffix_passes_circuit(n_layers, d_mlp, normalization, metric, tau):
    model = _model(n_layers, d_mlp, normalization)
    stepped, suffix = _both(model, _task(), tau, metric)
    _same(stepped, suffix)
    assert stepped.forward_passes < 0.7 * suffix.forward_passes


@pytest.mark.parametrize("ablation", ["zero", "mean"])
def test_node_steps_under_other_ablations(ablation):
    _same(*_both(_model(2, 32), _task(), 0.02, "kl", ablation))


@pytest.mark.parametrize("side", ["left", "right"])
def test_node_steps_on_padded_prompts_of_different_lengths(side):
    _same(*_both(_model(2, 32), _padded_task(side), 0.02, "kl"))


def _llama_shaped(seed: int = 0, n_heads: int = 3, n_kv_heads: int | None = None) -> SmallTransformer:
    torch.manual_seed(seed)
    cfg = SmallTransformerConfig(n_layers=2, n_heads=n_heads, d_model=16, d_head=4, d_vocab=VOCAB, n_ctx=16, d_mlp=24,
                                 normalization="rmsnorm", act_fn="silu", positional="rotary", mlp_kind="gated",
                                 n_kv_heads=n_kv_heads)
    model = SmallTransformer(cfg)
    with torch.no_grad():
        for p in model.parameters():
            p.mul_(2.0)
    return model.eval()


@pytest.mark.parametrize("side", [None, "left", "right"])
def test_node_steps_with_rotary_positions_rmsnorm_and_a_gated_mlp(side):
    """A rotary head recomputed alone rotates its queries and keys by each prompt's own positions (also left-padded)."""
    task = _task() if side is None else _padded_task(side)
    _same(*_both(_llama_shaped(), task, 0.02, "kl"))


@pytest.mark.parametrize("n_kv_heads", [2, 1])
@pytest.mark.parametrize("side", [None, "left"])
def test_node_steps_with_grouped_query_attention(n_kv_heads, side):
    """A k/v group's shared input recomputes each of its heads, each with its group's k/v weights."""
    task = _task() if side is None else _padded_task(side)
    _same(*_both(_llama_shaped(n_heads=4, n_kv_heads=n_kv_heads), task, 0.02, "kl"))


def test_node_steps_with_a_metric_of_every_position():
    task = replace(_task(), custom_metrics={"every": _every_position})
    _same(*_both(_model(2, 32), task, 0.002, "every"))


def test_hybrid_with_and_without_node_steps(monkeypatch):
    model, task = _model(3, 32), _task()
    stepped = search(model, task, "hybrid", tau=0.02, plain_acdc=False, progress=False)
    monkeypatch.setattr(acdc, "supports_steps", lambda patcher: False)
    suffix = search(model, task, "hybrid", tau=0.02, plain_acdc=False, progress=False)
    assert torch.equal(stepped.kept, suffix.kept)


@pytest.mark.parametrize("family,stepped", [("llama", True), ("gpt2", True), ("llama-gqa", True), ("gemma", False)])
def test_bridge_models_step_through_a_twin_or_fall_back(family, stepped):
    """GPT-2 and Llama (grouped-query attention included) get node steps through their native twins (acdc_lite.twin);
    models with no twin run suffix passes."""
    from tests.architectures import FAMILIES

    model = load_model(next(f for f in FAMILIES if f.name == family).build())
    ctx = SearchContext.build(model, _task(n=4, length=5))
    assert supports_steps(ctx.patcher) is stepped
    res = acdc.run(ctx, acdc.ACDCConfig(tau=0.02, progress=False))
    assert res.forward_passes > 0 and res.stats["tested_edges"] > 0


@pytest.mark.parametrize("start", [None, 1])
def test_last_block_at_read_positions_gives_the_same_logits(start):
    """`narrow_last_layer`: the last block computes only the positions read; those logits do not change."""
    from acdc_lite.padding import forward

    model, task = _model(2, 32), _padded_task("left")
    g = torch.Generator().manual_seed(2)
    positions = torch.randint(0, task.clean.shape[1], (len(task.clean), 3), generator=g)
    resid = model.embed(task.clean, task.attention_mask)
    if start is not None:
        resid = model.blocks[0](resid, task.attention_mask)
    kw = {} if start is None else {"start_at_layer": start, "resid": resid}
    with torch.no_grad():
        narrow = forward(model, task.clean, task.attention_mask, positions=positions, narrow_last_layer=True, **kw)
        full = forward(model, task.clean, task.attention_mask, positions=positions, **kw)
    assert narrow.shape == full.shape == (len(task.clean), 3, VOCAB)
    assert torch.allclose(narrow, full, atol=1e-5)


def test_predicted_passes_match_a_run():
    """`acdc.predicted_passes` (every edge tested once, by the pass accounting) is what a run spends, up to the prefix
    pass and speculative candidates wasted after kept edges (measured 1.10-1.13x here; fewer where nodes that feed
    nothing lose their inputs untested)."""
    for model in (_model(2, 32), _model(3, 32)):
        ctx = SearchContext.build(model, _task())
        ctx.reference()
        spent = acdc.run(ctx, acdc.ACDCConfig(tau=0.02, progress=False)).search_forward_passes
        assert 1.0 <= spent / acdc.predicted_passes(ctx.patcher, ctx.metric) <= 1.3
