"""Shared explore figure helpers: diverging heatmap, saved files, folder index."""

import json

import numpy as np
import pytest

from acdc_lite.explore.figures import IndexEntry, diverging_heatmap, save_figure, save_table, write_index


def test_heatmap_is_centred_at_zero_and_labelled():
    v = np.array([[0.5, -2.0, 0.0], [1.0, np.nan, 0.25]])
    fig = diverging_heatmap(v, title="T", xlabel="position", ylabel="layer", colorbar_label="effect",
                            xticklabels=["a", "b", "c"], yticklabels=["0", "1"])
    ax, cax = fig.axes
    assert ax.get_title() == "T" and ax.get_xlabel() == "position" and ax.get_ylabel() == "layer"
    assert cax.get_ylabel() == "effect"
    image = ax.images[0]
    assert image.norm.vmin == -2.0 and image.norm.vmax == 2.0 and image.norm.vcenter == 0.0
    assert [t.get_text() for t in ax.get_xticklabels()] == ["a", "b", "c"]
    assert sorted(t.get_text() for t in ax.texts) == sorted(["0.50", "-2.00", "0.00", "1.00", "0.25"])  # NaN cell blank


def test_heatmap_rejects_non_matrix():
    with pytest.raises(ValueError, match="2-d"):
        diverging_heatmap(np.zeros(3), title="", xlabel="", ylabel="", colorbar_label="")


def test_saved_files_and_index_merge(tmp_path):
    import pandas as pd

    fig = diverging_heatmap(np.eye(2), title="T", xlabel="x", ylabel="y", colorbar_label="c")
    png, svg = save_figure(fig, tmp_path, "eye")
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" and b"<svg" in svg.read_bytes()
    assert save_figure(fig, tmp_path / "again", "eye")[1].read_bytes() == svg.read_bytes()  # no timestamps
    save_table(pd.DataFrame({"a": [1, 2]}), tmp_path, "t")
    write_index(tmp_path, "first", [IndexEntry("eye.png", "figure", "the eye"), IndexEntry("t.csv", "table", "a table")])
    write_index(tmp_path, "second", [IndexEntry("eye.svg", "figure", "the eye as SVG")], params={"k": 3})
    index = json.loads((tmp_path / "index.json").read_text())
    assert [e["file"] for e in index["entries"]] == ["eye.png", "t.csv", "eye.svg"]
    md = (tmp_path / "index.md").read_text()
    assert md.startswith("# second") and "![the eye](eye.png)" in md and "[t.csv](t.csv): a table" in md and "- k: `3`" in md
    assert not list(tmp_path.glob(".*tmp"))
