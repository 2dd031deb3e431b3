"""Validate a circuit by ablation: faithfulness, completeness, minimality, curves, baselines, stability, ground truth.

Notation: m(X) is the task metric (mean over examples, higher = more clean behaviour) when only the
edges in X are kept and every other edge is ablated (the circuit's ablation unless told otherwise).
N is the full model, the empty set is the fully ablated model, C the circuit.

- faithfulness f(C) = (m(C) - m(empty)) / (m(N) - m(empty)): 1 = the circuit alone does what the model does.
- completeness = f(N minus C): the faithfulness of the complement. 0 = without the circuit the behaviour is
  gone (a complete circuit); 1 = the rest of the model does the task just as well.
- minimality: each edge's (node's) necessity (m(C) - m(C minus e)) / (m(N) - m(empty)); edges with
  |necessity| below a tolerance do nothing.
- curve, CPR and CMD (as in the MIB benchmark, Mueller et al. 2025): rank edges by score, keep the top
  int(k * |E|) for k in 0.1%, 0.2%, 0.5%, 1%, 2%, 5%, 10%, 20%, 50%, 100%, prune edges off every
  input -> logits path, and measure f. CPR (circuit performance ratio) = trapezoidal area under f(k)
  over k (higher is better); CMD (circuit-model distance) = trapezoidal area under |1 - f(k)| (lower is
  better). MIB ranks by signed scores for CPR and by absolute scores for CMD; `validate` does the same.
- ground truth: ROC AUC of a score ranking against a reference circuit's edges (nodes), and
  precision / recall of a circuit's edge (node) set.

One module per measure: `passes` (per-example metrics in one patched pass), `curves`, `necessity` (minimality),
`baseline` (random circuits), `bootstrap` (stability), `truth` (ground truth), `nodes` (graph helpers), `report`
(the value types); `validator` holds `Validator`, whose `run` puts them together, and `validate`, the same in one
call. Everything is a pure function of its inputs; nothing mutates the model, task or circuit.
"""

from __future__ import annotations

from acdc_lite.graph import connected_mask
from acdc_lite.validate.baseline import random_baseline
from acdc_lite.validate.bootstrap import stability
from acdc_lite.validate.curves import MIB_FRACTIONS, area_under, cpr_cmd, faithfulness_curve
from acdc_lite.validate.necessity import minimality
from acdc_lite.validate.nodes import node_set
from acdc_lite.validate.passes import per_example_metrics
from acdc_lite.validate.report import (
    FaithfulnessCurve,
    GroundTruth,
    Minimality,
    PerExample,
    PrecisionRecall,
    RandomBaseline,
    Stability,
    ValidationReport,
)
from acdc_lite.validate.truth import ground_truth, node_scores, precision_recall, roc_auc
from acdc_lite.validate.validator import Validator, validate

__all__ = [
    "MIB_FRACTIONS", "FaithfulnessCurve", "GroundTruth", "Minimality", "PerExample", "PrecisionRecall", "RandomBaseline",
    "Stability", "ValidationReport", "Validator", "area_under", "connected_mask", "cpr_cmd", "faithfulness_curve",
    "ground_truth", "minimality", "node_scores", "node_set", "per_example_metrics", "precision_recall", "random_baseline",
    "roc_auc", "stability", "validate",
]
