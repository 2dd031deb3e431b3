"""Draw circuits as SVG (graphviz `dot`) or DOT text.

Layout: one rank per layer part, from `input` (bottom by default) through each layer's heads and
MLP to `logits`, with the layer names along the side. Nodes are coloured by kind; heads show their
q, k and v inputs as ports where edges enter, and a measured role (e.g. from a zoo model card) when
given. Edge width follows |score|, colour its sign (blue positive, red dashed negative); in large
circuits weak edges are faded and merged per (sender, head), and in very large ones every sender's
q/k/v edges into a head are drawn as one edge labelled with its ports. Dangling nodes (no path from `input`
or to `logits`) are pruned. A legend and a title (task, model, method, faithfulness) are drawn.
"""

from __future__ import annotations

import html
import logging
import math
import shutil
from dataclasses import dataclass, field
from pathlib import Path

import torch

from acdc_lite.circuit import Circuit, write_atomic
from acdc_lite.graph import Edge, Node, NodeKind, connected_mask, unit_members

log = logging.getLogger(__name__)

KIND_COLORS = {"input": "#d9d9d9", "head": "#c6dbef", "mlp": "#fdd0a2", "logits": "#fff2ae"}
POSITIVE = "#2166ac"
NEGATIVE = "#b2182b"
WEAK = "#b0b0b080"
UNKNOWN = "#707070"
ROLE_PALETTE = ("#1b9e77", "#d95f02", "#7570b3", "#e7298a", "#66a61e", "#e6ab02", "#a6761d", "#1f78b4",
                "#b15928", "#6a3d9a", "#33a02c", "#fb9a99")


class RenderError(RuntimeError):
    """Rendering cannot run here; the message says what to install."""


def require_dot() -> str:
    """Path of graphviz's `dot` program, or a RenderError saying how to install it."""
    path = shutil.which("dot")
    if path is None:
        raise RenderError("graphviz's `dot` program is not installed (the Python package `graphviz` only writes DOT). "
                          "Install it: `apt-get install graphviz` (Debian/Ubuntu), `brew install graphviz` (macOS) or "
                          "`conda install -c conda-forge graphviz`. Without it, use to_dot() for DOT text.")
    return path


# ---- drawing specs (shared with diff overlays) ----------------------------------------------------
@dataclass(frozen=True)
class NodeSpec:
    """One drawn node. rank orders nodes from input (0) to logits; rank_label names the rank."""

    name: str
    lines: tuple[str, ...]  # label lines; the first is bold
    kind: str  # input | head | mlp | logits
    rank: int
    rank_label: str
    fill: str
    border: str = "#404040"
    ports: bool = False  # draw q/k/v input ports
    tooltip: str = ""
    order: int = 0  # left-to-right position within its rank (head index)


@dataclass(frozen=True)
class EdgeSpec:
    src: str
    dst: str
    port: str | None  # q, k or v into a head with ports; None for the node itself
    color: str
    width: float
    style: str = "solid"
    tooltip: str = ""
    attrs: dict = field(default_factory=dict)  # extra DOT attributes (e.g. machine-readable edge names)


def node_rank(node: Node, n_layers: int) -> tuple[int, str]:
    """(rank, rank label): input 0, layer l heads 2l+1, MLP l 2l+2, logits 2L+1."""
    if node.kind is NodeKind.INPUT:
        return 0, "embed"
    if node.kind is NodeKind.HEAD:
        return 2 * node.layer + 1, f"layer {node.layer} attn"
    if node.kind is NodeKind.MLP:
        return 2 * node.layer + 2, f"layer {node.layer} mlp"
    return 2 * n_layers + 1, "logits"


def _html_label(spec: NodeSpec, ports_first: bool) -> str:
    first = f"<B>{html.escape(spec.lines[0])}</B>"
    rest = "".join(f'<BR/><FONT POINT-SIZE="9">{html.escape(line)}</FONT>' for line in spec.lines[1:])
    border = 2 if spec.border != "#404040" else 1
    name_row = f'<TR><TD COLSPAN="3" CELLPADDING="3">{first}{rest}</TD></TR>'
    if not spec.ports:
        return (f'<<TABLE BORDER="{border}" COLOR="{spec.border}" CELLBORDER="0" CELLSPACING="0" '
                f'BGCOLOR="{spec.fill}">{name_row}</TABLE>>')
    port_row = ('<TR>' + "".join(f'<TD PORT="{p}" BORDER="1" COLOR="#808080"><FONT POINT-SIZE="8">{p}</FONT></TD>'
                                 for p in "qkv") + '</TR>')
    rows = port_row + name_row if ports_first else name_row + port_row
    return (f'<<TABLE BORDER="{border}" COLOR="{spec.border}" CELLBORDER="0" CELLSPACING="0" '
            f'BGCOLOR="{spec.fill}">{rows}</TABLE>>')


def build_dot(nodes: list[NodeSpec], edges: list[EdgeSpec], title: str, legend: list[tuple[str, str, str]],
              direction: str = "BT", comment: str | None = None):
    """A graphviz.Digraph of the specs. legend rows: (swatch 'fill'|'line'|'dash'|'border'|'text', colour or swatch text, text)."""
    import graphviz

    if direction not in ("BT", "TB"):
        raise ValueError(f"direction must be 'BT' (input at the bottom) or 'TB', got {direction!r}")
    g = graphviz.Digraph("circuit", comment=comment)
    g.attr(rankdir=direction, label=title, labelloc="t", fontsize="16", fontname="Helvetica", newrank="true",
           ranksep="0.45", nodesep="0.18", splines="spline", tooltip=title)
    g.attr("node", shape="plaintext", fontname="Helvetica", fontsize="11", margin="0")
    g.attr("edge", arrowsize="0.6")
    ids = {n.name: f"n{i}" for i, n in enumerate(nodes)}  # safe DOT ids (names may hold ':' or '@')
    ranks = sorted({(n.rank, n.rank_label) for n in nodes})
    anchors = []
    for rank, label in ranks:
        anchor = f"__rank{rank}"
        anchors.append(anchor)
        with g.subgraph(name=f"rank{rank}") as sub:
            sub.attr(rank="same")
            sub.node(anchor, label=label, fontcolor="#909090", fontsize="9", shape="plaintext")
            members = sorted((n for n in nodes if n.rank == rank), key=lambda n: n.order)
            for n in members:
                sub.node(ids[n.name], label=_html_label(n, ports_first=direction == "TB"), tooltip=n.tooltip or n.name)
            for a, b in zip(members, members[1:], strict=False):  # flat invisible edges fix left-to-right order
                sub.edge(ids[a.name], ids[b.name], style="invis")
    for a, b in zip(anchors, anchors[1:], strict=False):
        g.edge(a, b, style="invis")
    side = "s" if direction == "BT" else "n"
    for e in edges:
        head = f"{ids[e.dst]}:{e.port}:{side}" if e.port else ids[e.dst]
        attrs = {"color": e.color, "penwidth": f"{e.width:.2f}", "style": e.style, "tooltip": e.tooltip or f"{e.src}->{e.dst}"}
        attrs.update({k: str(v) for k, v in e.attrs.items()})
        g.edge(ids[e.src], head, **attrs)
    if legend:
        rows = []
        for kind, colour, text in legend:
            if kind == "fill":
                swatch = f'<TD BGCOLOR="{colour}" WIDTH="18"> </TD>'
            elif kind == "border":
                swatch = f'<TD BORDER="2" COLOR="{colour}" WIDTH="18"> </TD>'
            elif kind == "text":
                swatch = f'<TD><FONT POINT-SIZE="9">{html.escape(colour)}</FONT></TD>'
            else:
                mark = "- - -" if kind == "dash" else "-----"
                swatch = f'<TD><FONT COLOR="{colour}"><B>{mark}</B></FONT></TD>'
            rows.append(f'<TR>{swatch}<TD ALIGN="LEFT"><FONT POINT-SIZE="9">{html.escape(text)}</FONT></TD></TR>')
        table = ('<<TABLE BORDER="1" COLOR="#c0c0c0" CELLBORDER="0" CELLSPACING="2">'
                 '<TR><TD COLSPAN="2"><B>legend</B></TD></TR>' + "".join(rows) + '</TABLE>>')
        with g.subgraph(name=f"rank{ranks[0][0]}" if ranks else "legend") as sub:  # beside the input
            sub.attr(rank="same")
            sub.node("__legend", label=table, shape="plaintext")
    return g


# ---- circuits ---------------------------------------------------------------------------------
def circuit_roles(circuit: Circuit) -> dict[str, str]:
    """Roles stored with a circuit: detected ones (`circuit.roles`, written by discover) over method.params.roles
    (as in the reference circuits); {} when there are none."""
    params = circuit.method.get("params") or {}
    roles = params.get("roles") if isinstance(params, dict) else None
    return {**(dict(roles) if isinstance(roles, dict) else {}), **circuit.roles}


def role_colors(roles: dict[str, str]) -> dict[str, str]:
    """A border colour per distinct role, in order of first appearance (sorted by node name)."""
    out: dict[str, str] = {}
    for _, role in sorted(roles.items()):
        if role not in out:
            out[role] = ROLE_PALETTE[len(out) % len(ROLE_PALETTE)]
    return out


def _title(circuit: Circuit, faithfulness: float | None, extra: str = "") -> str:
    task = circuit.task.get("name", "task?") if isinstance(circuit.task, dict) else str(circuit.task)
    method = circuit.method.get("name", "method?") if isinstance(circuit.method, dict) else str(circuit.method)
    f = faithfulness if faithfulness is not None else circuit.metrics.get("faithfulness")
    parts = [str(task), circuit.model.name, str(method)]
    parts.append(f"faithfulness {f:.3f}" if isinstance(f, (int, float)) and math.isfinite(f) else "faithfulness n/a")
    parts.append(f"{len(circuit.edges)} edges, {circuit.ablation} ablation")
    return " | ".join(parts) + (f"\n{extra}" if extra else "")


LEVELS = ("edge", "node", "auto")


def display_order(name: str) -> int:
    """Left-to-right position of a node within its rank: a head's index; 0 for anything else."""
    try:
        node = Node.parse(name)
    except ValueError:
        return 0
    return node.head if node.kind is NodeKind.HEAD else 0


def kv_note(graph, mask) -> str:
    """The legend line for grouped-query attention: which drawn k/v edges are one tied unit."""
    kv = [c for c in range(graph.n_receivers) if graph.receivers[c][1].value in "kv"]
    sub = torch.zeros_like(mask)
    sub[:, kv] = mask[:, kv]
    n_units = len(unit_members(graph, sub))
    groups = " ".join("{" + ",".join(f"h{h}" for h in range(g * graph.kv_group, (g + 1) * graph.kv_group)) + "}"
                      for g in range(graph.n_kv_heads))
    return (f"grouped-query attention: heads {groups} share one k and one v input per layer; the {int(sub.sum())} "
            f"k/v edges drawn are {n_units} tied units (one sender into one group's k or v), kept or removed together")


def circuit_specs(circuit: Circuit, roles: dict[str, str] | None = None, prune: bool = True, fade_above: int = 60,
                  weak_fraction: float = 0.1, max_edges: int | None = None, merge_above: int = 150,
                  necessary: set[str] | frozenset[str] = frozenset(), level: str = "edge",
                  ) -> tuple[list[NodeSpec], list[EdgeSpec], list, str]:
    """Node and edge specs, legend rows and a note for one circuit (see `render`)."""
    if level not in LEVELS:
        raise ValueError(f"level must be one of {', '.join(LEVELS)}, got {level!r}")
    graph = circuit.graph
    mask = circuit.mask()
    notes = []
    if prune:
        pruned = connected_mask(graph, mask)
        dropped = int(mask.sum() - pruned.sum())
        if dropped:
            notes.append(f"{dropped} dangling edges pruned")
        mask = pruned
    kept = [Edge(graph.senders[s], *graph.receivers[r]) for s, r in mask.nonzero().tolist()]
    scores = {e: circuit.edges.get(str(e)) for e in kept}
    if graph.kv_group > 1:
        notes.append(kv_note(graph, mask))
    if level == "auto":
        level = "node" if len(kept) > merge_above else "edge"
    if max_edges is not None and len(kept) > max_edges:  # necessary edges first, then by |score|
        kept = sorted(kept, key=lambda e: (str(e) not in necessary, -abs(scores[e] if scores[e] is not None else 0.0)))
        kept = kept[:max(max_edges, sum(str(e) in necessary for e in kept))]
        sub = graph.mask_from_edges(kept)
        kept = [Edge(graph.senders[s], *graph.receivers[r]) for s, r in (connected_mask(graph, sub) if prune else sub).nonzero().tolist()]
        notes.append(f"{len(scores) - len(kept)} weaker edges not drawn")
    roles = {**circuit_roles(circuit), **(roles or {})}
    colors = role_colors(roles)
    nodes_used = sorted({e.src for e in kept} | {e.dst for e in kept})
    nodes = []
    for node in nodes_used:
        rank, rank_label = node_rank(node, graph.n_layers)
        name = str(node)
        role = roles.get(name)
        nodes.append(NodeSpec(name, (name, role) if role else (name,), node.kind.value, rank, rank_label,
                              KIND_COLORS[node.kind.value], colors.get(role, "#404040"),
                              ports=node.kind is NodeKind.HEAD and level == "edge", tooltip=f"{name}: {role}" if role else name,
                              order=display_order(name)))
    known = [abs(s) for s in scores.values() if s is not None]
    top = max(known) if known and max(known) > 0 else 1.0
    uniform = len(set(known)) <= 1  # e.g. reference circuits: every score 1.0
    fade, merge = len(kept) > fade_above, len(kept) > merge_above or level == "node"
    max_width = 2.5 if fade else 4.0
    strong: dict[tuple[str, str], list[Edge]] = {}
    weak: dict[tuple[str, str], list[Edge]] = {}
    for e in kept:
        s = scores[e]
        is_weak = fade and s is not None and not uniform and abs(s) / top < weak_fraction and str(e) not in necessary
        key = (str(e.src), str(e.dst)) if (merge or is_weak) else (str(e.src), str(e))
        (weak if is_weak else strong).setdefault(key, []).append(e)
    edges: list[EdgeSpec] = []
    for (src, _), group in sorted(strong.items()):
        best = max(group, key=lambda e: -1.0 if scores[e] is None else abs(scores[e]))
        s = scores[best]
        if level == "node" and s is not None:  # a node-level edge carries the summed score of its q/k/v edges
            s = sum(scores[e] for e in group if scores[e] is not None)
        if s is None:
            color, width, style = UNKNOWN, 1.0, "solid"
        else:
            width = 1.2 if uniform else 0.6 + (max_width - 0.6) * abs(s) / top
            color, style = (POSITIVE, "solid") if s >= 0 else (NEGATIVE, "dashed")
        ports = "".join(e.port.value for e in group if e.dst.kind is NodeKind.HEAD)
        tip = ", ".join(f"{e} {'n/a' if scores[e] is None else format(scores[e], '.4g')}" for e in group)
        attrs = {"acdc_edge": ";".join(str(e) for e in group)}
        if len(group) == 1:
            attrs["acdc_score"] = "nan" if s is None else repr(float(s))
        elif ports:
            attrs.update(headlabel=ports, labelfontsize="8", labelfontcolor=color)
        edges.append(EdgeSpec(src, str(best.dst), ports if len(ports) == 1 else None, color, width, style, tip, attrs))
    for (src, dst), group in sorted(weak.items()):
        ports = "".join(e.port.value for e in group if e.dst.kind is NodeKind.HEAD)
        tip = ", ".join(f"{e} {scores[e]:.3g}" for e in group)
        edges.append(EdgeSpec(src, dst, ports if len(ports) == 1 else None, WEAK, 0.5, "solid", f"weak: {tip}",
                              {"acdc_edge": ";".join(str(e) for e in group), "arrowsize": "0.35"}))
    legend = [("fill", KIND_COLORS[k], k) for k in ("input", "head", "mlp", "logits")]
    legend += [("line", POSITIVE, "positive score (width ~ |score|)"), ("dash", NEGATIVE, "negative score")]
    if weak:
        legend.append(("line", WEAK, f"weak: |score| < {weak_fraction:g} x max, merged per sender and head"
                       + ("; necessary edges never faded" if necessary else "")))
    legend.append(("text", "q k v", "the head input an edge enters" + ("; merged edges label their inputs" if merge else "")
                   + ("; node view: width ~ summed score" if level == "node" else "")))
    legend += [("border", c, r) for r, c in colors.items() if any(roles.get(n.name) == r for n in nodes)]
    return nodes, edges, legend, "; ".join(notes)


def to_dot(circuit: Circuit, *, roles: dict[str, str] | None = None, title: str | None = None,
           faithfulness: float | None = None, direction: str = "BT", prune: bool = True, fade_above: int = 60,
           weak_fraction: float = 0.1, max_edges: int | None = None, merge_above: int = 150,
           comment: str | None = None, necessary=frozenset(), level: str = "edge") -> str:
    """DOT source of the drawing `render` makes (no `dot` program needed)."""
    nodes, edges, legend, note = circuit_specs(circuit, roles, prune, fade_above, weak_fraction, max_edges, merge_above,
                                               frozenset(necessary), level)
    g = build_dot(nodes, edges, title or _title(circuit, faithfulness, note), legend, direction, comment)
    return g.source


def render(circuit: Circuit, path: str | Path | None = None, *, roles: dict[str, str] | None = None,
           title: str | None = None, faithfulness: float | None = None, direction: str = "BT", prune: bool = True,
           fade_above: int = 60, weak_fraction: float = 0.1, max_edges: int | None = None,
           merge_above: int = 150, necessary=frozenset(), level: str = "edge") -> str:
    """SVG text of `circuit`; also written to `path` if given (DOT text instead if it ends in .dot or .gv).

    roles: {node name: role} shown on heads (merged over roles stored in the circuit's method params).
    direction: 'BT' puts input at the bottom, 'TB' at the top. fade_above: more edges than this fades edges
    with |score| < weak_fraction * max |score| and merges them per (sender, receiver node); more than
    merge_above merges every sender's q/k/v edges into a head into one edge labelled with the ports.
    max_edges: draw only the strongest edges. faithfulness: for the title (default circuit.metrics).
    necessary: edge names (e.g. a validation report's necessary edges) that are never faded or left out.
    level: 'edge' (q/k/v ports), 'node' (one edge per pair of components, width ~ summed score), 'auto'
    (node above merge_above edges).
    """
    dot_text = to_dot(circuit, roles=roles, title=title, faithfulness=faithfulness, direction=direction, prune=prune,
                      fade_above=fade_above, weak_fraction=weak_fraction, max_edges=max_edges, merge_above=merge_above,
                      necessary=necessary, level=level)
    if path is not None and Path(path).suffix in (".dot", ".gv"):
        write_atomic(Path(path), dot_text)
        return dot_text
    svg = dot_to_svg(dot_text)
    if path is not None:
        write_atomic(Path(path), svg)
    return svg


def dot_to_svg(dot_text: str) -> str:
    """Run `dot -Tsvg` on DOT text; RenderError with install instructions if `dot` is missing."""
    import graphviz

    require_dot()
    try:
        return graphviz.pipe("dot", "svg", dot_text.encode()).decode()
    except graphviz.ExecutableNotFound as e:
        raise RenderError(str(e)) from e
    except graphviz.CalledProcessError as e:
        raise RenderError(f"dot failed on this graph: {e.stderr.decode(errors='replace')[:500] if e.stderr else e}") from e



def render_file(circuit: Circuit, path: str | Path, fmt: str = "svg", **kwargs) -> Path:
    """Write `circuit` drawn as svg, dot or png to `path` (atomically); returns the path."""
    import graphviz

    path = Path(path)
    if fmt not in ("svg", "dot", "png"):
        raise RenderError(f"unknown format {fmt!r}; choose svg, dot or png")
    dot_text = to_dot(circuit, **kwargs)
    if fmt == "png":
        require_dot()
        write_atomic(path, graphviz.pipe("dot", "png", dot_text.encode()))
    else:
        write_atomic(path, dot_text if fmt == "dot" else dot_to_svg(dot_text))
    return path


def render_svg(circuit: Circuit, **kwargs) -> str:
    """SVG text of `circuit` (see `render`), writing nothing."""
    return render(circuit, None, **kwargs)


def roles_for(model_spec) -> dict[str, str]:
    """{head name: class} from a zoo model card's ground truth, or {} for other models: an override of the
    roles a circuit carries (see `display_roles`)."""
    from acdc_lite import zoo

    name = str(model_spec)
    if not isinstance(model_spec, (str, Path)) or not zoo.exists(name):
        return {}
    rows = zoo.card(name).get("ground_truth", [])  # older cards name heads by "head", newer ones heads and MLPs by "node"
    return {row.get("head", row.get("node")): row["class"] for row in rows
            if "class" in row and str(row.get("head", row.get("node", ""))).startswith("a")}


def display_roles(circuit: Circuit) -> dict[str, str]:
    """The roles drawn for `circuit`: those it carries (detected at discovery), a zoo card's over them."""
    return {**circuit_roles(circuit), **roles_for(circuit.model.name)}
