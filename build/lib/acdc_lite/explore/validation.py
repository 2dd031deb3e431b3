"""Figures of a `ValidationReport`: the faithfulness curve with its CPR/CMD areas, the per-example
faithfulness histogram and per-edge necessity bars; `write_validation_figures` saves them with an index."""

from __future__ import annotations

from pathlib import Path

import numpy as np
from matplotlib.figure import Figure

from acdc_lite.validate import ValidationReport

from .figures import IndexEntry, save_figure, write_index


def _subtitle(r: ValidationReport) -> str:
    return f"{r.model} / {r.task} / {r.metric}, {r.ablation} ablation, {r.method or 'circuit'}"


def faithfulness_curve_figure(r: ValidationReport) -> Figure:
    """Faithfulness against the fraction of edges kept (log x axis): the signed ranking's curve with the area
    under it shaded (CPR), the |score| ranking's curve with the area between it and 1 shaded (CMD), the
    circuit itself and the random baseline. The areas are over a linear x axis (MIB's convention)."""
    if r.curve is None and r.curve_abs is None:
        raise ValueError("the report has no faithfulness curve (validate with curve=True and a circuit with edge scores)")
    fig = Figure(figsize=(7, 4.5), layout="constrained")
    ax = fig.add_subplot()
    if r.curve is not None:
        x, f = np.asarray(r.curve.fractions), np.asarray(r.curve.faithfulness, dtype=float)
        ax.fill_between(x, 0, f, color="#b2182b", alpha=0.15, label=f"CPR area {r.cpr:.3f}")
        ax.plot(x, f, "o-", color="#b2182b", label="signed ranking")
    if r.curve_abs is not None:
        x, f = np.asarray(r.curve_abs.fractions), np.asarray(r.curve_abs.faithfulness, dtype=float)
        ax.fill_between(x, f, 1, color="#2166ac", alpha=0.15, label=f"CMD area {r.cmd:.3f}")
        if r.curve is None or r.curve_abs.faithfulness != r.curve.faithfulness:
            ax.plot(x, f, "s--", color="#2166ac", label="|score| ranking")
    ax.axhline(1, color="black", lw=0.8)
    ax.axhline(0, color="grey", lw=0.6)
    share = r.n_edges / r.n_edges_total if r.n_edges_total else float("nan")
    ax.plot([share], [r.faithfulness], marker="*", ms=14, color="#1b7837", ls="none",
            label=f"circuit ({r.n_edges} edges): {r.faithfulness:.3f}")
    if r.random_baseline is not None:
        b = r.random_baseline
        ax.errorbar([share], [b.faithfulness_mean], yerr=[b.faithfulness_std], fmt="x", color="grey", capsize=4,
                    label=f"random circuits of {b.n_edges} edges")
    ax.set_xscale("log")
    ax.set_xlabel("fraction of edges kept (log scale)")
    ax.set_ylabel("faithfulness (share of the clean-ablated gap)")
    ax.set_title(f"faithfulness curve\n{_subtitle(r)}")
    ax.legend(loc="best", fontsize=8)
    return fig


def per_example_histogram(r: ValidationReport, bins: int = 30) -> Figure:
    """Histogram of each example's faithfulness, with the mean, the median and 1 (the full model) marked."""
    values = np.asarray(r.per_example.values, dtype=float)
    values = values[np.isfinite(values)]
    fig = Figure(figsize=(6.5, 4), layout="constrained")
    ax = fig.add_subplot()
    ax.hist(values, bins=bins, color="#4393c3", edgecolor="white")
    ax.axvline(1, color="black", lw=0.8, label="full model")
    ax.axvline(r.per_example.median, color="#b2182b", ls="--", label=f"median {r.per_example.median:.3f}")
    ax.axvline(r.per_example.mean, color="#1b7837", ls=":", label=f"mean {r.per_example.mean:.3f}")
    ax.set_xlabel("per-example faithfulness")
    ax.set_ylabel("examples")
    left_out = f", {r.per_example.n_excluded} left out (no gap)" if r.per_example.n_excluded else ""
    ax.set_title(f"per-example faithfulness ({len(values)} examples{left_out})\n{_subtitle(r)}")
    ax.legend(fontsize=8)
    return fig


def necessity_bars(r: ValidationReport, max_edges: int = 60) -> Figure:
    """Each checked edge's necessity (the share of the gap lost when only it is removed from the circuit),
    largest first (at most `max_edges`), with the +-tol band of edges that do nothing."""
    if r.minimality is None or not r.minimality.edge_necessity:
        raise ValueError("the report has no per-edge necessity (validate with check_minimality=True)")
    m = r.minimality
    items = sorted(m.edge_necessity.items(), key=lambda kv: -kv[1])[:max_edges]
    names, values = [k for k, _ in items], np.array([v for _, v in items], dtype=float)
    fig = Figure(figsize=(7, 1.5 + 0.25 * len(items)), layout="constrained")
    ax = fig.add_subplot()
    colours = ["#b2182b" if v >= m.tol else "#2166ac" if v <= -m.tol else "#999999" for v in values]
    ax.barh(range(len(items)), values, color=colours)
    ax.set_yticks(range(len(items)), names)
    ax.invert_yaxis()
    ax.axvspan(-m.tol, m.tol, color="grey", alpha=0.15, label=f"|necessity| < {m.tol}: does nothing")
    ax.axvline(0, color="black", lw=0.8)
    ax.set_xlabel("necessity (share of the gap lost when the edge alone is removed)")
    ax.set_ylabel("edge")
    shown = "" if len(items) == m.n_checked else f", {len(items)} of {m.n_checked} shown"
    ax.set_title(f"per-edge necessity ({m.n_checked} of {m.n_edges} edges checked{shown})\n{_subtitle(r)}")
    ax.legend(fontsize=8, loc="lower right")
    return fig


FIGURES = {
    "faithfulness-curve": (faithfulness_curve_figure, "faithfulness curve with CPR and CMD areas"),
    "per-example-faithfulness": (per_example_histogram, "per-example faithfulness histogram"),
    "edge-necessity": (necessity_bars, "per-edge necessity"),
}


def validation_figures(r: ValidationReport) -> dict[str, Figure]:
    """Every figure the report has data for, by file stem."""
    out = {}
    if r.curve is not None or r.curve_abs is not None:
        out["faithfulness-curve"] = faithfulness_curve_figure(r)
    out["per-example-faithfulness"] = per_example_histogram(r)
    if r.minimality is not None and r.minimality.edge_necessity:
        out["edge-necessity"] = necessity_bars(r)
    return out


def write_validation_figures(r: ValidationReport, out_dir: str | Path, formats=("png", "svg")) -> list[Path]:
    """Save every figure as PNG and SVG into `out_dir` with an index.md / index.json; returns the paths."""
    paths: list[Path] = []
    entries = []
    for stem, fig in validation_figures(r).items():
        saved = save_figure(fig, out_dir, stem, formats)
        paths += saved
        entries += [IndexEntry(p.name, "figure" if p.suffix == ".png" else "vector figure", FIGURES[stem][1] + f" ({p.suffix[1:]})")
                    for p in saved]
    paths.append(write_index(out_dir, f"validation of {r.model} / {r.task}", entries,
                             params={"faithfulness": round(r.faithfulness, 4), "CPR": round(r.cpr, 4), "CMD": round(r.cmd, 4),
                                     "edges": r.n_edges}))
    return paths


__all__ = ["faithfulness_curve_figure", "necessity_bars", "per_example_histogram", "validation_figures",
           "write_validation_figures"]
