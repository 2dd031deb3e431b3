"""Dictionaries (acdc_lite.features): training, splicing, features of an edge, the sae train command.

Reduced settings (a few hundred steps, a few hundred prompts); the full run is benchmarks/features.md."""

import json

import pytest
import torch
from typer.testing import CliRunner

pytest.importorskip("sparsify")

from acdc_lite import load_model, load_task  # noqa: E402
from acdc_lite.cli import app  # noqa: E402
from acdc_lite.features.attribution import auroc, edge_feature_effects, feature_study  # noqa: E402
from acdc_lite.features.sae import Dictionary, SAEConfig, split_examples, train_dictionary  # noqa: E402
from acdc_lite.features.sites import SiteError, collect, parse_site  # noqa: E402
from acdc_lite.features.splice import spliced  # noqa: E402
from acdc_lite.features.variables import labels  # noqa: E402
from acdc_lite.shape import model_info  # noqa: E402

runner = CliRunner()


@pytest.fixture(scope="module")
def induction():
    model = load_model("induction-attn-2l")
    task = load_task("induction", model, n_examples=600, seed=0)
    return model, task, train_dictionary(model, task, SAEConfig(steps=300, batch_size=256), progress=False)


def test_dictionary_reconstructs_and_keeps_the_task(induction):
    _, _, trained = induction
    r = trained.report
    assert r.fvu < 0.2
    assert 2.5 <= r.l0 <= 3.0  # TopK with k = 3 (a latent can be active at 0 after the ReLU)
    assert 0 <= r.dead < r.n_latents
    assert r.metric_change < 0.05 and r.metric_model > 5  # the model does induction; the splice keeps it
    assert r.n_heldout_examples + len(trained.train_idx) == 600


def test_split_is_by_distinct_prompt_and_seeded():
    model = load_model("induction-attn-2l")
    task = load_task("induction", model, n_examples=50, seed=1)
    dup = task.subset(torch.cat([torch.arange(50), torch.arange(10)]))  # ten prompts twice
    train, held = split_examples(dup, 0.3, seed=0)
    assert set(train.tolist()).isdisjoint(held.tolist()) and len(train) + len(held) == 60
    rows = lambda idx: {tuple(dup.clean[i].tolist()) for i in idx.tolist()}  # noqa: E731
    assert rows(train).isdisjoint(rows(held))
    assert torch.equal(split_examples(dup, 0.3, seed=0)[1], held) and not torch.equal(split_examples(dup, 0.3, seed=5)[1], held)


def test_splice_replaces_only_inside_the_block(induction):
    model, task, trained = induction
    x = task.clean[:8]
    before = model(x)
    with spliced(model, trained.dictionary):
        inside = model(x)
    assert not torch.allclose(before, inside)
    assert torch.equal(model(x), before)
    with pytest.raises(RuntimeError), spliced(model, trained.dictionary):
        raise RuntimeError("boom")
    assert torch.equal(model(x), before)  # hooks removed on errors too


def test_feature_effects_add_up_to_the_edge_where_the_metric_is_linear(induction):
    """induction-attn-2l has no LayerNorm: logits are linear in the logits receiver's input, so the edge's effect is
    the sum of every feature's effect plus the effect of the dictionary's error term."""
    model, task, trained = induction
    d = trained.dictionary
    idx = trained.heldout_idx[:40]
    eff = edge_feature_effects(model, task, d, "a1.h0->logits", range(d.n_latents), idx)
    sub = task.subset(idx)
    site = d.site
    xc, xr = (collect(model, t, sub.attention_mask, site) for t in (sub.clean, sub.corrupt))
    err = (xc - d.reconstruct(xc)) - (xr - d.reconstruct(xr))
    m = sub.metric(None, model)
    rows = torch.arange(len(sub))
    base = float(m(model(sub.clean), rows).mean())
    with model.hooks(fwd_hooks=[("blocks.1.hook_resid_post", lambda x, hook: x - err)]):
        err_effect = base - float(m(model(sub.clean), rows).mean())
    assert abs(eff.edge_effect) > 0.5
    assert sum(eff.features.values()) + err_effect == pytest.approx(eff.edge_effect, abs=1e-3)


def test_a_feature_tracks_the_copied_token(induction):
    model, task, trained = induction
    study = feature_study(model, task, trained.dictionary, "a1.h0->logits", trained.train_idx, trained.heldout_idx,
                          n_random=10, min_examples=4, all_values=False)
    h = study.headline
    assert h.heldout_auroc >= 0.9
    assert h.share >= 0.5
    assert sum(study.random_shares) / len(study.random_shares) < h.share / 4  # the random-feature baseline


def test_auroc_by_hand():
    y = torch.tensor([True, True, False, False])
    assert auroc(torch.tensor([4.0, 3, 2, 1]), y) == 1.0
    assert auroc(torch.tensor([1.0, 2, 3, 4]), y) == 0.0
    assert auroc(torch.tensor([1.0, 1, 1, 1]), y) == 0.5
    assert auroc(torch.tensor([3.0, 1, 2, 0]), y) == 0.75


def test_transcoder_on_a_llama_mlp():
    model = load_model("addition-llama-2l")
    task = load_task("addition", model, n_examples=200, seed=0)
    trained = train_dictionary(model, task, SAEConfig(site="m0", transcoder=True, n_latents=128, k=8, steps=200,
                                                      batch_size=256), progress=False)
    assert trained.dictionary.site.read == "blocks.0.hook_mlp_in" and trained.dictionary.site.write == "blocks.0.hook_mlp_out"
    assert trained.report.fvu < 0.3
    assert trained.report.metric_change < 0.2
    carry = labels(task, "carry")
    ops = task.info["operands"]
    assert carry.tolist() == [int(a % 10 + b % 10 > 9) for a, b in ops] and 0 < int(carry.sum()) < len(carry)


def test_sites_on_a_random_hf_model(any_model):
    name, model = any_model
    site = parse_site("a1.h0", model)
    tokens = torch.randint(1, 20, (3, 6))
    acts = collect(model, tokens, torch.ones_like(tokens, dtype=torch.bool), site)
    assert acts.shape == (3, 6, model_info(model).d_model)
    n = model_info(model).n_layers
    assert parse_site(f"resid {n}", model).read == f"blocks.{n - 1}.hook_resid_post"
    assert parse_site("resid 1", model).read == "blocks.1.hook_resid_pre"
    for bad, fix in (("a9.h0", "choose"), ("resid 7", f"resid 0 to resid {n}"), ("blocks.0.hook_nothing", "choose")):
        with pytest.raises(SiteError, match=fix):
            parse_site(bad, model)


def test_save_load_round_trip(induction, tmp_path):
    model, task, trained = induction
    trained.dictionary.save(tmp_path)
    again = Dictionary.load(tmp_path)
    x = collect(model, task.clean[:4], task.attention_mask[:4], again.site)
    assert torch.equal(again.encode(x), trained.dictionary.encode(x))
    assert json.loads((tmp_path / "dictionary.json").read_text())["report"]["fvu"] == trained.report.fvu


def test_edge_must_leave_the_dictionarys_node(induction):
    model, task, trained = induction
    with pytest.raises(ValueError, match="leaves a1.h1"):
        edge_feature_effects(model, task, trained.dictionary, "a1.h1->logits", [0])
    with pytest.raises(ValueError, match="not an edge"):
        edge_feature_effects(model, task, trained.dictionary, "a1.h0->a0.h1<q>", [0])


def test_sae_train_command(tmp_path):
    out = tmp_path / "sae"
    args = ["sae", "train", "--n-examples", "300", "--steps", "100", "--batch-size", "128", "--out", str(out), "-q"]
    r = runner.invoke(app, args)
    assert r.exit_code == 0, r.output
    assert "FVU" in r.output
    assert sorted(p.name for p in out.iterdir()) == ["dictionary.json", "dictionary.safetensors", "report.json", "report.md",
                                                     "run.json"]
    record = json.loads((out / "run.json").read_text())
    assert record["command"] == "sae train" and record["outcome"] == "finished"
    assert record["results"]["fvu"] == json.loads((out / "report.json").read_text())["reconstruction"]["fvu"]
    again = runner.invoke(app, args)
    assert again.exit_code == 2 and "--force" in again.output
    for bad, code, text in ((["--site", "a7.h0"], 2, "a7.h0"), (["--variable", "carry"], 2, "only apply with --edge"),
                            (["--k", "500"], 2, "cannot exceed"), (["--edge", "a1.h1->logits"], 2, "leaves a1.h1"),
                            (["--transcoder"], 2, "give an MLP site"), (["--holdout", "1.5"], 2, "out of range"),
                            (["--model", "addition-llama-2l", "--site", "m0", "--edge", "m0->logits", "--variable", "foil",
                              "--value", "99"], 2, "no value of variable foil")):
        target = tmp_path / f"bad-{'-'.join(bad).replace('>', '').replace('.', '')}"
        r = runner.invoke(app, ["sae", "train", "--steps", "5", "--n-examples", "50", "--out", str(target), "-q", *bad])
        assert r.exit_code == code and text in r.output, r.output
        assert not target.exists()


def test_interrupted_training_resumes_to_the_same_dictionary(tmp_path, monkeypatch):
    """SIGINT mid-training saves the state after the current step; --resume ends with the uninterrupted weights."""
    import os
    import signal

    from safetensors.torch import load_file

    from acdc_lite.features.commands import train_sae_into

    torch.set_num_threads(1)
    cfg = SAEConfig(steps=40, batch_size=128, n_latents=32, k=2)
    kw = {"model": "induction-attn-2l", "n_examples": 120, "progress": False}
    train_sae_into(tmp_path / "straight", cfg, **kw)
    calls = {"n": 0}
    adam_step = torch.optim.Adam.step

    def step(self, *a, **k):
        calls["n"] += 1
        if calls["n"] == 17:
            os.kill(os.getpid(), signal.SIGINT)  # deferred by the training loop until this step is done
        return adam_step(self, *a, **k)

    monkeypatch.setattr(torch.optim.Adam, "step", step)
    with pytest.raises(KeyboardInterrupt):
        train_sae_into(tmp_path / "cut", cfg, checkpoint_interval=3600, **kw)
    monkeypatch.setattr(torch.optim.Adam, "step", adam_step)
    assert (tmp_path / "cut" / "checkpoint.safetensors").is_file()
    assert json.loads((tmp_path / "cut" / "run.json").read_text())["outcome"] == "interrupted"
    with pytest.raises(Exception, match="--resume"):
        train_sae_into(tmp_path / "cut", cfg, **kw)  # neither --resume nor --force
    with pytest.raises(Exception, match="other settings"):
        train_sae_into(tmp_path / "cut", SAEConfig(steps=40, batch_size=128, n_latents=32, k=2, lr=1e-3), resume=True, **kw)
    train_sae_into(tmp_path / "cut", cfg, resume=True, **kw)
    a, b = (load_file(str(tmp_path / d / "dictionary.safetensors")) for d in ("straight", "cut"))
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)
    record = json.loads((tmp_path / "cut" / "run.json").read_text())
    assert [p["outcome"] for p in record["parts"]] == ["interrupted", "finished"]
    assert not (tmp_path / "cut" / "checkpoint.safetensors").exists()


def test_training_on_a_token_stream(tmp_path):
    """A text file in the model's own vocabulary, cut into windows (BOS first), trains the dictionary; the task's
    held-out prompts still measure it."""
    import random

    from acdc_lite.features.sae import token_stream

    model = load_model("addition-llama-2l")
    rng = random.Random(0)
    lines = []
    for _ in range(300):
        a, b = rng.randint(10, 99), rng.randint(10, 99)
        lines.append(f"What is {a} + {b}? Answer: {a + b}")
    text = tmp_path / "stream.txt"
    text.write_text("\n".join(lines))
    stream = token_stream(model, text, window=16)
    vocab_bos = model.tokenizer.bos_token_id
    assert stream.shape[1] == 16 and (stream[:, 0] == vocab_bos).all() and len(stream) > 100
    ids = model.tokenizer.encode(text.read_text(), add_special_tokens=False)
    assert len(stream) == len(ids) // 15 and stream[:, 1:].flatten().tolist() == ids[:len(stream) * 15]
    task = load_task("addition", model, n_examples=120, seed=0)
    trained = train_dictionary(model, task, SAEConfig(site="m0", n_latents=128, k=8, steps=150, batch_size=256),
                               progress=False, stream=stream)
    assert trained.report.n_train_vectors == stream.numel()
    assert trained.dictionary.info["training_data"] == {"source": "token stream", "windows": len(stream), "window": 16}
    assert trained.report.fvu < 0.5
    (tmp_path / "short.txt").write_text("What is")
    (tmp_path / "bad.txt").write_bytes(b"\xff\xfe\x00")
    out = tmp_path / "o"
    for args, code, text_ in ((["--tokens", str(tmp_path / "short.txt")], 1, "fewer than one window"),
                              (["--window", "8"], 2, "--window only applies with --tokens"),
                              (["--tokens", str(text), "--window", "99"], 2, "--window 99"),
                              (["--tokens", str(tmp_path / "missing.txt")], 1, "missing.txt"),
                              (["--tokens", str(tmp_path / "bad.txt")], 1, "bad.txt")):
        r = runner.invoke(app, ["sae", "train", "--model", "addition-llama-2l", "--site", "m0", "--steps", "5",
                                "--n-examples", "50", "--out", str(out), "-q", *args])
        assert r.exit_code == code and text_ in r.output, (args, r.output)
        assert not out.exists()
