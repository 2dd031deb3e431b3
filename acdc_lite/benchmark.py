"""Benchmark suites: search methods on models whose circuits are known, tabulated for quality and cost.

Suites (`SUITES`), each a function returning one dict per row:
- zoo: every shipped zoo model on its card's task; ground truth = the card's heads (node level).
- tracr: compiled RASP programs with exact edge-level ground truth (`acdc_lite.tracr.benchmark`).
- gpt2: the published GPT-2 small circuits (IOI, greater-than); needs GPT-2's weights and tokenizer
  (a hub name or a local directory), otherwise one row saying why it was skipped.
- scale: EAP and the hybrid on a GPT-2-small-shaped random model (32,491 edges): cost only, with the memory
  plan's estimated peak (`acdc_lite.memory`) beside the measured one.
- memory: the scale shapes' estimate against the measured peak, and a GPT-2-small-sized Llama found in memory and
  with most layers on disk (accelerate offload): peak memory of each, and whether the circuits agree.

Cost columns: `forward_passes`, the passes the search itself spent, and `bookkeeping_passes`, those spent on
the reference values m(full) and m(empty) (which auto tau also reads), selecting a circuit from scores and
evaluating the final circuit (`SearchResult.bookkeeping`; their sum is the total), backward passes (all in units
of one pass over all examples; a suffix pass from layer l counts (L - l) / L), seconds, and `x_forward`: seconds
divided by the seconds of one plain forward pass of the same model over the same examples, measured in the same
process. The corrupted-activation cache is counted in neither.
"""

from __future__ import annotations

import hashlib
import json
import resource
import subprocess
import sys
import time
from collections.abc import Callable, Sequence
from pathlib import Path

import torch
from torch import nn

from acdc_lite.circuit import write_atomic
from acdc_lite.faithfulness import faithfulness
from acdc_lite.graph import ModelGraph
from acdc_lite.search.common import SearchContext, SearchResult
from acdc_lite.task import Task

ZOO_METHODS = ("acdc", "head-pruning", "hybrid", "eap", "eap-ig", "exact")


def reset_peak_memory() -> None:
    """Start a new peak-memory window (Linux: resets the process's VmHWM; elsewhere a no-op)."""
    try:
        Path("/proc/self/clear_refs").write_text("5")
    except OSError:
        pass


def peak_memory_mb() -> float:
    """Peak resident memory since the last `reset_peak_memory` (Linux), else since the process started."""
    try:
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) / 1024
    except OSError:
        pass
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def plain_forward_seconds(model: nn.Module, tokens: torch.Tensor, batch_size: int = 32, repeats: int = 3) -> float:
    """Median seconds of one plain forward pass over `tokens` [B, P] in chunks of `batch_size`."""
    times = []
    with torch.no_grad():
        for _ in range(repeats + 1):
            start = time.perf_counter()
            for i in range(0, len(tokens), batch_size):
                model(tokens[i:i + batch_size])
            times.append(time.perf_counter() - start)
    return sorted(times[1:])[repeats // 2]  # the first run warms up


def _heads(names) -> set[str]:
    return {n for n in names if n.startswith("a")}


def _components(names, with_mlps: bool) -> set[str]:
    return {n for n in names if n.startswith("a") or (with_mlps and n.startswith("m"))}


def search_row(name: str, model: nn.Module, task: Task, method: str, ground_truth_heads: set[str] | None = None,
               forward_seconds: float | None = None, ground_truth_edges: set[str] | None = None,
               count_mlps: bool = False, **kwargs) -> tuple[dict, SearchResult]:
    """Run one search and describe it: quality (faithfulness and completeness on the task's metric; node
    precision/recall and node ROC AUC against `ground_truth_heads`, which also holds MLPs when `count_mlps`;
    edge precision/recall and edge ROC AUC against `ground_truth_edges`) and cost."""
    from acdc_lite.search import search
    from acdc_lite.validate import node_scores, node_set, precision_recall, roc_auc

    started = time.perf_counter()
    result = search(model, task, method, progress=False, **kwargs)
    seconds = time.perf_counter() - started
    ctx = SearchContext.build(model, task, task.default_metric)  # every method judged on the same metric
    full, empty = float(ctx.evaluate(ctx.graph.full_mask())), float(ctx.evaluate(ctx.graph.empty_mask()))
    faithful = faithfulness(float(ctx.evaluate(result.kept)), full, empty)
    completeness = faithfulness(float(ctx.evaluate(ctx.graph.valid & ~result.kept)), full, empty)
    nodes = node_set(ctx.graph, result.kept)
    row = {"model": name, "task": task.name, "method": method,
           "graph_edges": ctx.graph.n_edges(), "edges": result.n_edges, "heads": len(_heads(nodes)),
           "faithfulness": round(faithful, 3), "completeness": round(completeness, 3),
           "forward_passes": round(result.search_forward_passes, 1),
           "bookkeeping_passes": round(result.bookkeeping_forward_passes, 1),
           "backward_passes": round(result.backward_passes, 1),
           "seconds": round(seconds, 2)}
    if forward_seconds:
        row["x_forward"] = round(seconds / forward_seconds, 1)
    if "floor_forward_passes" in result.stats:
        row["x_floor"] = round(result.search_forward_passes / result.stats["floor_forward_passes"], 2)
    if ground_truth_heads is not None:
        truth = _components(ground_truth_heads, count_mlps)
        pr = precision_recall(_components(nodes, count_mlps), truth)
        scores = {k: v for k, v in node_scores(ctx.graph, result.scores).items() if k in _components([k], count_mlps)}
        row.update({"node_precision": round(pr.precision, 2), "node_recall": round(pr.recall, 2),
                    "node_roc_auc": round(roc_auc(list(scores.values()), [k in truth for k in scores]), 3)})
    if ground_truth_edges is not None:
        edges = ctx.graph.edges
        kept = ctx.graph.valid & result.kept.bool()
        found = {str(e) for e in ctx.graph.edges_from_mask(kept)}
        pr = precision_recall(found, ground_truth_edges)
        valid = ctx.graph.valid.nonzero().tolist()
        edge_scores = [float(result.scores[s, r].abs()) for s, r in valid]
        row.update({"edge_precision": round(pr.precision, 2), "edge_recall": round(pr.recall, 2),
                    "edge_roc_auc": round(roc_auc(edge_scores, [str(e) in ground_truth_edges for e in edges]), 3)})
    return row, result


def zoo_suite(models: Sequence[str] | None = None, methods: Sequence[str] = ZOO_METHODS, n_examples: int = 64,
              seed: int = 0) -> list[dict]:
    """Each zoo model on its card's task, every method at its default settings.

    Node precision/recall/ROC AUC count heads and MLPs on cards that measure MLPs (`measurement.circuit`), heads
    only on the older cards; edge precision/recall/ROC AUC are filled on cards that claim edges. Completeness is the
    faithfulness of everything outside the found circuit (lower = the circuit is more complete)."""
    from acdc_lite import zoo
    from acdc_lite.models import load_model, model_info
    from acdc_lite.search import SearchError
    from acdc_lite.task import load_task

    rows = []
    for name in models or zoo.names():
        card = zoo.card(name)
        model = load_model(name)
        task = load_task(card["task"]["name"], model, n_examples=n_examples, seed=seed)
        truth = zoo.ground_truth_nodes(card)
        truth_edges = zoo.ground_truth_edges(card)
        count_mlps = zoo.counts_mlps(card)
        forward = plain_forward_seconds(model, task.clean)
        grouped = model_info(model).n_kv_heads < model_info(model).n_heads
        for method in methods:
            try:
                row, result = search_row(name, model, task, method, truth, forward, truth_edges, count_mlps, seed=seed)
            except (SearchError, ValueError) as e:  # a method not yet made for grouped-query attention
                if not grouped:
                    raise
                row, result = {"model": name, "task": task.name, "method": method,
                               "skipped": f"grouped-query attention: {str(e).split(';')[0]}"}, None
            rows.append({"suite": "zoo", **row})
            if method == "hybrid" and result is not None and "acdc" in methods:
                # ACDC under the hybrid's own criterion (task metric, same tau): the like-for-like comparison
                row, _ = search_row(name, model, task, "acdc", truth, forward, truth_edges, count_mlps, seed=seed,
                                    metric=task.default_metric, tau=result.params["tau"])
                rows.append({"suite": "zoo", **row, "method": "acdc (hybrid's metric and tau)"})
    return rows


def tracr_suite(**kwargs) -> list[dict]:
    """The tracr programs against their exact ground truth (see `acdc_lite.tracr.benchmark`)."""
    from acdc_lite import tracr

    return [{**row, "suite": "tracr"} for row in tracr.benchmark(**kwargs)]


def gpt2_suite(model: str = "gpt2", n_examples: int = 32, seed: int = 0,
               methods: Sequence[str] = ("eap", "eap-ig", "hybrid")) -> list[dict]:
    """The published GPT-2 small circuits (circuits/*.json) as ground truth, when GPT-2 can be loaded."""
    from acdc_lite.circuit import Circuit
    from acdc_lite.models import ModelLoadError, load_model
    from acdc_lite.task import TaskError, load_task

    try:
        hooked = load_model(model)
    except ModelLoadError as e:
        return [{"suite": "gpt2", "model": model, "skipped": f"GPT-2 not available here: {str(e).splitlines()[0]}"}]
    rows = []
    references = Path(__file__).resolve().parent.parent / "circuits"
    for task_name, reference in (("ioi", "ioi_gpt2_wang2022.json"), ("greater-than", "greaterthan_gpt2_hanna2023.json")):
        try:
            task = load_task(task_name, hooked, n_examples=n_examples, seed=seed)
        except TaskError as e:
            rows.append({"suite": "gpt2", "model": model, "task": task_name, "skipped": str(e)})
            continue
        truth = _heads(Circuit.load(references / reference).nodes) if (references / reference).is_file() else None
        forward = plain_forward_seconds(hooked, task.clean)
        for method in methods:
            row, _ = search_row(model, hooked, task, method, truth, forward, seed=seed)
            rows.append({"suite": "gpt2", **row})
    return rows


# ---- scale: one subprocess per method, so each peak memory is its own ----------------------------
def _scale_measure(method: str, n_prompts: int, seq_len: int, batch_size: int, seed: int) -> dict:
    from transformers import GPT2Config, GPT2LMHeadModel

    from acdc_lite.models import load_model
    from acdc_lite.search import attribution, search

    torch.manual_seed(seed)
    model = load_model(GPT2LMHeadModel(GPT2Config()).eval())
    g = torch.Generator().manual_seed(seed)
    clean = torch.randint(0, 50257, (n_prompts, seq_len), generator=g)
    corrupt = torch.randint(0, 50257, (n_prompts, seq_len), generator=g)
    answers, foils = torch.randint(0, 50257, (n_prompts, 1), generator=g), torch.randint(0, 50257, (n_prompts, 1), generator=g)
    task = Task("random-logit-diff", clean, corrupt, answers, foils)
    forward = plain_forward_seconds(model, clean, batch_size)
    loading_peak = peak_memory_mb()
    reset_peak_memory()  # the model's loading peak is not the search's
    plan = _plan(model, method, n_prompts, seq_len, batch_size)
    started = time.perf_counter()
    if method in ("eap", "eap-ig"):  # the scores alone: corrupted cache, then forward + backward (x ig steps)
        attribution.eap(SearchContext.build(model, task, batch_size=batch_size), ig_steps=1 if method == "eap" else 5)
    scoring = time.perf_counter() - started
    started = time.perf_counter()
    result = search(model, task, method, batch_size=batch_size, progress=False, top_n=500)
    seconds = time.perf_counter() - started
    return {"suite": "scale", "model": "gpt2-small-shaped random", "task": f"random tokens {n_prompts} x {seq_len}",
            "method": method, "graph_edges": ModelGraph.from_model(model).n_edges(), "edges": result.n_edges,
            "forward_passes": round(result.search_forward_passes, 1),
            "bookkeeping_passes": round(result.bookkeeping_forward_passes, 1),
            "backward_passes": round(result.backward_passes, 1), "batch_size": batch_size, "seconds": round(seconds, 1),
            "x_forward": round(seconds / forward, 1),
            **({"scoring_seconds": round(scoring, 1), "scoring_x_forward": round(scoring / forward, 1)} if scoring > 0.01 else {}),
            "loading_peak_mb": round(loading_peak), "peak_rss_mb": round(peak_memory_mb()),
            **_plan_columns(plan, peak_memory_mb())}


def _plan(model, method: str, n_prompts: int, seq_len: int, batch_size: int):
    """The memory plan of a search about to start in this process (`acdc_lite.memory`)."""
    from acdc_lite import memory

    return memory.estimate(memory.model_shape(model), method, n_prompts, seq_len, batch_size,
                           baseline=memory.resident_bytes(), offloaded=memory.offloaded_bytes(model))


def _plan_columns(plan, measured_mb: float) -> dict:
    estimated = plan.peak / 2**20
    return {"held_before_search_mb": round(plan.baseline / 2**20), "estimated_peak_mb": round(estimated),
            "estimate_error": f"{(estimated - measured_mb) / measured_mb:+.0%}"}


def _offload_measure(model_dir: str, placement: dict, n_prompts: int, seq_len: int, batch_size: int, seed: int) -> dict:
    """EAP on the model in `model_dir`, loaded with `placement` (load_model's device_map/max_memory; {} = in memory)."""
    from acdc_lite import offload
    from acdc_lite.models import load_model
    from acdc_lite.search import search

    started = time.perf_counter()
    model = load_model(model_dir, **placement)
    load_seconds = time.perf_counter() - started
    loading_peak = peak_memory_mb()
    d_vocab = model.cfg.d_vocab
    g = torch.Generator().manual_seed(seed)
    clean, corrupt = (torch.randint(0, d_vocab, (n_prompts, seq_len), generator=g) for _ in range(2))
    answers, foils = (torch.randint(0, d_vocab, (n_prompts, 1), generator=g) for _ in range(2))
    task = Task("random-logit-diff", clean, corrupt, answers, foils)
    reset_peak_memory()  # forward-only work (what ACDC, exact and head pruning do): the ablated cache, one patched pass
    started = time.perf_counter()
    ctx = SearchContext.build(model, task, batch_size=batch_size)
    ctx.evaluate(ctx.graph.full_mask())
    forward_seconds, forward_peak = time.perf_counter() - started, peak_memory_mb()
    del ctx
    reset_peak_memory()
    plan = _plan(model, "eap", n_prompts, seq_len, batch_size)
    started = time.perf_counter()
    result = search(model, task, "eap", batch_size=batch_size, progress=False, top_n=200)
    seconds = time.perf_counter() - started
    kept = result.kept.nonzero().tolist()
    on_disk = sorted(k for k, v in getattr(model.original_model, "hf_device_map", {}).items() if v == "disk")
    return {"suite": "memory", "model": "llama, gpt2-small-sized random", "task": f"random tokens {n_prompts} x {seq_len}",
            "method": "eap", "placement": json.dumps(placement) if placement else "in memory",
            "modules_on_disk": len(on_disk), "offloaded_modules": len(offload.offloaded_modules(model)),
            "edges": result.n_edges, "circuit_sha256": hashlib.sha256(json.dumps(kept).encode()).hexdigest()[:16],
            "scores_sha256": hashlib.sha256(result.scores.nan_to_num(0).numpy().tobytes()).hexdigest()[:16],
            "batch_size": batch_size, "load_seconds": round(load_seconds, 1), "loading_peak_mb": round(loading_peak),
            "forward_only_seconds": round(forward_seconds, 1), "forward_only_peak_mb": round(forward_peak),
            "seconds": round(seconds, 1), "peak_rss_mb": round(peak_memory_mb()), **_plan_columns(plan, peak_memory_mb())}


def _big_llama(directory: Path, seed: int = 0) -> Path:
    """A random Llama of GPT-2 small's size (12 layers x 12 heads, d_model 768, d_mlp 3072, vocab 50257), saved."""
    from transformers import LlamaConfig, LlamaForCausalLM

    torch.manual_seed(seed)
    config = LlamaConfig(num_hidden_layers=12, num_attention_heads=12, num_key_value_heads=12, hidden_size=768,
                         intermediate_size=3072, vocab_size=50257, max_position_embeddings=128, tie_word_embeddings=False)
    LlamaForCausalLM(config).eval().save_pretrained(directory)
    return directory


def _subprocess_row(args: list) -> dict:
    out = subprocess.run([sys.executable, "-m", "acdc_lite.benchmark", json.dumps(args)], capture_output=True, text=True)
    if out.returncode != 0:
        raise RuntimeError(f"benchmark subprocess {args[0]} failed:\n{out.stderr[-2000:]}")
    return json.loads(out.stdout.strip().splitlines()[-1])


def memory_suite(methods: Sequence[str] = ("eap", "eap-ig"), shapes: Sequence[tuple[int, int]] = ((32, 16), (16, 32)),
                 batch_size: int = 8, seed: int = 0, offload_shape: tuple[int, int] = (16, 16),
                 weights_in_memory: str = "400MB") -> list[dict]:
    """The memory plan's estimate against the measured peak on the scale suite's shapes, and an offloaded model's
    peak beside the same model's in memory; every run in its own subprocess (peaks are per process)."""
    import tempfile

    rows = [{**_subprocess_row(["scale", m, n, p, batch_size, seed]), "suite": "memory"}
            for m, (n, p) in ((m, shape) for m in methods for shape in shapes)]
    with tempfile.TemporaryDirectory(prefix="acdc-offload-") as tmp:
        model_dir = str(_big_llama(Path(tmp) / "llama", seed))
        n, p = offload_shape
        for placement in ({}, {"device_map": "auto", "max_memory": {"cpu": weights_in_memory}}):
            rows.append(_subprocess_row(["offload", model_dir, placement, n, p, batch_size, seed]))
    return rows


def scale_suite(methods: Sequence[str] = ("eap", "eap-ig"), shapes: Sequence[tuple[int, int]] = ((32, 16), (16, 32)),
                batch_size: int = 8, seed: int = 0) -> list[dict]:
    """Attribution on a GPT-2-small-shaped random model, prompts x tokens in `shapes`, chunks of `batch_size`
    prompts (to stay within 4 GB); each run in its own subprocess."""
    rows = []
    for method, (n_prompts, seq_len) in ((m, shape) for m in methods for shape in shapes):
        rows.append(_subprocess_row(["scale", method, n_prompts, seq_len, batch_size, seed]))
    return rows


SUITES: dict[str, Callable[..., list[dict]]] = {"zoo": zoo_suite, "tracr": tracr_suite, "gpt2": gpt2_suite, "scale": scale_suite,
                                                "memory": memory_suite}


def write_table(rows: list[dict], out_dir: str | Path, name: str, title: str, notes: Sequence[str] = ()) -> tuple[Path, Path]:
    """Write `rows` as `name`.md (a markdown table under `title` and `notes`) and `name`.csv; returns both paths."""
    import pandas as pd

    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    frame = pd.DataFrame(rows).fillna("")
    md, csv = out_dir / f"{name}.md", out_dir / f"{name}.csv"
    table = ["| " + " | ".join(frame.columns) + " |", "|" + "---|" * len(frame.columns)]
    table += ["| " + " | ".join(str(v) for v in row) + " |" for row in frame.itertuples(index=False)]
    text = "\n".join([f"# {title}", "", *notes, "", *table, ""])
    write_atomic(md, text)
    write_atomic(csv, frame.to_csv(index=False))
    return md, csv


if __name__ == "__main__":  # python -m acdc_lite.benchmark '["scale", "eap", 32, 16, 8, 0]' (scale and memory suites)
    kind, *arguments = json.loads(sys.argv[1])
    print(json.dumps({"scale": _scale_measure, "offload": _offload_measure}[kind](*arguments)))
