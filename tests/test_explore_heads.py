"""Head detectors, roles flowing into render/diff, logit lens and direct logit attribution."""

import shutil

import pytest
import torch

from acdc_lite import SmallTransformer, SmallTransformerConfig, load_model, zoo
from acdc_lite.circuit import Circuit
from acdc_lite.explore.heads import (
    DETECTORS,
    HeadFacts,
    detect_heads,
    duplicate_token_score,
    induction_score,
    name_mover_score,
    previous_token_score,
    s_inhibition_score,
    successor_score,
)
from acdc_lite.explore.lens import direct_attribution, logit_lens
from acdc_lite.task import Task, load_task

CARD_TASKS = {"induction-attn-2l": "induction", "induction-gpt2-2l": "induction", "induction-llama-2l": "induction",
              "ioi-attn-2l": "ioi"}


def card_roles(name: str) -> dict[str, str]:
    """Head roles of a card: "head" entries on attention-class cards, "node" on cards measured by patching (whose
    MLPs, unclassified and second-previous-token heads have no detector)."""
    return {row.get("node", row.get("head")): row["class"] for row in zoo.card(name)["ground_truth"]
            if row["class"] not in ("mlp", "unclassified", "second-previous-token")}


# ---- detectors on hand-made attention patterns --------------------------------------------------
def _facts(tokens, patterns, answers=None, foils=None, info=None, model=None):
    n = len(tokens)
    task = Task("hand", tokens, tokens.clone(), answers if answers is not None else torch.zeros(n, 1, dtype=torch.long),
                foils=foils, info=info or {})
    return HeadFacts(model, task, tuple(patterns), None)


def _pattern(n, p, pick):
    """[n, 1, p, p] attention: query q puts everything on key pick(row, q) (or uniform over keys <= q if None)."""
    out = torch.zeros(n, 1, p, p)
    for row in range(n):
        for q in range(p):
            k = pick(row, q)
            if k is None:
                out[row, 0, q, : q + 1] = 1.0 / (q + 1)
            else:
                out[row, 0, q, k] = 1.0
    return out


def test_attention_detectors_score_hand_made_patterns():
    #          0  1  2  3  4  5  6  7
    tokens = torch.tensor([[0, 5, 6, 7, 8, 5, 6, 7]])  # 5 6 7 repeats at 5..7
    p = tokens.shape[1]
    prev = _pattern(1, p, lambda r, q: max(q - 1, 0))
    dup = _pattern(1, p, lambda r, q: q - 4 if q >= 5 else 0)  # 5->1, 6->2, 7->3: earlier occurrences
    ind = _pattern(1, p, lambda r, q: q - 3 if q >= 5 else 0)  # 5->2, 6->3, 7->4: token after the earlier occurrence
    uniform = _pattern(1, p, lambda r, q: None)
    facts = _facts(tokens, [torch.cat([prev, dup, ind, uniform], dim=1)])
    s_prev, s_dup, s_ind = previous_token_score(facts), duplicate_token_score(facts), induction_score(facts)
    assert s_prev.shape == (1, 4)
    assert s_prev[0].tolist()[:3] == pytest.approx([1.0, 0.0, 0.0])
    assert s_dup[0].tolist()[:3] == pytest.approx([0.0, 1.0, 0.0])
    assert s_ind[0].tolist()[:3] == pytest.approx([0.0, 0.0, 1.0])
    # uniform attention: previous-token = mean over q >= 2 of 1 / (q + 1); duplicate = mean of 1 / (q + 1) over q = 5, 6, 7
    assert float(s_prev[0, 3]) == pytest.approx(sum(1 / (q + 1) for q in range(2, p)) / (p - 2))
    assert float(s_dup[0, 3]) == pytest.approx((1 / 6 + 1 / 7 + 1 / 8) / 3)


def test_answer_position_detectors():
    # IOI-like: IO=3 at 1, S=4 at 2 and 5; answer position 7 (last)
    tokens = torch.tensor([[0, 3, 4, 9, 9, 4, 9, 9]])
    p = tokens.shape[1]
    to_io = _pattern(1, p, lambda r, q: 1 if q == p - 1 else 0)
    to_s2 = _pattern(1, p, lambda r, q: 5 if q == p - 1 else 0)
    half = 0.5 * to_io + 0.5 * _pattern(1, p, lambda r, q: 2 if q == p - 1 else 0)  # IO and S1 alike
    facts = _facts(tokens, [torch.cat([to_io, to_s2, half], dim=1)], answers=torch.tensor([[3]]), foils=torch.tensor([[4]]))
    assert name_mover_score(facts)[0].tolist() == pytest.approx([1.0, -1.0, 0.0])
    assert s_inhibition_score(facts)[0].tolist() == pytest.approx([0.0, 1.0, 0.0])
    assert s_inhibition_score(_facts(tokens, [to_io], answers=torch.tensor([[3]]))) is None  # no foils: does not apply


def test_successor_detector_on_a_hand_built_ov_circuit():
    d, ordinals = 8, [1, 2, 3, 4, 5]
    cfg = SmallTransformerConfig(n_layers=1, n_heads=2, d_model=d, d_head=d, d_vocab=d, n_ctx=8)
    model = SmallTransformer(cfg)
    shift = torch.zeros(d, d)
    for a, b in zip(ordinals, ordinals[1:], strict=False):
        shift[a, b] = 1.0
    with torch.no_grad():
        model.W_E.copy_(torch.eye(d))
        model.W_U.copy_(torch.eye(d))
        attn = model.blocks[0].attn
        attn.W_V.copy_(torch.stack([shift, torch.eye(d)]))  # head 0 maps t to t + 1, head 1 copies
        attn.W_O.copy_(torch.stack([torch.eye(d), torch.eye(d)]))
    tokens = torch.tensor([[0, 1, 2, 3]])
    facts = _facts(tokens, [torch.zeros(1, 2, 4, 4)], info={"ordinal_ids": ordinals}, model=model)
    assert successor_score(facts)[0].tolist() == pytest.approx([1.0, 0.0])
    assert successor_score(_facts(tokens, [torch.zeros(1, 2, 4, 4)], model=model)) is None  # no ordinals


# ---- zoo cards ---------------------------------------------------------------------------------
@pytest.mark.parametrize("name", ["induction-attn-2l", "ioi-attn-2l",
                                  pytest.param("induction-gpt2-2l", marks=pytest.mark.slow),
                                  pytest.param("induction-llama-2l", marks=pytest.mark.slow)])
def test_detectors_rank_each_cards_heads_first(name):
    torch.set_num_threads(1)
    model = load_model(name)
    report = detect_heads(model, load_task(CARD_TASKS[name], model, n_examples=64, seed=0))
    truth = card_roles(name)
    roles = report.roles()
    for role in set(truth.values()):
        expected = {h for h, r in truth.items() if r == role}
        assert set(report.ranking(role)[: len(expected)]) == expected, role
    # measured: on induction-gpt2-2l two of the four induction heads score 0.42 and 0.43 for induction on the task's
    # own prompts (0.63 and 0.75 on the card's repeated random sequences), below the detector's 0.5; they attend to
    # the answer and write it, so the name-mover detector takes them
    other_role = {"induction-gpt2-2l": {"a1.h0": "name-mover", "a1.h3": "name-mover"}}.get(name, {})
    assert {h: roles.get(h) for h in truth} == {**truth, **other_role}
    frame = report.to_frame()
    assert list(frame["role"][frame["head"].isin(list(truth))]) == [other_role.get(h, truth[h]) for h in frame["head"]
                                                                     if h in truth]


def _rename(directory, name):
    import json

    config = json.loads((directory / "config.json").read_text())
    config["name"] = name
    (directory / "config.json").write_text(json.dumps(config))


def test_roles_reach_render_and_diff_for_a_model_without_a_card(tmp_path):
    """A copy of a zoo model with no card: discover stores detected roles; render and diff show them."""
    from acdc_lite.diff import diff
    from acdc_lite.pipeline import DiscoverConfig, run_discover, write_outputs
    from acdc_lite.render import display_roles, to_dot

    torch.set_num_threads(1)
    name = "induction-attn-2l"
    copy = tmp_path / "nocard"
    shutil.copytree(zoo.model_dir(name), copy, ignore=shutil.ignore_patterns("card.json"))
    _rename(copy, "nocard")  # a SmallTransformer names itself from its config: no zoo name, no card
    out = run_discover(DiscoverConfig(model=str(copy), task="induction", n_examples=32), progress=False)
    write_outputs(out, tmp_path / "run")
    c = Circuit.load(tmp_path / "run" / "circuit.json")
    assert c.model.name == "nocard"
    truth = card_roles(name)
    in_circuit = {str(h) for h in c.heads()}
    assert set(truth) <= in_circuit  # the discovered circuit keeps every ground-truth head
    assert c.roles == truth
    assert display_roles(c) == truth  # nothing from a card: the directory has none
    dot = to_dot(c)
    for head, role in truth.items():
        assert f'tooltip="{head}: {role}"' in dot
    d = diff(c, c, align="depth")
    assert any(key.startswith("a:induction") for key in d.scores_a) and "a:previous-token->a:induction<k>" in d.scores_a
    same = diff(c, c).to_dot()  # identity alignment draws the roles on the nodes
    for head, role in truth.items():
        assert f'<B>{head}</B><BR/><FONT POINT-SIZE="9">{role}</FONT>' in same
    other = diff(c, c, roles_b={**truth, "a1.h0": "name-mover"})
    assert other.roles["a1.h0"] == "A: induction / B: name-mover" and other.roles["a0.h3"] == "previous-token"


# ---- logit lens and direct logit attribution ----------------------------------------------------
def _random_task(model, n=6, p=7, seed=3):
    from acdc_lite.models import model_info

    v = model_info(model).d_vocab
    g = torch.Generator().manual_seed(seed)
    clean, corrupt = torch.randint(0, v, (n, p), generator=g), torch.randint(0, v, (n, p), generator=g)
    return Task("random", clean, corrupt, torch.randint(0, v, (n, 2), generator=g),
                foils=torch.randint(0, v, (n, 1), generator=g), answer_pos=torch.randint(2, p, (n,), generator=g))


def test_logit_lens_last_stage_is_the_models_own_output(any_model):
    arch, model = any_model
    task = _random_task(model)
    lens = logit_lens(model, task, batch_size=4)
    with torch.no_grad():
        own = model(task.clean)[torch.arange(len(task)), task.answer_pos].float()
    assert lens.final_logits.shape == own.shape
    assert torch.allclose(lens.final_logits, own, atol=1e-4), arch
    assert lens.labels[0] == "embed" and len(lens.labels) == model.cfg.n_layers + 1
    rank = (own > own.gather(1, task.answers[:, :1])).sum(1)
    assert lens.answer_rank[-1].tolist() == rank.tolist()
    expected = own.gather(1, task.answers).mean(1) - own.gather(1, task.foils).mean(1)
    assert torch.allclose(lens.metric[-1], expected, atol=1e-4)


def test_direct_attribution_adds_up_to_the_logit_difference(any_model):
    arch, model = any_model
    task = _random_task(model)
    a = direct_attribution(model, task, batch_size=4)
    n_heads = model.cfg.n_heads
    assert len(a.components) == 1 + model.cfg.n_layers * (n_heads + (1 if "m0" in a.components else 0)) + 1
    assert torch.allclose(a.values.sum(0), a.metric, atol=1e-4), arch


@pytest.mark.parametrize("arch", ["gpt2", "llama-gqa"])
def test_direct_attribution_per_head_matches_transformer_lens(arch):
    from transformer_lens.tools.analysis import direct_logit_attribution

    from tests.conftest import BUILDERS

    torch.manual_seed(0)
    model = load_model(BUILDERS[arch]())
    task = _random_task(model, p=6)
    task = Task("last", task.clean, task.corrupt, task.answers[:, :1], foils=task.foils)  # TL reads the last position
    ours = direct_attribution(model, task).head_matrix(model.cfg.n_layers, model.cfg.n_heads)
    theirs = direct_logit_attribution(model, task.clean, answer_tokens=task.answers[:, 0],
                                      incorrect_tokens=task.foils[:, 0], unit="head")
    assert torch.allclose(ours.flatten(), theirs.attribution[:-1].mean(1).detach(), atol=1e-4)


def test_card_direct_logit_attribution_is_reproduced():
    model = load_model("ioi-attn-2l")
    card = zoo.card("ioi-attn-2l")
    task = load_task("ioi", model, n_examples=card["task"]["n_examples"], seed=card["task"]["seed"])
    got = direct_attribution(model, task).head_matrix(2, 4)
    assert torch.allclose(got, torch.tensor(card["measurement"]["direct_logit_attribution"]),
                          atol=card["measurement"]["tolerance"]["logit"])


def test_detector_registry_names_match_card_classes():
    classes = {cls for name in CARD_TASKS for cls in card_roles(name).values()}
    assert classes <= set(DETECTORS)
