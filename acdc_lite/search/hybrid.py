"""Hybrid search: attribution estimates every edge, joint removals verified by real passes, exact ACDC in the band.

0. Route (`plain_acdc`, on by default): when exact ACDC's predicted passes (`acdc.predicted_passes`: node steps
   make it cheap on small graphs) are at most what the attribution route costs at least (its EAP-IG passes and one
   gradient probe per round: 3 x (ig_steps + rounds) forward-equivalents), plain ACDC runs instead and its circuit is
   the result (`stats["route"]` says which route ran).
1. Attribution at the full model (EAP-IG, `ig_steps`): an estimated drop of the metric per edge (a tied k/v unit:
   the sum over its edges), signed. The same pass gives m(full).
2. Joint removal, in rounds: every kept unit estimated to cost less than `remove_below` x tau (negative estimates
   included, as ACDC's rule removes edges whose removal raises the metric) is removed at once, across receivers
   and layers, with the edges that then dangle (exact: they carry no difference). A pass verifies the block: it
   goes if the measured drop is at most the block's summed positive estimates times 1 + `relative_slack`, plus
   `slack` x tau (the estimate of a large move errs in proportion to it); else its halves are tried (smaller
   |estimates| first), down to `min_block` units (a full pass pays only for a large block; fewer units go to the
   band's cheaper suffix passes). Each round re-estimates at the circuit the last one left (an estimate at the full
   model is wrong for an edge whose context was removed): a round's whole block is verified by the forward half of a
   gradient pass whose backward runs only if the block goes, and so brings that estimate and its prefix with it;
   halves are verified by forward passes, and a gradient pass follows them.
3. Exact ACDC, in ACDC's order (from the output backwards, suffix passes from a prefix recorded by the last
   gradient pass), on the band: the kept units estimated below `keep_above` x tau at the last estimate (by
   default tau: those ACDC's rule, applied to the estimate, would remove). The others are kept untested.
4. Optional final check (`final_check`): a gradient pass at the final circuit counts the kept units estimated below
   tau there (`stats["final_below_tau"]`), those ACDC's rule might remove if it tested them now. Off by default: at a
   sparse circuit the estimate is poor (a block of 8 units estimated at 0.002 measured 0.166 on benchmarks/hybrid.md's
   4-layer model), so the count is a weak signal for its backward pass.

What is verified, against ACDC's rule (remove an edge if the metric drops by less than tau when it alone goes):
- an edge tested in step 3 obeys ACDC's rule exactly, in the circuit as it then was;
- a joint removal verifies one number, the block's total drop, against its summed estimates times 1 + relative_slack
  plus slack x tau. relative_slack 0.25: on benchmarks/hybrid.md's 4-layer model at the default tau the first block
  measured 11% above its estimate, and without it the bisection that followed spent 15 forward passes to reach the
  same circuit; on the zoo's 2-layer induction, IOI and docstring models (attribution route, tau 0.005-0.2) the blocks
  it would let through that were rejected before measured 73-108% above their estimates: it lets none through, and
  the circuits are unchanged.
  It does not verify each member: an edge whose true drop exceeds tau can go in a block whose other estimates
  err the other way, and edges go in another order than ACDC's, so the circuit can differ from ACDC's (ACDC
  tests late receivers while every earlier edge is present and never revisits them; the hybrid's rounds see
  earlier removals). Every accepted drop is measured, so the circuit's metric is m(full) minus the recorded drops;
- a unit kept untested was estimated at >= keep_above x tau at the last round's circuit, not measured.
Cost: the attribution passes; per round one forward pass per tried block and one backward if the whole block went;
the band's suffix passes; with `final_check`, one backward pass (its forward is the final evaluation). On ~100-edge
graphs that is about ACDC's cost; the saving grows with the graph (`benchmarks/hybrid.md`). Scores: ACDC's measured
drops where an edge was tested alone, else the attribution estimate at the full model. The trajectory lists every
block (predicted, measured, accepted).
"""

from __future__ import annotations

import logging
from dataclasses import dataclass

import torch

from acdc_lite.graph import unit_members
from acdc_lite.runs import Checkpointer
from acdc_lite.search import acdc
from acdc_lite.search.common import SearchContext, SearchResult, prune_dangling

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class HybridConfig:
    tau: float = 0.01
    # 4, not EAP-IG's 5: the estimate only proposes blocks, and every removal is measured. Measured with 5 and 4 steps:
    # the same circuit on all 8 zoo cards, and on benchmarks/hybrid.md's trained 4- and 6-layer models a faithfulness
    # as close to ACDC's or closer, for one forward and one backward pass less
    ig_steps: int = 4
    remove_below: float = 0.5  # joint removal of units estimated below this multiple of tau
    keep_above: float = 1.0  # units estimated at or above this multiple of tau at the last estimate are kept untested
    rounds: int = 4  # joint-removal rounds, each estimated at the circuit the last one left
    slack: float = 0.5  # a joint removal may cost its summed estimate plus this multiple of tau
    relative_slack: float = 0.25  # plus this fraction of its summed estimate (an estimate errs in proportion to the move)
    min_block: int = 32  # joint removals (and the halves of a failed one) have at least this many units
    batch: int = 8  # ACDC's speculative candidates per pass in the band
    final_check: bool = False  # a gradient pass at the final circuit counts kept units estimated below tau
    plain_acdc: bool = True  # plain ACDC when its predicted passes are at most the attribution route's least cost
    progress: bool = True
    checkpoint: Checkpointer | None = None  # for the band's ACDC (the cheap phases before it are recomputed on resume)


def run(ctx: SearchContext, config: HybridConfig = HybridConfig()) -> SearchResult:
    graph, patcher, tau = ctx.graph, ctx.patcher, config.tau
    predicted = acdc.predicted_passes(patcher, ctx.metric)
    if config.plain_acdc and predicted <= _least_attribution_cost(config):
        return _plain_acdc(ctx, config, predicted)
    kept = graph.full_mask()
    current, grad, prefix = patcher.probe(ctx.metric, kept, ig_steps=config.ig_steps)
    ctx.reference(full=current)
    attribution = grad.masked_fill(~graph.valid, float("nan"))
    trajectory: list[dict] = [{"phase": "attribution", "metric": current, **ctx.patcher.passes()}]
    fresh = True  # grad and prefix are of `kept`
    for _ in range(config.rounds):
        if not fresh:
            current, grad, prefix = patcher.probe(ctx.metric, kept)
            fresh = True
        estimate = graph.unit_sum(grad)  # [S, R] a unit's estimated drop on each of its edges
        block = kept & (estimate < config.remove_below * tau)
        units = sorted(unit_members(graph, block), key=lambda u: abs(float(estimate[u[0][0], u[1][0]])))
        if len(units) < config.min_block:  # too few to be worth a full pass: the band tests them
            break
        before = kept
        kept, current, probed = _remove_jointly(ctx, kept, current, units, estimate, config, trajectory, probe=True)
        if torch.equal(kept, before):
            break
        fresh = probed is not None
        if fresh:
            grad, prefix = probed
    if not fresh:
        current, grad, prefix = patcher.probe(ctx.metric, kept)
    band = kept & (graph.unit_sum(grad) < config.keep_above * tau)
    trajectory.append({"phase": "band start", "metric": current, "edges": int(kept.sum()), **ctx.patcher.passes()})
    result = acdc.run(ctx, acdc.ACDCConfig(tau=tau, batch=config.batch, progress=config.progress, start=kept, test=band,
                                           checkpoint=config.checkpoint), prefix=prefix, metric_start=current,
                      evaluate_final=False)
    stats = {"band_units": len(unit_members(graph, band))}
    if config.final_check:
        with ctx.counted_as("final evaluation"):  # its forward pass is the final evaluation; its backward the check
            result.metric_circuit, final_grad = patcher.mask_gradient(ctx.metric, result.kept)
        stats["final_below_tau"] = len(unit_members(graph, result.kept & (graph.unit_sum(final_grad) < tau)))
    else:
        result.metric_circuit = ctx.final(result.kept)
    scores = attribution.clone()
    measured = ~result.scores.isnan()
    scores[measured] = result.scores[measured]
    result.method, result.scores = "hybrid", scores
    result.params = {"tau": tau, "ig_steps": config.ig_steps, "batch": config.batch}
    result.trajectory = trajectory + [{"phase": "band", **step} for step in result.trajectory]
    result.forward_passes, result.backward_passes = patcher.forward_passes, patcher.backward_passes
    result.bookkeeping = dict(ctx.bookkeeping)
    result.seconds = ctx.seconds()
    result.stats = {**result.stats, **stats, "route": "attribution"}
    return result


def _least_attribution_cost(config: HybridConfig) -> float:
    """Forward-equivalents the attribution route costs at least: its EAP-IG passes and one gradient probe per round
    (a backward pass costs about two forwards)."""
    return 3.0 * (config.ig_steps + config.rounds)


def _plain_acdc(ctx: SearchContext, config: HybridConfig, predicted: float) -> SearchResult:
    """ACDC on every edge (its circuit, for less than the attribution would cost), reported as the hybrid's."""
    result = acdc.run(ctx, acdc.ACDCConfig(tau=config.tau, batch=config.batch, progress=config.progress,
                                           checkpoint=config.checkpoint))
    result.method = "hybrid"
    result.params = {"tau": config.tau, "ig_steps": config.ig_steps, "batch": config.batch}
    result.trajectory = [{"phase": "route", "route": "acdc", "predicted_acdc_passes": predicted,
                          "least_attribution_cost": _least_attribution_cost(config)}] + [{"phase": "band", **s} for s in result.trajectory]
    result.stats = {**result.stats, "route": "acdc"}
    return result


def _remove_jointly(ctx: SearchContext, kept: torch.Tensor, current: float, units: list, estimate: torch.Tensor,
                    config: HybridConfig, trajectory: list[dict], probe: bool = False):
    """Remove `units` (sender rows, receiver columns) from `kept` in verified blocks: a block goes if its measured
    drop is at most its summed positive estimates times 1 + relative_slack, plus slack x tau; a failed block is split
    in halves (smaller estimates first), down to `min_block` units; smaller failed blocks stay (the band's exact ACDC
    decides them). `probe`: this block is measured by a gradient pass, whose gradient and prefix come back if it is
    accepted.
    Returns (new mask, its metric, (gradient [S, R], prefix) at the new mask or None)."""
    graph = ctx.graph
    candidate = kept.clone()
    for rows, cols in units:
        candidate[rows, cols] = False
    candidate = prune_dangling(graph, candidate)
    predicted = sum(max(float(estimate[rows[0], cols[0]]), 0.0) for rows, cols in units)
    allowed = predicted * (1 + config.relative_slack) + config.slack * config.tau

    def goes(value: float) -> bool:
        return current - value <= allowed

    if probe:
        value, grad, prefix = ctx.patcher.probe(ctx.metric, candidate, wanted=goes)
    else:
        value = float(ctx.evaluate(candidate))
    accepted = goes(value)
    trajectory.append({"phase": "joint", "units": len(units), "removed": int((kept & ~candidate).sum()),
                       "predicted": predicted, "allowed": allowed, "measured": current - value, "accepted": accepted,
                       "metric": value if accepted else current, **ctx.patcher.passes()})
    if accepted:
        return candidate, value, (grad, prefix) if probe else None
    if len(units) < 2 * config.min_block:
        return kept, current, None
    half = len(units) // 2
    kept, current, _ = _remove_jointly(ctx, kept, current, units[:half], estimate, config, trajectory)
    return _remove_jointly(ctx, kept, current, units[half:], estimate, config, trajectory)
