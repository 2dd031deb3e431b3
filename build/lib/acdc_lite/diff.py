"""Compare two circuits: shared and one-sided edges and nodes, Jaccard similarity, an SVG overlay.

Circuits of the same graph shape are compared edge by edge ("identity" alignment). Circuits from
models of different shapes are aligned first ("depth" alignment): layer l of an L-layer model goes
to depth bin floor((l + 0.5) * n_bins / L) with n_bins = the smaller layer count; heads are pooled
per bin (`a@2`), MLPs per bin (`m@2`), and, when role maps are given, heads with a role in both maps
are matched by role at any depth (`a:name_mover`). An aligned edge exists if any member edge does.
Circuits with different edge conventions are refused.
"""

from __future__ import annotations

import json
import logging
from dataclasses import dataclass, field
from pathlib import Path

import pandas as pd

from acdc_lite.boundary import InputError, read_json_object
from acdc_lite.circuit import EDGE_CONVENTION, Circuit, CircuitError
from acdc_lite.graph import Edge, Node, NodeKind, jaccard
from acdc_lite.render import KIND_COLORS, EdgeSpec, NodeSpec, build_dot, display_order, display_roles, dot_to_svg, node_rank

log = logging.getLogger(__name__)

COLOR_A = "#e66101"
COLOR_B = "#5e3c99"
COLOR_BOTH = "#404040"


@dataclass(frozen=True)
class CircuitDiff:
    """Result of `diff`. Edge and node names are canonical (identity) or aligned keys (depth)."""

    name_a: str
    name_b: str
    alignment: str  # "identity" or a description of the depth/role alignment
    shared_edges: tuple[str, ...]
    only_a_edges: tuple[str, ...]
    only_b_edges: tuple[str, ...]
    shared_nodes: tuple[str, ...]
    only_a_nodes: tuple[str, ...]
    only_b_nodes: tuple[str, ...]
    edge_jaccard: float
    node_jaccard: float
    scores_a: dict  # aligned edge -> score in A (max |score| member)
    scores_b: dict
    node_ranks: dict  # node -> [rank, rank label, kind], for drawing
    roles: dict = field(default_factory=dict)  # node -> role drawn under its name (identity alignment)

    @property
    def is_empty(self) -> bool:
        """True when neither circuit has an edge or node the other lacks."""
        return not (self.only_a_edges or self.only_b_edges or self.only_a_nodes or self.only_b_nodes)

    def to_dict(self) -> dict:
        return {
            "a": self.name_a, "b": self.name_b, "alignment": self.alignment,
            "edge_jaccard": self.edge_jaccard, "node_jaccard": self.node_jaccard,
            "n_shared_edges": len(self.shared_edges), "n_only_a_edges": len(self.only_a_edges),
            "n_only_b_edges": len(self.only_b_edges),
            "shared_edges": list(self.shared_edges), "only_a_edges": list(self.only_a_edges),
            "only_b_edges": list(self.only_b_edges), "shared_nodes": list(self.shared_nodes),
            "only_a_nodes": list(self.only_a_nodes), "only_b_nodes": list(self.only_b_nodes),
        }

    def to_json(self) -> str:
        return json.dumps(self.to_dict(), indent=1) + "\n"

    def to_frame(self) -> pd.DataFrame:
        """Columns level (edge|node), item, status (shared|only_a|only_b), score_a, score_b."""
        rows = []
        for status, items in (("shared", self.shared_edges), ("only_a", self.only_a_edges), ("only_b", self.only_b_edges)):
            rows += [("edge", e, status, self.scores_a.get(e), self.scores_b.get(e)) for e in items]
        for status, items in (("shared", self.shared_nodes), ("only_a", self.only_a_nodes), ("only_b", self.only_b_nodes)):
            rows += [("node", n, status, None, None) for n in items]
        return pd.DataFrame(rows, columns=["level", "item", "status", "score_a", "score_b"])

    def to_dot(self, direction: str = "BT", roles: dict[str, str] | None = None) -> str:
        """DOT text of the overlay: A-only orange, B-only purple, shared dark grey; `roles` label nodes."""
        status = {**{n: "shared" for n in self.shared_nodes}, **{n: "a" for n in self.only_a_nodes},
                  **{n: "b" for n in self.only_b_nodes}}
        border = {"shared": COLOR_BOTH, "a": COLOR_A, "b": COLOR_B}
        nodes = []
        for name, st in status.items():
            rank, label, kind = self.node_ranks[name]
            role = (self.roles if roles is None else roles).get(name)
            nodes.append(NodeSpec(name, (name, role) if role else (name,), kind, rank, label, KIND_COLORS[kind], border[st],
                                  ports=kind == "head", tooltip=f"{name}: {role} ({st})" if role else f"{name} ({st})",
                                  order=display_order(name)))
        edges = []
        for st, items in (("shared", self.shared_edges), ("a", self.only_a_edges), ("b", self.only_b_edges)):
            for name in items:
                src, dst, port = _split_edge(name)
                edges.append(EdgeSpec(src, dst, port, border[st], 2.2 if st == "shared" else 1.6,
                                      "solid" if st != "b" else "dashed", f"{name} ({st})"))
        legend = [("line", COLOR_BOTH, f"in both ({len(self.shared_edges)} edges)"),
                  ("line", COLOR_A, f"only in A: {self.name_a} ({len(self.only_a_edges)})"),
                  ("dash", COLOR_B, f"only in B: {self.name_b} ({len(self.only_b_edges)})")]
        legend += [("fill", KIND_COLORS[k], k) for k in ("input", "head", "mlp", "logits")]
        title = (f"A: {self.name_a}  vs  B: {self.name_b}\nedge Jaccard {self.edge_jaccard:.3f} | node Jaccard "
                 f"{self.node_jaccard:.3f} | alignment: {self.alignment.split(':')[0]}")
        return build_dot(nodes, edges, title, legend, direction).source

    def to_svg(self, path: str | Path | None = None, direction: str = "BT") -> str:
        """SVG of the overlay (needs graphviz's `dot`); written to `path` if given."""
        from acdc_lite.circuit import write_atomic

        svg = dot_to_svg(self.to_dot(direction))
        if path is not None:
            write_atomic(Path(path), svg)
        return svg


def _split_edge(name: str) -> tuple[str, str, str | None]:
    src, rest = name.split("->", 1)
    if rest.endswith(">") and "<" in rest:
        dst, port = rest[:-1].rsplit("<", 1)
        return src, dst, port
    return src, rest, None


def _load(c) -> tuple[Circuit, str]:
    """A Circuit and its edge convention, from a Circuit, a circuit dict or a file path."""
    if isinstance(c, Circuit):
        return c, getattr(c, "edge_convention", EDGE_CONVENTION)
    if isinstance(c, (str, Path)):
        try:
            d = read_json_object(c, "circuit file")
        except InputError as e:
            raise CircuitError(str(e)) from None
    else:
        d = c
    if not isinstance(d, dict):
        raise CircuitError(f"cannot diff a {type(c).__name__}; give a Circuit, a circuit dict or a file path")
    convention = d.get("edge_convention", EDGE_CONVENTION)
    if convention != EDGE_CONVENTION:
        return None, convention
    return Circuit.from_dict(d, source=f"circuit file {c}" if isinstance(c, (str, Path)) else "circuit"), convention


def _label(c: Circuit) -> str:
    task = c.task.get("name", "") if isinstance(c.task, dict) else ""
    method = c.method.get("name", "") if isinstance(c.method, dict) else ""
    return " ".join(x for x in (c.model.name, task, method) if x)


def diff(a, b, *, roles_a: dict[str, str] | None = None, roles_b: dict[str, str] | None = None,
         align: str = "auto", name_a: str | None = None, name_b: str | None = None) -> CircuitDiff:
    """Compare circuits `a` and `b` (Circuits, circuit dicts or files).

    align: "identity" (same graph shape, edge by edge), "depth" (see module docstring) or "auto"
    (identity when the shapes match). roles_*: {node name: role} used by depth alignment; by default the
    roles each circuit carries (detected at discovery), with a zoo card's as an override (`display_roles`).
    """
    (ca, conv_a), (cb, conv_b) = _load(a), _load(b)
    if ca is not None and cb is not None:
        roles_a = display_roles(ca) if roles_a is None else roles_a
        roles_b = display_roles(cb) if roles_b is None else roles_b
    if conv_a != conv_b or ca is None or cb is None:
        raise CircuitError(f"circuit A uses edge convention {conv_a!r} and B uses {conv_b!r}: their edges count different "
                           f"things (ACDC's convention adds q/k/v-input -> head edges to EAP-IG's). Convert both to "
                           f"{EDGE_CONVENTION!r} before comparing")
    same_shape = ca.graph == cb.graph
    if align == "auto":
        align = "identity" if same_shape else "depth"
    if align == "identity" and not same_shape:
        raise CircuitError(f"identity alignment needs the same graph shape; A is {ca.model.n_layers}x{ca.model.n_heads} "
                           f"and B is {cb.model.n_layers}x{cb.model.n_heads}. Use align='depth'")
    if align not in ("identity", "depth"):
        raise ValueError(f"align must be 'auto', 'identity' or 'depth', got {align!r}")
    if same_shape and ca.model.fingerprint != cb.model.fingerprint:
        log.info("diffing circuits from different weights of the same shape (%s vs %s)", ca.model.fingerprint, cb.model.fingerprint)

    if align == "identity":
        alignment = "identity"
        ea, eb = _identity_edges(ca), _identity_edges(cb)
        roles = _merged_roles(roles_a or {}, roles_b or {})
        ranks = {str(n): [*node_rank(n, ca.graph.n_layers), n.kind.value] for n in ca.graph.nodes}
    else:
        roles = {}
        n_bins = min(ca.model.n_layers, cb.model.n_layers)
        both_roles = bool(roles_a) and bool(roles_b)
        ranks = {}
        ea = _depth_edges(ca, n_bins, roles_a if both_roles else None, ranks)
        eb = _depth_edges(cb, n_bins, roles_b if both_roles else None, ranks)
        alignment = (f"depth: layer l of an L-layer model -> bin floor((l + 0.5) * {n_bins} / L); heads pooled per bin, "
                     f"MLPs per bin" + ("; heads with a role in both role maps matched by role at any depth" if both_roles else ""))
    na, nb = _nodes_of(ea), _nodes_of(eb)
    sa, sb = set(ea), set(eb)
    result = CircuitDiff(
        name_a=name_a or _label(ca), name_b=name_b or _label(cb), alignment=alignment,
        shared_edges=tuple(sorted(sa & sb)), only_a_edges=tuple(sorted(sa - sb)), only_b_edges=tuple(sorted(sb - sa)),
        shared_nodes=tuple(sorted(na & nb)), only_a_nodes=tuple(sorted(na - nb)), only_b_nodes=tuple(sorted(nb - na)),
        edge_jaccard=jaccard(sa, sb), node_jaccard=jaccard(na, nb), scores_a=ea, scores_b=eb, node_ranks=ranks,
        roles=roles,
    )
    log.info("diff %s vs %s (%s): edge Jaccard %.3f", result.name_a, result.name_b, align, result.edge_jaccard)
    return result


def _merged_roles(a: dict[str, str], b: dict[str, str]) -> dict[str, str]:
    """One label per node: the role both maps agree on, else 'A: x / B: y'."""
    out = {}
    for node in sorted(set(a) | set(b)):
        ra, rb = a.get(node), b.get(node)
        out[node] = ra if ra == rb else f"A: {ra or '-'} / B: {rb or '-'}"
    return out


def _identity_edges(c: Circuit) -> dict[str, float | None]:
    return dict(c.edges)


def _nodes_of(edges) -> set[str]:
    out = set()
    for name in edges:
        src, dst, _ = _split_edge(name)
        out |= {src, dst}
    return out


def _depth_key(node: Node, n_layers: int, n_bins: int, roles: dict[str, str] | None, ranks: dict) -> str:
    if node.kind in (NodeKind.INPUT, NodeKind.LOGITS):
        key = str(node)
        ranks[key] = [0 if node.kind is NodeKind.INPUT else 2 * n_bins + 1, key if key == "logits" else "embed", node.kind.value]
        return key
    depth = int((node.layer + 0.5) * n_bins / n_layers)
    if node.kind is NodeKind.MLP:
        key = f"m@{depth}"
        ranks[key] = [2 * depth + 2, f"depth {depth} mlp", "mlp"]
        return key
    role = (roles or {}).get(str(node))
    key = f"a:{role}" if role else f"a@{depth}"
    rank = 2 * depth + 1
    if key in ranks:
        rank = min(rank, ranks[key][0])
    ranks[key] = [rank, f"depth {rank // 2} attn", "head"]
    return key


def _depth_edges(c: Circuit, n_bins: int, roles: dict[str, str] | None, ranks: dict) -> dict[str, float | None]:
    out: dict[str, float | None] = {}
    for name, score in c.edges.items():
        e = Edge.parse(name)
        src = _depth_key(e.src, c.model.n_layers, n_bins, roles, ranks)
        dst = _depth_key(e.dst, c.model.n_layers, n_bins, roles, ranks)
        key = f"{src}->{dst}<{e.port.value}>" if e.dst.kind is NodeKind.HEAD else f"{src}->{dst}"
        old = out.get(key)
        if old is None or (score is not None and abs(score) > abs(old)):
            out[key] = score
    return out
