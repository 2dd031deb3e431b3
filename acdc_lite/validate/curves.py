"""The faithfulness curve over circuit sizes and its areas, CPR and CMD (MIB's conventions)."""

from __future__ import annotations

import logging
from collections.abc import Callable, Sequence

import numpy as np
import torch
from tqdm.auto import tqdm

from acdc_lite.faithfulness import faithfulness
from acdc_lite.graph import connected_mask
from acdc_lite.patching import EdgePatcher
from acdc_lite.ranking import top_n
from acdc_lite.validate.passes import batched
from acdc_lite.validate.report import FaithfulnessCurve

log = logging.getLogger(__name__)

MIB_FRACTIONS = (0.001, 0.002, 0.005, 0.01, 0.02, 0.05, 0.1, 0.2, 0.5, 1.0)


def area_under(fractions: Sequence[float], values: Sequence[float]) -> float:
    """Trapezoidal area under values(fractions), x not rescaled (MIB's convention): sum (x2-x1)(y1+y2)/2."""
    if len(fractions) != len(values) or len(fractions) < 2:
        raise ValueError("area_under needs two or more (fraction, value) points of equal count")
    x, y = np.asarray(fractions, dtype=float), np.asarray(values, dtype=float)
    return float(np.sum((x[1:] - x[:-1]) * (y[1:] + y[:-1]) / 2))


def cpr_cmd(fractions: Sequence[float], faithfulness: Sequence[float]) -> tuple[float, float]:
    """(CPR, CMD): areas under f and under |1 - f| over the fractions."""
    f = np.asarray(faithfulness, dtype=float)
    return area_under(fractions, f), area_under(fractions, np.abs(1 - f))


def faithfulness_curve(patcher: EdgePatcher, metric: Callable, scores: torch.Tensor, metric_full: float,
                       metric_empty: float, fractions: Sequence[float] = MIB_FRACTIONS, absolute: bool = False,
                       prune: bool = True, candidates: int = 4, progress: bool = False) -> FaithfulnessCurve:
    """f of the top int(k * |E|) edges by `scores` [S, R] for each fraction k; CPR and CMD of the curve."""
    graph = patcher.graph
    n_total = graph.n_edges()
    if torch.isnan(scores[graph.valid]).any():
        log.warning("%d of %d edges have no score; they rank last in the faithfulness curve",
                    int(torch.isnan(scores[graph.valid]).sum()), n_total)
    requested = [int(k * n_total) for k in fractions]
    masks = [top_n(graph, scores, n, absolute) for n in requested]
    masks = [connected_mask(graph, m) if prune else m for m in masks]  # top_n and pruning keep k/v units tied
    values: list[float] = []
    for batch in tqdm(list(batched(masks, candidates)), desc="faithfulness curve", disable=not progress, leave=False):
        values += patcher.evaluate(torch.stack(batch), metric).tolist()
    f = [faithfulness(v, metric_full, metric_empty) for v in values]
    cpr, cmd = cpr_cmd(fractions, f)
    return FaithfulnessCurve(list(fractions), requested, [int(m.sum()) for m in masks], f, values, absolute, cpr, cmd)
