"""The MIB circuit-localization track's submission layout.

Facts from MIB's circuit-track code and README (`run_attribution.py`, `run_evaluation.py`, README "Submitting"):
one folder per task and model named `{task}_{model}` with the task's underscores as hyphens (`ioi_gpt2`,
`arithmetic-addition_llama3`), holding either one importance file (`importances.json` or `importances.pt`:
EAP-IG's Graph format with a score for every edge) or several binary circuits, one with at most each of
0.1, 0.2, 0.5, 1, 2, 5, 10, 20 and 50 % of the edges. The leaderboard scores the models gpt2 (GPT-2 small),
qwen2.5 (Qwen2.5-0.5B), gemma2 (Gemma-2-2B) and llama3 (Llama-3.1-8B), with grouped-query attention
ungrouped into one k/v input per query head (our convention too). MIB's code reads `importances.json`; the
README does not fix the names of the several-circuit files, so ours are `circuit_{percent}pct.json`.
"""

from __future__ import annotations

import logging
from pathlib import Path

import torch

from acdc_lite.circuit import Circuit, CircuitError
from acdc_lite.graph import connected_mask
from acdc_lite.interop.eap import to_eap_json, to_eap_pt

log = logging.getLogger(__name__)

MIB_TASKS = ("ioi", "mcqa", "arithmetic-addition", "arithmetic-subtraction", "arc-easy", "arc-challenge")
MIB_MODELS = {"gpt2": (12, 12, 768), "qwen2.5": (24, 14, 896), "gemma2": (26, 8, 2304), "llama3": (32, 32, 4096)}
PERCENTS = (0.1, 0.2, 0.5, 1, 2, 5, 10, 20, 50)


def folder_name(task: str, model: str) -> str:
    return f"{task.replace('_', '-')}_{model}"


def check_names(circuit: Circuit, task: str, model: str, strict: bool = True) -> None:
    """CircuitError unless task and model are MIB's names and the circuit's graph has that model's shape."""
    task = task.replace("_", "-")
    problems = []
    if task not in MIB_TASKS:
        problems.append(f"task {task!r} is not a MIB task ({', '.join(MIB_TASKS)})")
    if model not in MIB_MODELS:
        problems.append(f"model {model!r} is not a MIB model ({', '.join(MIB_MODELS)})")
    elif (circuit.model.n_layers, circuit.model.n_heads) != MIB_MODELS[model][:2] or \
            circuit.model.d_model not in (None, MIB_MODELS[model][2]):
        n_layers, n_heads, d_model = MIB_MODELS[model]
        raise CircuitError(f"MIB's {model} has {n_layers} layers x {n_heads} heads (d_model {d_model}) but this circuit's model "
                           f"{circuit.model.name} has {circuit.model.n_layers} x {circuit.model.n_heads} (d_model {circuit.model.d_model})")
    if "_" in model:
        problems.append(f"model name {model!r} holds '_', which separates task and model in MIB folder names")
    if problems and strict:
        raise CircuitError("; ".join(problems) + "; the leaderboard scores only its own tasks and models (strict=False to write anyway)")
    for p in problems:
        log.warning("MIB: %s", p)


def top_fraction(circuit: Circuit, percent: float) -> torch.Tensor:
    """[S, R] mask of the top-|score| edges, at most `percent` % of all edges, dangling edges pruned."""
    graph = circuit.graph
    scores = circuit.score_tensor().abs().nan_to_num(-1.0).masked_fill(~graph.valid, -2.0)
    n = int(percent / 100 * graph.n_edges())
    order = scores.flatten().argsort(descending=True, stable=True)[:n]
    kept = torch.zeros(scores.numel(), dtype=torch.bool)
    kept[order] = True
    return connected_mask(graph, kept.view(scores.shape) & graph.valid)


def export_mib(circuit: Circuit, out_dir: str | Path, task: str, model: str, *, fmt: str = "json",
               several: bool = False, strict: bool = True) -> list[Path]:
    """Write `out_dir/{task}_{model}/importances.{fmt}` (or, with `several`, the nine circuits). Returns the files."""
    if circuit.scores is None:
        raise CircuitError("MIB needs a score for every edge; this circuit stores only its kept edges. Export a circuit "
                           "from a scoring method (eap, eap-ig, exact, hybrid)")
    if fmt not in ("json", "pt"):
        raise CircuitError(f"MIB files are json or pt, not {fmt!r}")
    check_names(circuit, task, model, strict)
    folder = Path(out_dir) / folder_name(task, model)
    write = to_eap_json if fmt == "json" else to_eap_pt
    if not several:
        path = folder / f"importances.{fmt}"
        write(circuit, path)
        return [path]
    written = []
    for pct in PERCENTS:
        sub = Circuit.from_mask(circuit.model, top_fraction(circuit, pct), circuit.score_tensor(), task=circuit.task,
                                method=circuit.method, ablation=circuit.ablation, metrics={}, provenance=circuit.provenance)
        path = folder / f"circuit_{pct:g}pct.{fmt}"
        write(sub, path)
        written.append(path)
    return written
