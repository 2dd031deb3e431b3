"""Validation figures: drawn from a real validation report on a fresh model, labelled, saved with an index."""

import json

import numpy as np
import pytest
import torch

from acdc_lite import SmallTransformer, SmallTransformerConfig, Task, discover, load_model
from acdc_lite.explore.validation import (
    faithfulness_curve_figure,
    necessity_bars,
    per_example_histogram,
    validation_figures,
    write_validation_figures,
)
from acdc_lite.validate import validate

VOCAB = 12


@pytest.fixture(scope="module")
def report():
    torch.manual_seed(2)
    model = load_model(SmallTransformer(SmallTransformerConfig(n_layers=2, n_heads=2, d_model=16, d_head=4, d_vocab=VOCAB, n_ctx=8)))
    g = torch.Generator().manual_seed(0)
    clean, corrupt = torch.randint(0, VOCAB, (8, 6), generator=g), torch.randint(0, VOCAB, (8, 6), generator=g)
    answers = torch.randint(0, VOCAB, (8, 1), generator=g)
    task = Task("toy", clean, corrupt, answers, (answers + 1) % VOCAB)
    circuit = discover(model, task, method="eap", top_n=12)
    return validate(model, task, circuit, random_seeds=2, progress=False)


def test_curve_figure_shows_both_areas_the_circuit_and_the_baseline(report):
    fig = faithfulness_curve_figure(report)
    ax = fig.axes[0]
    assert ax.get_title().startswith("faithfulness curve\n") and report.model in ax.get_title() and "toy" in ax.get_title()
    assert ax.get_xlabel() == "fraction of edges kept (log scale)" and ax.get_ylabel().startswith("faithfulness")
    labels = [t.get_text() for t in ax.get_legend().get_texts()]
    assert f"CPR area {report.cpr:.3f}" in labels and f"CMD area {report.cmd:.3f}" in labels
    assert any(lab.startswith(f"circuit ({report.n_edges} edges)") for lab in labels)
    assert any(lab.startswith("random circuits") for lab in labels)
    star = next(line for line in ax.get_lines() if line.get_marker() == "*")
    assert star.get_xdata()[0] == pytest.approx(report.n_edges / report.n_edges_total)
    assert star.get_ydata()[0] == pytest.approx(report.faithfulness)


def test_histogram_counts_every_example_with_a_gap(report):
    fig = per_example_histogram(report)
    ax = fig.axes[0]
    assert ax.get_xlabel() == "per-example faithfulness" and ax.get_ylabel() == "examples"
    counted = sum(p.get_height() for p in ax.patches)
    assert counted == np.isfinite(np.asarray(report.per_example.values, dtype=float)).sum() == 8 - report.per_example.n_excluded


def test_necessity_bars_are_the_reports_values_largest_first(report):
    ax = necessity_bars(report).axes[0]
    nec = report.minimality.edge_necessity
    names = [t.get_text() for t in ax.get_yticklabels()]
    assert sorted(names) == sorted(nec) and ax.get_ylabel() == "edge" and ax.get_xlabel().startswith("necessity")
    widths = [p.get_width() for p in ax.patches if p.get_height() < 1]
    assert widths == pytest.approx(sorted(nec.values(), reverse=True))


def test_files_and_index(report, tmp_path):
    paths = write_validation_figures(report, tmp_path)
    assert {p.name for p in paths} == {"faithfulness-curve.png", "faithfulness-curve.svg", "per-example-faithfulness.png",
                                       "per-example-faithfulness.svg", "edge-necessity.png", "edge-necessity.svg", "index.md"}
    index = json.loads((tmp_path / "index.json").read_text())
    assert index["params"]["edges"] == report.n_edges and len(index["entries"]) == 6
    assert set(validation_figures(report)) == {"faithfulness-curve", "per-example-faithfulness", "edge-necessity"}


def test_a_report_without_a_curve_is_a_clear_error(report):
    from dataclasses import replace

    bare = replace(report, curve=None, curve_abs=None, minimality=None)
    with pytest.raises(ValueError, match="no faithfulness curve"):
        faithfulness_curve_figure(bare)
    with pytest.raises(ValueError, match="no per-edge necessity"):
        necessity_bars(bare)
    assert set(validation_figures(bare)) == {"per-example-faithfulness"}
