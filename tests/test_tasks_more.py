"""The greater-than, docstring and addition tasks, and the counterfactual-pair generator.

Word-level vocabularies and small HF tokenizers are built here; "oracle" models are fake modules
that read the prompt's words and answer by the rule the task is about, so the corruption must
remove exactly the information the answer depends on.
"""

import re
from collections import Counter
from types import SimpleNamespace

import pytest
import torch
from torch import nn

from acdc_lite import SmallTransformer, SmallTransformerConfig, TaskError, load_model, load_task
from acdc_lite.counterfactual import candidate_pairs, counterfactual_task
from acdc_lite.task import builtin_tasks, check_signal
from acdc_lite.zoo.measure import builtin_task_module

torch.set_num_threads(1)

greater_than = builtin_task_module("greater_than")
docstring = builtin_task_module("docstring")
addition = builtin_task_module("addition")

YEARS = [f"{y:02d}" for y in range(100)]
GT_WORDS = ["<bos>", "The", "lasted", "from", "the", "year", "to", "17", *YEARS, "war", "reign", "siege", "voyage"]
DOC_WORDS = ["<bos>", "def", "(", "self", ",", ")", ":", '"""', ":param", *docstring.ARGS[:12], *docstring.WORDS[:6],
             *docstring.FUNCTIONS[:3]]
ADD_WORDS = ["<bos>", "What", "is", "+", "?", "Answer", ":", *[str(n) for n in range(10, 80)]]


def _word_model(words, n_ctx=64):
    words = list(dict.fromkeys(words))
    cfg = SmallTransformerConfig(n_layers=1, n_heads=2, d_model=16, d_head=8, d_vocab=len(words), n_ctx=n_ctx, vocab=words)
    torch.manual_seed(0)
    return load_model(SmallTransformer(cfg))


class _Oracle(nn.Module):
    """Reads each prompt's words; `rule(words) -> {word: logit}` sets the last position's logits (others 0)."""

    def __init__(self, words, rule):
        super().__init__()
        self.cfg = SimpleNamespace(vocab=list(dict.fromkeys(words)))
        self.index = {w: i for i, w in enumerate(self.cfg.vocab)}
        self.rule = rule

    def forward(self, tokens):
        out = torch.zeros(*tokens.shape, len(self.cfg.vocab))
        for i, row in enumerate(tokens.tolist()):
            for word, logit in self.rule([self.cfg.vocab[t] for t in row]).items():
                out[i, -1, self.index[word]] = logit
        return out


def _hf_model(pattern, corpus):
    """A SmallTransformer with an HF tokenizer: `pattern` splits text into pieces, each piece one token."""
    from tokenizers import Regex, Tokenizer, decoders
    from tokenizers.models import WordLevel
    from tokenizers.pre_tokenizers import Split
    from transformers import PreTrainedTokenizerFast

    split = Split(Regex(pattern), behavior="isolated")
    pieces = ["<|endoftext|>", "<unk>"]
    for text in corpus:
        pieces += [p for p, _ in split.pre_tokenize_str(text)]
    pieces = list(dict.fromkeys(pieces))
    tok = Tokenizer(WordLevel({p: i for i, p in enumerate(pieces)}, unk_token="<unk>"))
    tok.pre_tokenizer = split
    tok.decoder = decoders.Fuse()  # pieces carry their own spaces
    hf_tok = PreTrainedTokenizerFast(tokenizer_object=tok, bos_token="<|endoftext|>", unk_token="<unk>")
    model = SmallTransformer(SmallTransformerConfig(n_layers=1, n_heads=2, d_model=16, d_head=8, d_vocab=len(pieces), n_ctx=64))
    model.tokenizer = hf_tok
    return model


# GPT-2's pre-tokenizer, with numbers cut into chunks of at most two digits (as GPT-2's BPE does for " 1732")
GPT2_LIKE = r" ?[A-Za-z_]+| ?[0-9]{1,2}| ?[^\sA-Za-z0-9]+|\s+(?!\S)|\s+"
# Llama-like: one token per digit, spaces on their own
DIGITS = r"[A-Za-z_]+|[0-9]|\s|[^\sA-Za-z0-9]+"


def _corpus(words, extra=()):
    return [w for word in words for w in (word, " " + word)] + [str(d) for d in range(10)] + list(extra)


def _no_unknown(task, model):
    unk = model.tokenizer.unk_token_id
    for t in (task.clean, task.corrupt, task.answers, task.foils):
        assert not (t == unk).any()


def _gpt2_model():
    transformers = pytest.importorskip("transformers")
    try:
        tok = transformers.AutoTokenizer.from_pretrained("gpt2", local_files_only=True)
    except Exception as e:  # no hub access and no local copy
        pytest.skip(f"GPT-2's tokenizer is not available offline here ({type(e).__name__})")
    model = SmallTransformer(SmallTransformerConfig(n_layers=1, n_heads=2, d_model=16, d_head=8, d_vocab=len(tok), n_ctx=64))
    model.tokenizer = tok
    return model, tok


def _logits_with(task, values):
    """Logits [N, P, V] that are 0 except `values` [N, V] at each example's answer position."""
    logits = torch.zeros(len(task), task.seq_len, values.shape[1])
    logits[torch.arange(len(task)), task.answer_pos] = values
    return logits


# ---- all three ------------------------------------------------------------------------------
BUILD = {"greater-than": (greater_than, GT_WORDS), "docstring": (docstring, DOC_WORDS), "addition": (addition, ADD_WORDS)}


def test_registered_as_builtin_tasks():
    assert {"greater-than", "docstring", "addition"} <= set(builtin_tasks())


@pytest.mark.parametrize("name", list(BUILD))
def test_builds_for_a_word_level_model_via_load_task(name):
    model = _word_model(BUILD[name][1])
    task = load_task(name, model, n_examples=6, seed=1, check=False)
    task.check_vocab(len(model.cfg.vocab))
    assert task.name == name and len(task) == 6 and task.clean.shape == task.corrupt.shape
    assert not torch.equal(task.clean, task.corrupt)
    assert (task.clean[:, 0] == 0).all() and (task.corrupt[:, 0] == 0).all()  # BOS once, first
    assert not (task.clean[:, 1:] == 0).any()
    again = BUILD[name][0].build(model, n_examples=6, seed=1)
    assert torch.equal(task.clean, again.clean) and torch.equal(task.corrupt, again.corrupt)
    assert not torch.equal(task.clean, BUILD[name][0].build(model, n_examples=6, seed=2).clean)


@pytest.mark.parametrize("name", list(BUILD))
def test_needs_at_least_one_example(name):
    with pytest.raises(TaskError, match="n_examples must be at least 1, got 0"):
        BUILD[name][0].build(_word_model(BUILD[name][1]), n_examples=0, seed=0)


@pytest.mark.parametrize("name", list(BUILD))
def test_refuses_a_model_without_text(name):
    cfg = SmallTransformerConfig(n_layers=1, n_heads=2, d_model=16, d_head=8, d_vocab=64, n_ctx=32)
    with pytest.raises(TaskError, match="neither a tokenizer nor a word-level vocabulary"):
        BUILD[name][0].build(SmallTransformer(cfg), n_examples=4, seed=0)


@pytest.mark.parametrize("name", list(BUILD))
def test_gpt2_tokenizer(name):
    model, tok = _gpt2_model()
    task = BUILD[name][0].build(model, n_examples=20, seed=0)
    assert task.clean.shape == task.corrupt.shape
    assert (task.clean[:, 0] == tok.bos_token_id).all()
    last = tok.decode(task.clean[0, 1:].tolist())
    assert last.endswith({"greater-than": " 17", "docstring": ":param", "addition": "Answer:"}[name])


# ---- greater-than ---------------------------------------------------------------------------
def test_greater_than_word_level_structure():
    model = _word_model(GT_WORDS)
    task = greater_than.build(model, n_examples=40, seed=0)
    words = model.cfg.vocab
    pos = task.info["year_position"]
    starts = set()
    for i in range(40):
        clean, corrupt = [words[t] for t in task.clean[i]], [words[t] for t in task.corrupt[i]]
        assert clean[1] == "The" and clean[2] in greater_than.NOUNS and clean[3:8] == ["lasted", "from", "the", "year", "17"]
        assert clean[-4:] == ["to", "the", "year", "17"] and clean[pos - 1] == "17"
        yy = int(clean[pos])
        starts.add(yy)
        assert 2 <= yy <= 98 and corrupt[pos] == "01"
        assert [j for j in range(len(clean)) if clean[j] != corrupt[j]] == [pos]  # only the year differs
        later = sorted(int(words[t]) for t in task.answers[i] if t >= 0)
        earlier = sorted(int(words[t]) for t in task.foils[i] if t >= 0)
        assert later == list(range(yy + 1, 100)) and earlier == list(range(0, yy + 1))
    assert len(starts) > 20


def test_greater_than_metric_sign():
    task = greater_than.build(_word_model(GT_WORDS), n_examples=8, seed=0)
    n_vocab = len(list(dict.fromkeys(GT_WORDS)))

    def toward(ids):  # logit 20 on each example's ids (padding -1 left out)
        out = torch.zeros(8, n_vocab + 1)
        return out.scatter(1, torch.where(ids >= 0, ids, n_vocab), 20.0)[:, :n_vocab]

    toward_later, toward_earlier = toward(task.answers), toward(task.foils)
    metric = task.metric()
    assert task.default_metric == "prob_diff"
    assert (metric(_logits_with(task, toward_later), torch.arange(8)) > 0.99).all()
    assert (metric(_logits_with(task, toward_earlier), torch.arange(8)) < -0.99).all()


def _later_years(words):
    yy = int(words[words.index("17") + 1])
    return {f"{y:02d}": 10.0 for y in range(yy + 1, 100)}


def test_greater_than_oracle_loses_the_answer_under_corruption():
    oracle = _Oracle(GT_WORDS, _later_years)
    task = greater_than.build(oracle, n_examples=30, seed=4)
    clean, corrupt = check_signal(oracle, task)
    assert clean > 0.99 and corrupt < clean - 0.3


def test_greater_than_names_missing_years():
    words = [w for w in GT_WORDS if w not in ("37", "64")]
    with pytest.raises(TaskError, match="37, 64"):
        greater_than.build(_word_model(words), n_examples=4, seed=0)
    with pytest.raises(TaskError, match="lasted"):
        greater_than.build(_word_model([w for w in GT_WORDS if w != "lasted"]), n_examples=4, seed=0)


def test_greater_than_needs_nouns():
    with pytest.raises(TaskError, match="at least 3 nouns"):
        greater_than.build(_word_model([w for w in GT_WORDS if w not in ("war", "reign")]), n_examples=4, seed=0)


def test_greater_than_gpt2_like_tokenizer_skips_years_that_merge():
    # " 1750" is one token under this tokenizer, so 1750 cannot be split into " 17" + "50"
    model = _hf_model(r" ?1750|" + GPT2_LIKE, _corpus(greater_than.NOUNS + ["The", "lasted", "from", "the", "year", "to"],
                                                      YEARS + [f" 17{y}" for y in YEARS]))
    tok = model.tokenizer
    task = greater_than.build(model, n_examples=300, seed=0)
    _no_unknown(task, model)
    pos = task.info["year_position"]
    assert tok.decode(task.clean[0, 1:pos].tolist()).endswith(" lasted from the year 17")
    starts = [tok.decode([t]) for t in task.clean[:, pos].tolist()]
    assert "50" not in starts and {"49", "51"} <= set(starts)
    assert {tok.decode([t]) for t in task.corrupt[:, pos].tolist()} == {"01"}
    assert {tok.decode([t]) for t in task.answers[0] if t >= 0} == {f"{y:02d}" for y in range(int(starts[0]) + 1, 100)}


# ---- docstring ------------------------------------------------------------------------------
def _def_args(words):
    start, end = words.index("self") + 2, words.index(")")
    return words[start:end:2]


def _documented(words):
    return [words[i + 1] for i, w in enumerate(words[:-1]) if w == ":param"]


def test_docstring_word_level_structure():
    model = _word_model(DOC_WORDS)
    task = docstring.build(model, n_examples=30, seed=0)
    words = model.cfg.vocab
    for i in range(30):
        clean, corrupt = [words[t] for t in task.clean[i]], [words[t] for t in task.corrupt[i]]
        args, renamed = _def_args(clean), _def_args(corrupt)
        assert len(args) == 4 and len(set(args) | set(renamed)) == 8  # eight distinct names
        assert _documented(clean) == _documented(corrupt) == args[:2] and clean[-1] == ":param"
        differ = [j for j in range(len(clean)) if clean[j] != corrupt[j]]
        assert [clean[j] for j in differ] == args  # only the definition's names changed
        assert words[task.answers[i, 0]] == args[2]
        assert sorted(words[t] for t in task.foils[i]) == sorted([args[0], args[1], args[3], *renamed])


def test_docstring_metric_is_answer_minus_the_top_wrong_name():
    task = docstring.build(_word_model(DOC_WORDS), n_examples=4, seed=0)
    n_vocab = len(list(dict.fromkeys(DOC_WORDS)))
    values = torch.zeros(4, n_vocab)
    values[torch.arange(4), task.answers[:, 0]] = 3.0
    values[torch.arange(4), task.foils[:, 0]] = 1.0
    values[torch.arange(4), task.foils[:, 5]] = 2.0  # the most distracting one
    metric = task.metric()
    assert task.default_metric == "logit_diff_max"
    assert torch.allclose(metric(_logits_with(task, values), torch.arange(4)), torch.full((4,), 1.0))
    values[torch.arange(4), task.foils[:, 2]] = 4.5
    assert torch.allclose(metric(_logits_with(task, values), torch.arange(4)), torch.full((4,), -1.5))
    assert torch.allclose(metric(_logits_with(task, values)[[2]], torch.tensor([2])), torch.tensor([-1.5]))


def _next_undocumented(words):
    documented = _documented(words)
    return {next(a for a in _def_args(words) if a not in documented): 5.0}


def test_docstring_oracle_loses_the_answer_under_corruption():
    oracle = _Oracle(DOC_WORDS, _next_undocumented)
    task = docstring.build(oracle, n_examples=20, seed=1)
    clean, corrupt = check_signal(oracle, task)
    assert clean == pytest.approx(5.0) and corrupt == pytest.approx(-5.0)


def test_docstring_errors_name_what_is_missing():
    with pytest.raises(TaskError, match=":param"):
        docstring.build(_word_model([w for w in DOC_WORDS if w != ":param"]), n_examples=4, seed=0)
    few = [w for w in DOC_WORDS if w not in docstring.ARGS[5:]]
    with pytest.raises(TaskError, match="at least 8 argument names .* found 5"):
        docstring.build(_word_model(few), n_examples=4, seed=0)


def test_docstring_gpt2_like_tokenizer():
    model = _hf_model(GPT2_LIKE, _corpus(docstring.ARGS + docstring.WORDS + docstring.FUNCTIONS,
                                         ['def f(self, a, b):\n    """x y\n\n    :param a: x y\n    :param']))
    tok = model.tokenizer
    task = docstring.build(model, n_examples=10, seed=0)
    _no_unknown(task, model)
    text = tok.decode(task.clean[0, 1:].tolist())
    match = re.fullmatch(r'def \w+\(self, (\w+), (\w+), (\w+), (\w+)\):\n    """\w+ \w+ \w+\n\n'
                         r'    :param \1: \w+ \w+\n    :param \2: \w+ \w+\n    :param', text)
    assert match, text
    assert tok.decode([int(task.answers[0, 0])]) == " " + match.group(3)


# ---- addition -------------------------------------------------------------------------------
def _sum_of(words):
    at = words.index("+")
    return str(int(words[at - 1]) + int(words[at + 1]))


def test_addition_word_level_structure():
    model = _word_model(ADD_WORDS)
    task = addition.build(model, n_examples=30, seed=0)
    words = model.cfg.vocab
    for i in range(30):
        clean, corrupt = [words[t] for t in task.clean[i]], [words[t] for t in task.corrupt[i]]
        assert " ".join(clean[1:]).startswith("What is ") and clean[-3:] == ["?", "Answer", ":"]
        assert words[task.answers[i, 0]] == _sum_of(clean) and words[task.foils[i, 0]] == _sum_of(corrupt)
        assert task.answers[i, 0] != task.foils[i, 0]
        at = clean.index("+")
        assert clean[at - 1] != corrupt[at - 1] and clean[at + 1] != corrupt[at + 1]  # both operands corrupted
        assert all(10 <= int(w) <= 99 for w in (clean[at - 1], clean[at + 1], corrupt[at - 1], corrupt[at + 1]))


def test_addition_oracle_loses_the_answer_under_corruption():
    oracle = _Oracle(ADD_WORDS, lambda words: {_sum_of(words): 4.0})
    task = addition.build(oracle, n_examples=20, seed=2)
    clean, corrupt = check_signal(oracle, task)
    assert clean == pytest.approx(4.0) and corrupt == pytest.approx(-4.0)


def test_addition_errors_name_what_is_missing():
    with pytest.raises(TaskError, match="Answer"):
        addition.build(_word_model([w for w in ADD_WORDS if w != "Answer"]), n_examples=4, seed=0)
    high = ADD_WORDS[:7] + [str(n) for n in range(90, 100)]  # every sum is 180 or more, not a word
    with pytest.raises(TaskError, match="found 0 such pair"):
        addition.build(_word_model(high), n_examples=4, seed=0)


def test_addition_gpt2_like_tokenizer_answers_with_the_first_token():
    corpus = _corpus(["What", "is", "Answer"], ["What is 10 + 10? Answer:"] + [f" {n}" for n in range(10, 200)])
    model = _hf_model(GPT2_LIKE, corpus)
    tok = model.tokenizer
    task = addition.build(model, n_examples=40, seed=0)
    _no_unknown(task, model)
    multi = 0
    for i in range(40):
        text = tok.decode(task.clean[i, 1:].tolist())
        a, b = map(int, re.fullmatch(r"What is (\d\d) \+ (\d\d)\? Answer:", text).groups())
        first = tok.decode([int(task.answers[i, 0])])
        assert first == f" {a + b}"[:3]  # " 69", or " 12" of " 123"
        multi += a + b >= 100
    assert multi > 0 and (task.answers != task.foils).all()


def test_addition_digit_tokenizer_moves_the_space_into_the_prompt():
    model = _hf_model(DIGITS, _corpus(["What", "is", "Answer"], ["What is 10 + 10? Answer: 1"]))
    tok = model.tokenizer
    task = addition.build(model, n_examples=20, seed=0)
    _no_unknown(task, model)
    assert {tok.decode([t]) for t in task.clean[:, -1].tolist()} == {" "}
    for i in range(20):
        a, b = map(int, re.fullmatch(r"What is (\d\d) \+ (\d\d)\? Answer: ", tok.decode(task.clean[i, 1:].tolist())).groups())
        assert tok.decode([int(task.answers[i, 0])]) == str(a + b)[0]
    assert (task.answers != task.foils).all()


# ---- counterfactual pairs -------------------------------------------------------------------
class _Rule(nn.Module):
    """Predicts `rule(row)` (a token id) at the last position of each row, with a margin of 1."""

    def __init__(self, rule, d_vocab=40):
        super().__init__()
        self.rule, self.d_vocab = rule, d_vocab

    def forward(self, tokens):
        out = torch.zeros(*tokens.shape, self.d_vocab)
        for i, row in enumerate(tokens.tolist()):
            out[i, -1, self.rule(row)] = 1.0
        return out


def _ids_template(value, rng):
    """[BOS, filler, value, filler, 3] -> answer value + 20; fillers from rng, shared by clean and corrupt."""
    return [0, rng.randrange(10, 20), value, rng.randrange(10, 20), 3], value + 20


def _right_if_even(row):
    return row[2] + 20 if row[2] % 2 == 0 else row[2] + 21


def test_counterfactual_keeps_exactly_the_pairs_the_model_gets_right():
    model = _Rule(_right_if_even)
    task = counterfactual_task(model, _ids_template, range(4, 10), position=2, n_examples=25, seed=3, batch_size=7)
    candidates = list(candidate_pairs(_ids_template, range(4, 10), 2, seed=3, limit=task.info["candidates"]))
    expected = [p for p in candidates if p.clean[2] % 2 == 0][:25]
    assert task.clean.tolist() == [list(p.clean) for p in expected]
    assert task.corrupt.tolist() == [list(p.corrupt) for p in expected]
    assert (task.clean[:, 2] % 2 == 0).all() and (task.answers[:, 0] == task.clean[:, 2] + 20).all()
    assert (task.foils[:, 0] == task.corrupt[:, 2] + 20).all()  # the corrupted prompt's answer
    differ = (task.clean != task.corrupt).nonzero()[:, 1]
    assert (differ == 2).all() and len(differ) == 25
    assert 0.3 < task.info["clean_accuracy"] < 0.7
    clean, corrupt = check_signal(model, task)
    assert clean == pytest.approx(1.0) and corrupt < 0


def test_counterfactual_text_template_on_a_word_model():
    words = ["<bos>", "the", "cat", "dog", "cow", "says", "meow", "woof", "moo", "loud", "soft"]
    sound = {"cat": "meow", "dog": "woof", "cow": "moo"}

    def template(animal, rng):
        return f"the {rng.choice(['loud', 'soft'])} {animal} says", sound[animal]

    oracle = _Oracle(words, lambda w: {sound[w[3]]: 2.0} if w[3] != "cow" else {"loud": 2.0})  # wrong about cows
    task = counterfactual_task(oracle, template, list(sound), position=3, n_examples=12, seed=0)
    vocab = oracle.cfg.vocab
    assert (task.clean[:, 0] == 0).all() and task.seq_len == 5  # BOS + 4 words; position 3 counts BOS
    assert {vocab[t] for t in task.clean[:, 3].tolist()} == {"cat", "dog"}
    assert all(vocab[int(task.answers[i, 0])] == sound[vocab[int(task.clean[i, 3])]] for i in range(12))
    assert torch.equal(task.clean[:, 2], task.corrupt[:, 2])  # the rng's choice is shared


def test_counterfactual_drops_malformed_pairs_and_says_why():
    def shifting(value, rng):  # the value changes two positions
        return [0, value, value, 3], value

    with pytest.raises(TaskError, match=r"found 0 of the 4 wanted in 30 candidates \(dropped: 30 not differing at exactly"):
        counterfactual_task(_Rule(lambda row: row[1]), shifting, [5, 6, 7], position=1, n_examples=4, max_candidates=30)

    def growing(value, rng):  # different lengths
        return [0] * value + [1], value

    stats = Counter()
    assert not list(candidate_pairs(growing, [2, 3], 1, limit=10, stats=stats))
    assert stats == {"drawn": 10, "different length": 10}


def test_counterfactual_errors():
    model = _Rule(_right_if_even)
    with pytest.raises(TaskError, match="the model got 0 of"):
        counterfactual_task(model, _ids_template, [5, 7, 9], position=2, n_examples=4, max_candidates=50)
    with pytest.raises(TaskError, match="at least two different values"):
        counterfactual_task(model, _ids_template, [4, 4], position=2, n_examples=4)
    with pytest.raises(TaskError, match="at least 1"):
        counterfactual_task(model, _ids_template, [4, 6], position=2, n_examples=0)
    with pytest.raises(TaskError, match="need a model"):
        next(candidate_pairs(lambda v, rng: (f"the {v}", "x"), ["a", "b"], 1))
    same = Counter()
    assert not list(candidate_pairs(lambda v, rng: ([0, v, 3], 7), [4, 6], 1, limit=5, stats=same))
    assert same["same answer"] == 5


def test_counterfactual_stops_at_n_examples():
    calls = []

    def counting(value, rng):
        calls.append(value)
        return _ids_template(value, rng)

    task = counterfactual_task(_Rule(lambda row: row[2] + 20), counting, range(4, 10), position=-3, n_examples=5, seed=0,
                               batch_size=5)
    assert len(task) == 5 and task.info["candidates"] == 5 and len(calls) == 10  # one batch, clean + corrupt each
    first = list(candidate_pairs(_ids_template, range(4, 10), -3, seed=0, limit=5))
    assert task.clean.tolist() == [list(p.clean) for p in first]


def test_describe_leaves_per_example_lists_out():
    """A circuit file records the task's settings, not one entry per prompt."""
    from acdc_lite import Task

    g = torch.Generator().manual_seed(0)
    clean = torch.randint(0, 9, (6, 4), generator=g)
    task = Task("t", clean, clean.flip(1), clean[:, :1], clean[:, 1:2],
                info={"seed": 3, "operands": [[1, 2]] * 6, "segment_length": [4, 10]})
    d = task.describe()
    assert d["seed"] == 3 and d["segment_length"] == [4, 10] and "operands" not in d
