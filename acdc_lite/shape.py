"""What a model looks like: layers, heads, grouped-query attention, MLPs (a leaf module: graph, patching,
circuit and search read model shapes from here, never from `models`)."""

from __future__ import annotations

from dataclasses import dataclass

from torch import nn

from acdc_lite import hooks
from acdc_lite.suffix import can_start_at_layer


class ModelLoadError(ValueError):
    """A model spec that cannot be turned into a hooked model; the message says what to do."""


@dataclass(frozen=True)
class ModelInfo:
    name: str
    architecture: str
    n_layers: int
    n_heads: int
    n_kv_heads: int  # < n_heads for grouped-query attention
    d_model: int
    d_vocab: int
    has_mlp: bool
    parallel_attn_mlp: bool
    supports_start_at_layer: bool  # the patcher can skip unchanged layers

    @property
    def kv_group(self) -> int:
        """Query heads per k/v head (1 without grouped-query attention)."""
        return self.n_heads // self.n_kv_heads


def is_bridge(model: nn.Module) -> bool:
    from transformer_lens.model_bridge import TransformerBridge

    return isinstance(model, TransformerBridge)


def model_info(model: nn.Module) -> ModelInfo:
    """Shape facts about a model returned by `load_model`."""
    from acdc_lite.transformer import SmallTransformer

    if isinstance(model, SmallTransformer):
        c = model.cfg
        return ModelInfo(c.name, "SmallTransformer", c.n_layers, c.n_heads, c.kv_heads, c.d_model, c.n_out,
                         c.d_mlp > 0, False, True)
    if is_bridge(model):
        c = model.cfg
        return ModelInfo(
            name=str(getattr(model, "acdc_name", None) or getattr(c, "model_name", "") or "external"),
            architecture=str(c.architecture),
            n_layers=c.n_layers,
            n_heads=c.n_heads,
            n_kv_heads=int(getattr(c, "n_key_value_heads", None) or c.n_heads),
            d_model=c.d_model,
            d_vocab=c.d_vocab_out if getattr(c, "d_vocab_out", -1) > 0 else c.d_vocab,
            has_mlp=not bool(getattr(c, "attn_only", False)) and hooks.mlp_out(0) in model.hook_dict,
            parallel_attn_mlp=bool(getattr(c, "parallel_attn_mlp", False)),
            supports_start_at_layer=can_start_at_layer(model),
        )
    raise ModelLoadError(f"{type(model).__name__} is not a model from acdc_lite.load_model; load it with load_model first")
