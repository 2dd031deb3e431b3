"""ACDC: prune edges one at a time, from the output backwards, keeping only those that matter.

Receivers are visited in reverse topological order: `logits`, then per layer from the last: the
MLP, then heads H-1..0 with ports q, k, v. A receiver whose node no longer feeds anything is cut
off without tests. For each incoming edge (latest sender first, or a `shuffle_seed` permutation),
the edge is removed for good if the metric drops by less than tau:

    metric(current) - metric(current without edge) < tau      (metric: higher = clean behaviour)

With the default KL metric (-KL to the clean model) this is ACDC's rule on KL.

Cost sits near its floor: the corrupted activations are cached once, and every test recomputes
only the layers from the receiver's on (the layers below are still the full model's, since they are
visited later); on models that compute single nodes (`acdc_lite.incremental`, our SmallTransformer) only the
receiver's head or MLP, what reads it in its layer (in the last layer: at the positions the metric reads) and the
layers after it. Tests run in speculative batches that are exact: candidates k = 1..C remove the
first k untested edges cumulatively; decisions are read in order up to the first kept edge, and the
rest of the batch is discarded. C doubles after a batch of removals (up to `batch`) and falls back to
1 after a kept edge, so little is wasted where edges matter. With a `Checkpointer`, the state as of the
last finished receiver (with node steps: of the last finished layer) is saved when its interval has passed and on
interruption (Ctrl-C, SIGTERM); resuming from it repeats the same arithmetic and gives the identical circuit.

With `start` (the hybrid), the search starts from that edge set instead of the full model and tests only
the edges in `test`: every other edge keeps its state, untested (nodes that feed nothing still lose their inputs).

Grouped-query attention: a k/v group's shared k (v) input is one receiver (`ModelGraph.receiver_slots`),
visited with the group's first head; the edges from one sender into it (one per query head of the group)
are removed as one unit by one test, and each gets an equal share of the measured drop.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass

import torch
from tqdm.auto import tqdm

from acdc_lite.boundary import InputError
from acdc_lite.graph import HEAD_PORTS, ModelGraph, NodeKind
from acdc_lite.incremental import LayerSteps, node_shares, supports_steps
from acdc_lite.patching import metric_positions
from acdc_lite.runs import Checkpointer
from acdc_lite.search.common import SearchContext, SearchResult, prune_dangling

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class ACDCConfig:
    tau: float = 0.01
    batch: int = 8  # speculative candidates per pass
    shuffle_seed: int | None = None  # None: latest sender first
    checkpoint: Checkpointer | None = None  # where and how often to save resumable state
    progress: bool = True
    start: torch.Tensor | None = None  # [S, R] bool: the edge set to start from (None: the full model)
    test: torch.Tensor | None = None  # [S, R] bool: the edges to test (None: all); the rest keep their state untested
    node_steps: bool = True  # test node by node where the model allows it (acdc_lite.incremental); False: suffix passes


def receiver_order(graph: ModelGraph) -> list[tuple[int, ...]]:
    """Receiver slots (columns tested as one input, see `ModelGraph.receiver_slots`) from the output backwards:
    logits, then per layer the MLP and heads H-1..0 with q, k, v (a k/v group's shared k and v with its first head)."""
    slot_of = {cols[0]: cols for cols in graph.receiver_slots()}
    order = [slot_of[graph.logits_receiver]]
    for layer in reversed(range(graph.n_layers)):
        if graph.has_mlp:
            order.append(slot_of[graph.mlp_receiver(layer)])
        for head in reversed(range(graph.n_heads)):
            order += [slot_of[c] for c in (graph.head_receiver(layer, port, head) for port in HEAD_PORTS) if c in slot_of]
    return order


def _sender_order(graph: ModelGraph, receiver: int, shuffle_seed: int | None) -> list[int]:
    senders = list(reversed(range(graph.n_senders_before(receiver))))
    if shuffle_seed is not None:
        g = torch.Generator().manual_seed(shuffle_seed * 100_003 + receiver)
        senders = [senders[i] for i in torch.randperm(len(senders), generator=g).tolist()]
    return senders


def predicted_passes(patcher, metric, receivers=None) -> float:
    """Forward passes ACDC spends testing every edge into `receivers` (default: all) once, by the pass accounting
    (README, Conventions), speculation aside. Per tested edge into a receiver of layer l of L: with node steps its node
    (a head or the MLP; at the read positions in the last layer; nothing for logits) plus (L - l - 1) / L, and one
    (L - l) / L state pass per layer; on suffix passes (L - l) / L (logits: the last layer's)."""
    graph = patcher.graph
    steps = supports_steps(patcher)
    head, mlp = node_shares(patcher.model) if steps else (0.0, 0.0)
    positions = metric_positions(metric, slice(0, 1))
    read = 1.0 if positions is None else positions.shape[1] / patcher.tokens.shape[1]
    last, n = graph.n_layers - 1, graph.n_layers
    total, stages = 0.0, set()
    for r in range(graph.n_receivers) if receivers is None else receivers:
        stage, kind = min(graph.receiver_layer(r), last), graph.receivers[r][0].kind
        stages.add(stage)
        if not steps:
            per_edge = (n - stage) / n
        else:
            node = 0.0 if kind is NodeKind.LOGITS else (head + mlp if kind is NodeKind.HEAD else mlp)
            per_edge = node * (read if stage == last else 1.0) + (n - stage - 1) / n
        total += graph.n_senders_before(r) * per_edge
    return total + (sum((n - s) / n for s in stages) if steps else 0.0)


def _stage(graph: ModelGraph, slot: tuple[int, ...]) -> int:
    """The layer a test of this slot recomputes from (logits: the last layer)."""
    return min(graph.receiver_layer(slot[0]), graph.n_layers - 1)


def _feeds_anything(graph: ModelGraph, kept: torch.Tensor, slot: tuple[int, ...]) -> bool:
    """Whether any node reading this receiver slot still has an outgoing edge."""
    for receiver in slot:
        node = graph.receivers[receiver][0]
        if node.kind is NodeKind.LOGITS:
            return True
        sender = graph.head_sender(node.layer, node.head) if node.kind is NodeKind.HEAD else graph.mlp_sender(node.layer)
        if kept[sender].any():
            return True
    return False


def run(ctx: SearchContext, config: ACDCConfig = ACDCConfig(), prefix=None, metric_start: float | None = None,
        evaluate_final: bool = True) -> SearchResult:
    """ACDC on `ctx` (see module docstring). Scores: the metric drop each tested edge caused.
    `prefix`, `metric_start`: a prefix recorded at `config.start` and its metric, if the caller has them;
    `evaluate_final` False: the caller measures the circuit (metric_circuit is NaN)."""
    graph, patcher = ctx.graph, ctx.patcher
    metric_full = ctx.metric_full  # bookkeeping: measured once per search (SearchContext.reference)
    start = graph.full_mask() if config.start is None else config.start.clone()
    if prefix is None:  # layers below the visited receiver stay as in `start`
        prefix = patcher.record_prefix(start)
    to_test = graph.valid if config.test is None else config.test
    saved = _load_checkpoint(config.checkpoint, graph)
    if saved is not None:
        kept, scores, trajectory, done_receivers, current, floor = saved
        log.info("resuming ACDC from %s: %d receivers done", config.checkpoint.path, len(done_receivers))
    else:
        kept, scores, trajectory, done_receivers = start, torch.full(graph.valid.shape, float("nan")), [], []
        if metric_start is None:
            metric_start = metric_full if config.start is None else float(ctx.evaluate(start))
        current, floor = metric_start, 0.0  # floor: one suffix pass per tested edge
    snapshot = _snapshot(graph, kept, scores, trajectory, done_receivers, current, floor)
    done = set(done_receivers)
    order = [slot for slot in receiver_order(graph) if slot[0] not in done]
    steps_on, steps = config.node_steps and supports_steps(patcher), None
    bar = tqdm(total=graph.n_edges(), initial=sum(graph.n_senders_before(r) for r in done_receivers),
               desc="ACDC edges", disable=not config.progress, unit="edge")
    try:
        for n_slot, slot in enumerate(order):
            cols = list(slot)
            receiver, share = slot[0], 1 / len(slot)  # a tied unit's drop is shared by its edges
            senders = [s for s in _sender_order(graph, receiver, config.shuffle_seed) if kept[s, receiver] and to_test[s, receiver]]
            if not _feeds_anything(graph, kept, slot):
                kept[:, cols] = False  # a node that feeds nothing needs no inputs
            else:
                start_layer = _stage(graph, slot)
                if steps_on and senders and (steps is None or steps.layer != start_layer):  # a layer's state when it has tests
                    steps = LayerSteps(patcher, ctx.metric, kept, start_layer, prefix)
                i, size = 0, 1
                while i < len(senders):
                    chunk = senders[i:i + size]
                    if steps is not None:
                        values = steps.try_removals(slot, chunk)
                    else:
                        cands = kept[None].repeat(len(chunk), 1, 1)
                        for k, s in enumerate(chunk):
                            cands[k:, s, cols] = False
                        values = ctx.evaluate(cands, start_layer=start_layer, prefix=prefix).tolist()
                    removed_here = 0
                    for k, s in enumerate(chunk):
                        drop = current - values[k]
                        scores[s, cols] = drop * share
                        floor += (graph.n_layers - start_layer) / graph.n_layers
                        i += 1
                        if drop < config.tau:
                            kept[s, cols] = False
                            current = values[k]
                            removed_here += 1
                        else:
                            break  # later candidates assumed this edge removed: re-test them
                    if steps is not None:
                        steps.accept(removed_here)
                    # speculate further after removals, less after a kept edge (the rest of its batch was wasted)
                    size = min(2 * size, config.batch) if drop < config.tau else 1
            bar.update(graph.n_senders_before(receiver) * len(slot))
            done_receivers += list(slot)
            trajectory.append({"receiver": "+".join(f"{graph.receivers[r][0]}<{graph.receivers[r][1].value}>" for r in slot),
                               "metric": current, "edges": int(kept.sum()), "forward_passes": patcher.forward_passes})
            # node steps keep a layer's state as they go: a state saved inside a layer would resume with other bits,
            # so with them a snapshot is taken where a layer ends (a resumed run repeats at most that layer's tests)
            at_boundary = steps is None or n_slot + 1 == len(order) or _stage(graph, order[n_slot + 1]) != steps.layer
            if config.checkpoint is not None and at_boundary:
                snapshot = _snapshot(graph, kept, scores, trajectory, done_receivers, current, floor)
                if config.checkpoint.due():
                    config.checkpoint.save("acdc", {**snapshot, **patcher.passes()})
    except KeyboardInterrupt:
        if config.checkpoint is not None:  # the state as of the last finished receiver
            config.checkpoint.save("acdc", {**snapshot, **patcher.passes()})
            log.warning("interrupted: ACDC state saved to %s; resume with the same arguments", config.checkpoint.path)
        raise
    finally:
        bar.close()
    kept = prune_dangling(graph, kept)
    return SearchResult(
        method="acdc", params={"tau": config.tau, "batch": config.batch, "shuffle_seed": config.shuffle_seed},
        kept=kept, scores=scores, trajectory=trajectory, forward_passes=patcher.forward_passes,
        backward_passes=patcher.backward_passes, seconds=ctx.seconds(), metric_full=metric_full,
        metric_empty=ctx.metric_empty, metric_circuit=ctx.final(kept) if evaluate_final else float("nan"),
        stats={"tested_edges": int((~scores.isnan()).sum()), "floor_forward_passes": floor},
    )


def _snapshot(graph: ModelGraph, kept, scores, trajectory, done, current: float, floor: float) -> dict:
    """The resumable state, as JSON-able values (float32 scores round-trip exactly through JSON floats)."""
    return {
        "graph": list(graph.shape_key),
        "done_receivers": list(done),
        "removed": [str(e) for e in graph.edges_from_mask(graph.valid & ~kept)],
        "scores": {str(e): float(scores[graph.edge_index(e)]) for e in graph.edges_from_mask(~scores.isnan())},
        "trajectory": list(trajectory),
        "current": current,
        "floor": floor,
    }


def _load_checkpoint(checkpointer: Checkpointer | None, graph: ModelGraph):
    """(kept, scores, trajectory, done receivers, current metric, floor) from a checkpoint, or None."""
    state = checkpointer.load("acdc") if checkpointer is not None else None
    if state is None:
        return None
    where = f"checkpoint {checkpointer.path}"
    try:
        if tuple(state["graph"]) != graph.shape_key:
            raise InputError(f"{where} is for another model graph {state['graph']}; resume with that model or use another --out")
        kept = graph.full_mask()
        for name in state["removed"]:
            kept[graph.edge_index(name)] = False
        scores = torch.full(graph.valid.shape, float("nan"))
        for name, value in state["scores"].items():
            scores[graph.edge_index(name)] = float(value)
        done = [int(r) for r in state["done_receivers"]]
        if any(not 0 <= r < graph.n_receivers for r in done):
            raise InputError(f"{where}: done_receivers holds a receiver this graph does not have")
        return kept, scores, list(state["trajectory"]), done, float(state["current"]), float(state["floor"])
    except (KeyError, TypeError, ValueError) as e:
        if isinstance(e, InputError):
            raise
        raise InputError(f"{where}: malformed state ({type(e).__name__}: {e}); delete it and start again") from None
