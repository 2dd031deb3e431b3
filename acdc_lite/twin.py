"""A native twin: our `SmallTransformer` holding a TransformerBridge's weights, for faster patched passes.

A TransformerBridge runs the Hugging Face modules under its hooks; the same function on `SmallTransformer`
(the same hook names, per-head inputs and results natively) costs less per pass. `native_twin(bridge)` builds that
twin for a bridge around a model of a family in `_FAMILIES` (GPT-2; Llama, Mistral and Qwen2 with RMSNorm, rotary
positions, gated MLPs and grouped-query attention) and returns it only when it computes what the bridge computes:
logits and every sender's output on a probe batch, unpadded and padded with an attention mask (real positions
only), within `EQUIVALENCE_TOLERANCE`. Anything it does not mirror (another architecture, attention flags, rotary
tables that change with the sequence length, a sliding window shorter than the context, weight processing,
offloaded or non-float32 weights, hooks a user left on the bridge) gets None, with the reason logged. The twin
shares the bridge's tensors where their layout allows (embeddings, unembedding, norms, MLPs; GPT-2's output
projections): only per-head attention weights are copied. Built per use, so never stale.
"""

from __future__ import annotations

import logging
import math
from collections.abc import Callable
from dataclasses import dataclass

import torch
from torch import nn

from acdc_lite import hooks, offload
from acdc_lite.choices import Processing
from acdc_lite.models import EQUIVALENCE_TOLERANCE, compare_logits, probe_tokens
from acdc_lite.padding import forward
from acdc_lite.shape import is_bridge, model_info
from acdc_lite.transformer import SmallTransformer, SmallTransformerConfig

log = logging.getLogger(__name__)

__all__ = ["TWIN_NAME", "native_twin"]

TWIN_NAME = "native-twin"  # how a search result names the executor when the twin ran its passes

# Hugging Face activation names -> SmallTransformer's (the same function)
_ACTIVATIONS = {"gelu_new": "gelu_new", "gelu_pytorch_tanh": "gelu_new", "gelu": "gelu", "relu": "relu", "silu": "silu"}
# rotary variants whose tables depend on positions only (not on the sequence length), so the twin copies them once
_STATIC_ROPE = frozenset({"default", "linear", "llama3", "yarn"})
_OTHER_FAMILY = "no native twin for this family"


def native_twin(model: nn.Module, tolerance: float = EQUIVALENCE_TOLERANCE, padded: bool = True) -> SmallTransformer | None:
    """A verified SmallTransformer computing what bridge `model` computes (see the module docstring), else None.
    `padded`: verify it on padded rows too (only passes with padded prompts run its attention-mask path)."""
    if not is_bridge(model):
        return None
    reason = _refusal(model)
    if reason is not None:  # another family is the common case: said at debug level; anything else at info
        level = logging.DEBUG if reason.startswith(_OTHER_FAMILY) else logging.INFO
        log.log(level, "no native twin for %s: %s", type(getattr(model, "original_model", model)).__name__, reason)
        return None
    try:
        twin = _build(model)
    except (AttributeError, RuntimeError, ValueError, TypeError) as e:  # a layout it does not know: the model runs as is
        log.info("no native twin: its weights could not be laid out (%s)", e)
        return None
    problem = _disagreement(model, twin, tolerance, padded)
    if problem is not None:
        log.info("no native twin: it does not reproduce the bridge (%s)", problem)
        return None
    log.debug("native twin verified for %s", model_info(model).name)
    return twin


def _refusal(bridge: nn.Module) -> str | None:
    """Why the twin cannot mirror `bridge`, or None."""
    hf = getattr(bridge, "original_model", None)
    family = _family(hf)
    if family is None:
        return f"{_OTHER_FAMILY} ({type(hf).__name__}; mirrored: {', '.join(_FAMILIES)})"
    try:
        reason = family.refusal(hf)
    except AttributeError as e:  # a module the family has, missing
        reason = f"its layout is not the family's ({e})"
    if reason is not None:
        return reason
    source = getattr(bridge, "acdc_source", None)
    processing = getattr(source, "processing", None)
    if processing is not None and processing is not Processing.NONE:
        return f"{processing.value!r} weight processing"
    if offload.is_offloaded(hf) or any(p.is_meta for p in hf.parameters()):
        return "offloaded weights"
    if any(p.dtype != torch.float32 for p in hf.parameters()):
        return "weights are not float32"
    if not isinstance(getattr(_at(hf, "lm_head"), "weight", None), torch.Tensor):
        return "it has no lm_head weight"
    held = [name for name, hp in bridge.hook_dict.items() if hp.fwd_hooks or hp.bwd_hooks]
    if held:
        return f"hooks left on the bridge ({', '.join(held[:3])})"
    return None


def _family(hf: nn.Module | None) -> _Family | None:
    """The mirrored family of Hugging Face model `hf` (its exact class, not a subclass), else None."""
    import transformers

    name = type(hf).__name__
    return _FAMILIES.get(name) if type(hf) is getattr(transformers, name, None) else None


def _gpt2_refusal(hf: nn.Module) -> str | None:
    c = hf.config
    if not getattr(c, "scale_attn_weights", True) or getattr(c, "scale_attn_by_inverse_layer_idx", False) \
            or getattr(c, "reorder_and_upcast_attn", False) or getattr(c, "add_cross_attention", False):
        return "its attention flags (scale_attn_weights, scale_attn_by_inverse_layer_idx, reorder_and_upcast_attn, " \
               "add_cross_attention) are not GPT-2's defaults"
    if c.activation_function not in _ACTIVATIONS:
        return f"activation {c.activation_function!r}"
    return None


def _llama_refusal(hf: nn.Module) -> str | None:
    """Llama, Mistral, Qwen2: what the twin does not mirror (checked on the modules the model runs)."""
    c = hf.config
    if c.hidden_act not in _ACTIVATIONS:
        return f"activation {c.hidden_act!r}"
    rotary, attn = _at(hf, "model.rotary_emb"), _at(hf, "model.layers.0.self_attn")
    rope_type = getattr(rotary, "rope_type", None)
    if rope_type not in _STATIC_ROPE:
        return f"rotary variant {rope_type!r} (its tables change with the sequence length)"
    if getattr(rotary, "inv_freq", None) is None or 2 * rotary.inv_freq.numel() != attn.head_dim:
        return "partial rotary positions"
    if not math.isclose(float(attn.scaling), attn.head_dim ** -0.5, rel_tol=1e-6):
        return f"attention scale {attn.scaling} is not 1/sqrt(head_dim)"
    window = getattr(c, "sliding_window", None)
    if window is not None and getattr(c, "use_sliding_window", True) and window < c.max_position_embeddings:
        return f"sliding-window attention ({window} of {c.max_position_embeddings} positions)"
    return None


def _param(t: torch.Tensor) -> nn.Parameter:
    """A parameter on `t`'s storage (no copy)."""
    return nn.Parameter(t.detach(), requires_grad=False)


def _unwrap(module: nn.Module) -> nn.Module:
    """The Hugging Face module a bridge component wraps (the module itself when it wraps none)."""
    while isinstance(getattr(module, "_original_component", None), nn.Module):
        module = module._original_component
    return module


def _at(module: nn.Module, path: str) -> nn.Module:
    """The Hugging Face submodule at dotted `path` under `module`, through the bridge's wrappers."""
    for part in path.split("."):
        module = _unwrap(getattr(_unwrap(module), part))
    return module


def _build(bridge: nn.Module) -> SmallTransformer:
    """The SmallTransformer with the weights under `bridge` (unverified). Built on the meta device first, so no random
    initialisation runs (and the global random state is left as it was)."""
    hf = bridge.original_model
    twin = _family(hf).build(hf, model_info(bridge).name)
    left = [name for name, t in [*twin.named_parameters(), *twin.named_buffers()] if t.is_meta]
    if left:
        raise RuntimeError(f"native twin: tensors not taken from the model: {left}")
    return twin.eval()


def _zeros_unless(bias: torch.Tensor | None, like: torch.Tensor, shape: tuple[int, ...]) -> nn.Parameter:
    """`bias` viewed as `shape` (no copy), or zeros of that shape where the layer has none."""
    return _param(bias.view(shape)) if bias is not None else nn.Parameter(like.new_zeros(shape), requires_grad=False)


def _build_gpt2(hf: nn.Module, name: str) -> SmallTransformer:
    c = hf.config
    d, h = c.n_embd, c.n_head
    e = d // h
    wte, wpe, lm_head = _at(hf, "transformer.wte"), _at(hf, "transformer.wpe"), _at(hf, "lm_head")
    w_u = lm_head.weight  # [vocab_out, d]
    cfg = SmallTransformerConfig(
        n_layers=c.n_layer, n_heads=h, d_model=d, d_head=e, d_vocab=wte.weight.shape[0], n_ctx=wpe.weight.shape[0],
        d_mlp=c.n_inner or 4 * d, normalization="layernorm", act_fn=_ACTIVATIONS[c.activation_function], positional="learned",
        d_vocab_out=w_u.shape[0], name=name, ln_eps=float(c.layer_norm_epsilon))
    with torch.device("meta"):
        twin = SmallTransformer(cfg)
    twin.W_E, twin.W_pos, twin.W_U = _param(wte.weight), _param(wpe.weight), _param(w_u.T)
    bias = getattr(lm_head, "bias", None)
    twin.b_U = _zeros_unless(bias, w_u, (w_u.shape[0],))
    _set_norm(twin.ln_final, _at(hf, "transformer.ln_f"))
    for i, block in enumerate(twin.blocks):
        layer = f"transformer.h.{i}"
        _set_norm(block.ln1, _at(hf, f"{layer}.ln_1"))
        _set_norm(block.ln2, _at(hf, f"{layer}.ln_2"))
        c_attn, c_proj = _at(hf, f"{layer}.attn.c_attn"), _at(hf, f"{layer}.attn.c_proj")
        # Conv1D: x @ W + b with W [d, 3d]; the output is q | k | v, each heads x d_head
        w = c_attn.weight.detach().view(d, 3, h, e).permute(1, 2, 0, 3)  # [3, h, d, e]
        b = c_attn.bias.detach().view(3, h, e)
        for j, port in enumerate("QKV"):
            setattr(block.attn, f"W_{port}", nn.Parameter(w[j].contiguous(), requires_grad=False))
            setattr(block.attn, f"b_{port}", _param(b[j]))
        block.attn.W_O = _param(c_proj.weight.view(h, e, d))  # rows of c_proj's input are heads x d_head
        block.attn.b_O = _param(c_proj.bias)
        c_fc, c_out = _at(hf, f"{layer}.mlp.c_fc"), _at(hf, f"{layer}.mlp.c_proj")
        block.mlp.W_in, block.mlp.b_in = _param(c_fc.weight), _param(c_fc.bias)
        block.mlp.W_out, block.mlp.b_out = _param(c_out.weight), _param(c_out.bias)
    return twin


def _rope_theta(config) -> float:
    params = getattr(config, "rope_parameters", None) or {}
    return float(params.get("rope_theta", getattr(config, "rope_theta", 10000.0)))


def _build_llama(hf: nn.Module, name: str) -> SmallTransformer:
    """Llama, Mistral, Qwen2: RMSNorm, rotary positions (the model's own frequencies), gated MLP, grouped-query
    attention; biases where the model has them (Qwen2's q/k/v), zeros elsewhere."""
    c = hf.config
    embed, lm_head, final = _at(hf, "model.embed_tokens"), _at(hf, "lm_head"), _at(hf, "model.norm")
    rotary, attn0 = _at(hf, "model.rotary_emb"), _at(hf, "model.layers.0.self_attn")
    d, h, e = c.hidden_size, c.num_attention_heads, attn0.head_dim
    g = getattr(c, "num_key_value_heads", None) or h
    w_u = lm_head.weight  # [vocab_out, d]
    cfg = SmallTransformerConfig(
        n_layers=c.num_hidden_layers, n_heads=h, d_model=d, d_head=e, d_vocab=embed.weight.shape[0],
        n_ctx=c.max_position_embeddings, d_mlp=c.intermediate_size, normalization="rmsnorm", act_fn=_ACTIVATIONS[c.hidden_act],
        positional="rotary", d_vocab_out=w_u.shape[0], name=name, ln_eps=float(final.variance_epsilon), mlp_kind="gated",
        n_kv_heads=None if g == h else g, rope_theta=_rope_theta(c))
    with torch.device("meta"):
        twin = SmallTransformer(cfg)
    twin.W_E, twin.W_U = _param(embed.weight), _param(w_u.T)
    twin.b_U = _zeros_unless(getattr(lm_head, "bias", None), w_u, (w_u.shape[0],))
    twin.ln_final.weight = _param(final.weight)
    for i, block in enumerate(twin.blocks):
        layer = f"model.layers.{i}"
        for norm, source in ((block.ln1, "input_layernorm"), (block.ln2, "post_attention_layernorm")):
            hf_norm = _at(hf, f"{layer}.{source}")
            if float(hf_norm.variance_epsilon) != cfg.ln_eps:
                raise ValueError(f"{layer}.{source} has epsilon {hf_norm.variance_epsilon}, not {cfg.ln_eps}")
            norm.weight = _param(hf_norm.weight)
        attn = block.attn
        for port, n in (("Q", h), ("K", g), ("V", g)):
            proj = _at(hf, f"{layer}.self_attn.{port.lower()}_proj")  # nn.Linear: weight [n * e, d]
            setattr(attn, f"W_{port}", nn.Parameter(proj.weight.detach().view(n, e, d).transpose(1, 2).contiguous(),
                                                    requires_grad=False))
            setattr(attn, f"b_{port}", _zeros_unless(proj.bias, proj.weight, (n, e)))
        o_proj = _at(hf, f"{layer}.self_attn.o_proj")  # weight [d, h * e]
        attn.W_O = nn.Parameter(o_proj.weight.detach().T.reshape(h, e, d).contiguous(), requires_grad=False)
        attn.b_O = _zeros_unless(o_proj.bias, o_proj.weight, (d,))
        attn.rotary.inv_freq = rotary.inv_freq.detach().float().clone()
        attn.rotary.scale = float(getattr(rotary, "attention_scaling", 1.0))
        mlp = block.mlp
        for ours, theirs in (("gate", "gate_proj"), ("in", "up_proj"), ("out", "down_proj")):
            proj = _at(hf, f"{layer}.mlp.{theirs}")
            setattr(mlp, f"W_{ours}", _param(proj.weight.T))
            setattr(mlp, f"b_{ours}", _zeros_unless(proj.bias, proj.weight, (proj.weight.shape[0],)))
    return twin


def _set_norm(norm: nn.LayerNorm, source: nn.LayerNorm) -> None:
    norm.weight, norm.bias = _param(source.weight), _param(source.bias)


@dataclass(frozen=True)
class _Family:
    """How to mirror one Hugging Face model class: why not (or None), and the unverified twin."""

    refusal: Callable[[nn.Module], str | None]
    build: Callable[[nn.Module, str], SmallTransformer]


_LLAMA = _Family(_llama_refusal, _build_llama)
_FAMILIES: dict[str, _Family] = {"GPT2LMHeadModel": _Family(_gpt2_refusal, _build_gpt2), "LlamaForCausalLM": _LLAMA,
                                 "MistralForCausalLM": _LLAMA, "Qwen2ForCausalLM": _LLAMA}


@torch.no_grad()
def _disagreement(bridge: nn.Module, twin: SmallTransformer, tolerance: float, padded: bool = True) -> str | None:
    """What differs between the twin and the bridge on a probe batch (unpadded; then, with `padded`, left- and
    right-padded rows with an attention mask, real positions only): logits as log-probabilities, and every sender's
    output; None if nothing."""
    device = next(bridge.parameters()).device
    tokens = probe_tokens(twin.cfg.d_vocab, twin.cfg.n_ctx).to(device)  # [4, p]
    n, p = tokens.shape
    mask = torch.ones(n, p, dtype=torch.bool, device=device)
    if p >= 4:  # row 0 left-padded, row 1 right-padded, by a quarter of the width each
        cut = p // 4
        mask[0, :cut] = False
        mask[1, p - cut:] = False
    names = [hooks.INPUT] + [name for layer in range(twin.cfg.n_layers)
                             for name in (hooks.head_result(layer), hooks.mlp_out(layer))]
    probes = [("unpadded", None)] + ([("padded", mask)] if padded else [])
    for label, attention_mask in probes:
        outs = []
        for model in (bridge, twin):
            cache: dict[str, torch.Tensor] = {}
            fwd = [(name, _recorder(cache, name)) for name in names]
            with model.hooks(fwd_hooks=fwd):
                logits = forward(model, tokens, attention_mask)
            outs.append((logits, cache))
        (bl, bc), (tl, tc) = outs
        real = torch.ones(n, p, dtype=torch.bool, device=device) if attention_mask is None else attention_mask
        eq = compare_logits(tl[real][None], bl[real][None], "bridge", tolerance)
        if not eq.ok:
            return f"{label} logits differ by {eq.max_abs_diff:.3g} (tolerance {tolerance:g})"
        for name in names:
            if name not in bc or name not in tc or bc[name].shape != tc[name].shape:
                return f"{label}: hook {name} has shape {tuple(bc[name].shape) if name in bc else None} on the bridge and " \
                       f"{tuple(tc[name].shape) if name in tc else None} on the twin"
            a, b = tc[name][real], bc[name][real]
            error = float((a - b).abs().max())
            if error > tolerance * max(1.0, float(b.abs().max())):
                return f"{label}: {name} differs by {error:.3g}"
    return None


def _recorder(cache: dict[str, torch.Tensor], name: str):
    """A hook keeping a copy of its activation under `name` (a bridge's hook may be an alias of another name)."""
    def hook(x, hook):
        cache[name] = x.detach().clone()
    return hook
