"""The zoo's task languages, tokenizers and card measurements, on models built fresh in each test."""

import pytest
import torch

from acdc_lite import load_model, model_info
from acdc_lite.transformer import SmallTransformer, SmallTransformerConfig
from acdc_lite.zoo import data, measure, train
from acdc_lite.zoo.data import (
    ADDITION_WORDS,
    AdditionRecipe,
    GreaterThanRecipe,
    addition_batch,
    addition_held_out,
    greater_than_batch,
    greater_than_held_out,
    greater_than_vocab,
)


@pytest.fixture(scope="module", autouse=True)
def one_thread():
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


def test_greater_than_sentences_end_in_a_later_year_and_skip_held_out_pairs():
    vocab = greater_than_vocab()
    nouns = data._greater_than_module().NOUNS
    tokens, weights = greater_than_batch(300, 20, GreaterThanRecipe(), torch.Generator().manual_seed(3))
    for row, w in zip(tokens.tolist(), weights, strict=True):
        words = [vocab[i] for i in row if vocab[i] != "<pad>"]
        assert words[0] == "<bos>" and words[-2] == "17"
        start, end = int(words[-6]), int(words[-1])
        assert words[-7] == "17" and 1 <= start < end <= 99
        assert int((w == 1).nonzero()) == len(words) - 2  # weight 1 exactly on predicting the end year
        assert not greater_than_held_out(nouns.index(words[words.index("lasted") - 1]), start)


def test_addition_sentences_hold_the_sum_digit_by_digit_and_skip_held_out_pairs():
    tokens, weights = addition_batch(300, 16, AdditionRecipe(), torch.Generator().manual_seed(4))
    for row, w in zip(tokens.tolist(), weights, strict=True):
        words = [ADDITION_WORDS[i] for i in row if ADDITION_WORDS[i] != "<pad>"]
        a, b = int("".join(words[3:5])), int("".join(words[6:8]))
        assert "".join(words[11:]) == str(a + b)
        assert (w == 1).sum() == len(str(a + b))  # every digit of the sum, nothing else
        assert not addition_held_out(a, b)


def test_tokenizers_split_years_into_pairs_and_numbers_into_digits():
    years = train.word_tokenizer(greater_than_vocab(), "year-pairs")
    ids = years.encode("The war lasted from the year 1732 to the year 17", add_special_tokens=False)
    assert years.convert_ids_to_tokens(ids) == ["The", "war", "lasted", "from", "the", "year", "17", "32", "to", "the",
                                                 "year", "17"]
    digits = train.word_tokenizer(ADDITION_WORDS, "digits")
    ids = digits.encode("What is 57 + 12? Answer: 169", add_special_tokens=False)
    assert digits.convert_ids_to_tokens(ids) == ["What", "is", "5", "7", "+", "1", "2", "?", "Answer", ":", "1", "6", "9"]


def _fresh_hf(tmp_path, name: str):
    """A randomly initialised (untrained) model of recipe `name`, saved with its tokenizer and loaded hooked."""
    recipe = train.RECIPES[name]
    torch.manual_seed(0)
    raw = train.build_model(recipe, name).eval()
    train.write(raw, {}, tmp_path, train.language(recipe))
    return raw, load_model(str(tmp_path))


def test_greater_than_task_is_well_formed_on_the_zoo_vocabulary(tmp_path):
    gt = measure.builtin_task_module("greater_than")
    _, model = _fresh_hf(tmp_path, "greater-than-gpt2-2l")
    task = gt.build(model, n_examples=20, seed=1)
    vocab = greater_than_vocab()
    pos = task.info["year_position"]
    for row, corrupt, yy in zip(task.clean.tolist(), task.corrupt.tolist(), task.info["start_years"], strict=True):
        assert vocab[row[pos]] == yy and vocab[row[pos - 1]] == "17" and vocab[corrupt[pos]] == "01"
    assert model_info(model).d_vocab != model_info(model).d_model  # TL4's weight processing needs this


def test_addition_answer_is_the_first_digit_of_the_sum(tmp_path):
    add = measure.builtin_task_module("addition")
    _, model = _fresh_hf(tmp_path, "addition-llama-2l")
    task = add.build(model, n_examples=20, seed=2)
    for (a, b), answer, row in zip(task.info["operands"], task.answers[:, 0].tolist(), task.clean.tolist(), strict=True):
        assert ADDITION_WORDS[answer] == str(a + b)[0]
        assert [ADDITION_WORDS[i] for i in row[3:8]] == [*str(a), "+", *str(b)]


def test_hooked_zoo_models_match_their_source(tmp_path):
    """The bridge reproduces the Hugging Face model it wraps (d_vocab != d_model keeps TL4's processing exact)."""
    raw, model = _fresh_hf(tmp_path, "induction-llama-gqa-2l")
    gap = train._hooked_vs_source(model, raw, train.RECIPES["induction-llama-gqa-2l"])
    assert gap["max_abs_logprob_diff"] < 1e-4
    assert model_info(model).n_kv_heads == 2 and model_info(model).n_heads == 4


def _small(n_layers=2, d_mlp=0, seed=0):
    torch.manual_seed(seed)
    words = ["<bos>"] + [f"t{i}" for i in range(1, 20)]
    return SmallTransformer(SmallTransformerConfig(n_layers=n_layers, n_heads=2, d_model=24, d_head=8, d_vocab=20,
                                                   n_ctx=12, d_mlp=d_mlp, vocab=words)).eval()


def _random_task(model, n=12, p=8, seed=0):
    from acdc_lite import Task

    g = torch.Generator().manual_seed(seed)
    d = model_info(model).d_vocab
    return Task("random", torch.randint(0, d, (n, p), generator=g), torch.randint(0, d, (n, p), generator=g),
                torch.randint(0, d, (n, 1), generator=g), torch.randint(0, d, (n, 1), generator=g))


def test_probe_node_effects_equal_hand_written_head_ablation():
    model = _small(d_mlp=32)
    task = _random_task(model)
    probe = measure.CircuitProbe(model, task)
    by_hooks = measure.head_ablation_effects(model, task)
    effects = probe.node_effects()
    for layer in range(2):
        for head in range(2):
            assert effects[f"a{layer}.h{head}"] == pytest.approx(float(by_hooks[layer, head]), abs=1e-4)
    assert set(effects) == {"a0.h0", "a0.h1", "m0", "a1.h0", "a1.h1", "m1"}


def test_probe_invariants():
    """Keeping every node reproduces the model; in a 1-layer attention-only model a head's only edge out goes to the
    logits, so removing that edge equals ablating the head; ablating nothing has no effect."""
    model = _small(n_layers=1)
    task = _random_task(model, seed=1)
    probe = measure.CircuitProbe(model, task)
    assert probe.faithfulness(probe.only_nodes(probe.components)) == pytest.approx(1.0, abs=1e-5)
    assert float(probe.effects(probe.without_nodes([])[None])[0]) == pytest.approx(0.0, abs=1e-5)
    nodes = probe.node_effects()
    edges = probe.edge_effects(["a0.h0->logits", "a0.h1->logits"])
    assert edges["a0.h0->logits"] == pytest.approx(nodes["a0.h0"], abs=1e-5)
    assert edges["a0.h1->logits"] == pytest.approx(nodes["a0.h1"], abs=1e-5)
    pairs = probe.pair_effects(["a0.h0", "a0.h1"])
    assert pairs["a0.h0+a0.h1"]["effect"] == pytest.approx(1.0 - probe.faithfulness(probe.only_nodes([])), abs=1e-5)


def test_probe_masks_respect_key_value_groups(tmp_path):
    _, model = _fresh_hf(tmp_path, "induction-llama-gqa-2l")
    task = _random_task(model, n=6, p=10, seed=2)
    probe = measure.CircuitProbe(model, task)
    assert probe.kv_group == 2
    # one head of a group in the circuit: its group's k/v inputs are kept for both heads (else the patcher refuses)
    f = probe.faithfulness(probe.only_nodes(["a0.h0", "a1.h3"]))
    assert 0.0 <= abs(f) < 10
    assert probe.faithfulness(probe.only_nodes(probe.components)) == pytest.approx(1.0, abs=1e-4)
    effects = probe.edge_effects(["a0.h0->a1.h2<k>"])
    assert set(effects) == {"a0.h0->a1.h2<k>"}


def test_circuit_measurements_claim_nodes_by_their_ablation_effect():
    model = _small(d_mlp=32, seed=3)
    task = _random_task(model, seed=3)
    probe = measure.CircuitProbe(model, task)
    scores = {"anything": torch.full((2, 2), 0.7)}
    truth, m = measure.circuit_measurements(probe, scores, min_effect=0.1)
    effects = m["node_ablation_effects"]
    assert {t["node"] for t in truth} == {n for n, e in effects.items() if e >= 0.1}
    for t in truth:
        assert t["class"] == ("mlp" if t["node"].startswith("m") else "anything")
    claimed = {e["edge"] for e in m["edges"]}
    nodes = {t["node"] for t in truth} | {"input", "logits"}
    assert all(e.split("->")[0] in nodes and e.split("->")[1].split("<")[0] in nodes for e in claimed)
    assert m["circuit_faithfulness_nodes"] == pytest.approx(probe.faithfulness(probe.only_nodes([t["node"] for t in truth])),
                                                            abs=1e-3)


def test_a_shortened_training_run_reproduces_bit_for_bit(tmp_path, monkeypatch):
    """`zoo train` is deterministic from its seed: two shortened runs write identical weights and the card's measurements."""
    monkeypatch.setattr(train, "CARD_TEXT_TASK", {"n_examples": 16, "seed": 0})
    _, card_a = train.train("greater-than-gpt2-2l", seed=0, out_dir=tmp_path / "a", steps=4)
    _, card_b = train.train("greater-than-gpt2-2l", seed=0, out_dir=tmp_path / "b", steps=4)
    assert (tmp_path / "a" / "model.safetensors").read_bytes() == (tmp_path / "b" / "model.safetensors").read_bytes()
    assert card_a["measurement"]["circuit"] == card_b["measurement"]["circuit"]
    assert card_a["training"]["steps"] == 4 and card_a["hooked_vs_source"]["max_abs_logprob_diff"] < 1e-4
    reloaded = load_model(str(tmp_path / "a"))
    assert model_info(reloaded).d_vocab == len(greater_than_vocab())


def test_docstring_sentences_document_arguments_in_order():
    vocab = data.docstring_vocab()
    tokens, weights = data.docstring_batch(200, 56, data.DocstringRecipe(), torch.Generator().manual_seed(5))
    for row, w in zip(tokens.tolist(), weights, strict=True):
        words = [vocab[i] for i in row]
        args = words[words.index("self") + 2:words.index(")"):2]
        assert 2 <= len(args) <= 6 and len(set(args)) == len(args)
        documented = [words[p + 1] for p in (w == 1).nonzero().flatten().tolist()]
        assert documented and documented == args[:len(documented)]  # the next name after ':param' is the next argument
        assert all(words[p] == ":param" for p in (w == 1).nonzero().flatten().tolist())


def test_docstring_task_is_well_formed_on_the_zoo_vocabulary():
    recipe = train.RECIPES["docstring-attn-2l"]
    torch.manual_seed(0)
    model = train.build_model(recipe, "docstring-attn-2l").eval()
    task = measure.builtin_task_module("docstring").build(model, n_examples=10, seed=0)
    assert task.seq_len <= recipe.seq_len
    vocab = data.docstring_vocab()
    for row, answer in zip(task.clean.tolist(), task.answers[:, 0].tolist(), strict=True):
        words = [vocab[i] for i in row]
        args = words[words.index("self") + 2:words.index(")"):2]
        assert vocab[answer] == args[2] and words[-1] == ":param"


def test_benchmark_row_scores_nodes_with_mlps_and_edges():
    from acdc_lite.benchmark import search_row
    from acdc_lite.graph import ModelGraph

    model = _small(d_mlp=32, seed=4)
    task = _random_task(model, n=16, seed=4)
    row, result = search_row("small", model, task, "eap", {"a0.h0", "m1"}, None, set(), True, top_n=30)
    graph = ModelGraph.from_model(model)
    found = {str(e) for e in graph.edges_from_mask(result.kept)}
    nodes = {n for e in found for n in (e.split("->")[0], e.split("->")[1].split("<")[0])} - {"input", "logits"}
    assert nodes and row["node_precision"] == round(len(nodes & {"a0.h0", "m1"}) / len(nodes), 2)
    assert row["edge_recall"] != row["edge_recall"]  # NaN: no ground-truth edges
    row, _ = search_row("small", model, task, "eap", {"a0.h0", "m1"}, None, found, True, top_n=30)
    assert row["edge_precision"] == 1.0 and row["edge_recall"] == 1.0 and row["edge_roc_auc"] == 1.0
    assert -0.5 < row["completeness"] < 1.5 and "faithfulness" in row


def _zoo_model_for(task_name: str) -> str | None:
    from acdc_lite import zoo

    return next((n for n in zoo.names() if zoo.card(n)["task"]["name"] == task_name), None)


@pytest.mark.parametrize("task_name", ["induction", "ioi", "greater-than", "addition", "docstring"])
def test_every_built_in_task_runs_end_to_end_on_a_shipped_model(task_name, tmp_path):
    """`acdc-lite discover --model ZOO --task TASK`, offline, on a zoo model trained for the task."""
    from typer.testing import CliRunner

    from acdc_lite.cli import app

    name = _zoo_model_for(task_name)
    assert name is not None, f"no zoo model does {task_name}"
    out = tmp_path / "run"
    res = CliRunner().invoke(app, ["discover", "--model", name, "--task", task_name, "--method", "eap", "--n-examples", "16",
                                   "--out", str(out), "--quiet"])
    assert res.exit_code == 0, res.output
    import json

    circuit = json.loads((out / "circuit.json").read_text())
    assert circuit["edges"] and circuit["metrics"]["faithfulness"] > 0.5
