"""Prompts of different lengths in one batch: padding, attention masks, and the one way to run a model on them.

With causal attention, right padding leaves every real position exactly as it is alone (a position
only sees earlier ones, and the pads come after every real token), so no mask is needed for it. Left
padding shifts the real tokens, so the model needs an attention mask (pads are never attended) and
position ids counted from the first real token; `forward` passes both (a `TransformerBridge` derives
the position ids from the mask; `SmallTransformer` does the same itself). Whichever side, padded
positions never enter a score, a mean or a metric: the masks here say which positions are real.
"""

from __future__ import annotations

from collections.abc import Sequence
from enum import Enum

import torch
from torch import nn

from acdc_lite import hooks


class PaddingSide(str, Enum):
    RIGHT = "right"
    LEFT = "left"


def padding_side_of(model: nn.Module) -> PaddingSide:
    """The side the model's tokenizer pads on (right when it has no tokenizer, as for word vocabularies)."""
    side = getattr(getattr(model, "tokenizer", None), "padding_side", None)
    return PaddingSide(side) if side in ("left", "right") else PaddingSide.RIGHT


def pad_id_of(model: nn.Module) -> int:
    """A token id to fill padded positions with: the tokenizer's pad (else EOS) token, a word vocabulary's
    `<pad>`, else 0. Its value never matters (padded positions are masked or come after every real one)."""
    words = getattr(getattr(model, "cfg", None), "vocab", None)
    if isinstance(words, (list, tuple)) and "<pad>" in words:
        return words.index("<pad>")
    tok = getattr(model, "tokenizer", None)
    for attr in ("pad_token_id", "eos_token_id"):
        value = getattr(tok, attr, None)
        if isinstance(value, int):
            return value
    return 0


def pad_rows(rows: Sequence[Sequence[int]], side: PaddingSide | str, pad_id: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Token rows of any lengths -> tokens [N, P] and attention mask [N, P] (bool, True at real tokens)."""
    side = PaddingSide(side)
    width = max(len(r) for r in rows)
    tokens = torch.full((len(rows), width), pad_id, dtype=torch.long)
    mask = torch.zeros(len(rows), width, dtype=torch.bool)
    for i, r in enumerate(rows):
        sl = slice(0, len(r)) if side is PaddingSide.RIGHT else slice(width - len(r), width)
        tokens[i, sl] = torch.tensor(list(r), dtype=torch.long)
        mask[i, sl] = True
    return tokens, mask


def first_real(mask: torch.Tensor) -> torch.Tensor:
    """Index of each row's first real position: mask [N, P] -> [N]."""
    return mask.long().argmax(dim=1)


def take_positions(x: torch.Tensor, positions: torch.Tensor) -> torch.Tensor:
    """x [b, p, ...] at `positions` [b, T] of each row: [b, T, ...]."""
    return x[torch.arange(len(x), device=x.device)[:, None], positions.to(x.device)]


def forward(model: nn.Module, tokens: torch.Tensor, attention_mask: torch.Tensor | None = None,
            start_at_layer: int | None = None, resid: torch.Tensor | None = None,
            positions: torch.Tensor | None = None, narrow_last_layer: bool = False) -> torch.Tensor:
    """Logits [b, p, vocab] of `model` on `tokens` [b, p]; `attention_mask` [b, p] (True/1 at real tokens)
    is passed on only when some position is padded (an all-real batch runs exactly as before). With
    `start_at_layer=l`, `resid` [b, p, d_model] is the residual stream entering block l and only blocks l..
    are computed (natively on models that declare `supports_start_at_layer`, else via `suffix.run_from_layer`).
    `positions` [b, T]: logits [b, T, vocab] at those positions of each row only; on a model with the unembedding's
    input hook (`hooks.UNEMBED_IN`) only they are unembedded, on any other they are taken from all positions' logits.
    `narrow_last_layer`: on a model that declares `supports_query_positions`, its last layer computes only those
    positions too (its outputs elsewhere are then meaningless: for passes that read nothing else of it)."""
    if positions is None:
        return _forward(model, tokens, attention_mask, start_at_layer, resid)
    narrow = narrow_last_layer and getattr(model, "supports_query_positions", False)
    extra = {"query_positions": positions} if narrow else {}
    if hooks.UNEMBED_IN not in getattr(model, "hook_dict", {}):
        return take_positions(_forward(model, tokens, attention_mask, start_at_layer, resid, **extra), positions)
    with model.hooks(fwd_hooks=[(hooks.UNEMBED_IN, lambda x, hook: take_positions(x, positions))]):
        return _forward(model, tokens, attention_mask, start_at_layer, resid, **extra)


def _forward(model: nn.Module, tokens: torch.Tensor, attention_mask: torch.Tensor | None,
             start_at_layer: int | None, resid: torch.Tensor | None, **extra) -> torch.Tensor:
    padded = attention_mask is not None and not bool(attention_mask.all())
    if start_at_layer is not None and not getattr(model, "supports_start_at_layer", False):
        from acdc_lite.suffix import run_from_layer

        return run_from_layer(model, resid, start_at_layer, attention_mask if padded else None)
    kwargs = extra if start_at_layer is None else {"start_at_layer": start_at_layer, "resid": resid, **extra}
    if not padded:
        return model(tokens, **kwargs)
    return model(tokens, attention_mask=attention_mask.to(device=tokens.device, dtype=torch.long), **kwargs)
