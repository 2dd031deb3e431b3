"""Sweeps: a 12-cell grid gives the same table through every backend, resumes without recomputing, reports failures."""

import importlib.util
import json
from pathlib import Path

import pandas as pd
import pytest
import torch
from typer.testing import CliRunner

from acdc_lite import SmallTransformer, SmallTransformerConfig
from acdc_lite.cli import app
from acdc_lite.pipeline import DiscoverConfig, discover_into
from acdc_lite.sweep import read_sweep_config, run_sweep

VARYING = ["seconds", "peak_memory_mb"]  # the machine's, not the inputs'


def _grid(root, fmt="json", models_in=None, **extra) -> str:
    """12 cells: 2 models (a zoo model and a random one saved in `models_in`, default `root`) x 3 methods x 2 seeds;
    returns the config path."""
    models_in = models_in or root
    if not (models_in / "random-small").exists():
        torch.manual_seed(5)
        SmallTransformer(SmallTransformerConfig(n_layers=2, n_heads=3, d_model=24, d_head=8, d_vocab=40, n_ctx=24, d_mlp=32,
                                                normalization="layernorm", act_fn="gelu")).save(models_in / "random-small")
    doc = {"tasks": ["induction"], "models": ["induction-attn-2l", str(models_in / "random-small")], "seeds": [0, 1],
           "methods": {"eap": {"top_n": 8}, "eap-ig": {"top_n": 8, "ig_steps": 2}, "acdc": {"tau": 0.05}},
           "settings": {"n_examples": 6}, "workers": 2, **extra}
    if fmt == "json":
        path = root / "grid.json"
        path.write_text(json.dumps(doc))
    else:
        import yaml

        path = root / "grid.yaml"
        path.write_text(yaml.safe_dump(doc, sort_keys=False))
    return str(path)


def _table(out) -> pd.DataFrame:
    return pd.read_csv(out / "results.csv").drop(columns=VARYING)


@pytest.fixture(scope="module")
def local_run():
    """The grid through the local backend. Every backend's sweep folder sits in this one short folder: a circuit
    file records its model's path relative to itself, and Ray's socket paths below SWEEP/.ray must stay short."""
    import shutil
    import tempfile

    root = Path(tempfile.mkdtemp(prefix="sw", dir="/tmp"))
    try:
        config = read_sweep_config(_grid(root, "yaml"))
        result = run_sweep(config, root / "local", progress=False)
        yield root, config, result
    finally:
        shutil.rmtree(root, ignore_errors=True)


def test_local_sweep_runs_every_cell_through_the_discover_job(local_run, tmp_path):
    root, config, result = local_run
    assert len(config.cells) == 12 and result.computed == 12 and result.reused == 0
    assert [r["status"] for r in result.rows] == ["finished"] * 12, result.failed
    table = _table(root / "local")
    assert len(table) == 12
    assert table[table["method"] != "acdc"]["edges"].le(8).all()  # top_n 8
    assert table[table["model"] == "induction-attn-2l"]["edges"].ge(1).all()  # a trained model has a circuit
    assert set(table["method"]) == {"eap", "eap-ig", "acdc"} and set(table["seed"]) == {0, 1}
    # a cell is the standard run folder: the same circuit bytes as discover_into with the same settings
    cell = config.cells[0]
    folder = root / "local" / "cells" / cell.name
    assert {p.name for p in folder.iterdir()} >= {"circuit.json", "config.json", "run.json"}
    torch.set_num_threads(1)
    discover_into(tmp_path / "direct", DiscoverConfig.parse(cell.settings, "test"), progress=False)
    assert (tmp_path / "direct" / "circuit.json").read_bytes() == (folder / "circuit.json").read_bytes()
    assert json.loads((folder / "run.json").read_text())["outcome"] == "finished"
    # seeds change the prompts: the two seeds of one method do not share a circuit file
    assert table.groupby(["model", "method"])["circuit_sha256"].nunique().eq(2).all()


def test_a_finished_sweep_is_never_recomputed(local_run):
    root, config, _ = local_run
    out = root / "local"
    stamps = {c.name: (out / "cells" / c.name / "run.json").stat().st_mtime_ns for c in config.cells}
    removed = config.cells[3].name
    import shutil

    shutil.rmtree(out / "cells" / removed)
    again = run_sweep(config, out, progress=False)
    assert again.computed == 1 and again.reused == 11
    for c in config.cells:
        if c.name != removed:
            assert (out / "cells" / c.name / "run.json").stat().st_mtime_ns == stamps[c.name]
    assert _table(out).equals(_table(out))  # read twice: the file is whole
    assert len(again.rows) == 12 and not again.failed


def test_a_failed_cell_is_reported_and_the_others_finish(tmp_path):
    doc = {"tasks": ["induction"], "models": ["induction-attn-2l", str(tmp_path / "no-such-model")],
           "methods": {"eap": {"top_n": 5}}, "settings": {"n_examples": 4}, "workers": 1}
    (tmp_path / "grid.toml").write_text(
        "tasks = ['induction']\n"
        f"models = ['induction-attn-2l', '{tmp_path / 'no-such-model'}']\n"
        "workers = 1\n[settings]\nn_examples = 4\n[methods.eap]\ntop_n = 5\n")
    assert doc["models"][1].endswith("no-such-model")
    res = CliRunner().invoke(app, ["sweep", str(tmp_path / "grid.toml"), "--out", str(tmp_path / "out"), "--quiet"])
    assert res.exit_code == 1, res.output
    table = pd.read_csv(tmp_path / "out" / "results.csv")
    assert list(table["status"]) == ["finished", "failed"]
    assert "no model directory" in table["error"][1] and "no-such-model" in res.output
    assert (tmp_path / "out" / "cells" / table["cell"][1] / "error.txt").is_file()


@pytest.mark.parametrize("doc, words", [
    pytest.param({"tasks": ["induction"], "models": ["induction-attn-2l"], "methods": {"acdc": {"top_n": 3}}}, "top_n",
                 marks=pytest.mark.skipif(importlib.util.find_spec("acdc_lite.search.methods") is None,
                                          reason="options a method does not use are refused once the method registry lands")),
    ({"tasks": ["induction"], "models": ["induction-attn-2l"], "methods": {"nope": {}}}, "unknown method 'nope'"),
    ({"tasks": ["induction"], "models": ["induction-attn-2l"], "methods": {"eap": {}}, "backend": "mpi"}, "unknown backend"),
    ({"tasks": ["induction"], "models": ["induction-attn-2l"], "methods": {"eap": {}}, "sedes": [1]}, "unknown key 'sedes'"),
    ({"tasks": [], "models": ["induction-attn-2l"], "methods": {"eap": {}}}, "tasks must be a non-empty list"),
    ({"tasks": ["induction"], "models": ["induction-attn-2l"], "methods": {"eap": {"seed": 3}}}, "list it under seeds"),
    ({"tasks": ["induction"], "models": ["induction-attn-2l"], "methods": {"eap": {"n_examples": "8"}}}, "n_examples"),
])
def test_bad_sweep_configs_fail_before_anything_runs(tmp_path, doc, words):
    (tmp_path / "grid.json").write_text(json.dumps(doc))
    res = CliRunner().invoke(app, ["sweep", str(tmp_path / "grid.json"), "--out", str(tmp_path / "out")])
    assert res.exit_code == 2, res.output
    assert words in res.output and "grid.json" in res.output and len(res.output.strip().splitlines()) == 1
    assert not (tmp_path / "out").exists()


def _same_table_through(backend, local_run, **extra):
    """The 12-cell grid through `backend`: the table equals the local one (machine columns aside)."""
    root, _, _ = local_run
    (root / f"{backend}-config").mkdir()
    config = read_sweep_config(_grid(root / f"{backend}-config", "yaml", models_in=root, **extra), backend=backend)
    result = run_sweep(config, root / backend, progress=False)
    assert not result.failed, result.failed
    mine, local = _table(root / backend), _table(root / "local")
    assert len(mine) == 12
    pd.testing.assert_frame_equal(mine, local)
    return root / backend


@pytest.mark.slow  # 15-45 s: a Ray cluster starts and its workers import torch
@pytest.mark.skipif(importlib.util.find_spec("ray") is None, reason="ray not installed (pip install 'acdc-lite[sweep]')")
def test_ray_local_cluster_gives_the_same_table(local_run):
    out = _same_table_through("ray", local_run)
    assert any((out / ".ray").glob("session_*"))  # Ray's temporary files stayed in the sweep folder


@pytest.mark.slow  # 15-45 s: each job is a fresh Python process
@pytest.mark.skipif(importlib.util.find_spec("submitit") is None, reason="submitit not installed (pip install 'acdc-lite[sweep]')")
def test_slurm_through_submitit_local_executor_gives_the_same_table(local_run):
    out = _same_table_through("slurm", local_run, slurm={"cluster": "local", "cells_per_job": 6, "timeout_min": 10})
    assert any((out / ".submitit").iterdir())  # job logs stayed in the sweep folder
