"""The ground-truth circuit of a compiled program: which edges carry the residual directions each receiver reads
and the program routes there (see the package docstring)."""

from __future__ import annotations

import logging
from collections.abc import Sequence

import torch

from acdc_lite.circuit import Circuit, ModelRef
from acdc_lite.graph import INPUT_NODE, LOGITS_NODE, Edge, ModelGraph, Node, NodeKind, Port
from acdc_lite.tracr.program import METHOD, ONE, SELECTOR_WIDTH_SUFFIX, rasp_module
from acdc_lite.transformer import SmallTransformer

log = logging.getLogger(__name__)


def _nonzero_rows(m: torch.Tensor) -> set[int]:
    return set((m != 0).any(dim=1).nonzero().flatten().tolist())


def component_io(model: SmallTransformer) -> tuple[dict[Node, set[int]], dict[tuple[Node, Port], set[int]]]:
    """Residual dims each sender writes and each receiver port reads, from the weights (zero = not used)."""
    dbl = {k: v.detach().double() for k, v in model.state_dict().items()}
    writes = {INPUT_NODE: _nonzero_rows(dbl["W_E"].T) | _nonzero_rows(dbl["W_pos"].T)}
    reads = {(LOGITS_NODE, Port.IN): _nonzero_rows(dbl["W_U"])}
    for layer in range(model.cfg.n_layers):
        b = f"blocks.{layer}"
        for h in range(model.cfg.n_heads):
            node = Node(NodeKind.HEAD, layer, h)
            qk = dbl[f"{b}.attn.W_Q"][h] @ dbl[f"{b}.attn.W_K"][h].T  # [d, d]
            ov = dbl[f"{b}.attn.W_V"][h] @ dbl[f"{b}.attn.W_O"][h]  # [d, d]
            reads[(node, Port.Q)], reads[(node, Port.K)], reads[(node, Port.V)] = _nonzero_rows(qk), _nonzero_rows(qk.T), _nonzero_rows(ov)
            writes[node] = _nonzero_rows(ov.T)
        mlp = Node(NodeKind.MLP, layer)
        reads[(mlp, Port.IN)] = _nonzero_rows(dbl[f"{b}.mlp.W_in"])
        writes[mlp] = _nonzero_rows(dbl[f"{b}.mlp.W_out"].T)
    return writes, reads


def _name(label: str) -> str:
    """Residual label 'sop:value' (or 'one', or a hidden direction) -> the SOp / direction name."""
    return label.split(":", 1)[0]


def _program_inputs(rasp, graph, node_id: str, port: Port, is_head: bool) -> set[str]:
    """Names of the residual directions the program routes into `node_id`'s block at `port`."""
    expr = graph.nodes[node_id]["EXPR"]
    if isinstance(expr, (rasp.Aggregate, rasp.SelectorWidth)) and is_head and isinstance(expr.selector, rasp.Select):
        sel = expr.selector
        by_port = {Port.Q: {sel.queries.label}, Port.K: {sel.keys.label},
                   Port.V: {expr.sop.label} if isinstance(expr, rasp.Aggregate) else set()}
        return by_port[port]
    if isinstance(expr, rasp.SelectorWidth) and not is_head:
        return {node_id + SELECTOR_WIDTH_SUFFIX}
    if isinstance(expr, rasp.Map):
        return {expr.inner.label}
    if isinstance(expr, rasp.SequenceMap):
        return {expr.fst.label, expr.snd.label}
    # anything else: every SOp the expression depends on (through selectors)
    found, todo = set(), list(graph.predecessors(node_id))
    while todo:
        n = todo.pop()
        if isinstance(graph.nodes[n]["EXPR"], rasp.SOp):
            found.add(n)
        else:
            todo += list(graph.predecessors(n))
    return found


def ground_truth_edges(model: SmallTransformer, program, labels: Sequence[str], bos: str) -> dict[str, tuple[str, ...]]:
    """Ground-truth edge name -> residual directions it carries (SOp names, not labels); see the package docstring."""
    rasp = rasp_module()
    from tracr.compiler import rasp_to_graph

    graph = rasp_to_graph.extract_rasp_graph(program).graph
    constants = {ONE, f"tokens:{bos}"}
    writes, reads = component_io(model)

    def nodes_of(sender_dims: set[int]) -> set[str]:
        names = {_name(labels[i]) for i in sender_dims}
        return {n.removesuffix(SELECTOR_WIDTH_SUFFIX) for n in names} & set(graph.nodes)

    def allowed(dst: Node, port: Port) -> set[str]:
        if dst.kind is NodeKind.LOGITS:
            return {program.label}
        return set().union(*[_program_inputs(rasp, graph, n, port, dst.kind is NodeKind.HEAD) for n in nodes_of(writes[dst])])

    out = {}
    for edge in ModelGraph(model.cfg.n_layers, model.cfg.n_heads).edges:
        shared = sorted(writes[edge.src] & reads[(edge.dst, edge.port)])
        if not shared:
            continue
        ok = allowed(edge.dst, edge.port)
        carried = tuple(labels[i] for i in shared if labels[i] in constants or _name(labels[i]) in ok)
        ignored = [labels[i] for i in shared if labels[i] not in carried]
        if ignored:
            log.warning("%s reads %s, which the program does not route there; left out of the ground truth", edge, ignored)
        if carried:
            out[str(edge)] = tuple(_readable(c, graph) for c in carried)
    return out


def _readable(label: str, graph) -> str:
    """A residual label with the SOp's name instead of its process-dependent label ('length_5:1' -> 'length:1')."""
    name, sep, value = label.partition(":")
    base = name.removesuffix(SELECTOR_WIDTH_SUFFIX)
    if base not in graph.nodes:
        return label
    expr_name = graph.nodes[base]["EXPR"].name
    if sum(graph.nodes[n]["EXPR"].name == expr_name for n in graph.nodes) > 1:
        return label  # an ambiguous (default) name: keep the unique label
    return expr_name + name[len(base):] + sep + value


def ground_truth_circuit(model, directions, name, program, labels, vocab, max_seq_len, bos) -> Circuit:
    from importlib.metadata import PackageNotFoundError, version

    from acdc_lite import __version__

    try:
        tracr_version = version("tracr-pypi")
    except PackageNotFoundError:  # tracr installed some other way
        tracr_version = "unknown"
    task = {"name": f"tracr-{name}", "program": name, "output": program.name, "vocab": sorted(map(str, vocab)),
            "max_seq_len": max_seq_len, "bos": bos}
    rule = ("receiver reads (nonzero weights) a residual direction the sender writes, and the RASP graph routes that "
            "SOp into the receiver's expression at that port, or the direction is tracr's constant 'one' or tokens:BOS")
    return Circuit(model=ModelRef.of(model), edges={e: 1.0 for e in directions}, task=task,
                   method={"name": METHOD, "params": {"rule": rule, "directions": {e: list(d) for e, d in directions.items()}}},
                   ablation="zero", metrics={"n_edges": len(directions), "n_edges_acdc_convention": len(acdc_convention(directions))},
                   provenance={"package_version": __version__, "tracr_version": tracr_version, "residual_dims": len(labels)})


def acdc_convention(directions: dict[str, Sequence[str]]) -> list[str]:
    """Edges as the ACDC paper counts tracr circuits: `input` split into `embed` (tokens, one) and `pos`
    (indices), plus one q/k/v-input -> head edge per head port that receives anything."""
    out, ports = [], set()
    for name, carried in directions.items():
        edge = Edge.parse(name)
        if edge.dst.kind is NodeKind.HEAD:
            ports.add((str(edge.dst), edge.port.value))
        if edge.src.kind is NodeKind.INPUT:
            kinds = {"pos" if _name(c) == "indices" else "embed" for c in carried}
            out += [name.replace("input->", f"{k}->", 1) for k in sorted(kinds)]
        else:
            out.append(name)
    return out + [f"{head}<{port}>->{head}" for head, port in sorted(ports)]
