"""Activation-patching sweeps: invariants on fresh random models, the zoo cards' heads, figures."""

import numpy as np
import pytest
import torch

from acdc_lite import SmallTransformer, SmallTransformerConfig, Task, load_model, load_task, zoo
from acdc_lite.explore.sweeps import DEFAULT_SWEEPS, Direction, SweepKind, sweep, sweep_all, sweep_stem
from acdc_lite.graph import Node
from acdc_lite.zoo.measure import head_ablation_effects

VOCAB = 12


def _model(d_mlp=16):
    torch.manual_seed(3)
    return load_model(SmallTransformer(SmallTransformerConfig(n_layers=2, n_heads=3, d_model=16, d_head=4, d_vocab=VOCAB,
                                                              n_ctx=12, d_mlp=d_mlp, normalization="layernorm")))


def _task(n=6, p=7, answer_pos=None, seed=0):
    g = torch.Generator().manual_seed(seed)
    clean = torch.randint(0, VOCAB, (n, p), generator=g)
    corrupt = clean.clone()
    corrupt[:, 2] = (clean[:, 2] + 1 + torch.randint(0, VOCAB - 1, (n,), generator=g)) % VOCAB  # differ at position 2 only
    answers = torch.randint(0, VOCAB, (n, 1), generator=g)
    foils = (answers + 1) % VOCAB
    return Task("toy", clean, corrupt, answers, foils, answer_pos=answer_pos)


def test_head_out_noise_equals_the_zoo_head_ablation_measure():
    model, task = _model(), _task()
    s = sweep(model, task, SweepKind.HEAD_OUT, Direction.NOISE, by_position=False)
    v, rows, cols = s.matrix()
    assert rows == ["0", "1"] and cols == ["h0", "h1", "h2"]
    np.testing.assert_allclose(v, head_ablation_effects(model, task).numpy(), atol=1e-5)
    assert s.forward_passes == 2 + 1 + 6  # baselines, cached run, one per head


def test_positions_where_prompts_agree_carry_nothing_in_the_first_layer():
    model, task = _model(), _task()
    for direction in Direction:
        s = sweep(model, task, SweepKind.RESID_PRE, direction)
        first = s.frame[s.frame.layer == 0].set_index("position")["value"]
        assert first.drop(2).abs().max() < 1e-6
        assert abs(first[2]) > 1e-3  # the position that differs does matter
        assert set(s.frame.columns) == {"layer", "position", "token", "value", "metric"}
        assert len(s.frame) == 2 * task.seq_len


def test_patching_every_layer_input_at_the_last_layer_resid_post_restores_clean():
    # denoising the residual stream entering layer 0 at every position at once is the clean run; one cell
    # per position gives the clean value only where all the difference is: a one-position task at layer 0
    model = _model(d_mlp=0)
    task = _task()
    s = sweep(model, task, SweepKind.RESID_PRE, Direction.DENOISE)
    cell = s.frame[(s.frame.layer == 0) & (s.frame.position == 2)]
    assert float(cell["value"].iloc[0]) == pytest.approx(1.0, abs=1e-5)


def test_aligned_sweep_is_the_mix_of_per_group_sweeps():
    model = _model()
    pos = torch.tensor([6, 6, 6, 4, 4, 4])
    task = _task(answer_pos=pos)
    aligned = sweep(model, task, SweepKind.HEAD_OUT, Direction.DENOISE)
    assert aligned.aligned and sorted(aligned.frame.position.unique()) == list(range(-4, 1))
    parts = []
    for a in (6, 4):
        sub = task.subset((pos == a).nonzero()[:, 0])
        frame = sweep(model, sub, SweepKind.HEAD_OUT, Direction.DENOISE, align=False).frame
        parts.append(frame.assign(position=frame["position"] - a))
    for (layer, head, offset), metric in aligned.frame.set_index(["layer", "head", "position"])["metric"].items():
        expect = np.mean([float(p[(p["layer"] == layer) & (p["head"] == head) & (p["position"] == offset)]["metric"].iloc[0])
                          for p in parts])
        assert metric == pytest.approx(expect, abs=1e-5)


def test_every_default_sweep_runs_both_ways_on_a_gqa_bridge():
    from transformers import LlamaConfig, LlamaForCausalLM

    torch.manual_seed(0)
    model = load_model(LlamaForCausalLM(LlamaConfig(num_hidden_layers=2, num_attention_heads=4, num_key_value_heads=2,
                                                    hidden_size=32, intermediate_size=64, vocab_size=VOCAB,
                                                    max_position_embeddings=16, bos_token_id=0, eos_token_id=0)))
    task = _task()
    sweeps = sweep_all(model, task)
    assert len(sweeps) == 2 * len(DEFAULT_SWEEPS) and len({sweep_stem(s) for s in sweeps}) == len(sweeps)
    k = next(s for s in sweeps if s.kind is SweepKind.HEAD_K)
    assert sorted(k.frame["head"].unique()) == [0, 1]  # one k per kv group
    for s in sweeps:
        assert np.isfinite(s.frame["value"]).all()


def test_attention_only_model_has_no_mlp_sweep():
    model, task = _model(d_mlp=0), _task()
    with pytest.raises(ValueError, match="no MLPs"):
        sweep(model, task, SweepKind.MLP_OUT)
    assert all(s.kind is not SweepKind.MLP_OUT for s in sweep_all(model, task, directions=[Direction.NOISE]))
    with pytest.raises(ValueError, match="by_position=False"):
        sweep(model, task, SweepKind.RESID_PRE, by_position=False)


def test_heatmap_figure_has_title_axes_and_colour_bar():
    model, task = _model(), _task()
    s = sweep(model, task, SweepKind.RESID_PRE, Direction.NOISE)
    fig = s.heatmap()
    ax, cax = fig.axes
    assert ax.get_title() == s.title and "small-transformer" in s.title and "toy" in s.title and "logit_diff" in s.title
    assert ax.get_ylabel() == "layer" and ax.get_xlabel().startswith("position (token")
    assert cax.get_ylabel() == "share of gap lost"
    ticks = [t.get_text() for t in ax.get_xticklabels()]
    assert len(ticks) == task.seq_len and ticks[2].startswith("2 ") and ticks[2].endswith("*")
    norm = ax.images[0].norm
    assert norm.vcenter == 0 and norm.vmin == -norm.vmax
    h = sweep(model, task, SweepKind.HEAD_OUT, Direction.NOISE)
    hax = h.heatmap().axes[0]
    assert hax.get_ylabel() == "layer.head" and [t.get_text() for t in hax.get_yticklabels()][:2] == ["a0.h0", "a0.h1"]


def test_no_gap_is_a_clear_error():
    model, task = _model(), _task()
    same = Task("same", task.clean, task.clean.clone(), task.answers, task.foils)
    with pytest.raises(ValueError, match="gap"):
        sweep(model, same, SweepKind.HEAD_OUT, by_position=False)


@pytest.mark.parametrize("name", zoo.names())
def test_zoo_card_heads_are_the_per_head_sweep_top(name):
    card = zoo.card(name)
    model = load_model(name)
    t = card["task"]
    task = load_task(t["name"], model, n_examples=t["n_examples"], seed=t["seed"])
    s = sweep(model, task, SweepKind.HEAD_OUT, Direction.NOISE, by_position=False)
    v, _, _ = s.matrix()
    if "ablation_effects" in card["measurement"]:
        measured = np.array(card["measurement"]["ablation_effects"])
    else:  # cards measured by patching hold every node's effect by name
        nodes = card["measurement"]["circuit"]["node_ablation_effects"]
        measured = np.array([[nodes[f"a{layer}.h{head}"] for head in range(v.shape[1])] for layer in range(v.shape[0])])
    np.testing.assert_allclose(v, measured, atol=card["measurement"]["tolerance"]["ablation_effect"])
    heads = [g.get("head", g.get("node")) for g in card["ground_truth"] if g.get("head", g.get("node")).startswith("a")]
    k = len(heads)
    top = s.top_heads(k)
    # a card's heads are those whose single ablation loses >= 10% (with an attention score >= 0.5 on the one card
    # measured by attention class, where no head that misses the score reaches 10%): the sweep ranks them first
    assert set(top) == set(heads), (name, top, heads)
    assert all(Node.parse(h).layer < s.n_layers for h in top)
