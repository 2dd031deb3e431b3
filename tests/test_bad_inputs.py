"""Every kind of bad input through the CLI: one line, the right exit code, nothing left behind.

The table CASES is also the documentation: `docs/bad_inputs.md` is rendered from these cases and the
messages they produce (`test_docs_table_is_current`; regenerate with
`ACDC_WRITE_DOCS=1 python -m pytest tests/test_bad_inputs.py`). Hypothesis then throws random values at
the config-file and circuit-file readers. Exit codes: 2 = an option or setting that cannot work,
1 = a file that cannot be read as what it should be (or a run that failed), 0 = accepted (with a warning).
"""

from __future__ import annotations

import json
import os
import shutil
import socket
from dataclasses import dataclass
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from tests.cli_helpers import run, write_id_task

DOC = Path(__file__).resolve().parents[1] / "docs" / "bad_inputs.md"


# ---- inputs built in the test -------------------------------------------------------------------
@pytest.fixture(scope="module")
def base(tmp_path_factory, small_model):
    """A saved small model, a 12-row task file, a finished run, a circuit file and an interrupted acdc run."""
    root = tmp_path_factory.mktemp("bad-inputs")
    small_model.save(root / "model")
    write_id_task(root / "task.jsonl", 12)
    common = ["--model", root / "model", "--task", root / "task.jsonl", "--quiet"]
    res = run("discover", *common, "--method", "eap", "--out", root / "finished")
    assert res.exit_code == 0, res.output
    from acdc_lite.runs import Checkpointer

    original, calls = Checkpointer.save, {"n": 0}

    def interrupt_on_second_save(self, *args, **kwargs):
        original(self, *args, **kwargs)
        calls["n"] += 1
        if calls["n"] == 2:
            raise KeyboardInterrupt

    Checkpointer.save = interrupt_on_second_save
    try:
        res = run("discover", *common, "--method", "acdc", "--out", root / "interrupted", "--checkpoint-every", 0)
    finally:
        Checkpointer.save = original
    assert res.exit_code == 130 and (root / "interrupted" / "checkpoint.json").is_file(), res.output
    return root


def _circuit(base: Path) -> dict:
    return json.loads((base / "finished" / "circuit.json").read_text())


def _write(path: Path, content) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    if isinstance(content, bytes):
        path.write_bytes(content)
    else:
        path.write_text(content if isinstance(content, str) else json.dumps(content))
    return path


def _copy_run(base: Path, name: str, d: Path) -> Path:
    shutil.copytree(base / name, d / "out")
    return d / "out"


def _edit_checkpoint(base: Path, d: Path, edit) -> Path:
    out = _copy_run(base, "interrupted", d)
    doc = json.loads((out / "checkpoint.json").read_text())
    edit(doc)
    (out / "checkpoint.json").write_text(json.dumps(doc))
    return out


def _lock(out: Path, pid: int) -> None:
    _write(out / "run.lock", {"host": socket.gethostname(), "pid": pid, "started": "2026-01-01T00:00:00+00:00",
                              "settings": {}})


@dataclass(frozen=True)
class Case:
    id: str
    kind: str  # option, config file, task file, circuit file, checkpoint, run folder
    what: str  # the input, for the table
    build: object  # (base, d) -> CLI args; d is an empty folder for this case, OUT is d / "out"
    code: int
    needle: str  # a part of the message


def D(base, d, *extra):
    """discover on the test model and task, writing to d/out."""
    return ["discover", "--model", base / "model", "--task", base / "task.jsonl", "--quiet", "--out", d / "out", *extra]


def S(base, d, *extra):
    """sae train on the test model and task, writing to d/out."""
    return ["sae", "train", "--model", base / "model", "--task", base / "task.jsonl", "--steps", "2", "--quiet", "--out",
            d / "out", *extra]


def P(base, d, *extra):
    """probe on the test model and task, writing to d/out."""
    return ["probe", "--model", base / "model", "--task", base / "task.jsonl", "--out", d / "out", *extra]


def C(base, d, **fields):
    """discover with a config file holding `fields`."""
    return D(base, d, "--config", _write(d / "in" / "config.json", fields))


def circuit_with(base, d, edit, name="circuit.json"):
    c = _circuit(base)
    edit(c)
    return _write(d / "in" / name, c)


CASES = [
    # -- options
    Case("tau-nan", "option", "`--tau nan`", lambda b, d: D(b, d, "--tau", "nan"), 2, "finite number"),
    Case("tau-inf", "option", "`--tau inf`", lambda b, d: D(b, d, "--tau", "inf"), 2, "finite number"),
    Case("tau-negative", "option", "`--tau -1`", lambda b, d: D(b, d, "--tau", "-1"), 2, "greater than or equal to 0"),
    Case("top-n-negative", "option", "`--top-n -1`", lambda b, d: D(b, d, "--method", "eap", "--top-n", "-1"), 2, "--top-n"),
    Case("n-examples-zero", "option", "`--n-examples 0`", lambda b, d: D(b, d, "--n-examples", "0"), 2, "--n-examples"),
    Case("cuda-missing", "option", "`--device cuda:0` without CUDA", lambda b, d: D(b, d, "--device", "cuda:0"), 2,
         "CUDA is not available"),
    Case("device-unknown", "option", "`--device banana`", lambda b, d: D(b, d, "--device", "banana"), 2, "not a torch device"),
    Case("method-unknown", "option", "`--method magic`", lambda b, d: D(b, d, "--method", "magic"), 2, "unknown method"),
    Case("kl-gradient", "option", "`--method eap --metric kl`", lambda b, d: D(b, d, "--method", "eap", "--metric", "kl"),
         2, "use --metric logit_diff"),
    Case("out-is-file", "option", "`--out` names a file", lambda b, d: ["discover", "--quiet", "--out", _write(d / "f", "x")],
         2, "is a file, not a folder"),
    Case("out-under-file", "option", "`--out` inside a file", lambda b, d: ["discover", "--quiet", "--out", _write(d / "f", "x") / "o"],
         2, "cannot be made there"),
    Case("option-unused", "option", "`--top-n 5 --method acdc`", lambda b, d: D(b, d, "--method", "acdc", "--top-n", "5"), 2,
         "acdc does not use --top-n"),
    Case("selection-twice", "option", "`--top-n 5 --threshold 0.1` (eap)",
         lambda b, d: D(b, d, "--method", "eap", "--top-n", "5", "--threshold", "0.1"), 2, "give one of top_n, threshold"),
    Case("resume-nothing", "option", "`--resume` with no checkpoint", lambda b, d: D(b, d, "--method", "acdc", "--resume"), 2,
         "nothing to resume"),
    Case("resume-eap", "option", "`--resume` for a one-pass method", lambda b, d: D(b, d, "--method", "eap", "--resume"), 2,
         "does not checkpoint"),
    # -- config file
    Case("config-n-examples-string", "config file", '`"n_examples": "5"`', lambda b, d: C(b, d, n_examples="5"), 2,
         "without quotes"),
    Case("config-tau-string", "config file", '`"tau": "0.1"`', lambda b, d: C(b, d, tau="0.1"), 2, "tau"),
    Case("config-target-string", "config file", '`"target_faithfulness": "high"` (eap)',
         lambda b, d: C(b, d, method="eap", target_faithfulness="high"), 2, "target_faithfulness"),
    Case("config-target-above-one", "config file", '`"target_faithfulness": 5.0` (eap)',
         lambda b, d: C(b, d, method="eap", target_faithfulness=5.0), 2, "less than or equal to 1"),
    Case("config-option-unused", "config file", '`"top_n": 5` for acdc (an option acdc does not use)',
         lambda b, d: C(b, d, method="acdc", options={"top_n": 5}), 2, "acdc does not use top_n; it is an option of eap"),
    Case("config-options-not-object", "config file", '`"options": [1]`', lambda b, d: C(b, d, options=[1]), 2,
         "options must be an object"),
    Case("config-batch-zero", "config file", '`"batch_size": 0`', lambda b, d: C(b, d, batch_size=0), 2, "batch_size"),
    Case("config-seed-bool", "config file", '`"seed": true`', lambda b, d: C(b, d, seed=True), 2, "seed"),
    Case("config-unknown-key", "config file", '`"taus": 0.1` (unknown key)', lambda b, d: C(b, d, taus=0.1), 2, "unknown setting"),
    Case("config-list", "config file", "top level is a list", lambda b, d: D(b, d, "--config", _write(d / "in" / "c.json", [1])),
         1, "expected an object"),
    Case("config-nan", "config file", '`"tau": NaN`', lambda b, d: D(b, d, "--config", _write(d / "in" / "c.json", '{"tau": NaN}')),
         1, "not a JSON number"),
    Case("config-not-json", "config file", "not JSON", lambda b, d: D(b, d, "--config", _write(d / "in" / "c.json", "tau=1")),
         1, "not valid JSON"),
    Case("config-empty", "config file", "zero bytes", lambda b, d: D(b, d, "--config", _write(d / "in" / "c.json", "")), 1, "empty"),
    Case("config-latin1", "config file", "not UTF-8", lambda b, d: D(b, d, "--config", _write(d / "in" / "c.json", b'{"task": "\xe9"}')),
         1, "not UTF-8"),
    Case("config-missing", "config file", "does not exist", lambda b, d: D(b, d, "--config", d / "in" / "nope.json"), 1,
         "does not exist"),
    # -- task file
    Case("task-latin1", "task file", "not UTF-8", lambda b, d: ["discover", "--model", b / "model", "--quiet", "--out", d / "out",
         "--task", _write(d / "in" / "t.jsonl", b'{"clean": "caf\xe9"}\n')], 1, "not UTF-8"),
    Case("task-not-json", "task file", "a line that is not JSON", lambda b, d: ["discover", "--model", b / "model", "--quiet",
         "--out", d / "out", "--task", _write(d / "in" / "t.jsonl", "{oops\n")], 1, ":1: not valid JSON"),
    Case("task-bool-ids", "task file", "token ids given as booleans", lambda b, d: ["discover", "--model", b / "model", "--quiet",
         "--out", d / "out", "--task", _write(d / "in" / "t.jsonl", '{"clean": [true, 2], "corrupt": [1, 2], "answer": 3}\n')], 1,
         "holds true/false"),
    Case("task-empty-ids", "task file", "an empty id list", lambda b, d: ["discover", "--model", b / "model", "--quiet",
         "--out", d / "out", "--task", _write(d / "in" / "t.jsonl", '{"clean": [], "corrupt": [], "answer": 3}\n')], 1,
         "empty list"),
    # -- circuit file
    Case("circuit-list", "circuit file", "top level is a list", lambda b, d: ["render", _write(d / "in" / "c.json", [1, 2]),
         "-o", d / "out" / "c.dot", "-f", "dot"], 1, "top level is a JSON array"),
    Case("circuit-edges-list", "circuit file", "`edges` is a list", lambda b, d: ["render", circuit_with(
        b, d, lambda c: c.update(edges=list(c["edges"]))), "-o", d / "out" / "c.dot", "-f", "dot"], 1, "field edges is a JSON array"),
    Case("circuit-huge-heads", "circuit file", "`model.n_heads` 1e9", lambda b, d: ["render", circuit_with(
        b, d, lambda c: c["model"].update(n_heads=10**9)), "-o", d / "out" / "c.dot", "-f", "dot"], 1, "must be from 1 to 1024"),
    Case("circuit-float-heads", "circuit file", "`model.n_heads` 2.5", lambda b, d: ["render", circuit_with(
        b, d, lambda c: c["model"].update(n_heads=2.5)), "-o", d / "out" / "c.dot", "-f", "dot"], 1, "whole number"),
    Case("circuit-score-string", "circuit file", "an edge score that is text", lambda b, d: ["render", circuit_with(
        b, d, lambda c: c["edges"].update({next(iter(c["edges"])): "high"})), "-o", d / "out" / "c.dot", "-f", "dot"], 1,
        "a score is a number or null"),
    Case("circuit-bad-edge", "circuit file", "an edge the model does not have", lambda b, d: ["render", circuit_with(
        b, d, lambda c: c["edges"].update({"a9.h9->logits": 1.0})), "-o", d / "out" / "c.dot", "-f", "dot"], 1, "does not exist"),
    Case("circuit-schema", "circuit file", "`schema_version` 99", lambda b, d: ["render", circuit_with(
        b, d, lambda c: c.update(schema_version=99)), "-o", d / "out" / "c.dot", "-f", "dot"], 1, "schema_version"),
    Case("circuit-latin1", "circuit file", "not UTF-8", lambda b, d: ["render", _write(d / "in" / "c.json", b'{"edges": "\xff"}'),
         "-o", d / "out" / "c.dot", "-f", "dot"], 1, "not UTF-8"),
    Case("circuit-truncated", "circuit file", "cut off half way", lambda b, d: ["render", _write(
        d / "in" / "c.json", (b / "finished" / "circuit.json").read_text()[:300]), "-o", d / "out" / "c.dot", "-f", "dot"], 1,
        "not valid JSON"),
    Case("validate-edges-list", "circuit file", "`validate` on a circuit whose `edges` is a list", lambda b, d: [
        "validate", circuit_with(b, d, lambda c: c.update(edges=[])), "--out", d / "out" / "r.json"], 1, "field edges"),
    Case("diff-malformed", "circuit file", "`diff` with a file that is not a circuit", lambda b, d: [
        "diff", b / "finished" / "circuit.json", _write(d / "in" / "c.json", '"text"'), "-o", d / "out" / "d.svg"], 1,
        "top level is a JSON string"),
    # -- checkpoints
    Case("checkpoint-truncated", "checkpoint", "cut off half way", lambda b, d: D(b, d, "--method", "acdc", "--resume")
         if _edit_checkpoint(b, d, lambda doc: None) and _write(d / "out" / "checkpoint.json", (
             d / "out" / "checkpoint.json").read_text()[:200]) else None, 1, "not valid JSON"),
    Case("checkpoint-forged", "checkpoint", "state edited (an edge put back), hash kept", lambda b, d: D(b, d, "--method", "acdc",
         "--resume") if _edit_checkpoint(b, d, lambda doc: doc["state"]["removed"].pop()) else None, 1, "content_hash"),
    Case("checkpoint-other-settings", "checkpoint", "`--resume --tau 0.05` on a run with another tau", lambda b, d: D(
        b, d, "--method", "acdc", "--resume", "--tau", "0.05") if _copy_run(b, "interrupted", d) else None, 2, "settings differ: tau"),
    Case("checkpoint-other-method", "checkpoint", "`--resume --method exact` on an acdc run", lambda b, d: D(
        b, d, "--method", "exact", "--resume") if _copy_run(b, "interrupted", d) else None, 2, "made by --method acdc, not exact"),
    Case("checkpoint-format", "checkpoint", "an old checkpoint without format and hash", lambda b, d: D(
        b, d, "--method", "acdc", "--resume") if _edit_checkpoint(b, d, lambda doc: doc.pop("format")) else None, 1,
        "not an acdc-lite checkpoint"),
    # -- run folders
    Case("finished-run", "run folder", "`--out` holds a finished run", lambda b, d: D(b, d, "--method", "eap")
         if _copy_run(b, "finished", d) else None, 2, "pass --force"),
    Case("interrupted-run", "run folder", "`--out` holds an interrupted run, no `--resume`", lambda b, d: D(b, d, "--method", "acdc")
         if _copy_run(b, "interrupted", d) else None, 2, "plus --resume, or pass --force"),
    Case("locked-run", "run folder", "`--out` locked by a live process", lambda b, d: D(b, d, "--method", "eap")
         if _lock(d / "out", os.getpid()) is None else None, 2, "in use by process"),
    Case("garbage-lock", "run folder", "`run.lock` that is not a lock", lambda b, d: D(b, d, "--method", "eap")
         if _write(d / "out" / "run.lock", "x") else None, 2, "not a lock this version wrote"),
    # -- dictionaries, probes, past runs
    Case("sae-site-unknown", "sae train, probe, runs", "`sae train --site a9.h0`", lambda b, d: S(b, d, "--site", "a9.h0"), 2,
         "not a component of this"),
    Case("sae-k-too-big", "sae train, probe, runs", "`sae train --k 500 --n-latents 96`", lambda b, d: S(b, d, "--k", "500"), 2,
         "cannot exceed"),
    Case("sae-transcoder-head", "sae train, probe, runs", "`sae train --transcoder --site a0.h0`",
         lambda b, d: S(b, d, "--transcoder", "--site", "a0.h0"), 2, "give an MLP site"),
    Case("sae-window-alone", "sae train, probe, runs", "`sae train --window 4` without `--tokens`",
         lambda b, d: S(b, d, "--window", "4"), 2, "--window only applies with --tokens"),
    Case("sae-edge-elsewhere", "sae train, probe, runs", "`sae train --site a0.h0 --edge 'a1.h0->logits'`",
         lambda b, d: S(b, d, "--site", "a0.h0", "--edge", "a1.h0->logits"), 2, "leaves a1.h0"),
    Case("sae-value-no-edge", "sae train, probe, runs", "`sae train --value 3` without `--edge`",
         lambda b, d: S(b, d, "--value", "3"), 2, "only apply with --edge"),
    Case("sae-checkpoint-garbage", "sae train, probe, runs", "`sae train --resume` on a damaged training checkpoint",
         lambda b, d: S(b, d, "--resume") if _write(d / "out" / "checkpoint.safetensors", b"not a checkpoint") else None, 1,
         "cannot be read"),
    Case("sae-tokens-missing", "sae train, probe, runs", "`sae train --tokens` a file that does not exist",
         lambda b, d: S(b, d, "--tokens", d / "in" / "nope.txt"), 1, "nope.txt"),
    Case("sae-tokens-no-tokenizer", "sae train, probe, runs", "`sae train --tokens` on a model with no tokenizer",
         lambda b, d: S(b, d, "--tokens", _write(d / "in" / "t.txt", "a b c d e f g")), 2, "no tokenizer"),
    Case("probe-variable-unknown", "sae train, probe, runs", "`probe --variable colour`",
         lambda b, d: P(b, d, "--variable", "colour"), 2, "unknown --variable"),
    Case("probe-carry-elsewhere", "sae train, probe, runs", "`probe --variable carry` on a task without operands",
         lambda b, d: P(b, d, "--variable", "carry"), 2, "carry needs the operands"),
    Case("probe-no-heads-sites", "sae train, probe, runs", "`probe --site 'resid 0' --no-heads`",
         lambda b, d: P(b, d, "--site", "resid 0", "--no-heads"), 2, "--no-heads only applies"),
    Case("runs-missing", "sae train, probe, runs", "`runs` a folder that does not exist", lambda b, d: ["runs", d / "nope"], 1,
         "not a folder or a run record"),
    Case("runs-sort-unknown", "sae train, probe, runs", "`runs --sort colour`", lambda b, d: ["runs", d, "--sort", "colour"], 2,
         "unknown --sort column"),
]


def _snapshot(d: Path) -> dict:
    return {str(p.relative_to(d)): p.read_bytes() for p in sorted(d.rglob("*")) if p.is_file()}


@pytest.fixture(scope="module")
def outcomes(base, tmp_path_factory, monkeypatch_module):
    """Run every case once: id -> (exit code, output, files before, files after)."""
    monkeypatch_module.setenv("HF_HUB_OFFLINE", "1")
    done = {}
    for case in CASES:
        d = tmp_path_factory.mktemp(case.id)
        args = case.build(base, d)
        before = _snapshot(d)
        res = run(*args)
        done[case.id] = (res.exit_code, res.output, before, _snapshot(d), str(d), res.exception)
    return done


@pytest.fixture(scope="module")
def monkeypatch_module():
    mp = pytest.MonkeyPatch()
    yield mp
    mp.undo()


@pytest.mark.parametrize("case", CASES, ids=[c.id for c in CASES])
def test_bad_input_gives_one_line_and_leaves_nothing(outcomes, case):
    code, output, before, after, _, exception = outcomes[case.id]
    assert code == case.code, output
    assert exception is None or isinstance(exception, SystemExit), repr(exception)
    lines = output.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: ") and "Traceback" not in output, output
    assert case.needle in lines[0], lines[0]
    assert after == before  # nothing written, nothing removed, nothing changed


def _message(outcome) -> str:
    text = outcome[1].strip().replace(outcome[4] + "/", "").replace(outcome[4], ".").replace("|", "\\|")
    return text.replace(f"process {os.getpid()} ", "process <pid> ")


def render_table(outcomes) -> str:
    lines = ["# Bad inputs and what acdc-lite says", "",
             "Generated from the cases in `tests/test_bad_inputs.py` by the test itself (paths shortened to the",
             "case's folder: `in/` holds the inputs, `out/` is `--out`); the test fails when this file is out of date",
             "(`ACDC_WRITE_DOCS=1 python -m pytest tests/test_bad_inputs.py` rewrites it). Exit code 2: an option or",
             "setting that cannot work as given; 1: a file that cannot be read as what it should be. Every case prints",
             "one line, no traceback (`--debug` shows one), and leaves no file behind. The test model and task are a",
             "2-layer `SmallTransformer` and a 12-row JSONL task built in the test.", ""]
    for kind in dict.fromkeys(c.kind for c in CASES):
        lines += [f"## {kind}", "", "| input | exit | message |", "|---|---|---|"]
        for case in (c for c in CASES if c.kind == kind):
            lines.append(f"| {case.what} | {outcomes[case.id][0]} | `{_message(outcomes[case.id])}` |")
        lines.append("")
    return "\n".join(lines)


def test_docs_table_is_current(outcomes):
    text = render_table(outcomes)
    if os.environ.get("ACDC_WRITE_DOCS"):
        DOC.write_text(text)
    assert DOC.read_text() == text, "docs/bad_inputs.md is out of date: ACDC_WRITE_DOCS=1 python -m pytest tests/test_bad_inputs.py"


# ---- accepted with a warning --------------------------------------------------------------------
def test_more_examples_than_rows_says_so_and_records_the_real_count(base, tmp_path, caplog):
    res = run(*D(base, tmp_path, "--method", "eap", "--n-examples", "1000"))
    assert res.exit_code == 0, res.output
    assert "fewer than the 1000 asked: using 12" in caplog.text
    assert json.loads((tmp_path / "out" / "config.json").read_text())["n_examples"] == 12
    record = json.loads((tmp_path / "out" / "run.json").read_text())
    assert record["n_examples_asked"] == 1000 and record["settings"]["n_examples"] == 1000


def test_stale_lock_is_reported_and_taken_over(base, tmp_path, caplog):
    import subprocess
    import sys

    dead = subprocess.Popen([sys.executable, "-c", "pass"])
    dead.wait()  # a pid that no longer exists
    _lock(tmp_path / "out", dead.pid)
    res = run(*D(base, tmp_path, "--method", "eap"))
    assert res.exit_code == 0, res.output
    assert f"stale lock {tmp_path / 'out' / 'run.lock'}: process {dead.pid}" in caplog.text
    assert not (tmp_path / "out" / "run.lock").exists() and (tmp_path / "out" / "circuit.json").is_file()


def test_force_overwrites_a_finished_run(base, tmp_path):
    out = _copy_run(base, "finished", tmp_path)
    (out / "stale.txt").write_text("kept")
    res = run(*D(base, tmp_path, "--method", "eap", "--top-n", "3", "--force"))
    assert res.exit_code == 0, res.output
    assert len(json.loads((out / "circuit.json").read_text())["edges"]) <= 3
    assert json.loads((out / "run.json").read_text())["settings"]["options"]["top_n"] == 3
    assert (out / "stale.txt").read_text() == "kept"  # only the run's own files are replaced


# ---- random values --------------------------------------------------------------------------
JSON = st.recursive(st.none() | st.booleans() | st.integers(-10**12, 10**12) | st.floats(allow_nan=False) | st.text(max_size=8),
                    lambda inner: st.lists(inner, max_size=3) | st.dictionaries(st.text(max_size=6), inner, max_size=3),
                    max_leaves=6)
FIELDS = ["model", "task", "method", "tau", "metric", "ablation", "level", "n_examples", "seed", "device", "dtype", "top_n",
          "target_faithfulness", "ig_steps", "batch_size", "options", "threshold", "include_mlps", "shuffle_seed"]


@settings(max_examples=40, deadline=None, suppress_health_check=list(HealthCheck))
@given(values=st.dictionaries(st.sampled_from(FIELDS), JSON, min_size=1, max_size=4))
def test_random_config_files_fail_in_one_line(tmp_path_factory, values):
    d = tmp_path_factory.mktemp("fuzz-config")
    values = {**values, "model": str(d / "no-model")}  # a valid config stops at the model, before any work
    res = run("discover", "--config", _write(d / "c.json", values), "--out", d / "out", "--quiet")
    lines = res.output.strip().splitlines()
    assert res.exit_code in (1, 2) and len(lines) == 1 and lines[0].startswith("error: "), res.output
    assert "internal error" not in lines[0] and not (d / "out").exists()


@pytest.mark.parametrize("key", ["\r", "a\nb", "x\u2028"])
def test_a_config_key_with_a_line_break_still_fails_in_one_line(tmp_path, key):
    """Found by the fuzz test above: the unknown key is named in the error, escaped."""
    res = run("discover", "--config", _write(tmp_path / "c.json", {key: 1}), "--out", tmp_path / "out", "--quiet")
    lines = res.output.strip().splitlines()
    assert res.exit_code == 2 and len(lines) == 1 and lines[0].startswith("error: "), res.output
    assert repr(key)[1:-1] in lines[0] and not (tmp_path / "out").exists()


@settings(max_examples=60, deadline=None, suppress_health_check=list(HealthCheck))
@given(path=st.lists(st.sampled_from(["model", "edges", "n_heads", "n_layers", "has_mlp", "scores", "task", "name"]),
                     min_size=1, max_size=2), value=JSON)
def test_random_circuit_fields_fail_in_one_line_or_render(base, tmp_path_factory, path, value):
    d = tmp_path_factory.mktemp("fuzz-circuit")
    c = _circuit(base)
    target = c
    for key in path[:-1]:
        target = target.setdefault(key, {}) if isinstance(target.get(key), dict) else target
    target[path[-1]] = value
    res = run("render", _write(d / "c.json", c), "-o", d / "out" / "c.dot", "-f", "dot")
    lines = res.output.strip().splitlines()
    if res.exit_code == 0:
        assert (d / "out" / "c.dot").read_text().startswith("digraph")
    else:
        assert res.exit_code == 1 and len(lines) == 1 and lines[0].startswith("error: "), res.output
        assert "internal error" not in lines[0] and not (d / "out").exists()
