"""The CLI through typer's runner, on a small model saved to disk and a JSONL task."""

import json

import pytest
import torch
from typer.testing import CliRunner

from cli import app

runner = CliRunner()


@pytest.fixture(scope="module")
def setup(tmp_path_factory, small_model):
    root = tmp_path_factory.mktemp("cli")
    small_model.save(root / "model")
    g = torch.Generator().manual_seed(0)
    lines = []
    for _ in range(12):
        clean = torch.randint(0, 20, (6,), generator=g).tolist()
        lines.append(json.dumps({"clean": clean, "corrupt": torch.randint(0, 20, (6,), generator=g).tolist(),
                                 "answer": clean[0], "foil": (clean[0] + 1) % 20}))
    (root / "task.jsonl").write_text("\n".join(lines) + "\n")
    return root


def run(*args):
    return runner.invoke(app, list(map(str, args)))


def test_discover_writes_circuit_svg_and_config(setup):
    out = setup / "out"
    res = run("discover", "--model", setup / "model", "--task", setup / "task.jsonl", "--method", "eap-ig",
              "--top-n", 10, "--out", out, "--quiet")
    assert res.exit_code == 0, res.output
    assert "faithfulness" in res.output
    circuit = json.loads((out / "circuit.json").read_text())
    assert circuit["method"]["name"] == "eap-ig" and len(circuit["edges"]) <= 10
    assert json.loads((out / "config.json").read_text())["top_n"] == 10
    if (out / "circuit.svg").exists():
        assert "<svg" in (out / "circuit.svg").read_text()


@pytest.mark.parametrize("args,needle", [
    (["--model", "no-such-model-xyz"], "unknown model"),
    (["--task", "no-such-task"], "unknown task"),
    (["--task", "missing.jsonl"], "does not exist"),
    (["--method", "magic"], "unknown method"),
    (["--tau", "-1"], "tau"),
    (["--n-examples", "0"], "n-examples"),
])
def test_bad_inputs_give_one_line_and_no_output(setup, args, needle, monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    out = setup / f"bad-{needle.replace(' ', '_')}"
    base = {"--model": str(setup / "model"), "--task": str(setup / "task.jsonl")}
    for k, v in zip(args[::2], args[1::2], strict=False):
        base[k] = v
    flat = [x for kv in base.items() for x in kv] + [a for a in args if a not in base and a not in base.values()]
    res = run("discover", *flat, "--out", out, "--quiet")
    assert res.exit_code != 0
    assert needle in res.output, res.output
    assert len([line for line in res.output.strip().splitlines() if line.startswith("error")]) == 1
    assert not out.exists()


def test_malformed_jsonl_names_the_line(setup):
    bad = setup / "bad.jsonl"
    bad.write_text('{"clean": [1, 2], "corrupt": [3, 4], "answer": 1, "foil": 2}\n{"clean": [1, 2\n')
    res = run("discover", "--model", setup / "model", "--task", bad, "--out", setup / "never", "--quiet")
    assert res.exit_code != 0 and "bad.jsonl:2" in res.output
    assert not (setup / "never").exists()


def test_tasks_list_and_version():
    assert run("tasks", "list").exit_code == 0
    assert "acdc-lite" in run("version").output
