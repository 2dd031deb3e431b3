"""`acdc-lite explore patch|paths` and `validate --plot` through typer's runner, on a model saved in the test."""


import pandas as pd
import pytest

from tests.cli_helpers import run, write_id_task


@pytest.fixture(scope="module")
def setup(tmp_path_factory, small_model):
    root = tmp_path_factory.mktemp("explore-cli")
    small_model.save(root / "model")
    write_id_task(root / "task.jsonl", 8)
    return root


def test_patch_writes_heatmaps_tables_and_index(setup):
    out = setup / "patch"
    res = run("explore", "patch", "--model", setup / "model", "--task", setup / "task.jsonl", "--kinds", "resid_pre,head_out",
              "--direction", "noise", "--out", out)
    assert res.exit_code == 0, res.output
    stems = ["resid_pre-noise", "head_out-all-pos-noise", "head_out-by-pos-noise"]
    for stem in stems:
        assert (out / f"{stem}.png").is_file() and (out / f"{stem}.svg").is_file() and (out / f"{stem}.csv").is_file()
    table = pd.read_csv(out / "sweeps.csv")
    assert set(table["kind"]) == {"resid_pre", "head_out"} and set(table["direction"]) == {"corrupt-into-clean"}
    assert len(table) == 2 * 6 + 2 * 3 + 2 * 3 * 6  # layers x positions, layers x heads, layers x heads x positions
    index = (out / "index.md").read_text()
    assert all(f"({stem}.png)" in index for stem in stems)


def test_paths_writes_a_row_per_edge(setup):
    out = setup / "paths"
    res = run("explore", "paths", "--model", setup / "model", "--task", setup / "task.jsonl", "--edge", "a0.h1->a1.h2<k>",
              "--edge", "a1.h0->logits", "--out", out)
    assert res.exit_code == 0, res.output
    table = pd.read_csv(out / "paths.csv")
    assert sorted(table["edge"]) == ["a0.h1->a1.h2<k>", "a1.h0->logits"]
    assert (out / "paths.png").is_file() and "paths.csv" in (out / "index.md").read_text()


@pytest.mark.parametrize("args, message", [
    (["explore", "patch", "--kinds", "bogus"], "unknown sweep 'bogus'"),
    (["explore", "patch", "--direction", "sideways"], "unknown direction"),
    (["explore", "paths", "--edge", "a0.h1->a9.h0<q>"], "is not in ModelGraph"),
])
def test_bad_input_is_one_line_and_leaves_nothing(setup, args, message):
    out = setup / "bad"
    res = run(*args, "--model", setup / "model", "--task", setup / "task.jsonl", "--out", out)
    assert res.exit_code == 1 and message in res.output and res.output.count("\n") == 1
    assert not out.exists()


def test_validate_plot_draws_the_figures(setup):
    run_dir = setup / "found"
    res = run("discover", "--model", setup / "model", "--task", setup / "task.jsonl", "--method", "eap", "--top-n", 8,
              "--out", run_dir, "--quiet")
    assert res.exit_code == 0, res.output
    res = run("validate", run_dir / "circuit.json", "--model", setup / "model", "--task", setup / "task.jsonl", "--plot", "--quiet")
    assert res.exit_code == 0, res.output
    figs = run_dir / "validation"
    for stem in ("faithfulness-curve", "per-example-faithfulness", "edge-necessity"):
        assert (figs / f"{stem}.png").is_file() and (figs / f"{stem}.svg").is_file()
    assert "faithfulness" in (figs / "index.md").read_text()
