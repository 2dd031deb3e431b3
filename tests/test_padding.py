"""Prompts of different lengths: every prompt run alone gives the same metric, patched metrics, mean
ablations and EAP scores as inside a padded batch, padded on the left or the right, on bridge and
SmallTransformer models. Built fresh here: random tiny models and token rows."""

import pytest
import torch

from acdc_lite import Ablation, EdgePatcher, ModelGraph, ablated_outputs, load_model, model_info, sender_outputs
from acdc_lite.padding import PaddingSide, forward
from acdc_lite.task import Task, TaskError, task_from_rows
from tests.conftest import BUILDERS, VOCAB

MODELS = ["small-ln-mlp", "gpt2", "llama-gqa"]
LENGTHS = [4, 9, 6, 7]


@pytest.fixture(scope="module", params=MODELS)
def model(request):
    torch.manual_seed(0)
    return load_model(BUILDERS[request.param]())


def _rows(multi: bool = False, seed: int = 3):
    """(clean, corrupt, answer, foil) token rows of LENGTHS tokens; answers of 1-3 tokens when `multi`."""
    g = torch.Generator().manual_seed(seed)
    rows = []
    for i, n in enumerate(LENGTHS):
        clean = torch.randint(1, VOCAB, (n,), generator=g).tolist()
        corrupt = torch.randint(1, VOCAB, (n,), generator=g).tolist()
        k = 1 + i % 3 if multi else 1
        answer = torch.randint(1, VOCAB, (k,), generator=g).tolist()
        foil = answer[:k - 1] + [(answer[-1] % (VOCAB - 1)) + 1]  # shares all but the last token
        rows.append((clean, corrupt, answer, foil))
    return rows


def _batch_and_alone(side: str, multi: bool = False) -> tuple[Task, list[Task]]:
    rows = _rows(multi)
    batch = task_from_rows("t", rows, padding_side=side, pad_id=0)
    alone = [task_from_rows("t", [r], padding_side=side) for r in rows]
    return batch, alone


def _patcher(model, task: Task, ablation=Ablation.RESAMPLE, ablated=None):
    graph = ModelGraph.from_model(model)
    if ablated is None:
        ablated = ablated_outputs(model, graph, task.corrupt, ablation, attention_mask=task.attention_mask)
    return graph, EdgePatcher(model, graph, task.clean, ablated, batch_size=3, attention_mask=task.attention_mask)


def _random_masks(graph, model, n=3, seed=0):
    g = torch.Generator().manual_seed(seed)
    kept = torch.rand(n, *graph.valid.shape, generator=g) < 0.5
    info = model_info(model)
    if info.n_kv_heads < info.n_heads:  # grouped k/v: heads of a group share their k/v masks
        h, group = graph.n_heads, info.n_heads // info.n_kv_heads
        for layer in range(graph.n_layers):
            for off in (h, 2 * h):
                s = layer * graph.receivers_per_layer + off
                kept[..., s:s + h] = kept[..., s:s + h:group].repeat_interleave(group, dim=-1)
    return kept


def _per_example(patcher: EdgePatcher, kept: torch.Tensor, metric, n: int) -> torch.Tensor:
    logits = patcher.logits(kept)  # [C, B, P, V]
    return torch.stack([metric(lg, torch.arange(n)) for lg in logits])  # [C, B]


def test_padding_puts_real_tokens_on_the_declared_side():
    right, _ = _batch_and_alone("right")
    left, _ = _batch_and_alone("left")
    assert right.padding_side is PaddingSide.RIGHT and left.padding_side is PaddingSide.LEFT
    assert right.lengths.tolist() == LENGTHS == left.lengths.tolist()
    assert right.answer_pos.tolist() == [n - 1 for n in LENGTHS]
    assert left.answer_pos.tolist() == [max(LENGTHS) - 1] * len(LENGTHS)
    assert right.attention_mask[0].tolist() == [True] * 4 + [False] * 5
    assert left.attention_mask[0].tolist() == [False] * 5 + [True] * 4
    assert torch.equal(right.with_padding("left").clean, left.clean)
    assert torch.equal(left.with_padding("right").answer_pos, right.answer_pos)
    assert right.describe()["padding_side"] == "right" and left.describe()["min_len"] == 4


@pytest.mark.parametrize("side", ["right", "left"])
def test_each_prompt_alone_equals_the_padded_batch(model, side):
    """Plain metric, patched metric under random edge sets, EAP and EAP-IG gradients; answers of one to three
    tokens (single-token answers under logit_diff are covered by the mean-ablation test below)."""
    multi = True
    batch, alone = _batch_and_alone(side, multi)
    metric_name = "seq_logit_diff"
    n = len(batch)
    graph, patcher = _patcher(model, batch)
    kept = _random_masks(graph, model)
    metric = batch.metric(metric_name)
    with torch.no_grad():
        plain = metric(batch.logits(model), torch.arange(n))
    patched = _per_example(patcher, kept, metric, n)
    full, grad = patcher.mask_gradient(metric)
    _, grad_ig = patcher.mask_gradient(metric, ig_steps=2)
    grads, grads_ig, singles = [], [], []
    for i, task in enumerate(alone):
        assert task.seq_len == LENGTHS[i] + (len(_rows(multi)[i][2]) - 1 if multi else 0)  # no padding alone
        m = task.metric(metric_name)
        with torch.no_grad():
            assert torch.allclose(m(task.logits(model), torch.arange(1)), plain[i:i + 1], atol=1e-5)
        _, p = _patcher(model, task)
        assert torch.allclose(_per_example(p, kept, m, 1)[:, 0], patched[:, i], atol=1e-5), f"example {i}"
        value, g = p.mask_gradient(m)
        singles.append(value)
        grads.append(g)
        grads_ig.append(p.mask_gradient(m, ig_steps=2)[1])
    assert full == pytest.approx(sum(singles) / n, abs=1e-5)
    assert torch.allclose(grad, torch.stack(grads).mean(0), atol=1e-5)
    assert torch.allclose(grad_ig, torch.stack(grads_ig).mean(0), atol=1e-5)
    assert grad.abs().max() > 1e-3  # the comparison is not between zeros


def test_left_and_right_padding_give_identical_scores(model):
    right, _ = _batch_and_alone("right", multi=True)
    left = right.with_padding("left")
    out = []
    for task in (right, left):
        graph, patcher = _patcher(model, task)
        m = task.metric("seq_logprob")
        out.append((patcher.evaluate(_random_masks(graph, model), m), patcher.mask_gradient(m)[1]))
    assert torch.allclose(out[0][0], out[1][0], atol=1e-5)
    assert torch.allclose(out[0][1], out[1][1], atol=1e-5)


@pytest.mark.parametrize("side", ["right", "left"])
def test_mean_ablation_averages_real_positions_only(model, side):
    batch, alone = _batch_and_alone(side)
    graph = ModelGraph.from_model(model)
    means = ablated_outputs(model, graph, batch.corrupt, Ablation.MEAN, attention_mask=batch.attention_mask)
    pieces = [sender_outputs(model, graph, t.corrupt) for t in alone]  # unpadded, [1, p_i, n, d] each
    for g, mean in enumerate(means):
        real = torch.cat([p[g][0] for p in pieces])  # [sum p_i, n, d]
        assert torch.allclose(mean[0, 0], real.mean(0), atol=1e-5)
    # patched under that (batch-wide) mean ablation: each prompt alone, same values
    _, patcher = _patcher(model, batch, ablated=means)
    kept = _random_masks(graph, model, n=2, seed=1)
    metric = batch.metric("logit_diff")
    patched = _per_example(patcher, kept, metric, len(batch))
    for i, task in enumerate(alone):
        _, p = _patcher(model, task, ablated=means)
        assert torch.allclose(_per_example(p, kept, task.metric("logit_diff"), 1)[:, 0], patched[:, i], atol=1e-5)


def test_mean_positional_refuses_mixed_lengths(model):
    batch, _ = _batch_and_alone("right")
    with pytest.raises(ValueError, match="mean-positional ablation needs prompts of one length.*4 to 9 tokens"):
        ablated_outputs(model, ModelGraph.from_model(model), batch.corrupt, Ablation.MEAN_POSITIONAL,
                        attention_mask=batch.attention_mask)


def test_suffix_recompute_with_left_padding_equals_full_pass():
    torch.manual_seed(0)
    model = load_model(BUILDERS["small-ln-mlp"]())
    batch, _ = _batch_and_alone("left")
    graph, patcher = _patcher(model, batch)
    kept = _random_masks(graph, model, n=1)[0]
    prefix = patcher.record_prefix(kept)
    changed = kept.clone()
    changed[:, graph.logits_receiver] = ~changed[:, graph.logits_receiver] & graph.valid[:, graph.logits_receiver]
    metric = batch.metric("logit_diff")
    full = patcher.evaluate(changed, metric)
    suffix = patcher.evaluate(changed, metric, start_layer=graph.n_layers - 1, prefix=prefix)
    assert torch.allclose(full, suffix, atol=1e-5)


def test_small_transformer_left_padding_matches_alone():
    torch.manual_seed(0)
    model = load_model(BUILDERS["small-ln-mlp"]())
    batch, alone = _batch_and_alone("left")
    with torch.no_grad():
        logits = forward(model, batch.clean, batch.attention_mask)
        for i, t in enumerate(alone):
            real = batch.attention_mask[i]
            assert torch.allclose(logits[i, real], model(t.clean)[0], atol=1e-5)
        assert torch.isfinite(logits).all()  # padded queries see only themselves: nothing is NaN


def test_sequence_logprob_is_the_sum_over_the_answer_tokens(model):
    batch, _ = _batch_and_alone("left", multi=True)
    rows = _rows(multi=True)
    values = batch.metric("seq_logprob")(batch.logits(model), torch.arange(len(batch)))
    for i, (clean, _, answer, _) in enumerate(rows):
        with torch.no_grad():
            lp = model(torch.tensor([clean + answer[:-1]]))[0].log_softmax(-1)
        expected = sum(float(lp[len(clean) - 1 + k, t]) for k, t in enumerate(answer))
        assert float(values[i]) == pytest.approx(expected, abs=1e-4)


def test_sequence_logit_diff_reads_the_first_differing_token(model):
    rows = [([1, 2, 3], [4, 5, 6], [7, 8, 9], [7, 8, 10]), ([1, 2], [3, 4], [5], [6])]
    task = task_from_rows("t", rows)
    assert task.answer_pos.tolist() == [2, 1] and task.seq_len == 5
    with torch.no_grad():
        lg = model(torch.tensor([[1, 2, 3, 7, 8]]))[0]
    value = task.metric("seq_logit_diff")(task.logits(model), torch.arange(2))
    assert float(value[0]) == pytest.approx(float(lg[4, 9] - lg[4, 10]), abs=1e-4)  # after the shared 7 8


def test_multi_token_answers_refuse_single_token_metrics():
    task = task_from_rows("t", _rows(multi=True))
    assert task.default_metric == "seq_logit_diff" and task.multi_token
    with pytest.raises(TaskError, match="answers of several tokens: metric logit_diff would read only the first"):
        task.metric("logit_diff")
    with pytest.raises(TaskError, match="do not differ at any token both have"):
        task_from_rows("t", [([1, 2], [3, 4], [5, 6], [5])], where=["f.jsonl:3"])


def test_kl_sums_over_the_answer_tokens(model):
    batch, alone = _batch_and_alone("left", multi=True)
    graph, patcher = _patcher(model, batch)
    kept = _random_masks(graph, model, n=2, seed=2)
    patched = _per_example(patcher, kept, batch.metric("kl", model), len(batch))
    assert patched.abs().min() > 0 and (patched <= 1e-6).all()
    for i, task in enumerate(alone):
        _, p = _patcher(model, task)
        single = _per_example(p, kept, task.metric("kl", model), 1)[:, 0]
        assert torch.allclose(single, patched[:, i], atol=1e-5)
        # by hand: the sum over the answer's positions of KL(clean || patched)
        logits, clean = p.logits(kept)[:, 0], task.logits(model)[0]
        n = int((task.answer_seqs[0] >= 0).sum())
        at = slice(int(task.answer_pos[0]), int(task.answer_pos[0]) + n)
        ref, lp = clean[at].log_softmax(-1), logits[:, at].log_softmax(-1)
        assert torch.allclose(single, -(ref.exp() * (ref - lp)).sum((-1, -2)), atol=1e-5)
