"""Training data for the zoo's induction models: random segments, each repeated.

A sequence is BOS (id 0) then segments of `min_seg`-`max_seg` random tokens (ids 1..n_tokens-1),
each followed by a copy of itself, either at once (x x y y ...) or after a gap of fresh random
tokens (x g x ...). Segment lengths and gaps vary, so no fixed positional offset predicts the copy.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch


@dataclass(frozen=True)
class SegmentRecipe:
    min_seg: int = 4
    max_seg: int = 10
    p_gap: float = 0.0  # probability that a copy comes after a gap instead of at once
    max_gap: int = 0  # gap length is uniform in 1..max_gap
    unpredictable_weight: float = 0.1  # loss weight of positions whose next token is not a copy

    def describe(self) -> str:
        gap = f", with probability {self.p_gap} after a gap of 1-{self.max_gap} random tokens" if self.p_gap else " at once"
        return (f"BOS then random segments of {self.min_seg}-{self.max_seg} tokens, each repeated{gap}; "
                f"loss weight 1 on predictable next tokens (copy tokens after the first), "
                f"{self.unpredictable_weight} elsewhere")


def segment_batch(n: int, seq_len: int, n_tokens: int, recipe: SegmentRecipe, g: torch.Generator) -> tuple[torch.Tensor, torch.Tensor]:
    """tokens [n, seq_len] and loss weights [n, seq_len - 1] (weight of predicting token t + 1 at t)."""
    tokens = torch.randint(1, n_tokens, (n, seq_len), generator=g)
    tokens[:, 0] = 0
    weights = torch.full((n, seq_len - 1), recipe.unpredictable_weight)
    for i in range(n):
        pos = 1
        while pos < seq_len:
            seg = int(torch.randint(recipe.min_seg, recipe.max_seg + 1, (1,), generator=g))
            gap = 0
            if recipe.p_gap and float(torch.rand(1, generator=g)) < recipe.p_gap:
                gap = int(torch.randint(1, recipe.max_gap + 1, (1,), generator=g))
            copy = pos + seg + gap  # the copy starts here; tokens in between stay random
            for j in range(seg):
                if copy + j >= seq_len:
                    break
                tokens[i, copy + j] = tokens[i, pos + j]
                if j > 0:
                    weights[i, copy + j - 1] = 1.0
            pos = copy + seg
    return tokens, weights


def repeated_random(n: int, half: int, n_tokens: int, seed: int, bos: int | None = 0) -> torch.Tensor:
    """[n, 1 + 2 * half] (or 2 * half with no BOS): BOS, then R R with R random ids in 1..n_tokens-1."""
    g = torch.Generator().manual_seed(seed)
    r = torch.randint(1, n_tokens, (n, half), generator=g)
    seq = torch.cat([r, r], dim=1)
    if bos is None:
        return seq
    return torch.cat([torch.full((n, 1), bos, dtype=torch.long), seq], dim=1)
