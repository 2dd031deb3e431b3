"""Small random models of every architecture the engine supports, built in the test session."""

import pytest
import torch

from acdc_lite import SmallTransformer, SmallTransformerConfig, load_model

VOCAB = 20


def _gpt2():
    from transformers import GPT2Config, GPT2LMHeadModel

    return GPT2LMHeadModel(GPT2Config(n_layer=2, n_head=4, n_embd=32, vocab_size=VOCAB, n_positions=16,
                                      bos_token_id=0, eos_token_id=0))


def _neox():
    from transformers import GPTNeoXConfig, GPTNeoXForCausalLM

    return GPTNeoXForCausalLM(GPTNeoXConfig(num_hidden_layers=2, num_attention_heads=4, hidden_size=32,
                                            intermediate_size=64, vocab_size=VOCAB, max_position_embeddings=16,
                                            bos_token_id=0, eos_token_id=0))


def _llama_gqa():
    from transformers import LlamaConfig, LlamaForCausalLM

    return LlamaForCausalLM(LlamaConfig(num_hidden_layers=2, num_attention_heads=4, num_key_value_heads=2,
                                        hidden_size=32, intermediate_size=64, vocab_size=VOCAB,
                                        max_position_embeddings=16, bos_token_id=0, eos_token_id=0))


def _small_ln_mlp():
    return SmallTransformer(SmallTransformerConfig(n_layers=2, n_heads=3, d_model=16, d_head=4, d_vocab=VOCAB,
                                                   n_ctx=16, d_mlp=32, normalization="layernorm", act_fn="gelu"))


def _small_attn_only():
    return SmallTransformer(SmallTransformerConfig(n_layers=3, n_heads=2, d_model=16, d_head=4, d_vocab=VOCAB, n_ctx=16))


BUILDERS = {"gpt2": _gpt2, "neox": _neox, "llama-gqa": _llama_gqa, "small-ln-mlp": _small_ln_mlp,
            "small-attn-only": _small_attn_only}


@pytest.fixture(scope="session", params=list(BUILDERS))
def any_model(request):
    torch.manual_seed(0)
    return request.param, load_model(BUILDERS[request.param]())


@pytest.fixture(scope="session")
def small_model():
    torch.manual_seed(0)
    return load_model(_small_ln_mlp())


@pytest.fixture
def prompts():
    g = torch.Generator().manual_seed(1)
    return torch.randint(0, VOCAB, (5, 7), generator=g), torch.randint(0, VOCAB, (5, 7), generator=g)
