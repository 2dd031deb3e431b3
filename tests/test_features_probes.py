"""Linear probes (acdc_lite.features.probes) and the probe command."""

import json

import pytest
from typer.testing import CliRunner

pytest.importorskip("sklearn")

from acdc_lite import load_model, load_task, zoo  # noqa: E402
from acdc_lite.cli import app  # noqa: E402
from acdc_lite.features.probes import run_probes  # noqa: E402

runner = CliRunner()


def test_the_copied_token_appears_where_the_circuit_writes_it():
    """induction-attn-2l's card puts its induction heads in layer 1: the token to be copied is at control level in the
    residual stream before layer 1 and in layer-0 heads, and decodable after it."""
    model = load_model("induction-attn-2l")
    card = zoo.card("induction-attn-2l")
    writer = {h.get("node", h.get("head")).split(".")[0] for h in card["ground_truth"] if h["class"] == "induction"}
    assert writer == {"a1"}
    task = load_task("induction", model, n_examples=700, seed=0)
    r = run_probes(model, task, "answer", sites=["resid 0", "resid 1", "resid 2", "a0.h3", "a1.h0"])
    for before in ("resid 0", "resid 1", "a0.h3"):
        assert abs(r.row(before).selectivity) < 0.05, r.row(before)
    for after in ("resid 2", "a1.h0"):
        assert r.row(after).selectivity >= 0.3, r.row(after)
    assert r.row("resid 2").control_accuracy < 0.1 and r.n_classes > 30


def test_carry_in_the_addition_model():
    model = load_model("addition-llama-2l")
    task = load_task("addition", model, n_examples=400, seed=0)
    r = run_probes(model, task, "carry", sites=["resid 0", "resid 2"])
    assert r.n_classes == 2
    assert abs(r.row("resid 0").selectivity) < 0.05  # the ':' token at a fixed position: nothing to read
    assert r.row("resid 2").accuracy > r.row("resid 0").accuracy


def test_probe_command(tmp_path):
    out = tmp_path / "p"
    r = runner.invoke(app, ["probe", "--n-examples", "300", "--site", "resid 0", "--site", "resid 2", "--out", str(out)])
    assert r.exit_code == 0, r.output
    assert sorted(p.name for p in out.iterdir()) == ["probes.csv", "probes.png", "probes.svg", "report.json", "report.md",
                                                     "run.json"]
    rows = json.loads((out / "report.json").read_text())["rows"]
    assert [x["site"] for x in rows] == ["resid 0", "resid 2"]
    assert json.loads((out / "run.json").read_text())["results"]["best_site"] == "resid 2"
    for bad, text in ((["--variable", "nope"], "unknown --variable"), (["--site", "a5.h0"], "a5.h0"),
                      (["--variable", "carry"], "carry needs the operands"), (["--c", "0"], "--c must be > 0"),
                      (["--site", "resid 0", "--no-heads"], "--no-heads only applies"), (["--n-examples", "2"], "at least 4")):
        target = tmp_path / "-".join(bad).replace(".", "").replace(" ", "")
        r = runner.invoke(app, ["probe", "--n-examples", "100", "--out", str(target), *bad] if "--n-examples" not in bad
                          else ["probe", "--out", str(target), *bad])
        assert r.exit_code == 2 and text in r.output, r.output
        assert not target.exists()
