"""Run a TransformerBridge from layer l on a cached residual stream, computing only blocks l.. (a leaf module).

TransformerLens 4's `forward(resid, start_at_layer=l)` still runs blocks 0..l-1 (and on Bloom its swap at block l
does not take). Here the bridge is called with `resid` [b, p, d_model] as `inputs_embeds`, and for the duration
of the call blocks 0..l-1 compute nothing: each returns `resid` itself, as a tensor or a 1-tuple, whichever the HF
model's loop expects. So block l receives `resid` through the HF loop, and the HF model still builds the attention
mask, position ids, rotary tables and ALiBi as in a full pass: a suffix pass costs (L - l) / L of a forward.
With padding, position ids are derived from the mask as the bridge does for token input (it skips that step for
`inputs_embeds`, and rotary models read positions in every layer).

`probe_suffix` (called once by `load_model`) finds the container a block returns and checks, on a 4-token pass,
that a suffix pass from the last layer reproduces the full pass; a model that fails it never uses suffix passes.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator

import torch
from torch import nn

PROBE_TOLERANCE = 1e-4  # |suffix - full| logits allowed in the load-time check, relative to the logits' scale


def _returning(value: torch.Tensor, as_tuple: bool):
    """A skipped block's forward: `value`, in the container the HF model's loop expects."""
    out = (value,) if as_tuple else value

    def forward(*args, **kwargs):
        return out
    return forward


@contextlib.contextmanager
def skipped_blocks(blocks: nn.ModuleList, start: int, resid: torch.Tensor, as_tuple: bool) -> Iterator[None]:
    """Inside the context blocks 0..start-1 compute nothing and return `resid` (restored in `finally`)."""
    patched: list[nn.Module] = []
    skip = _returning(resid, as_tuple)
    try:
        for block in list(blocks)[:start]:
            if "forward" in vars(block):
                raise RuntimeError(f"{type(block).__name__} already has an instance-level forward; cannot skip it")
            object.__setattr__(block, "forward", skip)  # on the block itself (bridges pass setattr on to HF)
            patched.append(block)
        yield
    finally:
        for block in patched:
            object.__delattr__(block, "forward")


def padded_position_ids(attention_mask: torch.Tensor) -> torch.Tensor:
    """Position ids [b, p] counted from each row's first real token (`attention_mask` [b, p]); rows whose real
    tokens already sit at their index (no padding before a real token) keep 0..p-1."""
    mask = attention_mask.long()
    index = torch.arange(mask.shape[1], device=mask.device).expand_as(mask)
    derived = (mask.cumsum(dim=1) - 1).masked_fill(mask == 0, 1)
    moved = ((derived != index) & (mask != 0)).any(dim=1, keepdim=True)
    return torch.where(moved, derived, index)


def _run(model: nn.Module, resid: torch.Tensor, start: int, as_tuple: bool,
         attention_mask: torch.Tensor | None = None) -> torch.Tensor:
    kwargs = {}
    if attention_mask is not None:
        kwargs["attention_mask"] = attention_mask.to(device=resid.device, dtype=torch.long)
        kwargs["position_ids"] = padded_position_ids(kwargs["attention_mask"])
    with skipped_blocks(model.blocks, start, resid, as_tuple):
        return model(resid, **kwargs)


def run_from_layer(model: nn.Module, resid: torch.Tensor, start: int,
                   attention_mask: torch.Tensor | None = None) -> torch.Tensor:
    """Logits [b, p, vocab] of bridge `model` from block `start` on, with `resid` [b, p, d_model] the residual
    stream entering it; `attention_mask` [b, p] (True at real tokens) only when some position is padded."""
    return _run(model, resid, start, model.acdc_block_tuple, attention_mask)


def _text_decoder_with_blocks(model: nn.Module) -> bool:
    cfg = getattr(model, "cfg", None)
    if cfg is None or not isinstance(getattr(model, "blocks", None), nn.ModuleList) or len(model.blocks) < 2:
        return False
    if any(bool(getattr(cfg, flag, False)) for flag in ("is_visual_model", "is_audio_model", "is_multimodal")):
        return False
    return not any(hasattr(model, alt) for alt in ("encoder_blocks", "decoder_blocks")) and len(model.blocks) == cfg.n_layers


@torch.no_grad()
def probe_suffix(model: nn.Module) -> bool | None:
    """How the bridge's blocks hand on their output (True: a tuple, as Bloom's HF loop reads output[0]; False: a
    tensor), provided a suffix pass from the last layer reproduces the full pass on 4 tokens; else None."""
    if not _text_decoder_with_blocks(model):
        return None
    start = len(model.blocks) - 1
    seen: dict[str, object] = {}

    def output_kind(module, args, output):
        seen["tuple"] = isinstance(output, tuple)

    def block_input(module, args, kwargs):
        seen["resid"] = (args[0] if args else kwargs["hidden_states"]).clone()

    device = next(model.parameters()).device
    tokens = (torch.arange(4, device=device) % model.cfg.d_vocab)[None]
    handles = [model.blocks[0].register_forward_hook(output_kind),
               model.blocks[start].register_forward_pre_hook(block_input, with_kwargs=True)]
    try:
        full = model(tokens)
    except Exception:  # a model that cannot run these tokens: no suffix passes, everything else unchanged
        return None
    finally:
        for h in handles:
            h.remove()
    if not isinstance(seen.get("resid"), torch.Tensor) or seen["resid"].dim() != 3:
        return None
    try:
        suffix = _run(model, seen["resid"], start, bool(seen["tuple"]))
    except Exception:
        return None
    scale = float(full.abs().max()) or 1.0
    return bool(seen["tuple"]) if float((suffix - full).abs().max()) <= PROBE_TOLERANCE * scale else None


def can_start_at_layer(model: nn.Module) -> bool:
    """Whether `run_from_layer` applies: `load_model` probed the bridge (`acdc_block_tuple`) and its check passed."""
    return isinstance(getattr(model, "acdc_block_tuple", None), bool) and hasattr(model, "blocks")
