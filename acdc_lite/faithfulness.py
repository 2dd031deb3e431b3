"""Faithfulness, the one formula, and the one tolerance that says when it is undefined.

f(C) = (m(C) - m(empty)) / (m(full) - m(empty)): m is the task metric (mean over examples, higher = more
clean behaviour) with only C's edges kept, `full` keeps every edge, `empty` ablates every edge. 1 means the
circuit alone does what the model does, 0 what the ablated model does. The same function gives completeness
(f of the complement), the curve's points and per-example values; it works on floats, numpy arrays and
tensors alike (elementwise).

The gap m(full) - m(empty) counts as zero (f undefined: nothing separates the clean from the ablated model)
when |gap| <= GAP_RTOL * max(1, |m(full)|, |m(empty)|). Per-example values leave out examples whose own gap is
below PER_EXAMPLE_RTOL of the mean gap. Standard library only: a leaf every layer may import.
"""

from __future__ import annotations

import math

GAP_RTOL = 1e-6  # a gap this small, relative to the metric's size, is float32 noise: the metric does not separate
PER_EXAMPLE_RTOL = 1e-3  # per-example faithfulness: examples whose gap is below this share of the mean gap are left out


def gap_is_zero(full: float, empty: float) -> bool:
    """Whether m(full) and m(empty) are the same up to float noise (so faithfulness is undefined)."""
    full, empty = float(full), float(empty)
    return not abs(full - empty) > GAP_RTOL * max(1.0, abs(full), abs(empty))


def faithfulness(metric, full: float, empty: float):
    """(metric - empty) / (full - empty): a float (NaN when `gap_is_zero`), or elementwise for an array/tensor."""
    if isinstance(metric, (int, float)):
        return float("nan") if gap_is_zero(full, empty) else (float(metric) - empty) / (full - empty)
    return (metric - empty) / (full - empty)


def finite_or_none(x: float) -> float | None:
    """A float for JSON: NaN and infinities become None."""
    return x if x is not None and math.isfinite(x) else None
