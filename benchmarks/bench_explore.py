"""Explore benchmark: what activation-patching sweeps and path patching cost on a GPT-2-small-shaped model.

Model: a random GPT-2-small-shaped model (12 layers x 12 heads, d_model 768, vocab 50257) wrapped by
TransformerLens' bridge as `load_model` does; a task of 4 prompts x 4 random tokens (corrupt: other random
tokens, answer/foil: random ids). Each sweep is timed once; "x forward" is its seconds over one plain forward
pass of the same model on the same prompts (median of 5), measured in the same run. Passes count every
forward pass: the patched cells, the clean and corrupted baselines and the cached run. Two sweeps are run
(residual stream per layer x position, head output over all positions); the other kinds cost the same per
pass and their cell counts follow from the shape (attn_out, mlp_out: 12 x 4; head q/k/v/pattern overall:
144; a per-head sweep by position, 12 x 12 x 4 = 576 cells, is counted, not run).

    OMP_NUM_THREADS=1 python benchmarks/bench_explore.py     # writes benchmarks/explore.md and explore.csv
"""

from __future__ import annotations

import statistics
import time
from pathlib import Path

BATCH, SEQ = 4, 4


def main() -> None:
    import pandas as pd
    import torch
    from transformers import GPT2Config, GPT2LMHeadModel

    from acdc_lite import Task, load_model
    from acdc_lite.explore.paths import PathPatcher
    from acdc_lite.explore.sweeps import Direction, SweepKind, sweep

    torch.manual_seed(0)
    torch.set_grad_enabled(False)
    model = load_model(GPT2LMHeadModel(GPT2Config()).eval())
    g = torch.Generator().manual_seed(0)
    clean, corrupt = torch.randint(0, 50257, (BATCH, SEQ), generator=g), torch.randint(0, 50257, (BATCH, SEQ), generator=g)
    answers = torch.randint(0, 50257, (BATCH, 1), generator=g)
    task = Task("random", clean, corrupt, answers, (answers + 1) % 50257)
    model(clean)  # warm-up
    times = []
    for _ in range(5):
        t0 = time.perf_counter()
        model(clean)
        times.append(time.perf_counter() - t0)
    forward = statistics.median(times)
    rows = []
    for kind, by_pos in [(SweepKind.RESID_PRE, True), (SweepKind.HEAD_OUT, False)]:
        s = sweep(model, task, kind, Direction.DENOISE, by_position=by_pos)
        rows.append({"what": f"sweep {kind.value}" + ("" if not kind.per_head else " (all positions)"),
                     "cells": len(s.frame), "forward_passes": s.forward_passes, "seconds": round(s.seconds, 2),
                     "x_forward": round(s.seconds / forward, 1), "x_forward_per_pass": round(s.seconds / forward / s.forward_passes, 2)})
    n_by_pos = 12 * 12 * SEQ
    rows.append({"what": "sweep head_out by position (counted, not run)", "cells": n_by_pos, "forward_passes": n_by_pos + 3,
                 "seconds": None, "x_forward": None, "x_forward_per_pass": None})
    t0 = time.perf_counter()
    pp = PathPatcher.build(model, task)
    build = time.perf_counter() - t0
    passes_before = pp.patcher.forward_passes
    t0 = time.perf_counter()
    for sender in ["a0.h0", "a5.h3", "a10.h7", "m4"]:
        pp.effect(sender, ["a11.h0", "logits"])
    one = (time.perf_counter() - t0) / 4
    rows.append({"what": "path patching: setup (sender outputs on corrupt, model and ablated model)", "cells": None,
                 "forward_passes": round(1 + passes_before, 2), "seconds": round(build, 2), "x_forward": round(build / forward, 1),
                 "x_forward_per_pass": None})
    rows.append({"what": "path patching: one path (one patched pass)", "cells": 1,
                 "forward_passes": round((pp.patcher.forward_passes - passes_before) / 4, 2), "seconds": round(one, 2),
                 "x_forward": round(one / forward, 1), "x_forward_per_pass": round(one / forward, 2)})
    frame = pd.DataFrame(rows)
    out = Path(__file__).parent
    frame.to_csv(out / "explore.csv", index=False)
    lines = ["# Explore benchmark: sweep and path-patching cost", "",
             "Written by `OMP_NUM_THREADS=1 python benchmarks/bench_explore.py` (see its docstring) on the machine's 2 cores, "
             "as the only job of its session; other sessions shared the machine (load average about 10), so absolute seconds "
             "are inflated and only the ratios, measured in the same run, carry over. Random GPT-2-small-shaped model "
             f"(bridge), {BATCH} prompts x {SEQ} tokens. One plain forward pass: {forward:.3f} s. x forward = seconds / one "
             "plain forward, in the same run; direction clean-into-corrupt.", "",
             "| " + " | ".join(frame.columns) + " |", "|" + "---|" * len(frame.columns)]
    for r in rows:
        lines.append("| " + " | ".join("" if v is None else str(v) for v in r.values()) + " |")
    lines += ["", "A sweep costs one forward pass per cell (transformer-lens runs each cell over the whole batch), plus 3; "
              "x forward per pass near 1 means no overhead beyond the passes themselves. A path costs one patched pass "
              "of the edge patcher."]
    (out / "explore.md").write_text("\n".join(lines) + "\n")


if __name__ == "__main__":
    main()
