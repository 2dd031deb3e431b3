"""Shared plotting and output-folder helpers for the explore package.

Figures are made with matplotlib's object API (`matplotlib.figure.Figure`, no pyplot state), so they
are safe to build in tests and scripts and are closed by garbage collection.
"""

from __future__ import annotations

import io
import json
from collections.abc import Sequence
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
from matplotlib import rc_context
from matplotlib.colors import TwoSlopeNorm
from matplotlib.figure import Figure

from acdc_lite.circuit import write_atomic

DIVERGING_CMAP = "RdBu_r"  # red above zero, blue below, white at zero
INDEX_MD = "index.md"
INDEX_JSON = "index.json"


def diverging_heatmap(values, *, title: str, xlabel: str, ylabel: str, colorbar_label: str,
                      xticklabels: Sequence[str] | None = None, yticklabels: Sequence[str] | None = None,
                      annotate: bool | None = None, ax=None) -> Figure:
    """A heatmap of `values` [rows, cols] on a diverging colour scale centred at zero (symmetric limits).

    Row i is drawn top to bottom; NaN cells are left blank. `annotate` writes each value in its cell
    (default: when there are at most 200 cells). With `ax` the heatmap is drawn into that axes.
    """
    v = np.asarray(values, dtype=float)
    if v.ndim != 2:
        raise ValueError(f"a heatmap needs a 2-d array, got shape {v.shape}")
    finite = v[np.isfinite(v)]
    lim = float(np.abs(finite).max()) if finite.size else 1.0
    lim = lim if lim > 0 else 1.0
    if ax is None:
        rows, cols = v.shape
        fig = Figure(figsize=(min(3.0 + 0.6 * cols, 18), min(3.2 + 0.4 * rows, 14)), layout="constrained")
        ax = fig.add_subplot()
    else:
        fig = ax.figure
    image = ax.imshow(np.ma.masked_invalid(v), cmap=DIVERGING_CMAP, norm=TwoSlopeNorm(0.0, -lim, lim),
                      aspect="auto", interpolation="nearest")
    bar = fig.colorbar(image, ax=ax)
    bar.set_label(colorbar_label)
    ax.set_title(title)
    ax.set_xlabel(xlabel)
    ax.set_ylabel(ylabel)
    if xticklabels is not None:
        ax.set_xticks(range(v.shape[1]), list(xticklabels), rotation=90 if v.shape[1] > 8 else 0)
    if yticklabels is not None:
        ax.set_yticks(range(v.shape[0]), list(yticklabels))
    if annotate is None:
        annotate = v.size <= 200
    if annotate:
        for (i, j), x in np.ndenumerate(v):
            if np.isfinite(x):
                ax.text(j, i, f"{x:.2f}".replace("-0.00", "0.00"), ha="center", va="center", fontsize=7,
                        color="white" if abs(x) > 0.6 * lim else "black")
    return fig


def figure_bytes(fig: Figure, fmt: str) -> bytes:
    """The figure rendered as `fmt` (png, svg, pdf) bytes."""
    buf = io.BytesIO()
    metadata = {"png": {"Software": None}, "svg": {"Date": None}}.get(fmt)  # no timestamps: same figure, same bytes
    with rc_context({"svg.hashsalt": "acdc-lite"}):  # fixed SVG element ids
        fig.savefig(buf, format=fmt, dpi=110, metadata=metadata)
    return buf.getvalue()


def save_figure(fig: Figure, out_dir: str | Path, stem: str, formats: Sequence[str] = ("png", "svg")) -> list[Path]:
    """Write `fig` as out_dir/stem.<fmt> for each format (atomically); returns the paths."""
    paths = []
    for fmt in formats:
        path = Path(out_dir) / f"{stem}.{fmt}"
        write_atomic(path, figure_bytes(fig, fmt))
        paths.append(path)
    return paths


def save_table(frame, out_dir: str | Path, stem: str) -> Path:
    """Write a DataFrame as out_dir/stem.csv (atomically, no index column); returns the path."""
    path = Path(out_dir) / f"{stem}.csv"
    write_atomic(path, frame.to_csv(index=False))
    return path


@dataclass(frozen=True)
class IndexEntry:
    """One file of an output folder: its name (relative to the folder), kind and one-line description."""

    file: str
    kind: str  # "figure" | "table" | "json"
    description: str


def write_index(out_dir: str | Path, title: str, entries: Sequence[IndexEntry], params: dict | None = None) -> Path:
    """Write out_dir/index.md (a list of the folder's files, figures shown inline) and index.json.

    Entries of an existing index.json whose files are not in `entries` are kept, so several explore
    commands can write into one folder. Returns the path of index.md.
    """
    out = Path(out_dir)
    old = []
    if (out / INDEX_JSON).is_file():
        try:
            old = [IndexEntry(**e) for e in json.loads((out / INDEX_JSON).read_text()).get("entries", [])]
        except (ValueError, TypeError):
            old = []
    names = {e.file for e in entries}
    merged = [e for e in old if e.file not in names and (out / e.file).exists()] + list(entries)
    lines = [f"# {title}", ""]
    if params:
        lines += [f"- {k}: `{v}`" for k, v in params.items()] + [""]
    for e in merged:
        if e.kind == "figure" and e.file.endswith((".png", ".svg")):
            lines += ([""] if lines[-1] else []) + [f"## {e.description}", "", f"![{e.description}]({e.file})", ""]
        else:
            lines += [f"- [{e.file}]({e.file}): {e.description}"]
    lines.append("")
    write_atomic(out / INDEX_JSON, json.dumps({"title": title, "params": params or {},
                                               "entries": [asdict(e) for e in merged]}, indent=1) + "\n")
    write_atomic(out / INDEX_MD, "\n".join(lines))
    return out / INDEX_MD
