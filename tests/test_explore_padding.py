"""Padding changes no exploration result: the patching sweeps, the neuron view and the logit lens give the same
values on prompts of different lengths padded on the left (with an attention mask) as on the right."""

import pytest
import torch

from acdc_lite import load_model
from acdc_lite.explore.attention import head_pattern
from acdc_lite.explore.lens import logit_lens
from acdc_lite.explore.neurons import neuron_view
from acdc_lite.explore.sweeps import sweep
from acdc_lite.task import task_from_rows
from tests.conftest import BUILDERS, VOCAB

LENGTHS = [4, 9, 6, 7]


@pytest.fixture(scope="module", params=["gpt2", "llama-gqa"])
def model(request):
    torch.manual_seed(0)
    return load_model(BUILDERS[request.param]())


@pytest.fixture(scope="module")
def tasks():
    g = torch.Generator().manual_seed(5)
    rows = []
    for n in LENGTHS:
        clean, corrupt = (torch.randint(1, VOCAB, (n,), generator=g).tolist() for _ in range(2))
        answer = torch.randint(1, VOCAB, (1,), generator=g).tolist()
        rows.append((clean, corrupt, answer, [(answer[0] % (VOCAB - 1)) + 1]))
    right = task_from_rows("t", rows, padding_side="right", pad_id=0)
    return right, right.with_padding("left")


def test_a_head_sweep_does_not_depend_on_the_padding_side(model, tasks):
    right, left = (sweep(model, t, "head_out", by_position=False) for t in tasks)
    assert right.clean_value == pytest.approx(left.clean_value, abs=1e-4)
    assert right.corrupt_value == pytest.approx(left.corrupt_value, abs=1e-4)
    assert torch.allclose(torch.tensor(right.frame["metric"].values), torch.tensor(left.frame["metric"].values), atol=1e-4)


def test_an_aligned_position_sweep_does_not_depend_on_the_padding_side(model, tasks):
    right, left = (sweep(model, t, "resid_pre", by_position=True, align=True) for t in tasks)
    assert torch.allclose(torch.tensor(right.frame["metric"].values), torch.tensor(left.frame["metric"].values), atol=1e-4)


def test_the_neuron_view_and_logit_lens_do_not_depend_on_the_padding_side(model, tasks):
    right, left = (neuron_view(model, t, "m1", top_k=3) for t in tasks)
    assert torch.allclose(right.attribution, left.attribution, atol=1e-4)
    assert right.mlp_effect == pytest.approx(left.mlp_effect, abs=1e-4)
    assert right.patched.keys() == left.patched.keys()
    assert all(right.patched[k] == pytest.approx(left.patched[k], abs=1e-4) for k in right.patched)
    lens_right, lens_left = (logit_lens(model, t) for t in tasks)
    assert torch.allclose(lens_right.metric, lens_left.metric, atol=1e-4)
    assert torch.equal(lens_right.answer_rank, lens_left.answer_rank)


def test_a_head_pattern_does_not_depend_on_the_padding_side(model, tasks):
    right, left = tasks
    a = head_pattern(model, right.clean, "a1.h2", right.attention_mask)
    b = head_pattern(model, left.clean, "a1.h2", left.attention_mask)
    for i, n in enumerate(LENGTHS):  # the real block of each prompt: top-left on the right, bottom-right on the left
        assert torch.allclose(a[i, :n, :n], b[i, -n:, -n:], atol=1e-5)
