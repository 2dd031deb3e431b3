"""Stability: a search re-run on bootstrap resamples of the task's examples."""

from __future__ import annotations

from collections.abc import Callable

import numpy as np
import torch
from tqdm.auto import tqdm

from acdc_lite.circuit import Circuit
from acdc_lite.graph import jaccard
from acdc_lite.task import Task
from acdc_lite.validate.report import Stability


def stability(task: Task, search: Callable[[Task], Circuit], n_resamples: int = 5, seed: int = 0,
              circuit: Circuit | None = None, progress: bool = False) -> Stability:
    """Re-run `search(task) -> Circuit` on bootstrap resamples (examples drawn with replacement)."""
    if n_resamples < 2:
        raise ValueError(f"stability needs at least 2 resamples, got {n_resamples}")
    g = torch.Generator().manual_seed(seed)
    edge_sets, node_sets = [], []
    for _ in tqdm(range(n_resamples), desc="bootstrap searches", disable=not progress, leave=False):
        idx = torch.randint(len(task), (len(task),), generator=g)
        found = search(task.subset(idx))
        edge_sets.append(set(found.edges))
        node_sets.append(set(found.nodes))
    pairs = [(i, j) for i in range(n_resamples) for j in range(i + 1, n_resamples)]
    ej = [jaccard(edge_sets[i], edge_sets[j]) for i, j in pairs]
    nj = [jaccard(node_sets[i], node_sets[j]) for i, j in pairs]
    counts: dict[str, int] = {}
    for s in edge_sets:
        for e in s:
            counts[e] = counts.get(e, 0) + 1
    unstable = {e: c / n_resamples for e, c in sorted(counts.items(), key=lambda kv: (-kv[1], kv[0])) if c < n_resamples}
    return Stability(
        n_resamples=n_resamples, n_edges=[len(s) for s in edge_sets],
        edge_jaccard_mean=float(np.mean(ej)), edge_jaccard_min=float(np.min(ej)),
        node_jaccard_mean=float(np.mean(nj)), node_jaccard_min=float(np.min(nj)),
        stable_edges=sorted(e for e, c in counts.items() if c == n_resamples), unstable_edges=unstable,
        edge_jaccard_to_circuit=[jaccard(s, set(circuit.edges)) for s in edge_sets] if circuit else [],
    )
