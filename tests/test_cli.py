"""The CLI through typer's runner, on a small model saved to disk and a JSONL task."""

import json

import pytest

from acdc_lite.circuit import ModelRef
from tests.cli_helpers import run, write_id_task


@pytest.fixture(scope="module")
def setup(tmp_path_factory, small_model):
    root = tmp_path_factory.mktemp("cli")
    small_model.save(root / "model")
    write_id_task(root / "task.jsonl", 12)
    return root


def test_discover_writes_circuit_svg_and_config(setup):
    out = setup / "out"
    res = run("discover", "--model", setup / "model", "--task", setup / "task.jsonl", "--method", "eap-ig",
              "--top-n", 10, "--out", out, "--quiet")
    assert res.exit_code == 0, res.output
    assert "faithfulness" in res.output
    circuit = json.loads((out / "circuit.json").read_text())
    assert circuit["method"]["name"] == "eap-ig" and len(circuit["edges"]) <= 10
    assert json.loads((out / "config.json").read_text())["options"]["top_n"] == 10
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


def test_failed_acdc_run_leaves_no_output(setup, monkeypatch):
    """ACDC checkpoints into --out, but only once the search starts: bad input writes nothing."""
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    out = setup / "bad-acdc"
    res = run("discover", "--method", "acdc", "--model", setup / "model", "--task", "no-such-task", "--out", out, "--quiet")
    assert res.exit_code != 0 and "unknown task" in res.output
    assert not out.exists()
    res = run("discover", "--method", "eap", "--model", setup / "model", "--task", setup / "task.jsonl", "--out", out,
              "--quiet", "--resume")
    assert res.exit_code == 2 and "eap does not checkpoint" in res.output and not out.exists()


def test_malformed_jsonl_names_the_line(setup):
    bad = setup / "bad.jsonl"
    bad.write_text('{"clean": [1, 2], "corrupt": [3, 4], "answer": 1, "foil": 2}\n{"clean": [1, 2\n')
    res = run("discover", "--model", setup / "model", "--task", bad, "--out", setup / "never", "--quiet")
    assert res.exit_code != 0 and "bad.jsonl:2" in res.output
    assert not (setup / "never").exists()


def test_tasks_list_and_version():
    assert run("tasks", "list").exit_code == 0
    assert "acdc-lite" in run("version").output


@pytest.fixture(scope="module")
def zoo_runs(tmp_path_factory):
    """Two circuits of the default zoo model, found through the CLI."""
    root = tmp_path_factory.mktemp("zoo-cli")
    for method in ("acdc", "eap"):
        res = run("discover", "--method", method, "--n-examples", 24, "--out", root / method, "--quiet")
        assert res.exit_code == 0, res.output
    return root


def test_validate_prints_and_writes_the_report(zoo_runs):
    report = zoo_runs / "report.json"
    res = run("validate", zoo_runs / "acdc" / "circuit.json", "--json", "--out", report)
    assert res.exit_code == 0, res.output
    saved = json.loads(report.read_text())
    assert saved == json.loads(res.output)
    circuit = json.loads((zoo_runs / "acdc" / "circuit.json").read_text())
    assert saved["n_edges"] == len(circuit["edges"]) and 0.5 < saved["faithfulness"] <= 1.2
    record = json.loads((zoo_runs / "report.run.json").read_text())
    assert record["command"] == "validate" and record["total"]["forward_passes"] == saved["forward_passes"] > 0
    res = run("validate", zoo_runs / "acdc" / "circuit.json", "--out", zoo_runs)  # a folder: refused before any work
    assert res.exit_code == 2 and "is a folder" in res.output


@pytest.mark.parametrize("fmt,magic", [("dot", "digraph"), ("svg", "<svg"), ("png", "PNG")])
def test_render_writes_each_format(zoo_runs, fmt, magic):
    from acdc_lite.render import RenderError, require_dot

    if fmt != "dot":
        try:
            require_dot()
        except RenderError:
            pytest.skip("graphviz's dot is not installed")
    out = zoo_runs / f"drawing.{fmt}"
    res = run("render", zoo_runs / "eap" / "circuit.json", "-o", out, "--format", fmt)
    assert res.exit_code == 0, res.output
    head = out.read_bytes()[:400]
    assert magic.encode() in head


def test_diff_of_two_methods(zoo_runs):
    res = run("diff", zoo_runs / "acdc" / "circuit.json", zoo_runs / "eap" / "circuit.json", "--json")
    assert res.exit_code == 0, res.output
    d = json.loads(res.output)
    a = set(json.loads((zoo_runs / "acdc" / "circuit.json").read_text())["edges"])
    b = set(json.loads((zoo_runs / "eap" / "circuit.json").read_text())["edges"])
    assert set(d["only_a_edges"]) == a - b and set(d["only_b_edges"]) == b - a and set(d["shared_edges"]) == a & b


def test_resume_continues_an_interrupted_acdc_run(zoo_runs, monkeypatch):
    from acdc_lite.runs import Checkpointer

    out = zoo_runs / "resumed"
    original, calls = Checkpointer.save, {"n": 0}

    def interrupt_after_first_save(self, *args, **kwargs):
        original(self, *args, **kwargs)
        calls["n"] += 1
        if calls["n"] == 1:
            raise KeyboardInterrupt

    monkeypatch.setattr(Checkpointer, "save", interrupt_after_first_save)
    res = run("discover", "--method", "acdc", "--n-examples", 24, "--out", out, "--quiet", "--checkpoint-every", 0)
    assert res.exit_code == 130 and (out / "checkpoint.json").is_file() and not (out / "circuit.json").exists()
    assert "--resume" in res.output and not (out / "run.lock").exists()
    done = json.loads((out / "checkpoint.json").read_text())["state"]["done_receivers"]
    model = ModelRef(**json.loads((zoo_runs / "acdc" / "circuit.json").read_text())["model"]).graph()
    # node steps save where a layer ends: logits and the last layer's receivers are done, nothing below them
    last = model.n_layers - 1
    assert sorted(done) == list(range(last * model.receivers_per_layer, model.n_receivers))
    monkeypatch.setattr(Checkpointer, "save", original)
    res = run("discover", "--method", "acdc", "--n-examples", 12, "--out", out, "--quiet", "--resume")
    assert res.exit_code == 2 and "n_examples" in res.output and "task_hash" in res.output
    res = run("discover", "--method", "acdc", "--n-examples", 24, "--out", out, "--quiet", "--resume")
    assert res.exit_code == 0, res.output
    resumed = (out / "circuit.json").read_bytes()
    assert resumed == (zoo_runs / "acdc" / "circuit.json").read_bytes()  # the same bytes as an uninterrupted run
    assert not (out / "checkpoint.json").exists()
    record = json.loads((out / "run.json").read_text())
    assert [p["outcome"] for p in record["parts"]] == ["interrupted", "finished"]
    assert record["total"]["forward_passes"] == pytest.approx(sum(p["forward_passes"] for p in record["parts"]))
    assert 0 < record["parts"][0]["forward_passes"] < record["total"]["forward_passes"]


def test_benchmark_writes_markdown_and_csv(tmp_path):
    res = run("benchmark", "zoo", "--out", tmp_path, "--methods", "eap,head-pruning")
    assert res.exit_code == 0, res.output
    table = (tmp_path / "zoo.md").read_text()
    csv = (tmp_path / "zoo.csv").read_text().splitlines()
    from acdc_lite import zoo

    assert len(csv) == 1 + 2 * len(zoo.names())  # header + one row per model and method
    assert "node_recall" in csv[0] and "| induction-attn-2l |" in table.replace("| zoo ", "")


def test_other_commands_fail_cleanly(zoo_runs, tmp_path):
    assert "does not exist" in run("validate", tmp_path / "none.json").output
    assert run("render", zoo_runs / "eap" / "circuit.json", "--format", "gif", "-o", tmp_path / "x.gif").exit_code != 0
    assert not (tmp_path / "x.gif").exists()
    res = run("benchmark", "nonsense", "--out", tmp_path)
    assert res.exit_code != 0 and "unknown suite" in res.output


def test_metric_blind_to_the_ablation_is_refused(setup, tmp_path):
    """Corrupted = clean prompts: the metric cannot tell the full model from the ablated one, so the search refuses
    (it used to return an empty circuit with faithfulness null)."""
    same = tmp_path / "same.jsonl"
    same.write_text("\n".join(json.dumps({"clean": [1, 2, 3, 4], "corrupt": [1, 2, 3, 4], "answer": 5, "foil": 6})
                              for _ in range(4)) + "\n")
    from acdc_lite import discover, load_model  # load_task refuses such a task; the search refuses it too
    from acdc_lite.search import SearchError
    from acdc_lite.task import task_from_file

    model = load_model(setup / "model")
    for method, tau in (("acdc", None), ("acdc", 0.01), ("eap", None)):
        with pytest.raises(SearchError, match="nothing separates"):
            discover(model, task_from_file(same, model), method=method, tau=tau, progress=False)


def test_version_flag_command_and_python_m_agree():
    import subprocess
    import sys

    from acdc_lite import __version__

    flag, command = run("--version"), run("version")
    assert flag.exit_code == 0 and command.exit_code == 0
    assert json.loads(flag.output)["acdc-lite"] == __version__ == json.loads(command.output)["acdc-lite"]
    out = subprocess.run([sys.executable, "-m", "acdc_lite", "--version"], capture_output=True, text=True, check=True)
    assert json.loads(out.stdout)["acdc-lite"] == __version__
