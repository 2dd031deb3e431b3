"""Run records everywhere, `acdc-lite runs`, and the optional MLflow tracker (acdc_lite.ledger, acdc_lite.tracking)."""

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
from typer.testing import CliRunner

from acdc_lite.cli import app
from acdc_lite.ledger import find_records, record_row, runs_table

runner = CliRunner()


def _files(root: Path) -> set[str]:
    return {p.relative_to(root).as_posix() for p in root.rglob("*") if p.is_file()}


def test_two_runs_compared_from_the_cli(tmp_path):
    for method, out in (("hybrid", "a"), ("eap", "b")):
        r = runner.invoke(app, ["discover", "--method", method, "--n-examples", "16", "--out", str(tmp_path / out), "-q"])
        assert r.exit_code == 0, r.output
    r = runner.invoke(app, ["runs", str(tmp_path), "--format", "json", "--sort", "method"])
    assert r.exit_code == 0, r.output
    rows = json.loads(r.output)
    assert [row["method"] for row in rows] == ["eap", "hybrid"]
    for row, out in zip(rows, ("b", "a"), strict=True):
        circuit = json.loads((tmp_path / out / "circuit.json").read_text())
        assert row["edges"] == len(circuit["edges"]) and row["faithfulness"] == pytest.approx(circuit["metrics"]["faithfulness"])
        assert row["task"] == "induction" and row["model"] == "induction-attn-2l" and row["outcome"] == "finished"
        assert row["seconds"] > 0 and row["forward_passes"] > 0
    table = runner.invoke(app, ["runs", str(tmp_path / "a"), str(tmp_path / "b")])
    assert table.exit_code == 0 and "hybrid" in table.output and "eap" in table.output and "faithfulness" in table.output


def test_validate_and_explore_runs_write_records(tmp_path):
    r = runner.invoke(app, ["discover", "--n-examples", "8", "--out", str(tmp_path / "d"), "-q"])
    assert r.exit_code == 0, r.output
    r = runner.invoke(app, ["validate", str(tmp_path / "d" / "circuit.json"), "--out", str(tmp_path / "d" / "check.json"), "-q"])
    assert r.exit_code == 0, r.output
    r = runner.invoke(app, ["explore", "lens", "--n-examples", "8", "--out", str(tmp_path / "h")])
    assert r.exit_code == 0, r.output
    record = json.loads((tmp_path / "h" / "run.json").read_text())
    assert record["command"] == "explore lens" and record["run"]["model"] == "induction-attn-2l"
    assert all((tmp_path / "h" / name).is_file() for name in record["outputs"]) and "index.md" in record["outputs"]
    assert record["total"]["seconds"] > 0
    paths = find_records([tmp_path])
    assert [p.relative_to(tmp_path).as_posix() for p in paths] == ["d/check.run.json", "d/run.json", "h/run.json"]
    val = record_row(tmp_path / "d" / "check.run.json")
    report = json.loads((tmp_path / "d" / "check.json").read_text())
    assert val["method"] == "validate hybrid" and val["faithfulness"] == report["faithfulness"] and val["edges"] == report["n_edges"]


def test_runs_refuses_what_it_cannot_read(tmp_path):
    r = runner.invoke(app, ["runs", str(tmp_path / "missing")])
    assert r.exit_code == 1 and "not a folder or a run record" in r.output
    r = runner.invoke(app, ["runs", str(tmp_path), "--sort", "colour"])
    assert r.exit_code == 2 and "unknown --sort column" in r.output
    r = runner.invoke(app, ["runs", str(tmp_path), "--format", "xml"])
    assert r.exit_code == 2 and "unknown --format" in r.output
    (tmp_path / "x").mkdir()
    (tmp_path / "x" / "run.json").write_text("{not json")
    frame = runs_table([tmp_path])
    assert list(frame["command"]) == ["unreadable record"]


SCRIPT = """
import json, sys
from acdc_lite.cli import app
try:
    app(sys.argv[1:])
except SystemExit as e:
    code = e.code
print(json.dumps({"code": code, "modules": sorted(m for m in sys.modules if m.split('.')[0] == 'mlflow'
                                                     or m == 'acdc_lite.tracking')}))
"""


def test_tracking_off_imports_no_tracker_and_writes_only_into_out(tmp_path):
    """A run without --track never imports the tracker (nor mlflow) and writes nothing outside --out: the working
    directory, HOME and TMPDIR stay empty."""
    cwd, home, tmp = (tmp_path / n for n in ("cwd", "home", "tmp"))
    for d in (cwd, home, tmp):
        d.mkdir()
    out = tmp_path / "out"
    env = {**os.environ, "HOME": str(home), "TMPDIR": str(tmp), "OMP_NUM_THREADS": "1", "MPLCONFIGDIR": str(home / "mpl")}
    env.pop("ACDC_LITE_TRACK", None)
    for args in (["discover", "--n-examples", "16", "--out", str(out / "d"), "-q"],
                 ["runs", str(out)]):
        p = subprocess.run([sys.executable, "-c", SCRIPT, *args], cwd=cwd, env=env, capture_output=True, text=True, timeout=300)
        result = json.loads(p.stdout.strip().splitlines()[-1])
        assert result["code"] in (None, 0), p.stderr
        assert result["modules"] == [], result
    assert _files(cwd) == set() and _files(home) == set() and _files(tmp) == set()
    assert _files(out) == {"d/circuit.json", "d/circuit.svg", "d/config.json", "d/run.json"} - (
        set() if (out / "d" / "circuit.svg").exists() else {"d/circuit.svg"})


@pytest.mark.slow
def test_two_runs_logged_to_mlflow(tmp_path):
    """--track logs each run to a sqlite MLflow store inside the given folder (slow: MLflow creates its tables)."""
    mlflow = pytest.importorskip("mlflow")
    store = tmp_path / "store"
    for method, out in (("hybrid", "a"), ("eap", "b")):
        r = runner.invoke(app, ["--track", str(store), "discover", "--method", method, "--n-examples", "16", "--out",
                                str(tmp_path / out), "-q"])
        assert r.exit_code == 0, r.output
        assert "tracked as MLflow run" in r.output
    client = mlflow.MlflowClient(tracking_uri=f"sqlite:///{store / 'mlflow.db'}")
    exp = client.get_experiment_by_name("acdc-lite")
    found = client.search_runs([exp.experiment_id])
    assert sorted(run.data.tags["method"] for run in found) == ["eap", "hybrid"]
    for run in found:
        out = tmp_path / ("a" if run.data.tags["method"] == "hybrid" else "b")
        circuit = json.loads((out / "circuit.json").read_text())
        assert run.data.metrics["edges"] == len(circuit["edges"])
        assert run.data.params["method"] == run.data.tags["method"]
        artifacts = {a.path for a in client.list_artifacts(run.info.run_id)}
        assert {"run.json", "circuit.json", "config.json"} <= artifacts
    assert {p.name for p in store.iterdir()} == {"mlflow.db", "artifacts"}


def test_track_without_mlflow_says_how_to_install(tmp_path, monkeypatch):
    monkeypatch.setitem(sys.modules, "mlflow", None)  # as if not installed
    r = runner.invoke(app, ["--track", str(tmp_path / "store"), "discover", "--n-examples", "16", "--out", str(tmp_path / "a"), "-q"])
    assert r.exit_code == 1 and "acdc-lite[track]" in r.output
