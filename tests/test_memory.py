"""Memory planning: sizes as written, the estimate's parts against what the code really keeps, --max-memory."""

import pytest
import torch
from typer.testing import CliRunner

from acdc_lite import load_model
from acdc_lite.boundary import UsageError
from acdc_lite.cli import app
from acdc_lite.memory import Shape, estimate, fit, model_shape, parse_max_memory, parse_size
from acdc_lite.search.common import SearchContext
from acdc_lite.task import Task
from tests.conftest import BUILDERS


@pytest.mark.parametrize("text, size", [("800MB", 800 * 10**6), ("2GB", 2 * 10**9), ("1.5GiB", int(1.5 * 2**30)),
                                        ("123456", 123456), ("64 kib", 65536)])
def test_sizes(text, size):
    assert parse_size(text) == size


@pytest.mark.parametrize("text", ["lots", "2XB", "-1GB", "0", ""])
def test_bad_sizes_name_the_option(text):
    with pytest.raises(UsageError, match="--max-memory"):
        parse_size(text)


def test_per_device_limits():
    assert parse_max_memory("2GB") == {"cpu": 2 * 10**9}
    assert parse_max_memory("cpu=1GB,0=10GiB") == {"cpu": 10**9, 0: 10 * 2**30}
    for bad in ("cpu=1GB,cpu=2GB", "gpu=1GB", "1GB,2GB"):
        with pytest.raises(UsageError, match="--max-memory"):
            parse_max_memory(bad)


GPT2_SMALL = Shape(12, 12, 768, 3072, 50257, "bridge")


NO_BUDGET = 10.0**6  # MB: chunks are the batch size (the patcher's own budget would cap them)


def test_estimate_scales_with_the_batch_and_keeps_the_cache():
    small, large = (estimate(GPT2_SMALL, "eap", 32, 16, b, memory_mb=NO_BUDGET) for b in (4, 8))
    assert large.working > small.working
    assert small.phases["gradient pass"]["ablated outputs"] == large.phases["gradient pass"]["ablated outputs"] == \
        32 * 16 * (1 + 12 * 13) * 768 * 4  # every sender's corrupted output, float32
    assert large.phases["gradient pass"]["saved activations"] == 2 * small.phases["gradient pass"]["saved activations"]
    assert estimate(GPT2_SMALL, "eap-ig", 32, 16, 8, memory_mb=NO_BUDGET).peak > large.peak  # integrated gradients keep a running sum
    assert estimate(GPT2_SMALL, "eap", 32, 16, 8, ablation="mean", memory_mb=NO_BUDGET).peak < large.peak
    assert estimate(GPT2_SMALL, "eap", 32, 16, 8, baseline=10**9, memory_mb=NO_BUDGET).peak == large.peak + 10**9


def test_a_prefixed_method_holds_its_prefix_where_it_records_one():
    """ACDC and exact keep a recorded prefix through their patched passes; the hybrid also records one in its
    gradient passes (`EdgePatcher.probe`); eap records none."""
    prefix = 32 * 16 * (1 + 12 * 13 + 12) * 768 * 4  # every chunk's sender differences and residuals, float32
    plans = {m: estimate(GPT2_SMALL, m, 32, 16, 8) for m in ("acdc", "hybrid", "eap")}
    assert plans["acdc"].phases["patched passes"]["prefix"] == plans["hybrid"].phases["patched passes"]["prefix"] == prefix
    assert plans["hybrid"].phases["gradient pass"]["prefix"] == prefix
    assert plans["eap"].phases["gradient pass"]["prefix"] == plans["eap"].phases["patched passes"]["prefix"] == 0
    assert "gradient pass" not in plans["acdc"].phases


def test_estimate_chunks_as_the_patcher_does():
    from acdc_lite.patching import chunk_rows

    eval_rows, grad_rows = chunk_rows(GPT2_SMALL.n_senders, 768, 12, 12, 50257, 16, 8)
    assert (eval_rows, grad_rows) == (22, 6)  # 384 MB per chunk at GPT-2 small, 16 tokens
    six, eight = (estimate(GPT2_SMALL, "eap", 32, 16, b) for b in (6, 8))
    assert six.phases["gradient pass"] == eight.phases["gradient pass"]  # both run 6 prompts per gradient chunk
    four = estimate(GPT2_SMALL, "eap", 32, 16, 4)
    assert eight.phases["patched passes"]["sender differences"] == 2 * four.phases["patched passes"]["sender differences"]


def test_fit_lowers_the_batch_until_it_fits_or_refuses():
    full = estimate(GPT2_SMALL, "eap", 32, 16, 32, memory_mb=NO_BUDGET)
    eight = estimate(GPT2_SMALL, "eap", 32, 16, 8, memory_mb=NO_BUDGET)
    plan = fit(GPT2_SMALL, "eap", 32, 16, 32, limit=eight.peak + 1, memory_mb=NO_BUDGET)
    assert plan.batch_size == 8 and plan.peak <= eight.peak + 1 < full.peak
    assert fit(GPT2_SMALL, "eap", 32, 16, 32, limit=full.peak, memory_mb=NO_BUDGET).batch_size == 32
    with pytest.raises(UsageError, match="even one prompt at a time"):
        fit(GPT2_SMALL, "eap", 32, 16, 32, limit=10**6)


def _saved_bytes(model, b: int, p: int) -> int:
    """Bytes autograd keeps for the backward pass of one EAP gradient pass (parameters excluded)."""
    d_vocab = model_shape(model).d_vocab
    g = torch.Generator().manual_seed(0)
    tokens = [torch.randint(0, d_vocab, (b, p), generator=g) for _ in range(2)]
    ends = [torch.randint(0, d_vocab, (b, 1), generator=g) for _ in range(2)]
    # twin=False: the passes run on `model` itself (a GPT-2 bridge would otherwise run them on its native twin)
    ctx = SearchContext.build(model, Task("random", tokens[0], tokens[1], ends[0], ends[1]), batch_size=b, twin=False)
    params = {q.untyped_storage().data_ptr() for q in model.parameters()}
    seen = {}

    def pack(t):
        storage = t.untyped_storage()
        if storage.data_ptr() not in params and storage.device.type != "meta":
            seen[storage.data_ptr()] = storage.nbytes()
        return t

    with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
        ctx.patcher.mask_gradient(ctx.metric)
    return sum(seen.values())


@pytest.mark.parametrize("name", ["gpt2", "llama-gqa", "small-ln-mlp"])
def test_saved_activations_estimate_matches_what_autograd_keeps(name):
    """The estimate's largest part, counted on the code itself: a change to patching that keeps more for the backward
    pass must update SAVED_PER_LAYER."""
    torch.manual_seed(0)
    model = load_model(BUILDERS[name]())
    b, p = 3, 11
    planned = estimate(model_shape(model), "eap", b, p, b).phases["gradient pass"]["saved activations"]
    measured = _saved_bytes(model, b, p)
    assert 0.7 * measured <= planned <= 1.5 * measured, (planned, measured)


def test_cli_refuses_a_run_that_cannot_fit(tmp_path):
    res = CliRunner().invoke(app, ["discover", "--method", "eap", "--n-examples", "8", "--max-memory", "1MB",
                                   "--out", str(tmp_path / "o"), "--quiet"])
    assert res.exit_code == 2, res.output
    assert "even one prompt at a time" in res.output and len(res.output.strip().splitlines()) == 1
    assert not (tmp_path / "o").exists()


def test_max_memory_chunks_the_batch_and_records_the_plan(tmp_path, monkeypatch):
    import json

    from acdc_lite import memory
    from acdc_lite.pipeline import DiscoverConfig, discover_into

    monkeypatch.setattr(memory, "resident_bytes", lambda: 0)  # this test's process holds whatever earlier tests left
    model = load_model("induction-attn-2l")
    settings = {"method": "eap", "n_examples": 16, "batch_size": 16, "seed": 0}
    plain = discover_into(tmp_path / "plain", DiscoverConfig.parse(settings, "t"), progress=False)
    seq_len = plain.memory_plan.seq_len
    limit = estimate(model_shape(model), "eap", 16, seq_len, 4).peak
    assert estimate(model_shape(model), "eap", 16, seq_len, 5).peak > limit
    chunked = discover_into(tmp_path / "chunked", DiscoverConfig.parse({**settings, "max_memory": str(limit)}, "t"),
                            progress=False)
    assert plain.memory_plan.batch_size == 16 and chunked.memory_plan.batch_size == 4
    assert chunked.memory_plan.peak <= limit
    assert json.loads((tmp_path / "chunked" / "config.json").read_text())["batch_size"] == 4
    record = json.loads((tmp_path / "chunked" / "run.json").read_text())
    assert record["memory_plan"]["batch_size"] == 4
    assert set(chunked.circuit.edges) == set(plain.circuit.edges)  # chunking changes how, not what (up to float sums)
    for edge, score in plain.circuit.edges.items():
        assert chunked.circuit.edges[edge] == pytest.approx(score, rel=1e-5)
