"""The bfloat16 path: a model loaded in bf16 keeps its memory halved while scores, masks' gradients and the
metric arithmetic stay float32 (fp32 stays the default: bf16 logits differ by 0.4-1.0 on the zoo)."""

import pytest
import torch

from acdc_lite import ModelGraph, Task, load_model, load_task, search
from acdc_lite.patching import EdgePatcher, ablated_outputs
from acdc_lite.search import discover
from tests.architectures import BY_NAME, VOCAB


def test_a_bf16_zoo_model_gives_the_fp32_circuit_with_float32_scores():
    circuits = {}
    for dtype in (torch.float32, torch.bfloat16):
        model = load_model("induction-attn-2l", dtype=dtype)
        task = load_task("induction", model, n_examples=32)
        result = search(model, task, method="eap", progress=False)
        assert result.scores.dtype == torch.float32
        circuits[dtype] = discover(model, task, method="eap", progress=False)
    fp32, bf16 = circuits[torch.float32], circuits[torch.bfloat16]
    assert set(bf16.edges) == set(fp32.edges)
    assert bf16.metrics["faithfulness"] == pytest.approx(fp32.metrics["faithfulness"], abs=0.02)


@pytest.mark.parametrize("family", ["gpt2", "llama-gqa"])
def test_bf16_hf_model_patches_like_its_own_forward(family):
    torch.manual_seed(0)
    model = load_model(BY_NAME[family].build(), dtype=torch.bfloat16)
    assert next(model.parameters()).dtype == torch.bfloat16
    g = torch.Generator().manual_seed(0)
    clean, corrupt = torch.randint(1, VOCAB, (4, 6), generator=g), torch.randint(1, VOCAB, (4, 6), generator=g)
    task = Task("toy", clean, corrupt, torch.randint(1, VOCAB, (4, 1), generator=g), torch.randint(1, VOCAB, (4, 1), generator=g))
    graph = ModelGraph.from_model(model)
    patcher = EdgePatcher(model, graph, task.clean, ablated_outputs(model, graph, task.corrupt))
    with torch.no_grad():
        own = model(task.clean).float()
    full = patcher.logits(graph.full_mask()).float()
    assert (full - own).abs().max().item() < 0.05  # bf16 rounding of the added corrections only
    result = search(model, task, method="eap", progress=False)
    assert result.scores.dtype == torch.float32 and torch.isfinite(result.scores[graph.valid]).all()
