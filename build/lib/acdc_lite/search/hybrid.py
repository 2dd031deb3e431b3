"""Hybrid search: attribution decides what to test together, real patching decides, ACDC where it is close.

1. Score every edge with EAP-IG (a few forward and backward passes): an estimate of each edge's effect.
2. ACDC (see `acdc`), from the output backwards, with one change per receiver: the incoming edges whose
   estimated |effect| is below tau are removed together in one patched pass if together they cost
   less than tau; if not, the half with the smaller estimates is tried, and so on. Only the edges left
   (those attribution says may matter, and those whose joint removal failed) are tested one by one
   under ACDC's rule (remove if the metric drops by less than tau).
3. Dangling edges are pruned (as in ACDC).

Every removal is verified by a real patched pass, so the circuit keeps ACDC's guarantee that each removal
cost less than tau; joint removals are stricter than ACDC's one-by-one rule. Cost: the attribution passes,
about one suffix pass per visited receiver, and one per edge attribution cannot rule out, instead of
ACDC's one per edge. Scores: ACDC's measured drops where an edge was tested alone, else the EAP-IG estimate.
"""

from __future__ import annotations

from dataclasses import dataclass

from acdc_lite.runs import Checkpointer
from acdc_lite.search import acdc, attribution
from acdc_lite.search.common import SearchContext, SearchResult


@dataclass(frozen=True)
class HybridConfig:
    tau: float = 0.01
    ig_steps: int = 5
    batch: int = 8  # ACDC's speculative candidates per pass
    progress: bool = True
    checkpoint: Checkpointer | None = None  # for the ACDC phase (attribution is recomputed on resume: it is cheap)


def run(ctx: SearchContext, config: HybridConfig = HybridConfig()) -> SearchResult:
    attr = attribution.eap_ig(ctx, config.ig_steps) if config.ig_steps > 1 else attribution.eap(ctx)
    after_attribution = ctx.patcher.forward_passes
    estimates = attr.scores.abs().nan_to_num(float("inf"))  # an unscored edge is never assumed unimportant
    result = acdc.run(ctx, acdc.ACDCConfig(tau=config.tau, batch=config.batch, progress=config.progress,
                                           estimates=estimates, checkpoint=config.checkpoint))
    scores = attr.scores.clone()
    measured = ~result.scores.isnan()
    scores[measured] = result.scores[measured]
    result.method, result.scores = "hybrid", scores
    result.params = {"tau": config.tau, "ig_steps": config.ig_steps, "batch": config.batch}
    result.trajectory = [{"phase": "attribution", "forward_passes": after_attribution}] + result.trajectory
    return result
