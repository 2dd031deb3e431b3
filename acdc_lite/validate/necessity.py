"""Minimality: the necessity of each circuit edge (node), removed alone from the circuit."""

from __future__ import annotations

import logging
from collections.abc import Callable

import torch
from tqdm.auto import tqdm

from acdc_lite.graph import Edge, Node, NodeKind, unit_members
from acdc_lite.patching import EdgePatcher
from acdc_lite.validate.nodes import node_set
from acdc_lite.validate.passes import batched
from acdc_lite.validate.report import Minimality

log = logging.getLogger(__name__)


def minimality(patcher: EdgePatcher, metric: Callable, circuit_mask: torch.Tensor, metric_circuit: float,
               gap: float, max_edges: int = 256, tol: float = 0.01, candidates: int = 8, seed: int = 0,
               check_nodes: bool = True, progress: bool = False) -> Minimality:
    """Remove each circuit edge (node) alone and measure the normalised drop; [C, S, R] candidate batches.

    gap = m(N) - m(empty). With more than `max_edges` edges a seeded random sample is checked. A node is
    removed by dropping its outgoing circuit edges (its output is then ablated everywhere). With grouped-query
    attention an edge into a shared k/v input is removed for the whole group. Candidates are grouped by
    receiver layer so layers below the change are reused when the model allows it.
    """
    graph = patcher.graph
    circuit_mask = circuit_mask.bool() & graph.valid
    units = unit_members(graph, circuit_mask)  # a tied k/v unit (grouped-query attention) goes as one
    if len(units) > max_edges:
        pick = torch.randperm(len(units), generator=torch.Generator().manual_seed(seed))[:max_edges]
        units = [units[i] for i in sorted(pick.tolist())]
        log.info("minimality: checking a random %d of %d circuit edges (units)", max_edges, len(unit_members(graph, circuit_mask)))
    last = graph.n_layers - 1
    prefix = patcher.record_prefix(circuit_mask) if patcher.supports_start else None

    jobs = []  # (kind, names, start layer, mask)
    for rows, cols in units:
        m = circuit_mask.clone()
        m[rows, cols] = False
        names = tuple(str(Edge(graph.senders[s], *graph.receivers[r])) for s, r in zip(rows.tolist(), cols.tolist(), strict=True))
        jobs.append(("edge", names, min(graph.receiver_layer(int(cols[0])), last), m))
    if check_nodes:
        for name in sorted(node_set(graph, circuit_mask)):
            node = Node.parse(name)
            if node.kind is NodeKind.LOGITS:
                continue
            m = circuit_mask.clone()
            m[graph.senders.index(node)] = False  # no outgoing edge: the node's output is ablated everywhere
            first_receiver = max(node.layer, 0) + int(node.kind is NodeKind.MLP)  # a head feeds its layer's MLP
            jobs.append(("node", (name,), min(first_receiver, last), m))
    jobs.sort(key=lambda j: j[2])

    necessity: dict[tuple[str, str], float] = {}
    for batch in tqdm(list(batched(jobs, candidates)), desc="minimality", disable=not progress, leave=False):
        start = batch[0][2] if prefix is not None else 0
        values = patcher.evaluate(torch.stack([j[3] for j in batch]), metric, start_layer=start, prefix=prefix)
        for job, v in zip(batch, values.tolist(), strict=True):
            for name in job[1]:  # every edge of a tied unit gets the unit's necessity
                necessity[(job[0], name)] = (metric_circuit - v) / gap
    edge_n = {k[1]: v for k, v in sorted(necessity.items()) if k[0] == "edge"}
    node_n = {k[1]: v for k, v in sorted(necessity.items()) if k[0] == "node"}
    return Minimality(
        n_edges=int(circuit_mask.sum()), n_checked=len(edge_n), tol=tol, edge_necessity=edge_n,
        useless_edges=[e for e, v in edge_n.items() if abs(v) < tol],
        harmful_edges=[e for e, v in edge_n.items() if v <= -tol],
        node_necessity=node_n, useless_nodes=[n for n, v in node_n.items() if abs(v) < tol],
    )
