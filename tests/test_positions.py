"""Logits only where a metric reads them: built-in metrics declare their positions (PositionMetric), passes then
unembed only those, and every metric value and mask gradient is the one computed from the logits at every position,
on HF GPT-2 and GQA Llama bridges and a SmallTransformer, right- and left-padded, one- and several-token answers."""

import pytest
import torch

from acdc_lite import ModelGraph, hooks, load_model
from acdc_lite.metrics import PositionMetric, on_rows
from acdc_lite.padding import forward
from acdc_lite.patching import EdgePatcher, ablated_outputs
from acdc_lite.search.common import SearchContext
from acdc_lite.task import task_from_rows
from tests.conftest import BUILDERS, VOCAB

LENGTHS = [4, 9, 6, 7, 5]
METRICS = {1: ["logit_diff", "prob_diff", "logprob", "kl"], 2: ["seq_logprob", "seq_logit_diff", "kl"]}


@pytest.fixture(scope="module", params=["gpt2", "llama-gqa", "small-ln-mlp"])
def model(request):
    torch.manual_seed(0)
    return load_model(BUILDERS[request.param]())


def _task(answer_tokens: int, side: str):
    g = torch.Generator().manual_seed(answer_tokens)
    rows = []
    for n in LENGTHS:
        clean, corrupt = (torch.randint(1, VOCAB, (n,), generator=g).tolist() for _ in range(2))
        answer = torch.randint(1, VOCAB, (answer_tokens,), generator=g).tolist()
        rows.append((clean, corrupt, answer, [answer[0] % (VOCAB - 1) + 1] + answer[1:]))
    return task_from_rows("t", rows, padding_side=side, pad_id=0)


def _everywhere(metric):
    """The same metric as a plain function: it gets the logits at every position."""
    return lambda logits, idx: metric(logits, idx)


def test_forward_at_positions_is_the_full_logits_there(model):
    task = _task(2, "left")
    at = torch.stack([task.answer_pos, task.answer_pos + 1, torch.zeros_like(task.answer_pos)], dim=1)  # [N, 3]
    with torch.no_grad():
        full = forward(model, task.clean, task.attention_mask)
        some = forward(model, task.clean, task.attention_mask, positions=at)
    assert some.shape == (len(task), 3, full.shape[-1])
    torch.testing.assert_close(some, full[torch.arange(len(task))[:, None], at], atol=1e-5, rtol=1e-5)


@pytest.mark.parametrize("answer_tokens", [1, 2])
@pytest.mark.parametrize("side", ["right", "left"])
def test_metrics_and_gradients_at_their_positions_equal_the_full_logits_ones(model, answer_tokens, side):
    task = _task(answer_tokens, side)
    graph = ModelGraph.from_model(model)
    g = torch.Generator().manual_seed(1)
    masks = torch.stack([graph.full_mask(), graph.empty_mask(), graph.tie(torch.rand(graph.valid.shape, generator=g) < 0.5)])
    ablated = ablated_outputs(model, graph, task.corrupt, attention_mask=task.attention_mask)
    patcher = EdgePatcher(model, graph, task.clean, ablated, batch_size=2, attention_mask=task.attention_mask)
    for name in METRICS[answer_tokens]:
        metric = task.metric(name, model=model)
        assert isinstance(metric, PositionMetric) and metric.metric_name == name
        plain = _everywhere(metric)
        torch.testing.assert_close(patcher.evaluate(masks, metric, per_example=True),
                                   patcher.evaluate(masks, plain, per_example=True), atol=1e-5, rtol=1e-5)
        value, grad = patcher.mask_gradient(metric, masks[2].float())
        value_plain, grad_plain = patcher.mask_gradient(plain, masks[2].float())
        assert value == pytest.approx(value_plain, abs=1e-5)
        assert grad.abs().max() > 0
        torch.testing.assert_close(grad, grad_plain, atol=1e-5, rtol=1e-4)
        rows = torch.tensor([3, 0])
        torch.testing.assert_close(patcher.subset(rows).evaluate(masks, on_rows(metric, rows), per_example=True),
                                   patcher.evaluate(masks, plain, per_example=True)[:, rows], atol=1e-5, rtol=1e-5)


def test_passes_unembed_only_the_positions_read(model):
    """Every model here unembeds at a hook (not all positions, then taken); a built-in metric gets one position per
    example from a patched pass and from a gradient pass, a custom one every position."""
    assert hooks.UNEMBED_IN in model.hook_dict
    task = _task(1, "left")
    graph = ModelGraph.from_model(model)
    patcher = EdgePatcher(model, graph, task.clean, ablated_outputs(model, graph, task.corrupt,
                                                                    attention_mask=task.attention_mask),
                          attention_mask=task.attention_mask)
    metric = task.metric("logit_diff")
    seen = []

    def at(x, idx):
        seen.append(tuple(x.shape[:2]))
        return metric.at(x, idx)

    def everywhere(logits, idx):
        seen.append(tuple(logits.shape[:2]))
        return metric(logits, idx)

    patcher.evaluate(graph.full_mask(), PositionMetric(metric.positions, at))
    patcher.mask_gradient(PositionMetric(metric.positions, at))
    patcher.evaluate(graph.full_mask(), everywhere)
    assert seen == [(len(task), 1), (len(task), 1), (len(task), task.seq_len)]


def test_the_cache_pass_measures_the_corrupted_metric_at_its_positions(model):
    task = _task(1, "right")
    ctx = SearchContext.build(model, task, "logit_diff")
    corrupted = task.metric("logit_diff")(task.logits(model, "corrupt"), torch.arange(len(task))).mean()
    assert ctx.corrupt_metric == pytest.approx(float(corrupted), abs=1e-5)
