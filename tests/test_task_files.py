"""Task files (JSONL and CSV, the field's key names), answers of several tokens end to end, and the
metric registry. Models and files are built in the test: a tiny GPT-2 with a word-level tokenizer
saved with save_pretrained, as a user's local model would be."""

import json

import pytest
import torch
from typer.testing import CliRunner

from acdc_lite import load_model, load_task
from acdc_lite.circuit import Circuit
from acdc_lite.cli import app
from acdc_lite.metrics import register
from acdc_lite.search import discover
from acdc_lite.task import TaskError, task_from_file
from acdc_lite.validate import validate

WORDS = ["<bos>", "<pad>", "When", "Mary", "and", "John", "went", "to", "the", "store", "park", ",", "gave", "a",
         "drink", "book", "New", "York", "Ann", "Lee", "she", "lives", "in", "Paris", "city", "of", "he", "is", "from"]


def _word_tokenizer(padding_side="right"):
    from tokenizers import Tokenizer
    from tokenizers.models import WordLevel
    from tokenizers.pre_tokenizers import WhitespaceSplit
    from transformers import PreTrainedTokenizerFast

    tok = Tokenizer(WordLevel({**{w: i for i, w in enumerate(WORDS)}, "<unk>": len(WORDS)}, unk_token="<unk>"))
    tok.pre_tokenizer = WhitespaceSplit()
    return PreTrainedTokenizerFast(tokenizer_object=tok, bos_token="<bos>", pad_token="<pad>", unk_token="<unk>",
                                   padding_side=padding_side)


@pytest.fixture(scope="module", params=["right", "left"])
def local_model_dir(request, tmp_path_factory):
    from transformers import GPT2Config, GPT2LMHeadModel

    torch.manual_seed(0)
    hf = GPT2LMHeadModel(GPT2Config(n_layer=2, n_head=2, n_embd=32, vocab_size=len(WORDS) + 1, n_positions=32,
                                    bos_token_id=0, eos_token_id=0, pad_token_id=1))
    out = tmp_path_factory.mktemp(f"tiny-gpt2-{request.param}")
    hf.save_pretrained(out)
    _word_tokenizer(request.param).save_pretrained(out)
    return out


def _jsonl(path, rows):
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return path


VARIABLE_ROWS = [  # 3 to 14 words; answers of one to three words
    {"clean": "When Mary and John went to the store , John gave a drink to", "corrupt":
     "When Ann and Lee went to the store , Lee gave a drink to", "answer": "Mary", "foil": "John"},
    {"clean": "she lives in", "corrupt": "he is from", "answer": "New York", "foil": "New Paris"},
    {"clean": "he is from the city of", "corrupt": "she lives in the city of", "answer": "Mary Ann Lee",
     "foil": "Mary Ann John"},
]


def test_variable_length_jsonl_with_multi_token_answers_runs_end_to_end(local_model_dir, tmp_path):
    model = load_model(str(local_model_dir))
    side = local_model_dir.name.split("-")[-1].rstrip("0123456789")
    path = _jsonl(tmp_path / "cities.jsonl", VARIABLE_ROWS)
    task = load_task(str(path), model, check=False)
    assert task.padding_side.value == side  # follows the model's tokenizer
    assert task.lengths.tolist() == [14, 4, 8]  # prompt + the answer's tokens but the last
    assert task.default_metric == "seq_logit_diff" and task.multi_token
    assert task.describe()["answer_tokens"] == 3 and task.describe()["padding_side"] == side
    circuit = discover(model, task, "eap", metric="seq_logit_diff", top_n=10)
    assert circuit.task["metric"] == "seq_logit_diff" and circuit.method["metric"] == "seq_logit_diff"
    assert len(circuit.edges) > 0
    report = validate(model, task, circuit, metric="seq_logprob", check_minimality=False, curve=False, random_seeds=0)
    assert report.metric == "seq_logprob" and report.metric_full == report.metric_full  # finite, not NaN
    assert report.metric_full < 0  # a summed log-probability
    # the discover command's head detectors read the same padded, multi-token task
    from acdc_lite.pipeline import with_detected_roles

    heads = [str(h) for h in circuit.heads()]
    assert heads and with_detected_roles(circuit, model, task).provenance["roles"]


def test_csv_with_eap_ig_key_names_loads(local_model_dir, tmp_path):
    model = load_model(str(local_model_dir))
    path = tmp_path / "ioi.csv"
    path.write_text("clean,corrupted,correct_idx,incorrect_idx,split\n"
                    f"\"When Mary and John went to the store , John gave a drink to\",\"When Ann and Lee went to the store , "
                    f"Lee gave a drink to\",{WORDS.index('Mary')},{WORDS.index('John')},train\n"
                    "she lives in,he is from,\"[16, 17]\",\"[16, 23]\",test\n")
    task = task_from_file(path, model)
    assert len(task) == 2 and task.lengths.tolist() == [14, 4]
    assert task.answer_seqs[0].tolist() == [WORDS.index("Mary"), -1] and task.answer_seqs[1].tolist() == [16, 17]
    assert task.foil_seqs[1].tolist() == [16, 23] and task.default_metric == "seq_logit_diff"


def test_jsonl_key_aliases_ids_and_alternatives(tmp_path):
    path = _jsonl(tmp_path / "t.jsonl", [
        {"clean": [1, 2, 3], "corrupted": [4, 5, 6], "answers": [7], "foils": 8},
        {"clean": [1, 2], "corrupted": [4, 5], "label": 9, "foil": [10]},
    ])
    task = task_from_file(path)
    assert task.answers.tolist() == [[7], [9]] and task.foils.tolist() == [[8], [10]]
    assert task.default_metric == "logit_diff" and not task.multi_token and task.lengths.tolist() == [3, 2]


@pytest.mark.parametrize("content, message", [
    ('{"clean": [1], "corrupted": [2], "target": 3}\n',
     r"t.jsonl:1: no answer/answers/label/correct_idx key; accepted keys are clean: clean; corrupt: corrupt/corrupted"),
    ('{"clean": [1], "corrupt": [2], "corrupted": [2], "answer": 3}\n', r"t.jsonl:1: keys corrupt and corrupted both give"),
    ('{"clean": [1, 2], "corrupt": [2], "answer": 3}\n', r"t.jsonl:1: clean is 2 tokens but corrupt is 1"),
    ('{"clean": [1], "corrupt": [2], "answer": 3, "foil": 4}\n{"clean": [1], "corrupt": [2], "answer": 3}\n',
     r"t.jsonl:2: foil missing"),
    ('{"clean": [1], "corrupt": [2], "answer": [3, 4], "foil": [3]}\n', r"t.jsonl:1: answer and foil tokenize to \[3, 4\] and \[3\]"),
    ('{"clean": [1], "corrupt": [2], "answer": 3, "metric": "a"}\n{"clean": [1], "corrupt": [2], "answer": 3, "metric": "b"}\n',
     r"t.jsonl:\d: metric differs between rows"),
    ('{"clean": [1], "corrupt": [2], "answer": 3\n', r"t.jsonl:1: not valid JSON"),
])
def test_bad_task_files_name_the_line_and_the_field(tmp_path, content, message):
    path = tmp_path / "t.jsonl"
    path.write_text(content)
    with pytest.raises(TaskError, match=message):
        task_from_file(path)


def test_bad_csv_names_the_line(tmp_path):
    path = tmp_path / "t.csv"
    path.write_text("clean,corrupted\n\"[1, 2]\",\"[3, 4]\"\n")
    with pytest.raises(TaskError, match=r"t.csv:2: no answer/answers/label/correct_idx key"):
        task_from_file(path)


def _write_metric_module(tmp_path, monkeypatch):
    (tmp_path / "my_metrics.py").write_text(
        "import torch\n"
        "def answer_logit(task, model):\n"
        "    def metric(logits, idx):\n"
        "        rows = torch.arange(len(idx))\n"
        "        return logits[rows, task.answer_pos[idx]][rows, task.answers[idx, 0]]\n"
        "    return metric\n")
    monkeypatch.syspath_prepend(str(tmp_path))


def test_custom_metric_by_module_path_from_the_file(tmp_path, monkeypatch):
    _write_metric_module(tmp_path, monkeypatch)
    rows = [{"clean": [1, 2, 3], "corrupt": [4, 5, 6], "answer": 7, "metric": "my_metrics:answer_logit"},
            {"clean": [1, 2], "corrupt": [4, 5], "answer": 9, "metric": "my_metrics:answer_logit"}]
    task = task_from_file(_jsonl(tmp_path / "t.jsonl", rows))
    assert task.default_metric == "my_metrics:answer_logit"
    logits = torch.randn(2, 3, 12)
    values = task.metric()(logits, torch.arange(2))
    assert values.tolist() == [float(logits[0, 2, 7]), float(logits[1, 1, 9])]


def test_registered_metric_and_a_clear_error_for_unknown_ones(tmp_path):
    register("answer_zero", lambda task, model: (lambda logits, idx: torch.zeros(len(idx))))
    task = task_from_file(_jsonl(tmp_path / "t.jsonl", [{"clean": [1], "corrupt": [2], "answer": 3}]), metric="answer_zero")
    assert task.metric()(torch.randn(1, 1, 5), torch.arange(1)).tolist() == [0.0]
    with pytest.raises(TaskError, match="unknown metric 'nope': not built in, not registered, not an entry point"):
        task_from_file(tmp_path / "t.jsonl", metric="nope")
    with pytest.raises(TaskError, match="metric 'no_such_module_xyz:f': cannot import module 'no_such_module_xyz'"):
        task.metric("no_such_module_xyz:f")
    with pytest.raises(TaskError, match="module 'json' has no attribute 'nothing'"):
        task.metric("json:nothing")


def test_cli_discover_on_a_variable_length_multi_token_file(tmp_path, monkeypatch):
    from acdc_lite import SmallTransformer, SmallTransformerConfig

    torch.manual_seed(0)
    SmallTransformer(SmallTransformerConfig(n_layers=2, n_heads=2, d_model=16, d_head=4, d_vocab=20, n_ctx=16,
                                            d_mlp=16, normalization="layernorm")).save(tmp_path / "model")
    _write_metric_module(tmp_path, monkeypatch)
    rows = [{"clean": [1, 2, 3, 4, 5], "corrupted": [6, 7, 8, 9, 10], "answers": [11, 12], "foils": [11, 13]},
            {"clean": [2, 3], "corrupted": [7, 8], "answers": [14], "foils": [15]},
            {"clean": [3, 4, 5, 6], "corrupted": [8, 9, 10, 11], "answers": [16, 17, 18], "foils": [16, 19, 18]}]
    task_file = _jsonl(tmp_path / "var.jsonl", rows)
    out = tmp_path / "run"
    result = CliRunner().invoke(app, ["discover", "--model", str(tmp_path / "model"), "--task", str(task_file),
                                          "--method", "eap", "--top-n", "5", "--out", str(out), "--quiet"])
    assert result.exit_code == 0, result.output
    circuit = Circuit.load(out / "circuit.json")
    assert circuit.task["metric"] == "seq_logit_diff" and circuit.task["answer_tokens"] == 3
    assert circuit.task["padding_side"] == "right" and (circuit.task["min_len"], circuit.task["max_len"]) == (2, 6)
    bad = CliRunner().invoke(app, ["discover", "--model", str(tmp_path / "model"), "--task", str(task_file),
                                       "--method", "eap", "--metric", "nope:nothing", "--out", str(tmp_path / "bad")])
    assert bad.exit_code == 1 and "cannot import module 'nope'" in bad.output and not (tmp_path / "bad").exists()


def test_metric_from_an_entry_point(tmp_path, monkeypatch):
    from importlib.metadata import EntryPoint

    import acdc_lite.metrics as registry

    _write_metric_module(tmp_path, monkeypatch)
    declared = [EntryPoint(name="answer-logit", value="my_metrics:answer_logit", group=registry.ENTRY_POINT_GROUP),
                EntryPoint(name="broken", value="no_such_module_xyz:f", group=registry.ENTRY_POINT_GROUP)]
    monkeypatch.setattr(registry, "entry_points", lambda group: [e for e in declared if e.group == group])
    assert {"answer-logit", "broken"} <= set(registry.registered())
    task = task_from_file(_jsonl(tmp_path / "t.jsonl", [{"clean": [1, 2], "corrupt": [3, 4], "answer": 5}]),
                          metric="answer-logit")
    logits = torch.randn(1, 2, 8)
    assert task.metric()(logits, torch.arange(1)).tolist() == [float(logits[0, 1, 5])]
    with pytest.raises(TaskError, match="metric 'broken': entry point 'no_such_module_xyz:f' fails to load"):
        task.metric("broken")


def test_validate_finds_a_padded_multi_token_file_task_again(tmp_path):
    from acdc_lite import SmallTransformer, SmallTransformerConfig
    from acdc_lite.rerun import rerun

    torch.manual_seed(0)
    SmallTransformer(SmallTransformerConfig(n_layers=2, n_heads=2, d_model=16, d_head=4, d_vocab=20, n_ctx=16)).save(
        tmp_path / "model")
    model = load_model(str(tmp_path / "model"))
    rows = [{"clean": [1, 2, 3, 4], "corrupt": [5, 6, 7, 8], "answer": [9, 10], "foil": [9, 11]},
            {"clean": [2, 3], "corrupt": [6, 7], "answer": [12], "foil": [13]}]
    path = _jsonl(tmp_path / "t.jsonl", rows)
    task = load_task(str(path), model, padding_side="left")
    circuit = discover(model, task, "eap", top_n=4)
    circuit.save(tmp_path / "c.json")
    again = rerun(tmp_path / "c.json")
    assert again.task.padding_side.value == "left" and torch.equal(again.task.clean, task.clean)
    assert again.task.default_metric == "seq_logit_diff" and again.metric == "seq_logit_diff"
