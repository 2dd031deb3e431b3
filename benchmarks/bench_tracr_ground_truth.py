"""tracr ground truth: exactness of the conversion, ground-truth circuits, and the ACDC paper's comparison.

For every program in `acdc_lite.tracr.PROGRAMS`: compile, compare with tracr's own forward pass on
every input of the task length, derive the ground truth, check it under zero and resample ablation,
and save it to circuits/tracr/<program>.json. For reverse and proportion, compare with the ACDC
paper's zero-ablation circuits and measure each differing edge's single-edge zero-ablation effect.

    python benchmarks/bench_tracr_ground_truth.py    # writes benchmarks/tracr_ground_truth.md and circuits/tracr/
"""

from __future__ import annotations

import time
from pathlib import Path

import torch

from acdc_lite import Ablation, EdgePatcher, ModelGraph, ablated_outputs, hooks
from acdc_lite import tracr as T
from acdc_lite.graph import Edge, Node, NodeKind

ROOT = Path(__file__).resolve().parents[1]
OUT = ROOT / "benchmarks" / "tracr_ground_truth.md"
CIRCUITS = ROOT / "circuits" / "tracr"

# The ACDC paper's zero-ablation tracr circuits (acdc/tracr_task/utils.py, get_tracr_{reverse,proportion}_edges),
# as (their sender, their receiver) -> our edge name (their hook_embed and hook_pos_embed are both our `input`).
ACDC = {
    "reverse": {
        ("3.0", "out"): "a3.h0->logits", ("MLP2", "3.0.q"): "m2->a3.h0<q>", ("pos", "3.0.k"): "input->a3.h0<k>",
        ("embed", "3.0.v"): "input->a3.h0<v>", ("MLP1", "MLP2"): "m1->m2", ("MLP0", "MLP1"): "m0->m1",
        ("embed", "MLP1"): "input->m1", ("pos", "MLP1"): "input->m1", ("0.0", "MLP0"): "a0.h0->m0",
        ("embed", "MLP0"): "input->m0", ("embed", "0.0.v"): "input->a0.h0<v>",
    },
    "proportion": {
        ("1.0", "out"): "a1.h0->logits", ("embed", "1.0.q"): "input->a1.h0<q>", ("pos", "1.0.q"): "input->a1.h0<q>",
        ("embed", "1.0.k"): "input->a1.h0<k>", ("pos", "1.0.k"): "input->a1.h0<k>", ("MLP0", "1.0.v"): "m0->a1.h0<v>",
        ("embed", "MLP0"): "input->m0",
    },
}
ACDC_COUNTS = {"reverse": (11, 4, 15), "proportion": (7, 3, 10)}  # addition, q/k/v-input -> head, total


def acdc_node(node: str, port: str = "in") -> str:
    """Our node name -> the ACDC paper's (a3.h0 -> 3.0[.q], m1 -> MLP1, logits -> out)."""
    if node in ("embed", "pos"):
        return node
    if node == "logits":
        return "out"
    n = Node.parse(node)
    if n.kind is NodeKind.MLP:
        return f"MLP{n.layer}"
    return f"{n.layer}.{n.head}" + ("" if port == "in" else f".{port}")


def patched_logits(prog, kept, tokens, ablation=Ablation.ZERO, corrupt=None):
    graph = ModelGraph.from_model(prog.model)
    patcher = EdgePatcher(prog.model, graph, tokens, ablated_outputs(prog.model, graph, corrupt, ablation))
    return patcher.logits(kept)[0]


def max_change(prog, kept, tokens):
    """max |logits - clean logits| over non-BOS positions when only `kept` edges survive zero ablation."""
    with torch.no_grad():
        return float((patched_logits(prog, kept, tokens)[:, 1:] - prog.model(tokens)[:, 1:]).abs().max())


def split_input_change(prog, edge: Edge, part: str, tokens) -> float:
    """Like `max_change` for ACDC's split input edges: remove only the token (`embed`) or position (`pos`)
    embedding from one receiver's input."""
    model = prog.model
    part_value = model.W_E[tokens] if part == "embed" else model.W_pos[: tokens.shape[1]].expand(len(tokens), -1, -1)
    if edge.dst.kind is NodeKind.HEAD:
        def hook(x, hook):
            x = x.clone()
            x[:, :, edge.dst.head] -= part_value
            return x
        name = hooks.head_input(edge.dst.layer, edge.port.value)
    else:
        def hook(x, hook):
            return x - part_value
        name = hooks.mlp_in(edge.dst.layer)
    with torch.no_grad(), model.hooks(fwd_hooks=[(name, hook)]):
        patched = model(tokens)
    with torch.no_grad():
        return float((patched[:, 1:] - model(tokens)[:, 1:]).abs().max())


def program_row(prog, seconds) -> dict:
    graph = ModelGraph.from_model(prog.model)
    exact = T.compare_with_tracr(prog)
    task = prog.make_task()
    gt = prog.ground_truth.mask()
    row = {"name": prog.name, "shape": f"{prog.model.cfg.n_layers} x {prog.model.cfg.n_heads}", "d_model": prog.model.cfg.d_model,
           "d_mlp": prog.model.cfg.d_mlp, "graph_edges": graph.n_edges(), "seconds": seconds, **exact,
           "gt": len(prog.ground_truth.edges), "gt_acdc": len(T.acdc_convention(prog.directions)), "task_n": len(task)}
    for ablation in (Ablation.ZERO, Ablation.RESAMPLE):
        patcher = EdgePatcher(prog.model, graph, task.clean, ablated_outputs(prog.model, graph, task.corrupt, ablation))
        l2 = task.metric("l2", prog.model)
        row[f"l2_gt_{ablation.value}"] = float(patcher.evaluate(gt, l2)[0])
        row[f"l2_empty_{ablation.value}"] = float(patcher.evaluate(graph.empty_mask(), l2)[0])
    return row


def comparison(prog) -> list[str]:
    graph = ModelGraph.from_model(prog.model)
    tokens = prog.encode(prog.all_inputs())
    ours = set(prog.ground_truth.edges)
    theirs = set(ACDC[prog.name].values())
    add, direct, total = ACDC_COUNTS[prog.name]
    ours_acdc = T.acdc_convention(prog.directions)
    n_direct = sum("->" in e and e.split("->")[1].startswith("a") and "<" not in e.split("->")[1] for e in ours_acdc)
    lines = [f"### {prog.name}", "",
             f"ACDC paper (zero ablation, l2): {total} edges = {add} between components + {direct} q/k/v-input -> head. "
             f"Ours in the same convention: {len(ours_acdc)} = {len(ours_acdc) - n_direct} + {n_direct}. "
             f"In our convention (embed and pos are one `input` node, no q/k/v-input -> head edges): "
             f"ACDC {len(theirs)}, ours {len(ours)}, shared {len(ours & theirs)}.", "",
             "| ACDC edge | ours | in our ground truth |", "|---|---|---|"]
    for (src, dst), name in ACDC[prog.name].items():
        lines.append(f"| {src} -> {dst} | `{name}` | {'yes' if name in ours else '**no**'} |")
    acdc_split = {f"{src}->{dst}" for src, dst in ACDC[prog.name]}
    lines += ["", "Every ground-truth edge (edges from `input` split as ACDC does into its token part `embed` and position "
              "part `pos`), the residual directions it carries, and the largest change of any output value (over all "
              f"{len(tokens)} inputs of the task length, non-BOS positions) when only that edge is zero-ablated:", "",
              "| edge | ACDC name | carries | in ACDC's | max abs change |", "|---|---|---|---|---|"]
    for name, carried in prog.directions.items():
        edge = Edge.parse(name)
        if edge.src.kind is NodeKind.INPUT:
            parts = {"pos" if c.startswith("indices:") else "embed": [] for c in carried}
            for c in carried:
                parts["pos" if c.startswith("indices:") else "embed"].append(c)
            rows = [(part, cs, split_input_change(prog, edge, part, tokens)) for part, cs in sorted(parts.items())]
        else:
            kept = graph.full_mask()
            kept[graph.edge_index(name)] = False
            rows = [(str(edge.src), list(carried), max_change(prog, kept, tokens))]
        for src, cs, change in rows:
            acdc_name = f"{acdc_node(src)}->{acdc_node(str(edge.dst), edge.port.value)}"
            shown = ", ".join(cs) if len(cs) <= 6 else ", ".join(cs[:5]) + f", ... ({len(cs)})"
            lines.append(f"| `{name}` | {acdc_name} | {shown} | {'yes' if acdc_name in acdc_split else '**no**'} | {change:.3g} |")
    acdc_mask = graph.mask_from_edges(theirs)
    lines += ["", f"ACDC's circuit alone under zero ablation changes the outputs by at most {max_change(prog, acdc_mask, tokens):.3g}; "
              f"ours by {max_change(prog, prog.ground_truth.mask(), tokens):.3g}.", ""]
    if prog.name == "proportion":
        # ACDC's proportion data as we read it: 4 ids ord(c) - ord('w') in 0..3, no BOS prepended
        import itertools

        theirs_tokens = torch.tensor(list(itertools.product(range(4), repeat=4)))
        shown = [f"{prog.vocab[i]}" for i in range(4)]
        changes = {port: split_input_change(prog, Edge.parse(f"input->a1.h0<{port}>"), "embed", theirs_tokens) for port in "qk"}
        lines += [f"On ACDC's proportion inputs (all 256 sequences of ids 0-3, i.e. of {', '.join(shown)}, no BOS first), "
                  f"removing embed -> 1.0.q changes the outputs by up to {changes['q']:.3g} and embed -> 1.0.k by up to "
                  f"{changes['k']:.3g}.", ""]
    return lines


TAU = 1e-4
AUTOCIRCUIT_RESAMPLE = {"reverse": {"input->a3.h0<v>", "a3.h0->logits"},
                        "proportion": {"input->m0", "m0->a1.h0<v>", "a1.h0->logits"}}


def acdc_runs(progs) -> list[str]:
    """Our ACDC (metric l2) on reverse and proportion, under zero and resample ablation."""
    from acdc_lite.search import discover

    lines = ["", "## Our ACDC on the same tasks", "",
             f"`discover(model, task, 'acdc', metric='l2', tau={TAU})` on the default tasks (reverse: the 6 permutations; "
             "proportion: 50 inputs), seed 0. AutoCircuit's resample-ablation circuits (known_circuits.json) are "
             "`Resid Start -> A3.0.V, A3.0 -> Resid End` (reverse) and `Resid Start -> MLP 0, MLP 0 -> A1.0.V, "
             "A1.0 -> Resid End` (proportion).", "",
             "| program | ablation | edges | in our ground truth | = published (zero: ACDC paper, resample: AutoCircuit) | edges found |",
             "|---|---|---|---|---|---|"]
    for name in ("reverse", "proportion"):
        prog = progs[name]
        for ablation in ("zero", "resample"):
            found = set(discover(prog.model, prog.make_task(), "acdc", metric="l2", ablation=ablation, tau=TAU,
                                 progress=False).edges)
            same = found == (set(ACDC[name].values()) if ablation == "zero" else AUTOCIRCUIT_RESAMPLE[name])
            lines.append(f"| {name} | {ablation} | {len(found)} | {len(found & set(prog.ground_truth.edges))} | "
                         f"{'yes' if same else 'no'} | {', '.join(f'`{e}`' for e in sorted(found))} |")
    return lines


def main():
    rows, progs = [], {}
    for name in T.PROGRAMS:
        started = time.perf_counter()
        prog = T.load_program(name)
        seconds = time.perf_counter() - started
        progs[name] = prog
        prog.ground_truth.save(CIRCUITS / f"{name}.json")
        rows.append(program_row(prog, seconds))
    md = ["# tracr ground truth", "",
          "Generated by `python benchmarks/bench_tracr_ground_truth.py` (tracr-pypi, jax on CPU). Each program is compiled by "
          "tracr and converted to a `SmallTransformer`; the ground truth is derived from the compiled weights and the RASP "
          "graph (rule in `acdc_lite/tracr/ground_truth.py`) and saved in `circuits/tracr/<program>.json`. Edge counts use our convention "
          "(EAP-IG's: `input` = token + position embeddings, no q/k/v-input -> head edges) unless marked ACDC.", "",
          "## Programs", "",
          "| program | layers x heads | d_model | d_mlp | graph edges | ground truth | GT (ACDC convention) | inputs checked | "
          "max abs diff vs tracr (residual) | decoded equal | compile s |",
          "|---|---|---|---|---|---|---|---|---|---|---|"]
    for r in rows:
        md.append(f"| {r['name']} | {r['shape']} | {r['d_model']} | {r['d_mlp']} | {r['graph_edges']} | {r['gt']} | {r['gt_acdc']} | "
                  f"{r['n_inputs']} | {r['max_abs_residual']:.2g} | {r['decoded_equal']} | {r['seconds']:.1f} |")
    md += ["", "Task metric `l2` (minus ACDC's mean squared distance to the clean outputs; 0 = the clean model) on each "
           "program's default task (inputs: BOS + tokens; corruption: the batch permuted without fixed points):", "",
           "| program | examples | GT, zero abl. | empty, zero abl. | GT, resample | empty, resample |", "|---|---|---|---|---|---|"]
    for r in rows:
        md.append(f"| {r['name']} | {r['task_n']} | {r['l2_gt_zero']:.3g} | {r['l2_empty_zero']:.3g} | "
                  f"{r['l2_gt_resample']:.3g} | {r['l2_empty_resample']:.3g} |")
    md += ["", "## Comparison with the ACDC paper", ""]
    for name in ("reverse", "proportion"):
        md += comparison(progs[name])
    md += EXPLANATION
    md += acdc_runs(progs)
    OUT.write_text("\n".join(md) + "\n")


EXPLANATION = [
    "### Why the differences", "",
    "* **Conventions.** ACDC splits the input into `hook_embed` and `hook_pos_embed` and also counts one "
    "q/k/v-input -> head edge per used head port; our graph has one `input` node and no such edges. So ACDC's "
    "`embed -> MLP1` and `pos -> MLP1` are our single `input->m1`, and its 15 (reverse) and 10 (proportion) edges are "
    "10 and 5 in our convention. Split the same way (a carried `tokens:*` or `one` direction = embed, `indices:*` = "
    "pos), our proportion ground truth is exactly ACDC's 10 edges, and our reverse ground truth is ACDC's 15 plus 6.",
    "* **reverse, `embed->0.0.q` and `embed->0.0.k` (+ their 2 q/k-input -> head edges).** The `length` head is the "
    "selector width of `Select(tokens, tokens, TRUE)`. Its weights read the token directions (plus `one` and "
    "`tokens:BOS`), as the RASP graph says, but with the TRUE predicate every key, BOS included, gets the same score: "
    "the attention is uniform whatever q and k hold, and zeroing either leaves the same pattern (change 0 above). "
    "Structurally used, functionally constant, so ACDC, which keeps only edges that move the metric, drops them. "
    "These are our `input->a0.h0<q>` and `input->a0.h0<k>`.",
    "* **reverse, `embed->3.0.q` and `embed->3.0.k`.** They carry only tracr's constants `one` (query) and `tokens:BOS` "
    "(key): the default attention to BOS, scored at half a match, used when a query matches no key. Every query "
    "`opp_idx-1` matches exactly one key, so BOS gets a weight of about e^-50 and removing either term changes the "
    "outputs by 6e-07 (float noise). In our convention the first is the extra `input->a3.h0<q>`; the second merges "
    "with `pos->3.0.k` into `input->a3.h0<k>`, which both have.",
    "* **proportion, `embed->1.0.q` and `embed->1.0.k`.** The same BOS-default terms, and here ACDC kept them. On "
    "well-formed inputs (BOS first) they change nothing (0 above). As we read ACDC's data code "
    "(`acdc/tracr_task/utils.py`), its proportion inputs are 4 ids `ord(c) - ord('w')` with no BOS prepended, while "
    "the compiled vocabulary is `BOS, compiler_pad, w, x, y, z` (ids 0-5): its inputs are sequences of BOS, pad, w "
    "and x with BOS tokens anywhere, and on those inputs the two edges do matter (measured above). Our ground truth "
    "is structural, so it has them either way: the two agree for a different reason.",
    "",
    "In short: ACDC's tracr circuits are behavioural (edges whose zero ablation moved l2 on its data); ours is "
    "structural (edges the compiled weights use for the program, checked against the RASP graph). Every ACDC edge is "
    "in ours; every edge of ours that ACDC lacks changes no output on well-formed inputs of the task length. Both "
    "circuits reproduce the model under zero ablation (max change 0 for ours, 6e-07 for ACDC's reverse).",
]


if __name__ == "__main__":
    main()
