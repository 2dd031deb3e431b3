"""The computational graph of a transformer: nodes, edges and dense edge tensors.

Senders (rows): `input`, every head's result, every MLP's output, in residual-stream order.
Receivers (columns): per layer the q, k and v input of every head, then the MLP input; last `logits`.
Every sender earlier in the residual stream feeds every later receiver. With sequential blocks the
heads of layer l feed MLP l; with parallel attention and MLP (GPT-NeoX) they do not.

Edge counts follow EAP-IG's convention (32,491 for GPT-2 small); `n_edges(include_qkv_to_head=True)`
adds ACDC's 3 * n_layers * n_heads q/k/v-input -> head edges (32,923 for GPT-2 small).

Grouped-query attention (GQA, and MQA with one k/v head): the heads of a k/v group share one k and one
v input. The graph keeps one k and one v receiver per *query* head (EAP-IG's and MIB's convention, so
edge counts match theirs) and ties them: the k (v) edges from one sender into the heads of one group are
one *unit*, kept or removed together by every step that adds or removes edges. `edge_units` numbers the
units (a unit is a single edge everywhere else); `tie` closes a mask over them; `connected_mask` treats
a group's k (v) input as needed when any head of the group is. A unit's score is the sum of its edges'
scores (a per-head k/v edge moves the shared input by 1/group of its sender's difference).
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from enum import Enum
from functools import cached_property

import networkx as nx
import torch


class NodeKind(str, Enum):
    INPUT = "input"
    HEAD = "head"
    MLP = "mlp"
    LOGITS = "logits"


class Port(str, Enum):
    Q = "q"
    K = "k"
    V = "v"
    IN = "in"  # the single input of an MLP or of the logits


HEAD_PORTS = (Port.Q, Port.K, Port.V)

_HEAD_RE = re.compile(r"a(\d+)\.h(\d+)")
_MLP_RE = re.compile(r"m(\d+)")
_EDGE_RE = re.compile(r"(?P<src>[^-<>]+)->(?P<dst>[^-<>]+?)(?:<(?P<port>[qkv])>)?")


@dataclass(frozen=True, order=True)
class Node:
    """A component: `input`, `a{layer}.h{head}`, `m{layer}` or `logits`."""

    kind: NodeKind
    layer: int = -1
    head: int = -1

    def __str__(self) -> str:
        if self.kind is NodeKind.HEAD:
            return f"a{self.layer}.h{self.head}"
        if self.kind is NodeKind.MLP:
            return f"m{self.layer}"
        return self.kind.value

    @classmethod
    def parse(cls, name: str) -> Node:
        if name == "input":
            return cls(NodeKind.INPUT)
        if name == "logits":
            return cls(NodeKind.LOGITS)
        if m := _HEAD_RE.fullmatch(name):
            return cls(NodeKind.HEAD, int(m[1]), int(m[2]))
        if m := _MLP_RE.fullmatch(name):
            return cls(NodeKind.MLP, int(m[1]))
        raise ValueError(f"not a node name: {name!r} (expected input, a<L>.h<H>, m<L> or logits)")


INPUT_NODE = Node(NodeKind.INPUT)
LOGITS_NODE = Node(NodeKind.LOGITS)


@dataclass(frozen=True, order=True)
class Edge:
    """sender -> receiver, entering the receiver through `port` (q, k, v for heads, else in)."""

    src: Node
    dst: Node
    port: Port = Port.IN

    def __str__(self) -> str:
        if self.dst.kind is NodeKind.HEAD:
            return f"{self.src}->{self.dst}<{self.port.value}>"
        return f"{self.src}->{self.dst}"

    @classmethod
    def parse(cls, name: str) -> Edge:
        m = _EDGE_RE.fullmatch(name)
        if not m:
            raise ValueError(f"not an edge name: {name!r} (expected e.g. a0.h1->a2.h3<q> or m1->logits)")
        src, dst = Node.parse(m["src"]), Node.parse(m["dst"])
        if (dst.kind is NodeKind.HEAD) != (m["port"] is not None):
            raise ValueError(f"edge {name!r}: a <q|k|v> port is required exactly when the receiver is a head")
        return cls(src, dst, Port(m["port"]) if m["port"] else Port.IN)


@dataclass(frozen=True)
class SenderGroup:
    """Senders written by one hook: the input, the heads of one layer, or one MLP."""

    hook: str
    start: int  # first sender index
    size: int  # number of senders (heads) in the hook's [.., size, d_model] view
    layer: int  # -1 for the input


class ModelGraph:
    """Every possible edge of a model, indexed densely as [sender, receiver].

    Receiver columns per layer: q of heads 0..H-1, k of heads, v of heads, then the MLP
    (if any); the last column is `logits`.
    """

    def __init__(self, n_layers: int, n_heads: int, has_mlp: bool = True, parallel_attn_mlp: bool = False,
                 n_kv_heads: int | None = None):
        if n_layers < 1 or n_heads < 1:
            raise ValueError(f"a graph needs at least one layer and one head, got {n_layers} x {n_heads}")
        n_kv_heads = n_heads if n_kv_heads is None else n_kv_heads
        if n_kv_heads < 1 or n_heads % n_kv_heads:
            raise ValueError(f"{n_heads} query heads cannot share {n_kv_heads} k/v heads (n_heads must be a multiple)")
        self.n_layers = n_layers
        self.n_heads = n_heads
        self.has_mlp = has_mlp
        self.parallel_attn_mlp = parallel_attn_mlp
        self.n_kv_heads = n_kv_heads

    def __eq__(self, other: object) -> bool:
        return isinstance(other, ModelGraph) and self.shape_key == other.shape_key

    def __hash__(self) -> int:
        return hash(self.shape_key)

    def __repr__(self) -> str:
        return (f"ModelGraph(n_layers={self.n_layers}, n_heads={self.n_heads}, has_mlp={self.has_mlp}, "
                f"parallel_attn_mlp={self.parallel_attn_mlp}, n_kv_heads={self.n_kv_heads}, edges={self.n_edges()})")

    @property
    def shape_key(self) -> tuple:
        return (self.n_layers, self.n_heads, self.has_mlp, self.parallel_attn_mlp, self.n_kv_heads)

    @property
    def kv_group(self) -> int:
        """Query heads per k/v head (1 without grouped-query attention)."""
        return self.n_heads // self.n_kv_heads

    @classmethod
    def from_model(cls, model: torch.nn.Module) -> ModelGraph:
        from acdc_lite.shape import model_info

        info = model_info(model)
        return cls(info.n_layers, info.n_heads, info.has_mlp, info.parallel_attn_mlp, info.n_kv_heads)

    # ---- layout -------------------------------------------------------------------------
    @property
    def senders_per_layer(self) -> int:
        return self.n_heads + int(self.has_mlp)

    def head_sender(self, layer: int, head: int) -> int:
        return 1 + layer * self.senders_per_layer + head

    def mlp_sender(self, layer: int) -> int:
        return 1 + layer * self.senders_per_layer + self.n_heads

    @property
    def receivers_per_layer(self) -> int:
        return 3 * self.n_heads + int(self.has_mlp)

    def head_receiver(self, layer: int, port: Port, head: int) -> int:
        return layer * self.receivers_per_layer + HEAD_PORTS.index(port) * self.n_heads + head

    def mlp_receiver(self, layer: int) -> int:
        return layer * self.receivers_per_layer + 3 * self.n_heads

    @property
    def logits_receiver(self) -> int:
        return self.n_layers * self.receivers_per_layer

    @property
    def n_senders(self) -> int:
        return 1 + self.n_layers * self.senders_per_layer

    @property
    def n_receivers(self) -> int:
        return self.n_layers * self.receivers_per_layer + 1

    @cached_property
    def senders(self) -> tuple[Node, ...]:
        nodes = [INPUT_NODE]
        for layer in range(self.n_layers):
            nodes += [Node(NodeKind.HEAD, layer, h) for h in range(self.n_heads)]
            if self.has_mlp:
                nodes.append(Node(NodeKind.MLP, layer))
        return tuple(nodes)

    @cached_property
    def receivers(self) -> tuple[tuple[Node, Port], ...]:
        out = []
        for layer in range(self.n_layers):
            for port in HEAD_PORTS:
                out += [(Node(NodeKind.HEAD, layer, h), port) for h in range(self.n_heads)]
            if self.has_mlp:
                out.append((Node(NodeKind.MLP, layer), Port.IN))
        out.append((LOGITS_NODE, Port.IN))
        return tuple(out)

    @cached_property
    def nodes(self) -> tuple[Node, ...]:
        return self.senders + (LOGITS_NODE,)

    @cached_property
    def sender_groups(self) -> tuple[SenderGroup, ...]:
        from acdc_lite import hooks

        groups = [SenderGroup(hooks.INPUT, 0, 1, -1)]
        for layer in range(self.n_layers):
            groups.append(SenderGroup(hooks.head_result(layer), self.head_sender(layer, 0), self.n_heads, layer))
            if self.has_mlp:
                groups.append(SenderGroup(hooks.mlp_out(layer), self.mlp_sender(layer), 1, layer))
        return tuple(groups)

    def n_senders_before(self, receiver: int) -> int:
        """How many senders (a prefix of the sender order) feed receiver column `receiver`."""
        if receiver == self.logits_receiver:
            return self.n_senders
        layer, offset = divmod(receiver, self.receivers_per_layer)
        before_layer = 1 + layer * self.senders_per_layer
        if offset < 3 * self.n_heads or self.parallel_attn_mlp:
            return before_layer
        return before_layer + self.n_heads

    def receiver_layer(self, receiver: int) -> int:
        """Layer of a receiver column (n_layers for logits)."""
        return receiver // self.receivers_per_layer

    @cached_property
    def valid(self) -> torch.Tensor:
        """[n_senders, n_receivers] bool: which (sender, receiver) pairs are edges of the graph."""
        counts = torch.tensor([self.n_senders_before(r) for r in range(self.n_receivers)])
        return torch.arange(self.n_senders)[:, None] < counts[None, :]

    # ---- edges --------------------------------------------------------------------------
    def n_edges(self, include_qkv_to_head: bool = False) -> int:
        n = int(self.valid.sum())
        return n + (3 * self.n_layers * self.n_heads if include_qkv_to_head else 0)

    @cached_property
    def edges(self) -> tuple[Edge, ...]:
        """Every edge, in [sender, receiver] row-major order of the dense tensors."""
        out = []
        for s, r in self.valid.nonzero().tolist():
            dst, port = self.receivers[r]
            out.append(Edge(self.senders[s], dst, port))
        return tuple(out)

    @cached_property
    def edge_names(self) -> tuple[str, ...]:
        """`str(edge)` of every edge, in the order of `edges` (built from node names, not edge by edge)."""
        senders = [str(n) for n in self.senders]
        arrows = [f"->{dst}<{port.value}>" if dst.kind is NodeKind.HEAD else f"->{dst}" for dst, port in self.receivers]
        return tuple(senders[s] + arrows[r] for s, r in self.valid.nonzero().tolist())

    @cached_property
    def edge_name_set(self) -> frozenset[str]:
        """The canonical names of every edge (other spellings, e.g. a0.h01, still parse with `edge_index`)."""
        return frozenset(self.edge_names)

    @cached_property
    def _sender_index(self) -> dict[Node, int]:
        return {n: i for i, n in enumerate(self.senders)}

    @cached_property
    def _receiver_index(self) -> dict[tuple[Node, Port], int]:
        return {rp: i for i, rp in enumerate(self.receivers)}

    def edge_index(self, edge: Edge | str) -> tuple[int, int]:
        """(sender row, receiver column) of an edge; a clear error if the graph has no such edge."""
        edge = Edge.parse(edge) if isinstance(edge, str) else edge
        s = self._sender_index.get(edge.src)
        r = self._receiver_index.get((edge.dst, edge.port))
        if s is None or r is None or not self.valid[s, r]:
            raise ValueError(f"edge {edge} is not in {self!r}")
        return s, r

    # ---- grouped k/v: units of edges added or removed together -------------------------
    def receiver_slots(self) -> list[tuple[int, ...]]:
        """Receiver columns grouped as one shared input: a k/v group's k (v) columns together, else one column.
        In column order of each slot's first column."""
        slots = []
        for layer in range(self.n_layers):
            first = layer * self.receivers_per_layer
            slots += [(first + h,) for h in range(self.n_heads)]
            for port in (1, 2):
                for g in range(self.n_kv_heads):
                    start = first + port * self.n_heads + g * self.kv_group
                    slots.append(tuple(range(start, start + self.kv_group)))
            if self.has_mlp:
                slots.append((self.mlp_receiver(layer),))
        slots.append((self.logits_receiver,))
        return slots

    @cached_property
    def receiver_slot(self) -> torch.Tensor:
        """[R] long: index into `receiver_slots()` of each receiver column."""
        out = torch.empty(self.n_receivers, dtype=torch.long)
        for i, cols in enumerate(self.receiver_slots()):
            out[list(cols)] = i
        return out

    @cached_property
    def edge_units(self) -> torch.Tensor:
        """[S, R] long: the unit of each valid edge (-1 elsewhere). A unit is one edge, or with grouped-query
        attention the k (v) edges from one sender into the heads of one group. Numbered in row-major order
        of their first edge."""
        key = torch.arange(self.n_senders)[:, None] * self.n_receivers + self.receiver_slot[None, :]
        key = torch.where(self.valid, key, torch.full_like(key, -1))
        _, units = torch.unique(key[self.valid], return_inverse=True)
        out = torch.full(self.valid.shape, -1, dtype=torch.long)
        out[self.valid] = units
        return out

    @property
    def n_units(self) -> int:
        return int(self.edge_units.max()) + 1

    def tie(self, kept: torch.Tensor) -> torch.Tensor:
        """[.., S, R] bool: `kept` with every unit that has one edge kept kept whole."""
        return tie_kv_groups(self, kept, self.kv_group)

    def is_tied(self, kept: torch.Tensor) -> bool:
        """Whether a binary [.., S, R] mask keeps or removes every unit whole."""
        kept = kept.bool() & self.valid
        return bool(torch.equal(self.tie(kept), kept))

    def unit_sum(self, values: torch.Tensor) -> torch.Tensor:
        """[S, R] -> [S, R]: each valid edge gets the sum of `values` over its unit (NaN if all are NaN)."""
        units = self.edge_units[self.valid]
        v = values[self.valid].double()
        total = torch.zeros(self.n_units, dtype=torch.float64).index_add_(0, units, v.nan_to_num(0))
        seen = torch.zeros(self.n_units, dtype=torch.bool).index_fill_(0, units[~v.isnan()], True)
        out = torch.full(self.valid.shape, float("nan"), dtype=values.dtype)
        out[self.valid] = torch.where(seen, total, torch.full_like(total, float("nan")))[units].to(values.dtype)
        return out

    def mask_from_edges(self, edges) -> torch.Tensor:
        """[n_senders, n_receivers] bool membership of an iterable of edges (or names)."""
        mask = torch.zeros(self.n_senders, self.n_receivers, dtype=torch.bool)
        for e in edges:
            mask[self.edge_index(e)] = True
        return mask

    def edges_from_mask(self, mask: torch.Tensor) -> list[Edge]:
        mask = mask.bool() & self.valid
        return [Edge(self.senders[s], *self.receivers[r]) for s, r in mask.nonzero().tolist()]

    def full_mask(self) -> torch.Tensor:
        return self.valid.clone()

    def empty_mask(self) -> torch.Tensor:
        return torch.zeros_like(self.valid)

    def to_networkx(self, mask: torch.Tensor | None = None, scores: torch.Tensor | None = None) -> nx.MultiDiGraph:
        """A MultiDiGraph of the (masked) edges; nodes named canonically, edges keyed by port."""
        g = nx.MultiDiGraph()
        for node in self.nodes:
            g.add_node(str(node), kind=node.kind.value, layer=node.layer, head=node.head)
        keep = self.valid if mask is None else (mask.bool() & self.valid)
        for s, r in keep.nonzero().tolist():
            dst, port = self.receivers[r]
            attrs = {"port": port.value}
            if scores is not None:
                attrs["score"] = float(scores[s, r])
            g.add_edge(str(self.senders[s]), str(dst), key=port.value, **attrs)
        return g


# ---- mask operations -----------------------------------------------------------------------
def receiver_nodes(graph: ModelGraph) -> torch.Tensor:
    """[R] long: index into `graph.nodes` of each receiver column's node."""
    index = {n: i for i, n in enumerate(graph.nodes)}
    return torch.tensor([index[node] for node, _ in graph.receivers], dtype=torch.long)


def jaccard(a: set, b: set) -> float:
    """|a & b| / |a | b| of two edge (or node) sets; 1.0 for two empty sets."""
    return 1.0 if not a and not b else len(a & b) / len(a | b)


def connected_mask(graph: ModelGraph, kept: torch.Tensor) -> torch.Tensor:
    """Keep only edges on some path input -> ... -> logits: [S, R] bool -> [S, R] bool.

    A tied mask stays tied: a k/v group's shared input counts as one receiver, needed if any head of the group is."""
    kept = kept.bool() & graph.valid
    rnode = receiver_nodes(graph)
    n_nodes, n_senders = len(graph.nodes), graph.n_senders
    forward = torch.zeros(n_nodes, dtype=torch.bool)
    forward[0] = True  # input
    while True:
        hit = (kept & forward[:n_senders, None]).any(0)
        new = forward.clone()
        new[rnode[hit]] = True
        if torch.equal(new, forward):
            break
        forward = new
    backward = torch.zeros(n_nodes, dtype=torch.bool)
    backward[graph.nodes.index(LOGITS_NODE)] = True
    slot = graph.receiver_slot
    while True:
        needed = backward[rnode]  # [R]: a group's shared k/v input is needed when any of its heads is
        needed = torch.zeros(int(slot.max()) + 1, dtype=torch.bool).index_fill_(0, slot[needed], True)[slot]
        hit = (kept & needed[None, :]).any(1)
        new = backward.clone()
        new[:n_senders] |= hit
        if torch.equal(new, backward):
            break
        backward = new
    needed = torch.zeros(int(slot.max()) + 1, dtype=torch.bool).index_fill_(0, slot[backward[rnode]], True)[slot]
    return kept & forward[:n_senders, None] & needed[None, :]


def tie_kv_groups(graph: ModelGraph, kept: torch.Tensor, group: int | None = None) -> torch.Tensor:
    """Grouped-query attention: heads of a k/v group share one k and one v input, so an edge into one
    head's k (v) is an edge into the group's. Returns [.., S, R] with each group's k/v columns OR-ed."""
    group = graph.kv_group if group is None else group
    if group <= 1:
        return kept
    out = kept.clone()
    h = graph.n_heads
    for layer in range(graph.n_layers):
        for offset in (h, 2 * h):
            start = layer * graph.receivers_per_layer + offset
            cols = out[..., start:start + h].unflatten(-1, (h // group, group))
            out[..., start:start + h] = cols.any(-1, keepdim=True).expand_as(cols).flatten(-2)
    return out & graph.valid


def unit_members(graph: ModelGraph, mask: torch.Tensor | None = None) -> list[tuple[torch.Tensor, torch.Tensor]]:
    """(sender rows [k], receiver columns [k]) of every unit with an edge in `mask` (default: all), in unit order."""
    keep = graph.valid if mask is None else (mask.bool() & graph.valid)
    s, r = keep.nonzero(as_tuple=True)
    units = graph.edge_units[s, r]
    order = torch.sort(units, stable=True).indices
    s, r, units = s[order], r[order], units[order]
    counts = torch.unique_consecutive(units, return_counts=True)[1].tolist()
    return list(zip(s.split(counts), r.split(counts), strict=True))
