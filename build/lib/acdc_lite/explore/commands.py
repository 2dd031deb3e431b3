"""What the `acdc-lite explore ...` and `validate --plot` commands run: load, compute, write a folder.

Nothing is written until everything is computed, so bad input leaves no output folder behind.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

from acdc_lite.circuit import Circuit
from acdc_lite.graph import ModelGraph
from acdc_lite.models import load_model
from acdc_lite.task import load_task

from .paths import path_table, write_paths
from .sweeps import DEFAULT_SWEEPS, Direction, SweepKind, sweep, write_sweeps

MAX_ALL_EDGES = 2000  # `explore paths` without a circuit measures every edge only on graphs up to this size


def _model_task(model: str, task: str | None, n_examples: int, seed: int):
    from acdc_lite import zoo

    hooked = load_model(model)
    if task is None:
        if not zoo.exists(model):
            raise ValueError(f"--task is needed for {model!r} (only zoo models have a default task)")
        task = zoo.card(model)["task"]["name"]
    return hooked, load_task(task, hooked, n_examples=n_examples, seed=seed)


def parse_kinds(kinds: str | None) -> list[tuple[SweepKind, bool]]:
    """"head_out,resid_pre" -> [(kind, by_position)]: per-head kinds overall and by position, the rest by position.
    None: the default set."""
    if not kinds:
        return list(DEFAULT_SWEEPS)
    out = []
    for name in kinds.split(","):
        try:
            kind = SweepKind(name.strip())
        except ValueError:
            raise ValueError(f"unknown sweep {name.strip()!r}; choose from {', '.join(k.value for k in SweepKind)}") from None
        out += [(kind, False), (kind, True)] if kind.per_head else [(kind, True)]
    return out


def parse_directions(direction: str) -> list[Direction]:
    """"both", "denoise" (clean into corrupt) or "noise" (corrupt into clean)."""
    names = {"both": list(Direction), "denoise": [Direction.DENOISE], "noise": [Direction.NOISE]}
    if direction not in names:
        raise ValueError(f"unknown direction {direction!r}; choose both, denoise (clean into corrupt) or noise (corrupt into clean)")
    return names[direction]


def run_patch(model: str, task: str | None, out: Path, *, kinds: str | None = None, direction: str = "both",
              metric: str | None = None, n_examples: int = 64, seed: int = 0) -> list[Path]:
    """Activation-patching sweeps of `model` on `task` into `out` (heatmaps, CSV tables, index)."""
    pairs, directions = parse_kinds(kinds), parse_directions(direction)
    hooked, t = _model_task(model, task, n_examples, seed)
    from acdc_lite.models import model_info

    has_mlp = model_info(hooked).has_mlp
    sweeps = [sweep(hooked, t, k, d, by_position=p, metric=metric) for d in directions for k, p in pairs
              if has_mlp or k is not SweepKind.MLP_OUT]
    return write_sweeps(sweeps, out)


def run_paths(model: str | None, task: str | None, out: Path, *, circuit: Path | None = None, edges: Sequence[str] = (),
              ablation: str | None = None, metric: str | None = None, n_examples: int = 64, seed: int = 0) -> list[Path]:
    """Path effect of every edge of a circuit (or of `edges`, or of every edge of a small model) into `out`."""
    c = Circuit.load(circuit) if circuit is not None else None
    if c is not None:
        model = model or c.model.name
        task = task or c.task.get("name")
        metric = metric or c.task.get("metric")
    if model is None:
        raise ValueError("--model is needed (or --circuit, whose model is used)")
    hooked, t = _model_task(model, task, n_examples, seed)
    target = c if c is not None and not edges else list(edges)
    if not target:
        graph = ModelGraph.from_model(hooked)
        if graph.n_edges() > MAX_ALL_EDGES:
            raise ValueError(f"{model} has {graph.n_edges()} edges; pass --circuit FILE or --edge NAME to choose the paths")
        target = list(graph.edges)
    table = path_table(hooked, t, target, ablation=ablation or (c.ablation if c is not None else None), metric=metric)
    return write_paths(table, out)


def plot_validation(report, out: Path) -> list[Path]:
    """`validate --plot`: the report's figures into `out`."""
    from .validation import write_validation_figures

    return write_validation_figures(report, out)
