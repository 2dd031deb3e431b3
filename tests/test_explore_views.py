"""Attention figures, the neuron view, the figures' titles, labels and colour bars, and the output folders."""

import json

import pytest
import torch

from acdc_lite import SmallTransformer, SmallTransformerConfig, load_model
from acdc_lite.explore.attention import attention_figure, attention_html, head_pattern
from acdc_lite.explore.heads import detect_heads
from acdc_lite.explore.lens import direct_attribution, logit_lens
from acdc_lite.explore.neurons import neuron_view
from acdc_lite.explore.views import write_heads, write_lens, write_neurons
from acdc_lite.task import Task, load_task

VOCAB = 20


def _model(normalization="none", d_mlp=24, n_layers=2, seed=0):
    torch.manual_seed(seed)
    return SmallTransformer(SmallTransformerConfig(n_layers=n_layers, n_heads=2, d_model=16, d_head=4, d_vocab=VOCAB,
                                                   n_ctx=16, d_mlp=d_mlp, normalization=normalization, act_fn="gelu",
                                                   vocab=[f"w{i}" for i in range(VOCAB)]))


def _task(n=8, p=7, seed=1):
    g = torch.Generator().manual_seed(seed)
    answers = torch.randint(0, VOCAB, (n, 1), generator=g)
    foils = (answers + torch.randint(1, VOCAB, (n, 1), generator=g)) % VOCAB  # never the answer: a task file refuses that
    return Task("random", torch.randint(0, VOCAB, (n, p), generator=g), torch.randint(0, VOCAB, (n, p), generator=g),
                answers, foils=foils)


def _colorbar_labels(fig):
    return [ax.get_ylabel() for ax in fig.axes if ax.get_label() == "<colorbar>"]


# ---- neurons -------------------------------------------------------------------------------------
def test_neuron_effects_add_up_to_the_mlps_effect_where_the_metric_is_linear():
    """Last MLP, no final norm, logit difference: the metric is linear in the MLP output."""
    model, task = _model(), _task()
    view = neuron_view(model, task, "m1", top_k=5)
    assert view.attribution.shape == (24,)
    assert abs(view.mlp_effect) > 1e-3
    assert float(view.attribution.sum()) == pytest.approx(view.mlp_effect, abs=1e-5)
    assert view.additivity_gap == pytest.approx(0.0, abs=1e-5)
    for neuron, exact in view.patched.items():  # linear: attribution is each neuron's exact effect
        assert exact == pytest.approx(float(view.attribution[neuron]), abs=1e-5)
    assert len(view.patched) == 5 and list(view.patched) == view.top(5)


def test_neuron_view_elsewhere_reports_its_additivity_gap_and_examples():
    model, task = _model(normalization="layernorm"), _task()
    view = neuron_view(model, task, "m0", top_k=3)
    assert view.additivity_gap == pytest.approx(view.mlp_effect - float(view.attribution.sum()))
    ex = view.examples(k=2, n_examples=3)
    assert list(ex.columns) == ["neuron", "rank", "prompt", "position", "token", "context", "activation"]
    assert len(ex) == 6
    for row in ex.itertuples():  # each row is that neuron's activation at that prompt and position
        assert row.activation == pytest.approx(float(view.activations[row.prompt, row.position, row.neuron]), abs=1e-4)
        assert row.token == f"w{int(task.clean[row.prompt, row.position])}"
    first = ex[ex["neuron"] == view.top(1)[0]]["activation"].tolist()
    assert first == sorted(first, reverse=True)
    with pytest.raises(ValueError, match="not an MLP"):
        neuron_view(model, task, "a0.h1")
    with pytest.raises(ValueError, match="m0 to m1"):
        neuron_view(model, task, "m5")


# ---- figures ------------------------------------------------------------------------------------
def test_figures_have_titles_labels_and_colour_bars():
    model, task = _model(normalization="layernorm"), _task()
    heads = detect_heads(model, task).figure("detectors here")
    assert heads._suptitle.get_text() == "detectors here"
    panels = [ax for ax in heads.axes if ax.get_label() != "<colorbar>"]
    assert [ax.get_title() for ax in panels][:2] == ["previous-token (threshold 0.5)", "duplicate-token (threshold 0.5)"]
    assert all(ax.get_xlabel() == "head" and ax.get_ylabel() == "layer" for ax in panels)
    assert _colorbar_labels(heads) == ["score"] * len(panels)

    att = attention_figure(model, task, "a1.h0", prompts=[0, 2])
    assert att._suptitle.get_text() == "a1.h0 attention pattern (random)"
    panels = [ax for ax in att.axes if ax.get_label() != "<colorbar>"]
    assert [ax.get_title() for ax in panels] == ["prompt 0", "prompt 2"]
    assert panels[0].get_xlabel() == "key (attended-to token)" and panels[0].get_ylabel() == "query (attending token)"
    assert [t.get_text() for t in panels[0].get_xticklabels()] == [f"w{int(t)}@{i}" for i, t in enumerate(task.clean[0])]
    assert _colorbar_labels(att) == ["attention probability"]
    image = panels[1].get_images()[0].get_array()
    assert torch.allclose(torch.tensor(image.data), head_pattern(model, task.clean[[2]], "a1.h0")[0])

    lens = logit_lens(model, task).figure()
    ax = lens.axes[0]
    assert ax.get_title() == "logit lens at the answer position"
    assert ax.get_xlabel() == "residual stream read after" and ax.get_ylabel() == "mean logit_diff"
    assert lens.axes[1].get_ylabel() == "mean answer rank (0 = top)"
    assert [t.get_text() for t in ax.get_xticklabels()] == ["embed", "layer 0", "layer 1"]

    dla = direct_attribution(model, task)
    ax = dla.figure().axes[0]
    assert ax.get_title().startswith("direct logit attribution (mean logit_diff")
    assert ax.get_ylabel() == "direct contribution to logit_diff"
    heights = [p.get_height() for p in ax.patches]
    assert heights == pytest.approx(dla.values.mean(1).tolist(), abs=1e-6)

    nv = neuron_view(model, task, "m1", top_k=4)
    ax = nv.figure(4).axes[0]
    assert ax.get_xlabel() == "m1 neuron" and ax.get_ylabel() == "effect on logit_diff"
    assert ax.get_title().startswith("m1: top neurons")
    assert [t.get_text() for t in ax.get_xticklabels()] == [str(n) for n in nv.top(4)]


def test_attention_html_is_self_contained():
    pytest.importorskip("circuitsvis")
    model, task = _model(), _task()
    page = attention_html(model, task, "a0.h1", prompt=1)
    assert page.startswith("<!DOCTYPE html>") and "a0.h1 attention (random, prompt 1)" in page
    assert "CircuitsVis.render" in page and "unpkg.com" not in page and "https://" not in page.split("<script")[0]


# ---- output folders -------------------------------------------------------------------------------
def test_explore_folders_hold_figures_tables_and_an_index(tmp_path):
    model = load_model("ioi-attn-2l")
    task = load_task("ioi", model, n_examples=24)
    written = write_heads(model, task, tmp_path / "heads", prompts=(0,), html=False)
    names = {p.name for p in written}
    assert {"heads.csv", "heads.png", "heads.svg", "roles.json", "index.md"} <= names
    roles = json.loads((tmp_path / "heads" / "roles.json").read_text())["roles"]
    assert roles == {"a0.h2": "s-inhibition", "a1.h0": "name-mover", "a1.h1": "name-mover", "a1.h3": "s-inhibition"}
    for head in roles:
        assert f"attention_{head}.png" in names
    index = json.loads((tmp_path / "heads" / "index.json").read_text())
    assert {e["file"] for e in index["entries"]} <= names

    written = write_lens(model, task, tmp_path / "lens")
    lens_csv = (tmp_path / "lens" / "lens.csv").read_text().splitlines()
    assert lens_csv[0].startswith("stage,mean_logit_diff") and len(lens_csv) == 1 + 3
    assert {"dla.csv", "dla.png", "lens.svg"} <= {p.name for p in written}

    with pytest.raises(ValueError, match="has no MLPs"):
        write_neurons(model, task, tmp_path / "neurons")
    assert not (tmp_path / "neurons").exists()  # bad input leaves nothing behind


def test_neuron_folder_for_a_circuits_mlps(tmp_path):
    from acdc_lite.circuit import Circuit, ModelRef

    model, task = _model(normalization="layernorm"), _task()
    c = Circuit(ModelRef.of(model), {"input->m0": 1.0, "m0->logits": 1.0})
    written = write_neurons(model, task, tmp_path, circuit=c, top_k=3, n_examples=2)
    assert {p.name for p in written} >= {"neurons_m0.csv", "neuron_examples_m0.csv", "neurons_m0.png", "index.md"}
    assert not (tmp_path / "neurons_m1.csv").exists()
    params = json.loads((tmp_path / "index.json").read_text())["params"]
    assert set(params["mlps"]) == {"m0"}
    with pytest.raises(Exception, match="weights"):
        write_neurons(_model(normalization="layernorm", seed=5), task, tmp_path / "other", circuit=c)


# ---- command line ------------------------------------------------------------------------------
def _cli(*args):
    from typer.testing import CliRunner

    from acdc_lite.cli import app

    return CliRunner().invoke(app, list(map(str, args)))


def test_explore_commands_write_folders_and_refuse_bad_input(tmp_path):
    model = _model(normalization="layernorm")
    model.save(tmp_path / "model")
    lines = []
    task = _task(n=10)
    for i in range(len(task)):
        lines.append(json.dumps({"clean": task.clean[i].tolist(), "corrupt": task.corrupt[i].tolist(),
                                 "answer": int(task.answers[i, 0]), "foil": (int(task.answers[i, 0]) + 1) % VOCAB}))
    (tmp_path / "task.jsonl").write_text("\n".join(lines) + "\n")
    common = ["--model", tmp_path / "model", "--task", tmp_path / "task.jsonl"]
    res = _cli("explore", "heads", *common, "--prompts", "0", "--no-html", "--out", tmp_path / "heads")
    assert res.exit_code == 0, res.output
    assert (tmp_path / "heads" / "heads.csv").is_file() and (tmp_path / "heads" / "index.md").is_file()
    res = _cli("explore", "lens", *common, "--out", tmp_path / "lens")
    assert res.exit_code == 0, res.output
    assert (tmp_path / "lens" / "lens.png").is_file() and (tmp_path / "lens" / "dla.csv").is_file()
    res = _cli("explore", "neurons", *common, "--mlp", "m0", "--top-k", 3, "--out", tmp_path / "neurons")
    assert res.exit_code == 0, res.output
    frame = (tmp_path / "neurons" / "neurons_m0.csv").read_text().splitlines()
    assert frame[0] == "neuron,attribution,patched_effect,share_of_mlp_effect" and len(frame) == 4

    for args, message in ((["neurons", *common, "--mlp", "m7"], "m0 to m1"),
                          (["heads", *common, "--prompts", "0,99"], "outside the task's 10 prompts"),
                          (["heads", *common, "--prompts", "x"], "comma-separated integers")):
        res = _cli("explore", *args, "--out", tmp_path / "bad")
        assert res.exit_code == 1 and message in res.output, res.output
        assert len(res.output.strip().splitlines()) == 1
        assert not (tmp_path / "bad").exists()


def test_render_detect_roles_for_a_circuit_saved_without_roles(tmp_path):
    import shutil

    from acdc_lite import zoo
    from acdc_lite.circuit import Circuit, ModelRef

    copy = tmp_path / "nocard"
    shutil.copytree(zoo.model_dir("ioi-attn-2l"), copy, ignore=shutil.ignore_patterns("card.json"))
    config = json.loads((copy / "config.json").read_text())
    (copy / "config.json").write_text(json.dumps({**config, "name": "nocard"}))  # no zoo name: no card override
    ref = ModelRef.of(load_model(copy))
    edges = {"input->a0.h2<v>": 1.0, "a0.h2->a1.h0<q>": 1.0, "a0.h2->a1.h1<q>": 1.0, "input->a1.h0<v>": 1.0,
             "input->a1.h1<v>": 1.0, "a1.h0->logits": 1.0, "a1.h1->logits": 1.0, "a0.h2->logits": 1.0}
    Circuit(ref, edges, task={"name": "ioi", "n_examples": 32, "seed": 0}).save(tmp_path / "c.json")
    res = _cli("render", tmp_path / "c.json", "--format", "dot", "--out", tmp_path / "plain.dot")
    assert res.exit_code == 0, res.output
    assert "s-inhibition" not in (tmp_path / "plain.dot").read_text()
    res = _cli("render", tmp_path / "c.json", "--format", "dot", "--detect-roles", "--model", copy, "--out", tmp_path / "c.dot")
    assert res.exit_code == 0, res.output
    dot = (tmp_path / "c.dot").read_text()
    for head, role in (("a0.h2", "s-inhibition"), ("a1.h0", "name-mover"), ("a1.h1", "name-mover")):
        assert f'tooltip="{head}: {role}"' in dot
