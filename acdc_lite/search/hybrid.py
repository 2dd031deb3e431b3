"""Hybrid search: attribution orders the work, real patching decides, exact ACDC only at the boundary.

1. Score every edge with EAP-IG (a few forward and backward passes).
2. Block removal: walk the edges from the lowest |score| up. Try to remove a block of them at once;
   if the metric drops by less than tau, the block goes and the next block is twice as large; if
   not, the block is halved and retried (bisection), down to single edges, which are kept when
   their own removal costs tau or more. Most of the graph leaves in a few large blocks. Once `patience`
   single edges have been kept, the walk has reached the scores where edges matter, and isolating each by
   bisection would cost more than testing it once: the block phase stops and the rest goes to step 3.
3. Boundary sweep: every edge still kept is re-tested with ACDC's rule (remove if the metric drops
   by less than tau), in ACDC's order (from the output backwards), recomputing only from the
   receiver's layer on. Each test is speculative on "keep": a batch of candidates removes one edge
   each from the current circuit, decisions are read in order and the batch is cut at the first
   removal (which changes the circuit).
4. Dangling edges are pruned.

Cost: the attribution passes, about log2(E) block tests per kept edge in step 2, and about one test per
kept edge in step 3, instead of ACDC's one test per edge of the whole graph.
"""

from __future__ import annotations

from dataclasses import dataclass

from tqdm.auto import tqdm

from acdc_lite.search import attribution
from acdc_lite.search.acdc import receiver_order
from acdc_lite.search.common import SearchContext, SearchResult, prune_dangling
from acdc_lite.search.select import ranking


@dataclass(frozen=True)
class HybridConfig:
    tau: float = 0.01
    ig_steps: int = 5
    first_block: float = 0.5  # fraction of all edges in the first block
    batch: int = 8  # candidates per pass in the boundary sweep
    patience: int | None = 3  # single edges kept before the block phase stops (None: never stops early)
    progress: bool = True


def run(ctx: SearchContext, config: HybridConfig = HybridConfig()) -> SearchResult:
    graph = ctx.graph
    attr = attribution.eap_ig(ctx, config.ig_steps) if config.ig_steps > 1 else attribution.eap(ctx)
    order = list(reversed(ranking(graph, attr.scores)))  # least important first
    metric_full = float(ctx.evaluate(graph.full_mask()))
    kept, current = graph.full_mask(), metric_full
    trajectory = [{"phase": "attribution", "forward_passes": ctx.patcher.forward_passes}]
    block, i, isolated = max(1, int(len(order) * config.first_block)), 0, 0
    with tqdm(total=len(order), desc="hybrid blocks", disable=not config.progress, unit="edge") as bar:
        while i < len(order) and (config.patience is None or isolated < config.patience):
            chunk = order[i:i + block]
            cand = kept.clone()
            for s, r in chunk:
                cand[s, r] = False
            value = float(ctx.evaluate(cand))
            if current - value < config.tau:
                kept, current, i = cand, value, i + len(chunk)
                bar.update(len(chunk))
                block *= 2
            elif len(chunk) == 1:
                i += 1  # this edge matters on its own: keep it
                isolated += 1
                bar.update(1)
                block = 2
            else:
                block = max(1, len(chunk) // 2)
    trajectory.append({"phase": "blocks", "edges": int(kept.sum()), "metric": current,
                       "forward_passes": ctx.patcher.forward_passes})

    position = {r: k for k, r in enumerate(receiver_order(graph))}
    sweep = sorted(kept.nonzero().tolist(), key=lambda e: (position[e[1]], -e[0]))
    # The sweep runs from the output backwards, so receivers below the one tested still have their
    # inputs from the circuit as it left the block phase: one recorded prefix serves every test.
    prefix = ctx.patcher.record_prefix(kept)
    drops = {}
    j = 0
    while j < len(sweep):
        chunk = sweep[j:j + config.batch]
        cands = kept[None].repeat(len(chunk), 1, 1)
        for k, (s, r) in enumerate(chunk):
            cands[k, s, r] = False
        start_layer = min(graph.receiver_layer(r) for _, r in chunk)
        values = ctx.evaluate(cands, start_layer=min(start_layer, graph.n_layers - 1), prefix=prefix).tolist()
        for k, (s, r) in enumerate(chunk):
            j += 1
            drops[(s, r)] = current - values[k]
            if current - values[k] < config.tau:
                kept[s, r] = False
                current = values[k]
                break  # the circuit changed: later candidates must be re-tested
    trajectory.append({"phase": "sweep", "edges": int(kept.sum()), "metric": current,
                       "forward_passes": ctx.patcher.forward_passes})
    kept = prune_dangling(graph, kept)
    scores = attr.scores.clone()
    for (s, r), d in drops.items():
        scores[s, r] = d  # measured drops replace estimates where we have them
    return SearchResult(method="hybrid", params={"tau": config.tau, "ig_steps": config.ig_steps, "batch": config.batch},
                        kept=kept, scores=scores, trajectory=trajectory, forward_passes=ctx.patcher.forward_passes,
                        backward_passes=ctx.patcher.backward_passes, seconds=ctx.seconds(), metric_full=metric_full,
                        metric_empty=float(ctx.evaluate(graph.empty_mask())), metric_circuit=float(ctx.evaluate(kept)))



