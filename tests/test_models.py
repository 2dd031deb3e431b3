import pytest
import torch

from acdc_lite import ModelLoadError, SmallTransformer, load_model, model_info


def test_small_transformer_save_and_load_by_directory(small_model, tmp_path):
    small_model.save(tmp_path / "m")
    loaded = load_model(str(tmp_path / "m"))
    x = torch.randint(0, 20, (2, 5))
    with torch.no_grad():
        assert torch.equal(loaded(x), small_model(x))


def test_hf_directory_loads_through_the_bridge(tmp_path):
    from tests.conftest import _gpt2

    torch.manual_seed(0)
    hf = _gpt2().eval()
    hf.save_pretrained(tmp_path / "gpt2-tiny")
    model = load_model(str(tmp_path / "gpt2-tiny"))
    info = model_info(model)
    assert (info.n_layers, info.n_heads, info.has_mlp) == (2, 4, True)
    x = torch.randint(0, 20, (2, 5))
    with torch.no_grad():
        # no weight processing by default: the logits themselves are the checkpoint's
        assert (model(x) - hf(x).logits).abs().max() < 1e-5
    assert not model.training


def test_bridge_flags_are_on(any_model):
    name, model = any_model
    if isinstance(model, SmallTransformer):
        pytest.skip("own module has the hooks natively")
    assert model.cfg.use_attn_result and model.cfg.use_split_qkv_input and model.cfg.use_hook_mlp_in


def test_unknown_model_name_is_a_clear_error(monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    with pytest.raises(ModelLoadError, match="unknown model 'no-such-model-xyz'.*local directory"):
        load_model("no-such-model-xyz")


def test_directory_without_config_is_a_clear_error(tmp_path):
    with pytest.raises(ModelLoadError, match="no config.json"):
        load_model(str(tmp_path))


def test_hf_directory_without_tokenizer_files_has_no_tokenizer(tmp_path):
    """A directory with weights but no tokenizer files must not get an empty tokenizer (every word unknown)."""
    from transformers import GPT2Config, GPT2LMHeadModel

    torch.manual_seed(0)
    GPT2LMHeadModel(GPT2Config(n_layer=1, n_head=2, n_embd=16, vocab_size=50, n_positions=16)).save_pretrained(tmp_path)
    model = load_model(tmp_path)
    assert getattr(model, "tokenizer", None) is None
