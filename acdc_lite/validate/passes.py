"""Measuring several metrics per example in one patched pass, and batching candidate masks."""

from __future__ import annotations

from collections.abc import Callable, Sequence

import numpy as np
import torch

from acdc_lite.faithfulness import PER_EXAMPLE_RTOL, faithfulness
from acdc_lite.patching import EdgePatcher
from acdc_lite.validate.report import PerExample


def per_example_metrics(patcher: EdgePatcher, kept: torch.Tensor, metrics: dict[str, Callable],
                        start_layer: int = 0, prefix=None) -> dict[str, torch.Tensor]:
    """Per-example values of several metrics for C candidate masks in one patched pass: name -> [C, N].

    kept: [S, R] or [C, S, R]. The first metric is the one the patcher checks for NaN.
    """
    c = 1 if kept.dim() == 2 else kept.shape[0]
    n = len(patcher.tokens)
    out = {name: torch.full((c, n), float("nan")) for name in metrics}

    def recorder(logits, idx):
        examples = idx.view(c, -1)[0].cpu()
        first = None
        for name, fn in metrics.items():
            values = fn(logits, idx)
            out[name][:, examples] = values.detach().float().view(c, -1).cpu()
            first = values if first is None else first
        return first

    patcher.evaluate(kept, recorder, start_layer=start_layer, prefix=prefix)
    return out


def batched(items: Sequence, size: int):
    for i in range(0, len(items), size):
        yield items[i:i + size]


def per_example(m: torch.Tensor, mean_gap: float, rel: float = PER_EXAMPLE_RTOL) -> PerExample:
    """m: [4, N] per-example metric of full, empty, circuit, complement."""
    full, empty, circ = m[0].double(), m[1].double(), m[2].double()
    gap = full - empty
    min_gap = rel * mean_gap
    ok = gap.abs() >= min_gap
    safe_full = torch.where(ok, full, empty + 1)  # an excluded example divides by 1, then becomes NaN
    f = torch.where(ok, faithfulness(circ, safe_full, empty), torch.tensor(float("nan"), dtype=torch.float64))
    kept = f[ok].numpy()
    if len(kept) == 0:
        q = [float("nan")] * 5
        mean = std = float("nan")
    else:
        q = np.quantile(kept, [0.05, 0.25, 0.5, 0.75, 0.95]).tolist()
        mean, std = float(kept.mean()), float(kept.std())
    return PerExample(n=len(f), n_excluded=int((~ok).sum()), min_gap=float(min_gap), mean=mean, std=std,
                      q05=q[0], q25=q[1], median=q[2], q75=q[3], q95=q[4], values=f.tolist(), metric_circuit=circ.tolist())
