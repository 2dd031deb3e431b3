"""Run a TransformerBridge from layer l on a cached residual stream, computing only blocks l.. (a leaf module).

TransformerLens 4's `forward(resid, start_at_layer=l)` feeds `resid` [b, p, d_model] to the HF model as
`inputs_embeds` and swaps it in at block l, but still runs blocks 0..l-1 and discards their output. Here those
blocks return their input untouched for the duration of the call, so a suffix pass costs (L - l) / L of a
forward while the HF model still builds the attention mask, position ids and rotary tables as in a full pass.
With padding, position ids are derived from the mask as the bridge does for token input (it skips that step
for `inputs_embeds`, and rotary models read positions in every layer).
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator

import torch
from torch import nn


def _passthrough(*args, **kwargs):
    """A skipped block: its hidden-state input, unchanged."""
    return args[0] if args else kwargs["hidden_states"]


@contextlib.contextmanager
def skipped_blocks(blocks: nn.ModuleList, start: int) -> Iterator[None]:
    """Blocks 0..start-1 return their input unchanged inside the context (restored in `finally`)."""
    patched: list[nn.Module] = []
    try:
        for block in list(blocks)[:start]:
            if "forward" in vars(block):
                raise RuntimeError(f"{type(block).__name__} already has an instance-level forward; cannot skip it")
            object.__setattr__(block, "forward", _passthrough)  # on the block itself (bridges pass setattr on to HF)
            patched.append(block)
        yield
    finally:
        for block in patched:
            object.__delattr__(block, "forward")


def can_start_at_layer(model: nn.Module) -> bool:
    """Whether `run_from_layer` applies: a text decoder bridge with a standard `blocks` stack."""
    cfg = getattr(model, "cfg", None)
    if cfg is None or not isinstance(getattr(model, "blocks", None), nn.ModuleList):
        return False
    if any(bool(getattr(cfg, flag, False)) for flag in ("is_visual_model", "is_audio_model", "is_multimodal")):
        return False
    if any(hasattr(model, alt) for alt in ("encoder_blocks", "decoder_blocks")):
        return False
    return hasattr(model, "_setup_start_at_layer") and len(model.blocks) == cfg.n_layers


def padded_position_ids(attention_mask: torch.Tensor) -> torch.Tensor:
    """Position ids [b, p] counted from each row's first real token (`attention_mask` [b, p]); rows whose real
    tokens already sit at their index (no padding before a real token) keep 0..p-1."""
    mask = attention_mask.long()
    index = torch.arange(mask.shape[1], device=mask.device).expand_as(mask)
    derived = (mask.cumsum(dim=1) - 1).masked_fill(mask == 0, 1)
    moved = ((derived != index) & (mask != 0)).any(dim=1, keepdim=True)
    return torch.where(moved, derived, index)


def run_from_layer(model: nn.Module, resid: torch.Tensor, start: int,
                   attention_mask: torch.Tensor | None = None) -> torch.Tensor:
    """Logits [b, p, vocab] of bridge `model` from block `start` on, with `resid` [b, p, d_model] the residual
    stream entering it; `attention_mask` [b, p] (True at real tokens) only when some position is padded."""
    kwargs = {}
    if attention_mask is not None:
        kwargs["attention_mask"] = attention_mask.to(device=resid.device, dtype=torch.long)
        kwargs["position_ids"] = padded_position_ids(kwargs["attention_mask"])
    with skipped_blocks(model.blocks, start):
        return model(resid, start_at_layer=start, **kwargs)
