"""The random baseline: the same measures for random edge sets of the circuit's size."""

from __future__ import annotations

from collections.abc import Callable

import numpy as np
import torch
from tqdm.auto import tqdm

from acdc_lite.faithfulness import faithfulness
from acdc_lite.graph import unit_members
from acdc_lite.patching import EdgePatcher
from acdc_lite.validate.passes import batched, per_example_metrics
from acdc_lite.validate.report import RandomBaseline


def random_baseline(patcher: EdgePatcher, metric: Callable, kl: Callable, n_edges: int, metric_full: float,
                    metric_empty: float, n_seeds: int = 5, seed: int = 0, candidates: int = 4,
                    progress: bool = False) -> RandomBaseline:
    """Faithfulness, completeness and KL of `n_seeds` uniformly random edge sets of `n_edges` edges."""
    graph = patcher.graph
    units = unit_members(graph)
    masks = []
    for i in range(n_seeds):  # whole units (tied k/v edges) in random order until n_edges are reached
        m = torch.zeros_like(graph.valid)
        count = 0
        for u in torch.randperm(len(units), generator=torch.Generator().manual_seed(seed + i)).tolist():
            if count >= n_edges:
                break
            rows, cols = units[u]
            m[rows, cols] = True
            count += len(rows)
        masks += [m, graph.valid & ~m]
    metric_v, kl_v = [], []
    for batch in tqdm(list(batched(masks, candidates)), desc="random circuits", disable=not progress, leave=False):
        out = per_example_metrics(patcher, torch.stack(batch), {"metric": metric, "kl": kl})
        metric_v += out["metric"].mean(1).tolist()
        kl_v += (-out["kl"]).mean(1).tolist()
    f = np.array([faithfulness(v, metric_full, metric_empty) for v in metric_v[0::2]])
    comp = np.array([faithfulness(v, metric_full, metric_empty) for v in metric_v[1::2]])
    kls = np.array(kl_v[0::2])
    return RandomBaseline(n_seeds, n_edges, float(f.mean()), float(f.std()), float(comp.mean()), float(comp.std()),
                          float(kls.mean()), float(kls.std()), f.tolist())
