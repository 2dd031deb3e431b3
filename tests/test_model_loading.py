"""Model loading: the hooked model computes its source's function, checkpoints are complete, paths stay local."""

import copy
import socket

import pytest
import torch

from acdc_lite import ModelLoadError, SmallTransformer, load_model, zoo
from acdc_lite.models import (
    EQUIVALENCE_TOLERANCE,
    EquivalenceError,
    Processing,
    SourceKind,
    looks_like_path,
    model_source,
)
from tests.conftest import BUILDERS


def _tiny_square():
    """A GPT-2 whose d_vocab == d_model (the shape TransformerLens' processing gets wrong)."""
    from transformers import GPT2Config, GPT2LMHeadModel

    model = GPT2LMHeadModel(GPT2Config(n_layer=2, n_head=2, n_embd=16, vocab_size=16, n_positions=16,
                                       tie_word_embeddings=False))
    with torch.no_grad():  # LayerNorm scales of 1 (the initial ones) would hide a fold along the wrong axis
        for name, p in model.named_parameters():
            if ".ln_" in name or name.startswith("transformer.ln_f"):
                p.copy_(torch.randn_like(p) * 0.5 + (1.0 if name.endswith("weight") else 0.0))
    return model


HF_BUILT = {name: b for name, b in BUILDERS.items() if not isinstance(b(), SmallTransformer)} | {"gpt2-square": _tiny_square}
HF_ZOO = [n for n in zoo.names() if not SmallTransformer.is_model_dir(zoo.model_dir(n))]


def _hf_reference(hf, tokens):
    with torch.no_grad():
        return hf(tokens).logits.log_softmax(-1)


def _assert_reproduces(model, hf, d_vocab):
    """Hooked logits == source logits (as log-probabilities) on a batch other than the load-time probe."""
    tokens = torch.randint(0, d_vocab, (3, 12), generator=torch.Generator().manual_seed(7))
    with torch.no_grad():
        hooked = model(tokens).log_softmax(-1)
    assert (hooked - _hf_reference(hf, tokens)).abs().max() <= EQUIVALENCE_TOLERANCE
    eq = model_source(model).equivalence
    assert eq is not None and eq.max_abs_diff <= eq.tolerance == EQUIVALENCE_TOLERANCE and eq.argmax_agreement == 1.0


@pytest.mark.parametrize("name", sorted(HF_BUILT))
def test_every_built_hf_model_is_reproduced_by_its_hooked_model(name):
    torch.manual_seed(0)
    hf = HF_BUILT[name]().eval()
    source = copy.deepcopy(hf)
    model = load_model(hf)
    assert model_source(model).processing is Processing.NONE
    _assert_reproduces(model, source, source.config.vocab_size)


@pytest.mark.parametrize("name", HF_ZOO)
def test_every_shipped_hf_model_is_reproduced_by_its_hooked_model(name):
    from transformers import AutoModelForCausalLM

    hf = AutoModelForCausalLM.from_pretrained(zoo.model_dir(name), local_files_only=True).eval()
    model = load_model(name)
    src = model_source(model)
    assert (src.kind, src.given, src.processing) == (SourceKind.ZOO, name, Processing.NONE)
    _assert_reproduces(model, hf, hf.config.vocab_size)


def test_processing_that_changes_the_model_is_refused_and_the_others_are_allowed(tmp_path):
    torch.manual_seed(0)
    _tiny_square().save_pretrained(tmp_path / "square")
    with pytest.raises(EquivalenceError, match=r"does not reproduce its GPT2LMHeadModel checkpoint.*tolerance 0.001.*"
                                               r"'transformer-lens' weight processing"):
        load_model(tmp_path / "square", processing="transformer-lens")
    # d_vocab != d_model: TransformerLens' processing is sound there and allowed on request
    torch.manual_seed(0)
    BUILDERS["gpt2"]().save_pretrained(tmp_path / "gpt2")
    for mode in Processing:
        model = load_model(tmp_path / "gpt2", processing=mode.value)
        src = model_source(model)
        assert src.processing is mode and src.equivalence.max_abs_diff <= EQUIVALENCE_TOLERANCE
    with pytest.raises(ValueError, match="'fold_everything' is not a valid Processing"):
        load_model(tmp_path / "gpt2", processing="fold_everything")


def test_circuit_records_processing_equivalence_and_the_reference_as_given(tmp_path, monkeypatch):
    from acdc_lite.circuit import Circuit, ModelRef

    torch.manual_seed(0)
    BUILDERS["llama-gqa"]().save_pretrained(tmp_path / "models" / "llama")
    monkeypatch.chdir(tmp_path)
    model = load_model("models/llama")
    ref = ModelRef.of(model)
    assert ref.source["kind"] == "local" and ref.source["given"] == "models/llama" and ref.source["processing"] == "none"
    assert 0 <= ref.source["equivalence"]["max_abs_diff"] <= EQUIVALENCE_TOLERANCE
    circuit = Circuit(model=ref, edges={"m1->logits": 1.0})
    written = circuit.save(tmp_path / "runs" / "a" / "circuit.json").read_text()
    assert '"from_circuit": "../../models/llama"' in written and str(tmp_path) not in written
    again = Circuit.load(tmp_path / "runs" / "a" / "circuit.json")
    assert again.model.source["resolved"] == str((tmp_path / "models" / "llama").resolve())


def _truncated_checkpoint(path, drop: str, extra: bool):
    from safetensors.torch import load_file, save_file

    torch.manual_seed(0)
    BUILDERS["gpt2"]().save_pretrained(path)
    weights = load_file(path / "model.safetensors")
    kept = {k: v for k, v in weights.items() if drop not in k}
    if extra:
        kept["transformer.h.9.attn.c_attn.weight"] = torch.zeros(2, 2)
    save_file(kept, path / "model.safetensors", metadata={"format": "pt"})
    return sorted(set(weights) - set(kept))


def test_missing_tensors_are_refused_and_named(tmp_path):
    dropped = _truncated_checkpoint(tmp_path / "m", ".h.1.", extra=False)
    assert len(dropped) == 12
    with pytest.raises(ModelLoadError, match=r"12 missing: transformer\.h\.1\.attn\.c_attn\.bias, .* and 6 more.*"
                                             "refusing to fill them with random values"):
        load_model(tmp_path / "m")


def test_unexpected_tensors_are_refused_and_named(tmp_path):
    _truncated_checkpoint(tmp_path / "m", "no-such-tensor", extra=True)
    with pytest.raises(ModelLoadError, match=r"1 unexpected: transformer\.h\.9\.attn\.c_attn\.weight"):
        load_model(tmp_path / "m")


@pytest.fixture
def no_network(monkeypatch):
    """Every hub lookup and every socket connection is recorded and refused."""
    calls = []

    def refuse(*args, **kwargs):
        calls.append(args[:2])
        raise OSError("network disabled in this test")

    from huggingface_hub import HfApi

    monkeypatch.setattr(HfApi, "model_info", lambda self, *a, **k: refuse("model_info", *a))
    monkeypatch.setattr(socket, "getaddrinfo", refuse)
    monkeypatch.setattr(socket.socket, "connect", lambda self, *a: refuse("connect", *a))
    monkeypatch.delenv("HF_HUB_OFFLINE", raising=False)
    return calls


@pytest.mark.parametrize("name", ["./m_typo", "~/no-such-model-dir-xyz", "/no/such/model", "in/m_typo", "in/m/sub",
                                  "models\\m", "in/"])
def test_a_path_like_name_never_reaches_the_hub(name, tmp_path, monkeypatch, no_network):
    (tmp_path / "in" / "m").mkdir(parents=True)
    monkeypatch.chdir(tmp_path)
    assert looks_like_path(name)
    with pytest.raises(ModelLoadError, match="a path is never looked up on the hub|not a model directory|no config.json"):
        load_model(name)
    assert no_network == []


def test_a_mistyped_path_names_what_is_there(tmp_path, monkeypatch, no_network):
    (tmp_path / "in" / "m").mkdir(parents=True)
    monkeypatch.chdir(tmp_path)
    with pytest.raises(ModelLoadError, match=r"no model directory 'in/m_typo' \(in holds m\)"):
        load_model("in/m_typo")


def test_a_hub_id_is_tried_once_and_says_so(tmp_path, monkeypatch, no_network, caplog):
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("HF_HOME", str(tmp_path / "hf-cache"))  # an empty cache: nothing to find locally
    assert not looks_like_path("some-org/some-model")
    with caplog.at_level("WARNING", logger="acdc_lite.models"):
        with pytest.raises(ModelLoadError, match=r"unknown model 'some-org/some-model'.*the hub could not provide it \(OSError\)"):
            load_model("some-org/some-model")
    assert [c[0] for c in no_network] == ["model_info"]
    assert "trying the Hugging Face hub once for 'some-org/some-model'" in caplog.text


@pytest.mark.parametrize("how", ["argument", "environment"])
def test_offline_never_tries_the_hub(how, tmp_path, monkeypatch, no_network):
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("HF_HOME", str(tmp_path / "hf-cache"))
    if how == "environment":
        monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    with pytest.raises(ModelLoadError, match="not in the local Hugging Face cache \\(offline"):
        load_model("gpt2-not-cached", offline=how == "argument" or None)
    assert no_network == []


def test_a_cached_hub_model_loads_offline_without_network(tmp_path, monkeypatch, no_network):
    snapshot = tmp_path / "hf-cache" / "hub" / "models--some-org--tiny" / "snapshots" / "abc123"
    torch.manual_seed(0)
    BUILDERS["neox"]().save_pretrained(snapshot)
    (snapshot.parents[1] / "refs").mkdir()
    (snapshot.parents[1] / "refs" / "main").write_text("abc123")
    monkeypatch.setenv("HF_HOME", str(tmp_path / "hf-cache"))
    monkeypatch.setattr("huggingface_hub.constants.HF_HUB_CACHE", str(tmp_path / "hf-cache" / "hub"))
    monkeypatch.chdir(tmp_path)
    model = load_model("some-org/tiny")
    src = model_source(model)
    assert (src.kind, src.given) == (SourceKind.HUB, "some-org/tiny") and src.equivalence.max_abs_diff <= EQUIVALENCE_TOLERANCE
    assert no_network == []
