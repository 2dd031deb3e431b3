"""Hybrid vs exact ACDC: forward-equivalents, seconds, faithfulness and edge Jaccard, in one run.

    OMP_NUM_THREADS=1 python benchmarks/bench_hybrid.py [--cache DIR] [--out benchmarks]

Rows (one process, same machine):
- zoo models of ~100 edges (induction-attn-2l, induction-llama-gqa-2l): hybrid and ACDC, same metric and tau.
- 4- and 6-layer, 8-head attention-only induction models (1,281 and 3,073 edges) trained here with a fixed seed
  (cached in `--cache`; never shipped in the zoo): hybrid and ACDC, same metric and tau, at the default tau and at
  0.01, the hybrid also with `ig_steps` 2 (`CHEAPER`); on the 4-layer one also with other `HybridConfig` settings
  (its cost / faithfulness trade-off).
- random GPT-2-shaped models (~10,000 and 32,491 edges): cost only. ACDC's cost there is extrapolated from a
  measured prefix of its search (the first receivers from the output), scaled by edges and suffix length.

Forward-equivalents: forward passes + 2 x backward passes, every pass counted (search and bookkeeping; a
suffix pass from layer l of L counts (L - l) / L; the corrupted-activation cache is not counted).
"""

from __future__ import annotations

import argparse
import csv
import dataclasses
import tempfile
from pathlib import Path

import torch

from acdc_lite import load_task, search
from acdc_lite.graph import ModelGraph, jaccard
from acdc_lite.models import load_model
from acdc_lite.search import acdc, hybrid
from acdc_lite.search.common import SearchContext
from acdc_lite.task import Task
from acdc_lite.zoo import train as zoo_train

BIG_SEED = 0
_BIG_DATA = zoo_train.RECIPES["induction-attn-2l"].data
# trained here, never shipped in the zoo: graphs of >= 1,000 edges with a non-trivial circuit
BIG_RECIPES = {
    "induction-attn-4l8h": zoo_train.Recipe(
        description="4-layer, 8-head attention-only induction model (benchmark only, not in the zoo)",
        builder="small", arch={"n_layers": 4, "n_heads": 8, "d_model": 64, "d_head": 16, "n_ctx": 48},
        steps=3000, data=_BIG_DATA, head_penalty=0.01),
    "induction-attn-6l8h": zoo_train.Recipe(
        description="6-layer, 8-head attention-only induction model (benchmark only, not in the zoo)",
        builder="small", arch={"n_layers": 6, "n_heads": 8, "d_model": 64, "d_head": 16, "n_ctx": 48},
        steps=3000, data=_BIG_DATA, head_penalty=0.01),
}


def big_model(cache: Path, name: str = "induction-attn-4l8h"):
    """A trained model of `BIG_RECIPES`: loaded from `cache` if trained there before, else trained (seed
    `BIG_SEED`, single thread) and saved there."""
    recipe = BIG_RECIPES[name]
    directory = cache / name
    if not (directory / "card.json").exists():
        threads = torch.get_num_threads()
        torch.set_num_threads(1)
        try:
            torch.manual_seed(BIG_SEED)
            raw = zoo_train.build_model(recipe, name)
            facts = zoo_train.fit(raw, recipe, BIG_SEED)
        finally:
            torch.set_num_threads(threads)
        zoo_train.write(raw, {"training": facts, "recipe": dataclasses.asdict(recipe)}, directory,
                        zoo_train.language(recipe))
    return load_model(str(directory))


ZOO = ("induction-attn-2l", "induction-llama-gqa-2l")
VARIANTS = {  # other HybridConfig settings, measured on the first trained model at tau 0.01
    "ig_steps 5": {"ig_steps": 5},
    "final_check": {"final_check": True},
    "ig_steps 2, remove_below 1": {"ig_steps": 2, "remove_below": 1.0},
}
CHEAPER = {  # a cheaper setting (`--ig-steps 2`), measured on every trained model at both taus and summarised
    "ig_steps 2": {"ig_steps": 2},
}
N_PROMPTS = 64
RANDOM_LAYERS = (7, 12)  # GPT-2-shaped random models: 10,536 and 32,491 edges
RANDOM_PROMPTS, RANDOM_TOKENS = 8, 16
COLUMNS = ("model", "graph_edges", "method", "tau", "edges", "faithfulness", "edge_jaccard_vs_acdc", "search_forward",
           "backward", "forward_equivalents", "bookkeeping_forward", "ratio_to_acdc", "ratio_to_suffix_acdc", "seconds",
           "band_units", "final_below_tau", "acdc_cost")


def feq(result) -> float:
    """The search's forward-equivalents: forward passes + 2 x backward passes (bookkeeping apart)."""
    return result.search_forward_passes + 2 * result.backward_passes


def _row(name, graph, result, tau, acdc_result=None, **extra) -> dict:
    row = {"model": name, "graph_edges": graph.n_edges(), "method": result.method, "tau": round(tau, 4),
           "edges": result.n_edges, "faithfulness": round(result.faithfulness, 3),
           "search_forward": round(result.search_forward_passes, 1), "backward": round(result.backward_passes, 1),
           "forward_equivalents": round(feq(result), 1),
           "bookkeeping_forward": round(result.bookkeeping_forward_passes, 1), "seconds": round(result.seconds, 1),
           "band_units": result.stats.get("band_units", ""), "final_below_tau": result.stats.get("final_below_tau", ""),
           "acdc_cost": "measured"}
    if acdc_result is not None:
        a, b = set(graph.edges_from_mask(result.kept)), set(graph.edges_from_mask(acdc_result.kept))
        row["edge_jaccard_vs_acdc"] = round(jaccard(a, b), 3)
        row["ratio_to_acdc"] = round(feq(result) / feq(acdc_result), 3)
    return {**row, **extra}


def compare(name: str, model, task, tau: float | None = None) -> tuple[list[dict], object]:
    """Hybrid (default settings; `tau` None: its auto tau) and exact ACDC with the hybrid's metric and tau."""
    graph = ModelGraph.from_model(model)
    hybrid = search(model, task, "hybrid", tau=tau, progress=False)
    tau = hybrid.params["tau"]
    exact = search(model, task, "acdc", metric=task.default_metric, tau=tau, progress=False)
    rows = [_row(name, graph, hybrid, tau, exact), _row(name, graph, exact, tau, exact)]
    if int(graph.n_edges()) >= 1000:  # ACDC as it ran before node steps: one suffix pass per tested edge
        ctx = SearchContext.build(model, task, metric=task.default_metric)
        ctx.reference()
        suffix = acdc.run(ctx, acdc.ACDCConfig(tau=tau, progress=False, node_steps=False))
        suffix.bookkeeping = dict(ctx.bookkeeping)
        rows[0]["ratio_to_suffix_acdc"] = round(feq(hybrid) / feq(suffix), 3)
        rows[1]["ratio_to_suffix_acdc"] = round(feq(exact) / feq(suffix), 3)
        rows.append({**_row(name, graph, suffix, tau, exact), "method": "acdc (suffix passes)",
                     "ratio_to_suffix_acdc": 1.0})
    return rows, exact


def variant(name: str, model, task, tau: float, exact, label: str, **config) -> dict:
    """The hybrid with other `HybridConfig` settings (`config`), against the same ACDC run `exact`."""
    ctx = SearchContext.build(model, task)
    ctx.reference()
    result = hybrid.run(ctx, hybrid.HybridConfig(tau=tau, progress=False, **config))
    result.bookkeeping = dict(ctx.bookkeeping)
    row = _row(name, ctx.graph, result, tau, exact)
    return {**row, "method": f"hybrid ({label})"}


def random_gpt2(n_layer: int, seed: int = 0):
    """A random GPT-2-shaped model (12 heads, d_model 768, vocab 50257) with `n_layer` layers and a random-token
    logit-difference task of RANDOM_PROMPTS x RANDOM_TOKENS."""
    from transformers import GPT2Config, GPT2LMHeadModel

    torch.manual_seed(seed)
    model = load_model(GPT2LMHeadModel(GPT2Config(n_layer=n_layer)).eval())
    g = torch.Generator().manual_seed(seed)
    clean, corrupt = (torch.randint(0, 50257, (RANDOM_PROMPTS, RANDOM_TOKENS), generator=g) for _ in range(2))
    answers, foils = (torch.randint(0, 50257, (RANDOM_PROMPTS, 1), generator=g) for _ in range(2))
    return model, Task("random-logit-diff", clean, corrupt, answers, foils)


def acdc_extrapolated(model, task, tau: float) -> tuple[float, float, int]:
    """ACDC's search forward passes over the whole graph, extrapolated from a measured prefix of its search (the
    edges into `logits` and into the receivers of the last two layers, the first it visits): its measured passes over
    what the pass accounting predicts for that prefix (speculative candidates wasted after kept edges make the
    difference), times the prediction for testing every edge once (`acdc.predicted_passes`). Returns (extrapolated
    passes, measured prefix passes, prefix edges)."""
    ctx = SearchContext.build(model, task)
    graph = ctx.graph
    layer_of = torch.tensor([min(graph.receiver_layer(r), graph.n_layers) for r in range(graph.n_receivers)])
    prefix_edges = graph.valid & (layer_of >= graph.n_layers - 2)[None, :]
    result = acdc.run(ctx, acdc.ACDCConfig(tau=tau, test=prefix_edges, progress=False))
    tested = [r for r in range(graph.n_receivers) if prefix_edges[:, r].any()]
    spent = result.search_forward_passes
    whole, part = acdc.predicted_passes(ctx.patcher, ctx.metric), acdc.predicted_passes(ctx.patcher, ctx.metric, tested)
    return 1 + (spent - 1) / part * whole, spent, int(prefix_edges.sum())  # the first pass records the prefix


def cost_rows(n_layer: int) -> list[dict]:
    model, task = random_gpt2(n_layer)
    graph = ModelGraph.from_model(model)
    name = f"gpt2-shaped random {n_layer}x12"
    hybrid = search(model, task, "hybrid", progress=False)
    tau = hybrid.params["tau"]
    extrapolated, spent, n_prefix = acdc_extrapolated(model, task, tau)
    rows = [_row(name, graph, hybrid, tau, ratio_to_acdc=round(feq(hybrid) / extrapolated, 4),
                 acdc_cost=f"extrapolated from {n_prefix} edges into the last two layers and logits ({spent:.0f} passes)")]
    rows.append({"model": name, "graph_edges": graph.n_edges(), "method": "acdc", "tau": round(tau, 4),
                 "forward_equivalents": round(extrapolated), "search_forward": round(extrapolated),
                 "acdc_cost": f"extrapolated from {n_prefix} edges into the last two layers and logits ({spent:.0f} passes)"})
    return rows


def summary(rows: list[dict]) -> list[str]:
    """One line per trained graph, tau and summarised setting (the defaults and `CHEAPER`): the hybrid's cost ratio and
    faithfulness difference to ACDC, against the targets (ratio <= 1/20 on >= 1,000 edges, faithfulness within 0.01)."""
    lines = []
    summarised = {"hybrid"} | {f"hybrid ({label})" for label in CHEAPER}
    for r in rows:
        if r["method"] not in summarised or r.get("acdc_cost") != "measured":
            continue
        acdc_row = next(a for a in rows if a["model"] == r["model"] and a["method"] == "acdc" and a["tau"] == r["tau"])
        ratio, diff = float(r["ratio_to_acdc"]), float(r["faithfulness"]) - float(acdc_row["faithfulness"])
        target = (f"; targets: ratio <= 0.05 {'met' if ratio <= 0.05 else 'not met'}, |difference| <= 0.01 "
                  f"{'met' if abs(diff) <= 0.01 else 'not met'}") if int(r["graph_edges"]) >= 1000 else ""
        suffix = next((a for a in rows if a["model"] == r["model"] and a["method"] == "acdc (suffix passes)"
                       and a["tau"] == r["tau"]), None)
        against_suffix = "" if suffix is None or "ratio_to_suffix_acdc" not in r else (
            f" (against ACDC on suffix passes, as before node steps: {r['forward_equivalents']}/"
            f"{suffix['forward_equivalents']} = {float(r['ratio_to_suffix_acdc']):.3f})")
        lines.append(f"- {r['model']}, {r['graph_edges']} edges, tau {r['tau']}: {r['method']}/ACDC forward-equivalents "
                     f"{r['forward_equivalents']}/{acdc_row['forward_equivalents']} = {ratio:.3f}{against_suffix}, faithfulness "
                     f"{r['faithfulness']} vs {acdc_row['faithfulness']} (difference {diff:+.3f}), edge Jaccard "
                     f"{r['edge_jaccard_vs_acdc']}{target}")
    return lines


def write_tables(rows: list[dict], out: Path, note: str) -> None:
    lines = ["# Benchmark: hybrid vs exact ACDC", "", note, "", *summary(rows), "",
             "| " + " | ".join(COLUMNS) + " |", "|" + "---|" * len(COLUMNS)]
    lines += ["| " + " | ".join(str(r.get(c, "")) for c in COLUMNS) + " |" for r in rows]
    (out / "hybrid.md").write_text("\n".join(lines) + "\n")
    with open(out / "hybrid.csv", "w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=COLUMNS)
        writer.writeheader()
        writer.writerows({c: r.get(c, "") for c in COLUMNS} for r in rows)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--cache", type=Path, default=Path(tempfile.gettempdir()) / "acdc-lite-bench-hybrid")
    parser.add_argument("--out", type=Path, default=Path(__file__).parent)
    parser.add_argument("--train-only", action="store_true")
    parser.add_argument("--skip-random", action="store_true", help="leave out the cost-only random models")
    args = parser.parse_args(argv)
    if args.train_only:
        for name in BIG_RECIPES:
            big_model(args.cache, name)
        return
    rows = []
    for name in ZOO:
        model = load_model(name)
        rows += compare(name, model, load_task("induction", model, n_examples=N_PROMPTS))[0]
    for i, name in enumerate(BIG_RECIPES):
        big = big_model(args.cache, name)
        big_task = load_task("induction", big, n_examples=N_PROMPTS)
        label = f"{name} (trained here)"
        for tau in (None, 0.01):
            found, exact = compare(label, big, big_task, tau=tau)
            rows += found
            for tag, settings in CHEAPER.items():
                rows.append(variant(label, big, big_task, exact.params["tau"], exact, tag, **settings))
        if i == 0:  # the settings' cost / faithfulness trade-off, on one model
            for tag, settings in VARIANTS.items():
                rows.append(variant(label, big, big_task, 0.01, exact, tag, **settings))
    if not args.skip_random:
        for n_layer in RANDOM_LAYERS:
            rows += cost_rows(n_layer)
    note = (f"Written by `benchmarks/bench_hybrid.py` in one process ({N_PROMPTS} induction prompts on the trained "
            f"models; random models: {RANDOM_PROMPTS} random-token prompts x {RANDOM_TOKENS}, logit difference). "
            "Trained models: the hybrid at its defaults (auto tau: 2% of |m(full) - m(empty)|, EAP-IG 4 steps; the "
            "trained models also at tau 0.01, and at both taus also with `ig_steps 2` (the cheaper setting, `--ig-steps 2`; "
            "summarised below); the 4-layer one also with other settings of `HybridConfig`, named in the method column) "
            "and exact ACDC with the hybrid's metric and tau (node steps, as it runs by default; on the trained models "
            "also on suffix passes, `ACDCConfig(node_steps=False)`, as before node steps: the same circuit). "
            "forward_equivalents: the search's forward passes + 2 x backward "
            "passes (bookkeeping, i.e. m(full), m(empty) and the final evaluation, in bookkeeping_forward; a suffix "
            "pass from layer l of L counts (L - l) / L, a node step what it recomputes: README, Conventions); "
            "ratio_to_acdc: the hybrid's forward_equivalents over ACDC's; ratio_to_suffix_acdc: over ACDC's on suffix passes. "
            "edge_jaccard_vs_acdc: |hybrid & acdc| / |hybrid | acdc| over edges. band_units: units the hybrid tested "
            "one by one; final_below_tau: kept units the gradient at the final circuit estimates below tau. "
            "Random GPT-2-shaped models (12 heads, d_model 768; 7 and 12 layers): cost only, random weights have no "
            "circuit to compare; ACDC's cost there is extrapolated from a measured prefix of its search (acdc_cost), "
            "assuming it tests every edge once as on a trained model whose circuit reaches the input. "
            "Models trained here (recipes in `BIG_RECIPES`, seed "
            f"{BIG_SEED}): " + "; ".join(f"{name}: {r.description}, {r.steps} steps" for name, r in BIG_RECIPES.items())
            + ".")
    args.out.mkdir(parents=True, exist_ok=True)
    write_tables(rows, args.out, note)
    for r in rows:
        print({k: r.get(k) for k in COLUMNS if r.get(k, "") != ""})


if __name__ == "__main__":
    main()
