"""Tiny random Hugging Face models of every decoder family, built in a fraction of a second.

One builder per family (a name users know, the HF config class, the settings that make the family
itself: biases, soft-capping, grouped k/v heads). All have 2 layers, 4 query heads, d_model 32 and a
vocabulary of VOCAB tokens (!= d_model), so TransformerLens' weight processing is exercised as for real models.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import torch

VOCAB = 40
LAYERS, HEADS, D_MODEL, D_MLP, N_CTX = 2, 4, 32, 64, 32


@dataclass(frozen=True)
class Family:
    """A decoder family: the HF config and model class names, and config keywords of this tiny version."""

    name: str
    config_class: str
    model_class: str
    kwargs: dict = field(default_factory=dict)
    note: str = ""  # what this family adds (shown in docs/architectures.md)

    def build(self, seed: int = 0) -> torch.nn.Module:
        """A freshly initialised HF model in eval mode (seeded)."""
        import transformers

        config = getattr(transformers, self.config_class)(**self.kwargs)
        torch.manual_seed(seed)
        return getattr(transformers, self.model_class)(config).eval()


def _llama_like(**extra) -> dict:
    return dict(num_hidden_layers=LAYERS, num_attention_heads=HEADS, hidden_size=D_MODEL, intermediate_size=D_MLP,
                vocab_size=VOCAB, max_position_embeddings=N_CTX, bos_token_id=0, eos_token_id=0, pad_token_id=0,
                **extra)


FAMILIES: tuple[Family, ...] = (
    Family("gpt2", "GPT2Config", "GPT2LMHeadModel",
           dict(n_layer=LAYERS, n_head=HEADS, n_embd=D_MODEL, vocab_size=VOCAB, n_positions=N_CTX, bos_token_id=0,
                eos_token_id=0), "learned positions, LayerNorm, tied embeddings"),
    Family("gpt-neox", "GPTNeoXConfig", "GPTNeoXForCausalLM",
           dict(num_hidden_layers=LAYERS, num_attention_heads=HEADS, hidden_size=D_MODEL, intermediate_size=D_MLP,
                vocab_size=VOCAB, max_position_embeddings=N_CTX, bos_token_id=0, eos_token_id=0),
           "Pythia: parallel attention and MLP, partial rotary"),
    Family("gpt-j", "GPTJConfig", "GPTJForCausalLM",
           dict(n_layer=LAYERS, n_head=HEADS, n_embd=D_MODEL, n_inner=D_MLP, rotary_dim=4, vocab_size=VOCAB,
                n_positions=N_CTX, bos_token_id=0, eos_token_id=0), "parallel attention and MLP, one LayerNorm"),
    Family("llama", "LlamaConfig", "LlamaForCausalLM", _llama_like(num_key_value_heads=HEADS),
           "multi-head attention, RMSNorm, rotary"),
    Family("llama-gqa", "LlamaConfig", "LlamaForCausalLM", _llama_like(num_key_value_heads=2),
           "grouped-query attention: 2 k/v heads for 4 query heads"),
    Family("llama-mqa", "LlamaConfig", "LlamaForCausalLM", _llama_like(num_key_value_heads=1),
           "multi-query attention: 1 k/v head"),
    Family("mistral", "MistralConfig", "MistralForCausalLM", _llama_like(num_key_value_heads=2),
           "grouped-query attention, sliding window"),
    Family("qwen2", "Qwen2Config", "Qwen2ForCausalLM", _llama_like(num_key_value_heads=2),
           "q/k/v biases, grouped-query attention"),
    Family("qwen3", "Qwen3Config", "Qwen3ForCausalLM", _llama_like(num_key_value_heads=2, head_dim=8),
           "q/k RMSNorm, grouped-query attention"),
    Family("gemma", "GemmaConfig", "GemmaForCausalLM", _llama_like(num_key_value_heads=1, head_dim=8),
           "scaled embeddings, (1 + w) RMSNorm, multi-query attention"),
    Family("gemma2", "Gemma2Config", "Gemma2ForCausalLM",
           _llama_like(num_key_value_heads=2, head_dim=8, attn_logit_softcapping=50.0, final_logit_softcapping=30.0),
           "attention and final-logit soft-capping, extra norms, grouped-query attention"),
    Family("phi", "PhiConfig", "PhiForCausalLM",
           dict(num_hidden_layers=LAYERS, num_attention_heads=HEADS, hidden_size=D_MODEL, intermediate_size=D_MLP,
                vocab_size=VOCAB, max_position_embeddings=N_CTX, bos_token_id=0, eos_token_id=0),
           "parallel attention and MLP, partial rotary, dense biases"),
    Family("phi3", "Phi3Config", "Phi3ForCausalLM", _llama_like(num_key_value_heads=2),
           "fused qkv and gate/up projections, grouped-query attention"),
    Family("opt", "OPTConfig", "OPTForCausalLM",
           dict(num_hidden_layers=LAYERS, num_attention_heads=HEADS, hidden_size=D_MODEL, ffn_dim=D_MLP,
                word_embed_proj_dim=D_MODEL, vocab_size=VOCAB, max_position_embeddings=N_CTX, bos_token_id=0,
                eos_token_id=0, pad_token_id=1), "learned positions with an offset, ReLU"),
    Family("bloom", "BloomConfig", "BloomForCausalLM",
           dict(n_layer=LAYERS, n_head=HEADS, hidden_size=D_MODEL, vocab_size=VOCAB, bos_token_id=0, eos_token_id=0),
           "ALiBi positions, embedding LayerNorm"),
    Family("gpt-neo", "GPTNeoConfig", "GPTNeoForCausalLM",
           dict(num_layers=LAYERS, num_heads=HEADS, hidden_size=D_MODEL, vocab_size=VOCAB, max_position_embeddings=N_CTX,
                attention_types=[[["global", "local"], 1]], window_size=8, bos_token_id=0, eos_token_id=0),
           "local and global attention layers, unscaled attention"),
    Family("gpt-bigcode", "GPTBigCodeConfig", "GPTBigCodeForCausalLM",
           dict(n_layer=LAYERS, n_head=HEADS, n_embd=D_MODEL, vocab_size=VOCAB, n_positions=N_CTX, multi_query=True,
                bos_token_id=0, eos_token_id=0), "StarCoder: multi-query attention"),
    Family("stablelm", "StableLmConfig", "StableLmForCausalLM", _llama_like(num_key_value_heads=2),
           "LayerNorm, partial rotary, grouped-query attention"),
    Family("olmo2", "Olmo2Config", "Olmo2ForCausalLM", _llama_like(num_key_value_heads=2),
           "post-norms, q/k RMSNorm"),
)

BY_NAME = {f.name: f for f in FAMILIES}
