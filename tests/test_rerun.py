"""A circuit file finds its model and task again: `validate circuit.json` alone, from any directory."""

import json
import re
import shutil

import pytest
import torch

from tests.cli_helpers import run, write_id_task
from tests.conftest import BUILDERS


@pytest.fixture
def found(tmp_path, monkeypatch):
    """discover run from tmp/work with a local HF directory and a JSONL task, both given as relative paths."""
    work = tmp_path / "work"
    torch.manual_seed(0)
    BUILDERS["gpt2"]().save_pretrained(work / "models" / "gpt2-tiny")
    write_id_task(work / "data" / "ids.jsonl", 16, low=1, answer_at=1)
    monkeypatch.chdir(work)
    res = run("discover", "--model", "models/gpt2-tiny", "--task", "data/ids.jsonl", "--method", "acdc",
              "--out", "runs/a", "--quiet")
    assert res.exit_code == 0, res.output
    faith = re.search(r"faithfulness (-?[0-9.]+)", res.output).group(1)
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    monkeypatch.chdir(elsewhere)
    return work, work / "runs" / "a" / "circuit.json", faith


def test_validate_alone_from_another_directory_gives_the_same_faithfulness(found):
    work, circuit_file, faith = found
    saved = json.loads(circuit_file.read_text())
    assert saved["model"]["source"]["given"] == "models/gpt2-tiny"
    assert saved["model"]["source"]["from_circuit"] == "../../models/gpt2-tiny"
    assert saved["task"]["reference"]["given"] == "data/ids.jsonl"
    assert saved["task"]["reference"]["from_circuit"] == "../../data/ids.jsonl"
    assert len(saved["task"]["reference"]["sha256"]) == 64
    assert str(work) not in circuit_file.read_text()
    res = run("validate", circuit_file)
    assert res.exit_code == 0, res.output
    assert f"metric {saved['method']['metric']}" in res.output
    assert f"faithfulness {faith} " in res.output
    # relative to the working directory, the circuit file's own path works too
    res = run("validate", "../work/runs/a/circuit.json")
    assert res.exit_code == 0 and f"faithfulness {faith} " in res.output, res.output


def test_a_moved_run_folder_with_its_inputs_still_validates(found, tmp_path):
    work, _, faith = found
    moved = shutil.copytree(work, tmp_path / "moved")
    shutil.rmtree(work)
    res = run("validate", moved / "runs" / "a" / "circuit.json")
    assert res.exit_code == 0 and f"faithfulness {faith} " in res.output, res.output


def test_missing_task_file_is_named(found):
    work, circuit_file, _ = found
    (work / "data" / "ids.jsonl").unlink()
    res = run("validate", circuit_file)
    assert res.exit_code == 1
    assert "its task file is missing: tried" in res.output and "ids.jsonl" in res.output and "--task" in res.output


def test_changed_task_file_is_refused(found):
    work, circuit_file, _ = found
    with (work / "data" / "ids.jsonl").open("a") as f:
        f.write(json.dumps({"clean": [1, 2, 3, 4, 5, 6], "corrupt": [6, 5, 4, 3, 2, 1], "answer": 2, "foil": 3}) + "\n")
    res = run("validate", circuit_file)
    assert res.exit_code == 1 and "has changed since the circuit was found (sha256" in res.output


def test_missing_model_directory_is_named(found):
    work, circuit_file, _ = found
    shutil.rmtree(work / "models")
    res = run("validate", circuit_file)
    assert res.exit_code == 1
    assert "its model directory is missing: tried" in res.output and "gpt2-tiny" in res.output


def test_changed_weights_are_refused(found):
    work, circuit_file, _ = found
    torch.manual_seed(1)
    BUILDERS["gpt2"]().save_pretrained(work / "models" / "gpt2-tiny")
    res = run("validate", circuit_file)
    assert res.exit_code == 1 and "but these weights are" in res.output


def test_a_builtin_task_on_a_zoo_model_is_found_again_with_its_parameters(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    res = run("discover", "--model", "induction-attn-2l", "--task", "induction", "--method", "eap", "--n-examples", 12,
              "--seed", 3, "--out", "runs/b", "--quiet")
    assert res.exit_code == 0, res.output
    saved = json.loads((tmp_path / "runs" / "b" / "circuit.json").read_text())
    assert saved["model"]["source"]["kind"] == "zoo" and saved["model"]["source"]["given"] == "induction-attn-2l"
    assert saved["task"]["reference"] == {"kind": "builtin", "given": "induction", "n_examples": 12, "seed": 3,
                                          "metric": None}
    faith = re.search(r"faithfulness (-?[0-9.]+)", res.output).group(1)
    (tmp_path / "other").mkdir()
    monkeypatch.chdir(tmp_path / "other")
    res = run("validate", "../runs/b/circuit.json")
    assert res.exit_code == 0 and f"faithfulness {faith} " in res.output, res.output
