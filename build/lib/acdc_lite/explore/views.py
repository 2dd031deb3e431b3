"""Output folders of the `explore heads | lens | neurons` commands: figures (PNG + SVG), CSV tables, an
index (index.md / index.json). Each function checks its arguments before writing anything and returns
the paths it wrote.
"""

from __future__ import annotations

import json
import logging
from pathlib import Path

from torch import nn

from acdc_lite.circuit import Circuit, write_atomic
from acdc_lite.explore.attention import attention_figure, attention_html
from acdc_lite.explore.figures import IndexEntry, save_figure, save_table, write_index
from acdc_lite.explore.heads import detect_heads
from acdc_lite.explore.lens import direct_attribution, logit_lens
from acdc_lite.explore.neurons import _mlp, neuron_view
from acdc_lite.graph import Node, NodeKind
from acdc_lite.shape import model_info
from acdc_lite.task import Task

log = logging.getLogger(__name__)


def _params(model: nn.Module, task: Task, **extra) -> dict:
    return {"model": model_info(model).name, "task": task.name, "n_examples": len(task), **extra}


def write_heads(model: nn.Module, task: Task, out_dir: str | Path, prompts: tuple[int, ...] = (0, 1),
                html: bool = True, progress: bool = False) -> list[Path]:
    """Detector scores (heads.csv, heads.png/svg, roles.json) and, for every head with a role, its attention
    pattern on `prompts` (attention_<head>.png/svg; .html through circuitsvis when installed and `html`)."""
    bad = [i for i in prompts if not 0 <= i < len(task)]
    if bad:
        raise ValueError(f"--prompts {bad} are outside the task's {len(task)} prompts")
    out = Path(out_dir)
    report = detect_heads(model, task, progress=progress)
    roles = report.roles()
    paths = [save_table(report.to_frame(), out, "heads")]
    entries = [IndexEntry("heads.csv", "table", "detector scores, ablation effect, direct logit attribution and role per head")]
    paths += save_figure(report.figure(f"head detectors: {model_info(model).name} on {task.name}"), out, "heads")
    entries.append(IndexEntry("heads.png", "figure", "detector scores per head (boxed: the head takes the role)"))
    write_atomic(out / "roles.json", json.dumps({"roles": roles, **report.describe()}, indent=1) + "\n")
    paths.append(out / "roles.json")
    entries.append(IndexEntry("roles.json", "json", "roles and how they were assigned"))
    html_note = None
    for head, role in roles.items():
        paths += save_figure(attention_figure(model, task, head, prompts, title=f"{head} ({role}) attention on {task.name}"),
                             out, f"attention_{head}")
        entries.append(IndexEntry(f"attention_{head}.png", "figure", f"{head} ({role}) attention pattern"))
        if html and html_note is None:
            try:
                write_atomic(out / f"attention_{head}.html", attention_html(model, task, head, prompts[0]))
                paths.append(out / f"attention_{head}.html")
                entries.append(IndexEntry(f"attention_{head}.html", "html", f"{head} interactive attention (circuitsvis)"))
            except ImportError as e:
                html_note = str(e)
                log.warning("%s", e)
    params = _params(model, task, prompts=list(prompts))
    if html_note:
        params["html"] = html_note
    paths.append(write_index(out, "head detectors", entries, params))
    return paths


def write_lens(model: nn.Module, task: Task, out_dir: str | Path, circuit: Circuit | None = None,
               metric: str | None = None) -> list[Path]:
    """Logit lens (lens.csv, lens.png/svg) and direct logit attribution (dla.csv, dla.png/svg; only the
    circuit's components, the rest summed, when `circuit` is given)."""
    out = Path(out_dir)
    if circuit is not None:
        circuit.check_model(model)
    lens = logit_lens(model, task, metric=metric)
    name = model_info(model).name
    paths = [save_table(lens.to_frame(), out, "lens")]
    paths += save_figure(lens.figure(f"logit lens: {name} on {task.name}"), out, "lens")
    entries = [IndexEntry("lens.csv", "table", "per layer: the metric and the answer's rank at the answer position"),
               IndexEntry("lens.png", "figure", "logit lens across layers")]
    try:
        dla = direct_attribution(model, task)
    except ValueError as e:
        log.warning("no direct logit attribution: %s", e)
        dla = None
    if dla is not None:
        if circuit is not None:
            dla = dla.restrict(circuit.nodes)
        paths.append(save_table(dla.to_frame(), out, "dla"))
        paths += save_figure(dla.figure(f"direct logit attribution: {name} on {task.name}"), out, "dla")
        entries += [IndexEntry("dla.csv", "table", "each component's direct contribution (they add up to the metric)"),
                    IndexEntry("dla.png", "figure", "direct logit attribution per component")]
    paths.append(write_index(out, "logit lens and direct logit attribution", entries,
                             _params(model, task, metric=lens.metric_name, circuit=bool(circuit))))
    return paths


def mlps_to_view(model: nn.Module, mlps: list[str] | None = None, circuit: Circuit | None = None) -> list[Node]:
    """The MLPs asked for, else the circuit's, else the last layer's."""
    if mlps:
        return [_mlp(m, model) for m in mlps]
    info = model_info(model)
    if circuit is not None:
        found = [Node.parse(n) for n in circuit.nodes if n.startswith("m")]
        if found:
            return found
        raise ValueError("the circuit holds no MLP; name one with --mlp")
    return [_mlp(Node(NodeKind.MLP, info.n_layers - 1), model)]


def write_neurons(model: nn.Module, task: Task, out_dir: str | Path, mlps: list[str] | None = None,
                  circuit: Circuit | None = None, top_k: int = 10, n_examples: int = 5) -> list[Path]:
    """For each MLP (see `mlps_to_view`): neurons_<m>.csv (top neurons), neuron_examples_<m>.csv (their
    top-activating prompts and tokens), neurons_<m>.png/svg."""
    if circuit is not None:
        circuit.check_model(model)
    nodes = mlps_to_view(model, mlps, circuit)
    out = Path(out_dir)
    paths, entries, gaps = [], [], {}
    for node in nodes:
        view = neuron_view(model, task, node, top_k=top_k)
        gaps[str(node)] = {"mlp_effect": round(view.mlp_effect, 6), "additivity_gap": round(view.additivity_gap, 6)}
        paths.append(save_table(view.to_frame(top_k), out, f"neurons_{node}"))
        paths.append(save_table(view.examples(top_k, n_examples), out, f"neuron_examples_{node}"))
        paths += save_figure(view.figure(top_k), out, f"neurons_{node}")
        entries += [IndexEntry(f"neurons_{node}.csv", "table", f"{node}: top neurons by effect on {view.metric_name}"),
                    IndexEntry(f"neuron_examples_{node}.csv", "table", f"{node}: top-activating prompts and tokens"),
                    IndexEntry(f"neurons_{node}.png", "figure", f"{node}: top neurons")]
    paths.append(write_index(out, "neurons", entries, _params(model, task, mlps=gaps)))
    return paths
