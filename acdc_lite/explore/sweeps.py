"""Activation-patching sweeps: which layers, positions and heads carry a task's behaviour.

Built on `transformer_lens.patching` (its `get_act_patch_*` sweeps and `generic_activation_patch`),
which run on any model with `run_with_hooks` and TransformerLens hook names: our `TransformerBridge`
models and our own `SmallTransformer`. The one seam is `_TLView`, which gives a model the `cfg` fields
those sweeps read (our SmallTransformer's config has no `n_key_value_heads` or `device`) and counts
forward passes. What transformer-lens lacks is added here: both directions, values as a share of the
clean-corrupt gap, positions aligned by answer position when answer positions vary, DataFrames with
token labels, and heatmaps.

Directions (both give "higher = this component carries more of the clean behaviour"):
- `Direction.DENOISE` (clean into corrupt): run the corrupted prompt, patch in one clean activation;
  value = (patched - corrupt) / (clean - corrupt), the share of the gap restored.
- `Direction.NOISE` (corrupt into clean): run the clean prompt, patch in one corrupted activation;
  value = (clean - patched) / (clean - corrupt), the share of the gap lost.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from enum import Enum
from types import SimpleNamespace

import numpy as np
import pandas as pd
import torch
import transformer_lens.patching as tlp
from matplotlib.figure import Figure
from torch import nn

from acdc_lite import hooks
from acdc_lite.faithfulness import gap_is_zero
from acdc_lite.models import model_info
from acdc_lite.padding import first_real, forward
from acdc_lite.task import Task, TaskError, Vocabulary

from .figures import diverging_heatmap

log = logging.getLogger(__name__)


class Direction(str, Enum):
    DENOISE = "clean-into-corrupt"
    NOISE = "corrupt-into-clean"


class SweepKind(str, Enum):
    RESID_PRE = "resid_pre"  # residual stream entering each layer, per position
    ATTN_OUT = "attn_out"  # attention output of each layer, per position
    MLP_OUT = "mlp_out"  # MLP output of each layer, per position
    HEAD_OUT = "head_out"  # one head's output (z, before W_O)
    HEAD_Q = "head_q"
    HEAD_K = "head_k"
    HEAD_V = "head_v"
    HEAD_PATTERN = "head_pattern"  # one head's attention pattern (per destination position when by position)

    @property
    def per_head(self) -> bool:
        return self.value.startswith("head_")


@dataclass(frozen=True)
class _KindSpec:
    activation: str  # transformer-lens activation name
    label: str
    by_pos: Callable | None  # transformer-lens sweep over (layer, pos[, head])
    all_pos: Callable | None  # transformer-lens sweep over (layer, head)


_KINDS: dict[SweepKind, _KindSpec] = {
    SweepKind.RESID_PRE: _KindSpec("resid_pre", "residual stream (resid_pre)", tlp.get_act_patch_resid_pre, None),
    SweepKind.ATTN_OUT: _KindSpec("attn_out", "attention output", tlp.get_act_patch_attn_out, None),
    SweepKind.MLP_OUT: _KindSpec("mlp_out", "MLP output", tlp.get_act_patch_mlp_out, None),
    SweepKind.HEAD_OUT: _KindSpec("z", "head output", tlp.get_act_patch_attn_head_out_by_pos,
                                  tlp.get_act_patch_attn_head_out_all_pos),
    SweepKind.HEAD_Q: _KindSpec("q", "head query", tlp.get_act_patch_attn_head_q_by_pos, tlp.get_act_patch_attn_head_q_all_pos),
    SweepKind.HEAD_K: _KindSpec("k", "head key", tlp.get_act_patch_attn_head_k_by_pos, tlp.get_act_patch_attn_head_k_all_pos),
    SweepKind.HEAD_V: _KindSpec("v", "head value", tlp.get_act_patch_attn_head_v_by_pos, tlp.get_act_patch_attn_head_v_all_pos),
    SweepKind.HEAD_PATTERN: _KindSpec("pattern", "head attention pattern", tlp.get_act_patch_attn_head_pattern_by_pos,
                                      tlp.get_act_patch_attn_head_pattern_all_pos),
}


class _TLView:
    """The face transformer-lens' sweeps expect: `cfg` (n_layers, n_heads, n_key_value_heads, device) and
    `run_with_hooks`; counts the forward passes it runs."""

    def __init__(self, model: nn.Module, attention_mask: torch.Tensor | None = None):
        info = model_info(model)
        self.model = model
        self.attention_mask = attention_mask  # [b, p] of every prompt it runs (clean and corrupt share it)
        self.cfg = SimpleNamespace(n_layers=info.n_layers, n_heads=info.n_heads, device=next(model.parameters()).device,
                                   n_key_value_heads=info.n_kv_heads if info.n_kv_heads != info.n_heads else None)
        self.forward_passes = 0

    def run_with_hooks(self, tokens, fwd_hooks=()):
        self.forward_passes += 1
        with self.model.hooks(fwd_hooks=list(fwd_hooks)):
            return forward(self.model, tokens, self.attention_mask)

    def run_with_cache(self, tokens, names: set[str]) -> dict[str, torch.Tensor]:
        """The activations `names` (hook name -> tensor) of one run on `tokens`."""
        cache: dict[str, torch.Tensor] = {}

        def keep(name):
            def hook(x, hook):
                cache[name] = x.detach()
            return hook

        self.run_with_hooks(tokens, [(name, keep(name)) for name in names])
        return cache


@dataclass(frozen=True, eq=False)
class Sweep:
    """One sweep's result. `frame` has one row per patched cell: layer, head (per-head kinds), position and
    token (by position; position is the offset from the answer position when `aligned`), value (share of
    the clean-corrupt gap, see module docstring) and metric (the raw patched metric)."""

    kind: SweepKind
    direction: Direction
    by_position: bool
    aligned: bool
    frame: pd.DataFrame
    model: str
    task: str
    metric: str
    clean_value: float
    corrupt_value: float
    forward_passes: int  # patched passes plus the two baselines and the cached run
    seconds: float
    n_layers: int
    n_heads: int
    position_labels: tuple[str, ...] = field(default=())

    @property
    def title(self) -> str:
        what = _KINDS[self.kind].label + ("" if self.by_position or not self.kind.per_head else ", all positions")
        return f"{what} patching, {self.direction.value}\n{self.model} / {self.task} / {self.metric}"

    @property
    def value_label(self) -> str:
        return "share of gap " + ("restored" if self.direction is Direction.DENOISE else "lost")

    def matrix(self) -> tuple[np.ndarray, list[str], list[str]]:
        """(values [rows, cols], row labels, column labels) as the heatmap draws them: rows are layers
        (or heads `a{l}.h{h}` when by position), columns positions (or heads when over all positions)."""
        f = self.frame
        if self.kind.per_head and not self.by_position:
            v = f.pivot(index="layer", columns="head", values="value").sort_index().to_numpy()
            return v, [str(i) for i in range(self.n_layers)], [f"h{h}" for h in range(self.n_heads)]
        rows = ["layer"] + (["head"] if self.kind.per_head else [])
        table = f.pivot_table(index=rows, columns="position", values="value", sort=True, dropna=False)
        labels = [f"a{layer}.h{h}" for layer, h in table.index] if self.kind.per_head else [str(i) for i in table.index]
        return table.to_numpy(), labels, list(self.position_labels)

    def heatmap(self, ax=None) -> Figure:
        """A diverging heatmap centred at zero; axes name layer (or head) and position with its token."""
        v, rows, cols = self.matrix()
        if self.kind.per_head and not self.by_position:
            xlabel, ylabel = "head", "layer"
        else:
            xlabel = ("offset from answer position" if self.aligned else "position") + " (token; * = varies, example 0's)"
            ylabel = "layer.head" if self.kind.per_head else "layer"
        return diverging_heatmap(v, title=self.title, xlabel=xlabel, ylabel=ylabel, colorbar_label=self.value_label,
                                 xticklabels=cols, yticklabels=rows, ax=ax)

    def totals(self) -> pd.DataFrame:
        """Per component (layer, and head for per-head kinds) the value summed over positions (by position)
        or the value itself, sorted by value, largest first."""
        keys = ["layer"] + (["head"] if self.kind.per_head else [])
        out = self.frame.groupby(keys, as_index=False)["value"].sum() if self.by_position else self.frame[keys + ["value"]]
        return out.sort_values("value", ascending=False, kind="stable").reset_index(drop=True)

    def top_heads(self, k: int) -> list[str]:
        """The k heads with the largest value (over all positions, or summed over positions)."""
        if not self.kind.per_head:
            raise ValueError(f"{self.kind.value} is not a per-head sweep")
        t = self.totals()
        return [f"a{int(r.layer)}.h{int(r.head)}" for r in t.head(k).itertuples()]


# ---- positions ---------------------------------------------------------------------------------
def _token_strings(model: nn.Module, ids: Sequence[int]) -> list[str]:
    try:
        return Vocabulary.of(model).decode(list(ids))
    except (TaskError, IndexError, TypeError):
        return [str(i) for i in ids]


def _position_labels(model: nn.Module, tokens: torch.Tensor, positions: torch.Tensor) -> list[str]:
    """tokens [N, P], positions [N, C] (-1: none) -> one label per column: "i tok", with "*" when examples differ."""
    labels = []
    for c in range(positions.shape[1]):
        pos = positions[:, c]
        ok = pos >= 0
        if not ok.any():
            labels.append("-")
            continue
        ids = tokens[ok.nonzero()[:, 0], pos[ok]]
        tok = _token_strings(model, [int(ids[0])])[0].replace("\n", "\\n")
        labels.append(f"{tok}" if bool((ids == ids[0]).all()) else f"{tok}*")
    return labels


def _aligned_setter(kind: SweepKind, answer_pos: torch.Tensor):
    """A transformer-lens patch setter whose position axis is an offset from each example's answer position."""
    pattern = kind is SweepKind.HEAD_PATTERN

    def setter(target, index, source):
        layer, offset, *head = index
        pos = answer_pos.to(target.device) + int(offset)
        rows = (pos >= 0).nonzero()[:, 0]
        p = pos[rows]
        if pattern:
            target[rows, head[0], p, :] = source[rows, head[0], p, :]
        elif head:
            target[rows, p, head[0]] = source[rows, p, head[0]]
        else:
            target[rows, p] = source[rows, p]
        return target

    return setter


# ---- the sweep ---------------------------------------------------------------------------------
def sweep(model: nn.Module, task: Task, kind: SweepKind | str = SweepKind.HEAD_OUT,
          direction: Direction | str = Direction.DENOISE, by_position: bool = True, metric: str | None = None,
          align: bool | None = None) -> Sweep:
    """Patch one activation at a time (each layer x position, or layer x [position x] head) from one run
    into the other and measure `metric` (the task's default); one forward pass per cell over all examples.

    align: index positions by offset from each example's answer position (offsets <= 0); default: when the
    task's answer positions differ between examples. Returns a `Sweep` (DataFrame + heatmap).
    """
    kind, direction = SweepKind(kind), Direction(direction)
    spec = _KINDS[kind]
    if not kind.per_head and not by_position:
        raise ValueError(f"{kind.value} sweeps are per layer and position; by_position=False applies to per-head kinds")
    if model.training:
        raise ValueError("sweeps need the model in eval mode (model.eval())")
    info = model_info(model)
    if kind is SweepKind.MLP_OUT and not info.has_mlp:
        raise ValueError(f"{info.name} has no MLPs: no mlp_out sweep")
    answer_pos = task.answer_pos
    if align is None:  # prompts of different lengths: positions counted back from the answer mean the same thing
        align = bool((answer_pos != answer_pos[0]).any()) or not bool(task.attention_mask.all())
    metric_name = metric or task.default_metric
    per_example = task.metric(metric_name, model)
    idx = torch.arange(len(task))

    def metric_fn(logits):
        return per_example(logits, idx.to(logits.device)).float()

    device = next(model.parameters()).device
    clean, corrupt = task.clean.to(device), task.corrupt.to(device)
    target, source = (corrupt, clean) if direction is Direction.DENOISE else (clean, corrupt)
    view = _TLView(model, task.attention_mask.to(device))
    start = time.perf_counter()
    with torch.no_grad():
        clean_value = float(metric_fn(view.run_with_hooks(clean)).mean())
        corrupt_value = float(metric_fn(view.run_with_hooks(corrupt)).mean())
        names = {hooks.tl_activation(spec.activation, layer) for layer in range(info.n_layers)}
        cache = view.run_with_cache(source, names)
        heads = info.n_kv_heads if kind in (SweepKind.HEAD_K, SweepKind.HEAD_V) else info.n_heads
        if by_position and align:
            offsets = range(-int((answer_pos - first_real(task.attention_mask)).min()), 1)  # real in every prompt
            axes = {"layer": range(info.n_layers), "offset": offsets} | ({"head": range(heads)} if kind.per_head else {})
            index_df = pd.MultiIndex.from_product(list(axes.values()), names=list(axes)).to_frame(index=False)
            raw = tlp.generic_activation_patch(view, target, cache, metric_fn, _aligned_setter(kind, answer_pos),
                                               spec.activation, index_df=index_df, reduce="mean")
            frame = index_df.rename(columns={"offset": "position"}).assign(metric=raw.cpu().numpy())
            positions = answer_pos[:, None] + torch.tensor(list(offsets))[None, :]
            positions = positions.where(positions >= 0, torch.full_like(positions, -1))
        else:
            fn = spec.by_pos if by_position else spec.all_pos
            raw = fn(view, target, cache, metric_fn, reduce="mean").cpu()  # [layer, pos, head] / [layer, pos] / [layer, head]
            axes = ["layer"] + (["position"] if by_position else []) + (["head"] if kind.per_head else [])
            grid = np.stack(np.meshgrid(*[np.arange(s) for s in raw.shape], indexing="ij"), -1).reshape(-1, raw.dim())
            frame = pd.DataFrame(grid, columns=axes).assign(metric=raw.reshape(-1).numpy())
            positions = torch.arange(task.seq_len)[None, :].expand(len(task), -1)
    seconds = time.perf_counter() - start
    gap = clean_value - corrupt_value
    if gap_is_zero(clean_value, corrupt_value):
        raise TaskError(f"task {task.name!r}: clean and corrupted prompts give the same {metric_name} ({clean_value:.4g}); "
                        "a sweep needs a clean-corrupt gap")
    share = (frame["metric"] - corrupt_value) / gap if direction is Direction.DENOISE else (clean_value - frame["metric"]) / gap
    frame = frame.assign(value=share)
    labels: tuple[str, ...] = ()
    if by_position:
        labels = tuple(_position_labels(model, source.cpu(), positions))
        cols = sorted(frame["position"].unique())
        frame = frame.assign(token=frame["position"].map(dict(zip(cols, labels, strict=True))))
        labels = tuple(f"{c} {t}" for c, t in zip(cols, labels, strict=True))
    keys = ["layer"] + (["head"] if kind.per_head else []) + (["position"] if by_position else [])
    frame = frame[keys + (["token"] if by_position else []) + ["value", "metric"]].sort_values(keys).reset_index(drop=True)
    log.info("%s sweep (%s): %d forward passes, %.2f s", kind.value, direction.value, view.forward_passes, seconds)
    return Sweep(kind, direction, by_position, bool(by_position and align), frame, info.name, task.name, metric_name,
                 clean_value, corrupt_value, view.forward_passes, seconds, info.n_layers, info.n_heads, labels)


DEFAULT_SWEEPS: tuple[tuple[SweepKind, bool], ...] = (
    (SweepKind.RESID_PRE, True), (SweepKind.ATTN_OUT, True), (SweepKind.MLP_OUT, True),
    (SweepKind.HEAD_OUT, False), (SweepKind.HEAD_OUT, True), (SweepKind.HEAD_Q, False), (SweepKind.HEAD_K, False),
    (SweepKind.HEAD_V, False), (SweepKind.HEAD_PATTERN, False),
)


def sweep_all(model: nn.Module, task: Task, directions: Sequence[Direction | str] = (Direction.DENOISE, Direction.NOISE),
              kinds: Sequence[tuple[SweepKind | str, bool]] = DEFAULT_SWEEPS, metric: str | None = None) -> list[Sweep]:
    """Every (kind, by_position) in `kinds` in every direction; MLP sweeps are skipped on models without MLPs."""
    has_mlp = model_info(model).has_mlp
    out = []
    for d in directions:
        for k, by_pos in kinds:
            if SweepKind(k) is SweepKind.MLP_OUT and not has_mlp:
                continue
            out.append(sweep(model, task, k, d, by_position=by_pos, metric=metric))
    return out


def sweep_stem(s: Sweep) -> str:
    """A file name stem for a sweep: e.g. head_out-all-pos-noise."""
    scope = "" if not s.kind.per_head else ("-by-pos" if s.by_position else "-all-pos")
    return f"{s.kind.value}{scope}-{'denoise' if s.direction is Direction.DENOISE else 'noise'}"


__all__ = ["Direction", "Sweep", "SweepKind", "DEFAULT_SWEEPS", "sweep", "sweep_all", "sweep_stem"]


def write_sweeps(sweeps: Sequence[Sweep], out_dir, formats: Sequence[str] = ("png", "svg")) -> list:
    """Each sweep's heatmap (PNG, SVG) and table (CSV), one CSV of all sweeps (`sweeps.csv`, with kind,
    direction and scope columns) and an index; returns the written paths."""
    from .figures import IndexEntry, save_figure, save_table, write_index

    paths, entries, frames = [], [], []
    for s in sweeps:
        stem = sweep_stem(s)
        for p in save_figure(s.heatmap(), out_dir, stem, formats):
            paths.append(p)
            entries.append(IndexEntry(p.name, "figure" if p.suffix == ".png" else "vector figure",
                                      s.title.replace("\n", ": ") + f" ({s.forward_passes} forward passes)"))
        paths.append(save_table(s.frame, out_dir, stem))
        entries.append(IndexEntry(paths[-1].name, "table", f"{stem}: one row per patched cell"))
        frames.append(s.frame.assign(kind=s.kind.value, direction=s.direction.value,
                                     scope="by-position" if s.by_position else "all-positions"))
    if frames:
        paths.append(save_table(pd.concat(frames, ignore_index=True), out_dir, "sweeps"))
        entries.append(IndexEntry("sweeps.csv", "table", "every sweep's cells in one table"))
        s0 = sweeps[0]
        paths.append(write_index(out_dir, f"activation patching: {s0.model} / {s0.task}", entries,
                                 params={"metric": s0.metric, "clean": round(s0.clean_value, 4),
                                         "corrupt": round(s0.corrupt_value, 4)}))
    return paths


__all__ += ["write_sweeps"]
