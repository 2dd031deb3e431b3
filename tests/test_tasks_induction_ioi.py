"""The induction and IOI tasks: shapes, structure, and the metric's sign on zoo models."""

import pytest
import torch

from acdc_lite import SmallTransformer, SmallTransformerConfig, TaskError, load_model, zoo
from acdc_lite.task import check_signal
from acdc_lite.zoo.measure import builtin_task_module

induction = builtin_task_module("induction")
ioi = builtin_task_module("ioi")

INDUCTION_ZOO = [n for n in zoo.names() if zoo.card(n).get("task", {}).get("name") == "induction"]


def _word_model(words):
    cfg = SmallTransformerConfig(n_layers=1, n_heads=2, d_model=16, d_head=8, d_vocab=len(words), n_ctx=32, vocab=words)
    torch.manual_seed(0)
    return load_model(SmallTransformer(cfg))


def _ioi_words():
    words = {w for t in ioi.TEMPLATES for w in t.split() if not w.startswith("{")}
    return ["<bos>"] + sorted(words | set(ioi.NAMES) | set(ioi.PLACES) | set(ioi.OBJECTS))


# ---- induction ------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def attn_model():
    return load_model("induction-attn-2l")


def test_induction_prompt_structure(attn_model):
    task = induction.build(attn_model, n_examples=50, seed=3)
    assert task.clean.shape == task.corrupt.shape == (50, induction.SEQ_LEN)
    assert (task.clean[:, 0] == 0).all() and (task.corrupt[:, 0] == 0).all()  # BOS first
    assert (task.answers != task.foils).all()
    p = induction.make_prompts(list(range(1, 64)), 0, 50, seed=3)
    assert torch.equal(p["clean"], task.clean)
    assert len(set(p["seg_len"].tolist())) > 1 and len(set(p["gap"].tolist())) > 1  # varying length and offset
    for i in range(50):
        clean, corrupt, ans = task.clean[i].tolist(), task.corrupt[i].tolist(), int(task.answers[i, 0])
        last = clean[-1]
        earlier = [j for j in range(len(clean) - 1) if clean[j] == last]
        assert len(earlier) == 1 and clean[earlier[0] + 1] == ans  # one earlier occurrence, followed by the answer
        assert last not in corrupt[:-1] and ans not in corrupt  # the corrupted prompt breaks the repeat
        assert int(task.foils[i, 0]) in clean and int(task.foils[i, 0]) in corrupt
        differ = [j for j in range(len(clean)) if clean[j] != corrupt[j]]
        assert len(differ) == int(p["seg_len"][i])  # only the earlier occurrence changed


def test_induction_is_deterministic(attn_model):
    a, b = induction.build(attn_model, 8, seed=1), induction.build(attn_model, 8, seed=1)
    assert torch.equal(a.clean, b.clean) and torch.equal(a.corrupt, b.corrupt)
    assert not torch.equal(a.clean, induction.build(attn_model, 8, seed=2).clean)


@pytest.mark.parametrize("name", INDUCTION_ZOO)
def test_induction_metric_sign_on_zoo_models(name):
    model = load_model(name)
    task = induction.build(model, n_examples=32, seed=5)
    task.check_vocab(64)
    clean, corrupt = check_signal(model, task)
    assert clean > 2.0 and corrupt < 0.5 * clean


def test_induction_from_vocab_size_alone():
    from transformers import LlamaConfig, LlamaForCausalLM

    torch.manual_seed(0)
    hf = LlamaForCausalLM(LlamaConfig(num_hidden_layers=1, num_attention_heads=2, hidden_size=16, intermediate_size=32,
                                      vocab_size=100, max_position_embeddings=32, bos_token_id=7, eos_token_id=7))
    model = load_model(hf)
    task = induction.build(model, n_examples=4, seed=0)
    assert (task.clean[:, 0] == 7).all() and not (task.clean[:, 1:] == 7).any()
    assert int(task.clean.max()) < 100


def test_induction_with_hf_tokenizer():
    from tokenizers import Tokenizer
    from tokenizers.models import WordLevel
    from tokenizers.pre_tokenizers import WhitespaceSplit
    from transformers import PreTrainedTokenizerFast

    words = ["<s>", "<pad>"] + [f"w{i}" for i in range(80)]
    tok = Tokenizer(WordLevel({w: i for i, w in enumerate(words)}, unk_token="<pad>"))
    tok.pre_tokenizer = WhitespaceSplit()
    hf_tok = PreTrainedTokenizerFast(tokenizer_object=tok, bos_token="<s>", pad_token="<pad>")
    cfg = SmallTransformerConfig(n_layers=1, n_heads=2, d_model=16, d_head=8, d_vocab=len(words), n_ctx=32)
    model = SmallTransformer(cfg)
    model.tokenizer = hf_tok
    task = induction.build(model, n_examples=6, seed=0)
    assert (task.clean[:, 0] == 0).all() and int(task.clean[:, 1:].min()) >= 2  # BOS, then no special tokens


def test_induction_vocabulary_too_small():
    with pytest.raises(TaskError, match="distinct tokens"):
        induction.make_prompts(list(range(1, 20)), 0, 4, seed=0)


# ---- IOI ------------------------------------------------------------------------------------
def test_ioi_word_level_vocabulary():
    words = _ioi_words()
    model = _word_model(words)
    task = ioi.build(model, n_examples=40, seed=0)
    assert task.clean.shape == task.corrupt.shape and task.clean.shape[1] == 15  # BOS + 14 words
    index = {w: i for i, w in enumerate(words)}
    names = {index[n] for n in ioi.NAMES}
    for i in range(40):
        clean, corrupt = task.clean[i].tolist(), task.corrupt[i].tolist()
        io, s = int(task.answers[i, 0]), int(task.foils[i, 0])
        assert clean.count(io) == 1 and clean.count(s) == 2  # IO once, S twice
        corrupt_names = [t for t in corrupt if t in names]
        assert len(corrupt_names) == 3 == len(set(corrupt_names)) and io not in corrupt_names  # ABC
        assert [t for t in clean if t not in names] == [t for t in corrupt if t not in names]  # same template
    orders = {("ABBA" if task.clean[i].tolist().index(int(task.answers[i, 0])) < task.clean[i].tolist().index(int(task.foils[i, 0]))
               else "BABA") for i in range(40)}
    assert orders == {"ABBA", "BABA"}


def test_ioi_refuses_a_vocabulary_without_names(attn_model):
    with pytest.raises(TaskError, match="names"):
        ioi.build(attn_model, n_examples=4, seed=0)


def test_ioi_refuses_a_model_without_text():
    cfg = SmallTransformerConfig(n_layers=1, n_heads=2, d_model=16, d_head=8, d_vocab=64, n_ctx=32)
    with pytest.raises(TaskError, match="neither a tokenizer nor a word-level vocabulary"):
        ioi.build(SmallTransformer(cfg), n_examples=4, seed=0)


def test_ioi_gpt2_tokenizer():
    transformers = pytest.importorskip("transformers")
    try:
        tok = transformers.AutoTokenizer.from_pretrained("gpt2", local_files_only=True)
    except Exception as e:  # no hub access and no local copy
        pytest.skip(f"GPT-2's tokenizer is not available offline here ({type(e).__name__})")
    cfg = SmallTransformerConfig(n_layers=1, n_heads=2, d_model=16, d_head=8, d_vocab=len(tok), n_ctx=32)
    model = SmallTransformer(cfg)
    model.tokenizer = tok
    task = ioi.build(model, n_examples=20, seed=0)
    assert task.clean.shape == task.corrupt.shape
    assert (task.clean[:, 0] == tok.bos_token_id).all()
    assert len(task.info["templates"]) >= 3
    text = tok.decode(task.clean[0, 1:].tolist())
    assert text.endswith(" to") and tok.decode([int(task.answers[0, 0])]).startswith(" ")


def test_ioi_metric_sign_on_the_ioi_zoo_model():
    model = load_model("ioi-attn-2l")
    clean, corrupt = check_signal(model, ioi.build(model, n_examples=32, seed=5))
    assert clean > 1.0 and clean > corrupt
