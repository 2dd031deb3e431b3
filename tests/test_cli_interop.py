"""export / import / render / diff options through the CLI, on a circuit discovered in the test."""

import json
import shutil
from dataclasses import replace

import pytest

from acdc_lite.circuit import Circuit
from tests.cli_helpers import run, write_id_task


@pytest.fixture(scope="module")
def discovered(tmp_path_factory, small_model):
    root = tmp_path_factory.mktemp("cli-interop")
    small_model.save(root / "model")
    write_id_task(root / "task.jsonl", 10, seed=1)
    res = run("discover", "--model", root / "model", "--task", root / "task.jsonl", "--method", "eap", "--top-n", 12,
              "--out", root / "run", "--quiet")
    assert res.exit_code == 0, res.output
    return root


@pytest.mark.parametrize("fmt,suffix", [("eap-json", "json"), ("eap-pt", "pt"), ("safetensors", "safetensors"),
                                        ("graphml", "graphml"), ("csv", "csv")])
def test_export_then_import_gives_the_same_circuit(discovered, fmt, suffix, tmp_path):
    src = discovered / "run" / "circuit.json"
    res = run("export", src, "--format", fmt, "--out", tmp_path / f"c.{suffix}")
    assert res.exit_code == 0, res.output
    res = run("import", tmp_path / f"c.{suffix}", "--format", fmt, "--out", tmp_path / "back.json")
    assert res.exit_code == 0, res.output
    a, b = Circuit.load(src), Circuit.load(tmp_path / "back.json")
    assert a.edges == b.edges and a.scores == b.scores and a.metrics == b.metrics
    # the model description is the same; where to find the model again is recomputed for the new file's folder
    assert replace(a.model, source=None) == replace(b.model, source=None)
    assert a.model.source["given"] == b.model.source["given"]


def test_auto_circuit_needs_a_model_description(discovered, tmp_path):
    src = discovered / "run" / "circuit.json"
    assert run("export", src, "--format", "auto-circuit", "--out", tmp_path / "ps.safetensors").exit_code == 0
    res = run("import", tmp_path / "ps.safetensors", "--format", "auto-circuit", "--out", tmp_path / "x.json")
    assert res.exit_code == 1 and "--like" in res.output and not (tmp_path / "x.json").exists()
    res = run("import", tmp_path / "ps.safetensors", "--format", "auto-circuit", "--out", tmp_path / "x.json",
              "--like", src, "--top-n", 12)
    assert res.exit_code == 0, res.output
    a, b = Circuit.load(src), Circuit.load(tmp_path / "x.json")
    assert all(abs(b.scores[k] - v) <= 1e-6 * max(1.0, abs(v)) for k, v in a.scores.items())  # float32 tensors
    top = sorted(a.scores, key=lambda k: -abs(a.scores[k]))[:12]
    assert set(b.edges) == set(top)  # prune scores carry no membership: --top-n decides it


def test_export_options_are_checked(discovered, tmp_path):
    src = discovered / "run" / "circuit.json"
    res = run("export", src, "--format", "mib", "--out", tmp_path / "mib")
    assert res.exit_code == 1 and "--mib-task" in res.output and not (tmp_path / "mib").exists()
    res = run("export", src, "--format", "csv", "--out", tmp_path / "c.csv", "--mib-task", "ioi")
    assert res.exit_code == 1 and "only apply to --format mib" in res.output and not (tmp_path / "c.csv").exists()
    res = run("export", src, "--format", "excel", "--out", tmp_path / "c.xlsx")
    assert res.exit_code == 1 and "eap-json" in res.output
    res = run("import", src, "--format", "circuit-tracer", "--out", tmp_path / "c.json")
    assert res.exit_code == 1 and "export-only" in res.output
    res = run("export", src, "--format", "circuit-tracer", "--out", tmp_path / "viewer")
    assert res.exit_code == 0 and (tmp_path / "viewer" / "graph-metadata.json").is_file()


@pytest.mark.skipif(shutil.which("dot") is None, reason="graphviz's dot is not installed")
def test_render_and_diff_options(discovered, tmp_path):
    src = discovered / "run" / "circuit.json"
    (tmp_path / "roles.json").write_text(json.dumps({"a1.h0": "my-role"}))
    res = run("render", src, "-o", tmp_path / "c.dot", "--format", "dot", "--level", "node", "--roles", tmp_path / "roles.json",
              "--direction", "TB", "--max-edges", 5)
    assert res.exit_code == 0, res.output
    text = (tmp_path / "c.dot").read_text()
    assert "rankdir=TB" in text and ('PORT="q"' not in text)
    assert ("my-role" in text) == ("a1.h0" in Circuit.load(src).nodes)
    res = run("render", src, "-o", tmp_path / "d.svg", "--level", "sideways")
    assert res.exit_code == 1 and "level" in res.output and not (tmp_path / "d.svg").exists()
    (tmp_path / "bad.json").write_text("[1, 2]")
    res = run("render", src, "-o", tmp_path / "e.svg", "--roles", tmp_path / "bad.json")
    assert res.exit_code == 1 and "roles file" in res.output
    res = run("render", src, "-o", tmp_path / "e.svg", "--report", tmp_path / "bad.json")
    assert res.exit_code == 1 and "validation report" in res.output
    res = run("diff", src, src, "--roles-a", tmp_path / "roles.json", "--json")
    assert res.exit_code == 0 and json.loads(res.output)["edge_jaccard"] == 1.0
