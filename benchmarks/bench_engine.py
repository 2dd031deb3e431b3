"""Engine benchmark: cost of one patched forward pass and of the mask gradient, against a plain forward.

Model: a GPT-2-small-shaped random model (12 layers x 12 heads, d_model 768, vocab 50257) wrapped by
TransformerLens' bridge as `load_model` does; batch 32 x 16 tokens. Each measurement runs in its own
subprocess so its peak resident memory (VmHWM) is its own. Ratios are against the plain forward
pass of the same bridge model measured in the same run.

    python benchmarks/bench_engine.py            # writes benchmarks/engine_results.md
"""

from __future__ import annotations

import json
import subprocess
import sys
import time
from pathlib import Path

BATCH, SEQ, REPEATS = 32, 16, 5


def build():
    import torch
    from transformers import GPT2Config, GPT2LMHeadModel

    from acdc_lite import ModelGraph, load_model

    torch.manual_seed(0)
    torch.set_grad_enabled(False)
    hf = GPT2LMHeadModel(GPT2Config()).eval()
    model = load_model(hf)
    tokens = torch.randint(0, 50257, (BATCH, SEQ))
    corrupt = torch.randint(0, 50257, (BATCH, SEQ))
    return hf, model, ModelGraph.from_model(model), tokens, corrupt


def measure(kind: str) -> dict:
    import torch

    from acdc_lite import EdgePatcher, ablated_outputs
    from acdc_lite.benchmark import peak_memory_mb

    hf, model, graph, tokens, corrupt = build()
    if kind == "hf_forward":
        step = lambda: hf(tokens)  # noqa: E731
    elif kind == "plain_forward":  # the ratio's noise floor
        step = lambda: model(tokens)  # noqa: E731
    else:
        patcher = EdgePatcher(model, graph, tokens, ablated_outputs(model, graph, corrupt), batch_size=BATCH)
        rand = torch.rand(graph.valid.shape, generator=torch.Generator().manual_seed(0))
        share = {"patched_half": 0.5, "patched_circuit": 0.003, "patched_one_removed": None}.get(kind)
        kept = graph.valid & (rand < share) if share else graph.full_mask()
        if kind == "patched_one_removed":
            kept[graph.n_senders // 2, graph.n_receivers // 2] = False

        def metric(logits, idx):
            return logits[:, -1, 0] - logits[:, -1, 1]

        if kind.startswith("patched"):
            step = lambda: patcher.logits(kept)  # noqa: E731
        else:
            step = lambda: patcher.mask_gradient(metric)  # noqa: E731
    plain = lambda: model(tokens)  # noqa: E731
    step(), plain()
    times, plain_times = [], []
    for _ in range(REPEATS):  # interleaved with plain forwards, so load on the machine hits both alike
        for fn, out in ((step, times), (plain, plain_times)):
            start = time.perf_counter()
            fn()
            out.append(time.perf_counter() - start)
    seconds, plain_seconds = sorted(times)[REPEATS // 2], sorted(plain_times)[REPEATS // 2]
    return {"kind": kind, "seconds": seconds, "ratio": seconds / plain_seconds,
            "peak_rss_mb": peak_memory_mb()}


def main() -> None:
    rows = []
    for kind in ["hf_forward", "plain_forward", "patched_one_removed", "patched_circuit", "patched_half", "mask_gradient"]:
        out = subprocess.run([sys.executable, __file__, kind], capture_output=True, text=True, check=True)
        rows.append(json.loads(out.stdout.strip().splitlines()[-1]))
    lines = [
        "# Engine benchmark",
        "",
        f"GPT-2-small-shaped random model (12 x 12, d_model 768, vocab 50257), batch {BATCH} x {SEQ} tokens. "
        f"One subprocess per row: {REPEATS} runs of the measurement interleaved with {REPEATS} plain forward passes "
        "of the same bridge model, after one warm-up; seconds and the ratio are medians. Peak RSS is the "
        "subprocess's and includes the model and Python.",
        "Patched forwards: all edges but one kept (an ACDC step), about 100 random edges kept (a circuit), and half of "
        "the 32,491 edges kept at random (the dense worst case). Mask gradient: forward + backward giving "
        "d metric / d kept for every edge.",
        "",
        "| measurement | seconds | x plain forward | peak RSS (MB) |",
        "|---|---|---|---|",
    ]
    for r in rows:
        lines.append(f"| {r['kind']} | {r['seconds']:.3f} | {r['ratio']:.2f} | {r['peak_rss_mb']:.0f} |")
    import torch

    lines += ["", "Targets (issue 2): patched forward <= 1.5x, mask gradient <= 4x a plain forward.",
              f"Run with {torch.get_num_threads()} torch thread(s), torch {torch.__version__}.",
              "Re-run: `.venv/bin/python benchmarks/bench_engine.py` (about two minutes on 2 CPU cores; set "
              "OMP_NUM_THREADS=1 when other jobs share the cores, since spinning OpenMP threads distort every timing)."]
    path = Path(__file__).with_name("engine_results.md")
    path.write_text("\n".join(lines) + "\n")
    print("\n".join(lines))


if __name__ == "__main__":
    if len(sys.argv) > 1:
        print(json.dumps(measure(sys.argv[1])))
    else:
        main()
