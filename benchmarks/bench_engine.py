"""Engine benchmark: cost of one patched forward pass and of the mask gradient, against a plain forward.

Model: a GPT-2-small-shaped random model (12 layers x 12 heads, d_model 768, vocab 50257) wrapped by
TransformerLens' bridge as `load_model` does; batch 32 x 16 tokens. Each measurement runs in its own
subprocess so its peak resident memory (ru_maxrss) is its own. Ratios are against the plain forward
pass of the same bridge model measured in the same run.

    python benchmarks/bench_engine.py            # writes benchmarks/engine_results.md
"""

from __future__ import annotations

import json
import resource
import subprocess
import sys
import time
from pathlib import Path

BATCH, SEQ, REPEATS = 32, 16, 3


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

    hf, model, graph, tokens, corrupt = build()
    if kind == "hf_forward":
        step = lambda: hf(tokens)  # noqa: E731
    elif kind == "plain_forward":
        step = lambda: model(tokens)  # noqa: E731
    else:
        patcher = EdgePatcher(model, graph, tokens, ablated_outputs(model, graph, corrupt), batch_size=BATCH)
        kept = graph.valid & (torch.rand(graph.valid.shape, generator=torch.Generator().manual_seed(0)) < 0.5)

        def metric(logits, idx):
            return logits[:, -1, 0] - logits[:, -1, 1]

        if kind == "patched_forward":
            step = lambda: patcher.logits(kept)  # noqa: E731
        else:
            step = lambda: patcher.mask_gradient(metric)  # noqa: E731
    step()
    start = time.perf_counter()
    for _ in range(REPEATS):
        step()
    seconds = (time.perf_counter() - start) / REPEATS
    return {"kind": kind, "seconds": seconds, "peak_rss_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024}


def main() -> None:
    rows = []
    for kind in ["hf_forward", "plain_forward", "patched_forward", "mask_gradient"]:
        out = subprocess.run([sys.executable, __file__, kind], capture_output=True, text=True, check=True)
        rows.append(json.loads(out.stdout.strip().splitlines()[-1]))
    plain = next(r for r in rows if r["kind"] == "plain_forward")
    lines = [
        "# Engine benchmark",
        "",
        f"GPT-2-small-shaped random model (12 x 12, d_model 768, vocab 50257), batch {BATCH} x {SEQ} tokens, "
        f"mean of {REPEATS} runs after one warm-up, one subprocess per row (peak RSS includes the model and Python).",
        "Patched forward: a random circuit with half of the 32,491 edges kept. Mask gradient: forward + backward "
        "giving d metric / d kept for every edge.",
        "",
        "| measurement | seconds | x plain forward | peak RSS (MB) |",
        "|---|---|---|---|",
    ]
    for r in rows:
        lines.append(f"| {r['kind']} | {r['seconds']:.3f} | {r['seconds'] / plain['seconds']:.2f} | {r['peak_rss_mb']:.0f} |")
    lines += ["", "Targets (issue 2): patched forward <= 1.5x, mask gradient <= 4x a plain forward.",
              "Re-run: `.venv/bin/python benchmarks/bench_engine.py` (about two minutes on 2 CPU cores)."]
    path = Path(__file__).with_name("engine_results.md")
    path.write_text("\n".join(lines) + "\n")
    print("\n".join(lines))


if __name__ == "__main__":
    if len(sys.argv) > 1:
        print(json.dumps(measure(sys.argv[1])))
    else:
        main()
