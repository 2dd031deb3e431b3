"""Every zoo model loads and reproduces its card; one slow test re-trains a model from scratch."""

import pytest
import torch

from acdc_lite import Node, load_model, model_info, zoo
from acdc_lite.zoo import measure, train
from acdc_lite.zoo.data import SegmentRecipe, repeated_random, segment_batch

NAMES = zoo.names()
INDUCTION_ZOO = [n for n in NAMES if zoo.card(n).get("task", {}).get("name") == "induction"]


def test_the_zoo_has_the_default_model():
    assert "induction-attn-2l" in NAMES


@pytest.mark.parametrize("name", NAMES)
def test_zoo_files_are_small_and_cards_complete(name):
    for f in zoo.model_dir(name).iterdir():
        assert f.stat().st_size < 1_000_000, f"{f.name} is too large"
    card = zoo.card(name)
    for key in ("architecture", "training", "task", "ground_truth", "measurement"):
        assert key in card, f"card of {name} lacks {key}"
    assert {"seed", "steps", "seconds", "data"} <= set(card["training"])
    for head in card["ground_truth"]:
        assert head["class"] in ("previous-token", "induction", "name-mover", "s-inhibition", "duplicate-token")


@pytest.fixture(scope="module", params=INDUCTION_ZOO)
def measured(request):
    """(card, fresh measurements) of one induction zoo model loaded from its directory."""
    name = request.param
    model = load_model(name)
    return zoo.card(name), train.measure_card(model), model


def test_card_accuracy_reproduces(measured):
    card, fresh, _ = measured
    tol = card["measurement"]["tolerance"]
    assert abs(fresh["task"]["accuracy"] - card["task"]["accuracy"]) <= tol["accuracy"]
    assert fresh["task"]["accuracy"] >= 0.9


def test_card_head_scores_reproduce(measured):
    card, fresh, _ = measured
    tol = card["measurement"]["tolerance"]
    for key, t in (("previous_token_scores", tol["score"]), ("induction_scores", tol["score"]),
                   ("ablation_effects", tol["ablation_effect"])):
        diff = (torch.tensor(fresh["measurement"][key]) - torch.tensor(card["measurement"][key])).abs().max()
        assert diff <= t, f"{key} moved by {float(diff):.3f} (tolerance {t})"
    assert [(h["head"], h["class"]) for h in fresh["ground_truth"]] == [(h["head"], h["class"]) for h in card["ground_truth"]]


def test_ground_truth_has_both_head_classes(measured):
    card, _, model = measured
    classes = {h["class"] for h in card["ground_truth"]}
    assert classes == {"previous-token", "induction"}
    layers = {cls: {Node.parse(h["head"]).layer for h in card["ground_truth"] if h["class"] == cls} for cls in classes}
    assert layers["previous-token"] == {0} and layers["induction"] == {1}
    assert card["measurement"]["joint_ablation_effects"]["ground truth"] > 0.9
    assert model_info(model).n_layers == card["architecture"]["n_layers"]


def test_scores_on_a_hand_made_pattern():
    """offset_scores reads the right diagonal of a pattern [b, h, q, k]."""
    n = 6
    prev = torch.zeros(1, 1, n, n)
    prev[0, 0, 0, 0] = 1
    prev[0, 0, torch.arange(1, n), torch.arange(0, n - 1)] = 1
    assert float(measure.offset_scores([prev], 1, slice(2, None))[0, 0]) == 1.0
    assert float(measure.offset_scores([prev], 2, slice(2, None))[0, 0]) == 0.0


def test_training_data_repeats_segments():
    g = torch.Generator().manual_seed(0)
    tokens, weights = segment_batch(4, 48, 64, SegmentRecipe(p_gap=0.5, max_gap=12), g)
    assert tokens.shape == (4, 48) and weights.shape == (4, 47)
    assert (tokens[:, 0] == 0).all() and (tokens[:, 1:] > 0).all()
    assert (weights == 1).any() and (weights < 1).any()
    rep = repeated_random(3, 5, 64, seed=0)
    assert rep.shape == (3, 11) and torch.equal(rep[:, 1:6], rep[:, 6:])


@pytest.mark.slow
def test_retraining_recovers_the_ground_truth(tmp_path):
    model, card = train.train("induction-attn-2l", seed=0, out_dir=tmp_path / "m")
    shipped = zoo.card("induction-attn-2l")
    assert [(h["head"], h["class"]) for h in card["ground_truth"]] == [(h["head"], h["class"]) for h in shipped["ground_truth"]]
    assert card["task"]["accuracy"] >= 0.95
    reloaded = load_model(str(tmp_path / "m"))
    assert torch.equal(reloaded.W_E, model.W_E)
